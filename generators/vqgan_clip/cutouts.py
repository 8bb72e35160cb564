"""Cutouts: the random crops of the image that CLIP scores each step.

Scoring many random, augmented crops instead of the whole image is what keeps
VQGAN+CLIP from fooling CLIP with adversarial pixel patterns (Crowson's notebook;
the crop size is drawn as ``rand ** cut_power`` between CLIP's input size and the
image's short side, so ``cut_power > 1`` favours small crops).

:func:`make_cutouts` builds every crop of every candidate with one
``affine_grid`` + ``grid_sample``: crop position and size, horizontal flip, a
small rotation and translation are all one 2x3 matrix per crop. Colour and noise
augmentations follow as batched arithmetic. :func:`make_cutouts_reference` is the
classic per-crop loop (slice + adaptive average pool), kept as the benchmark's
baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CutoutSettings:
    count: int = 32
    power: float = 1.0
    augment: bool = True
    flip_p: float = 0.5
    max_degrees: float = 15.0  # the notebook's RandomAffine(degrees=15, translate=0.1)
    max_translate: float = 0.1
    saturation: float = 0.1  # ColorJitter(saturation=0.1)
    noise: float = 0.1  # per-crop noise scale drawn from U(0, noise)


def _crop_sizes(n: int, width: int, height: int, cut_size: int, power: float, gen: torch.Generator,
                device: torch.device) -> torch.Tensor:
    max_size = min(width, height)
    min_size = min(width, height, cut_size)
    return (torch.rand(n, generator=gen, device=device) ** power * (max_size - min_size) + min_size).floor()


def make_cutouts(images: torch.Tensor, cut_size: int, settings: CutoutSettings,
                 gen: torch.Generator) -> torch.Tensor:
    """(candidates, 3, H, W) in [0, 1] -> (candidates * count, 3, cut_size, cut_size).

    Crops ``i * count ... (i + 1) * count - 1`` belong to candidate ``i``.
    Random numbers come from ``gen`` only (on the images' device), so a seed
    fixes every crop.
    """
    b, _, height, width = images.shape
    n = b * settings.count
    device = images.device
    sizes = _crop_sizes(n, width, height, cut_size, settings.power, gen, device)
    ox = torch.rand(n, generator=gen, device=device) * (width - sizes + 1)
    oy = torch.rand(n, generator=gen, device=device) * (height - sizes + 1)
    ox, oy = ox.floor(), oy.floor()
    # Centre and half-extent of each crop in grid_sample's [-1, 1] coordinates.
    cx = (ox + sizes / 2) / width * 2 - 1
    cy = (oy + sizes / 2) / height * 2 - 1
    sx, sy = sizes / width, sizes / height
    if settings.augment:
        flip = torch.where(torch.rand(n, generator=gen, device=device) < settings.flip_p, -1.0, 1.0)
        angle = (torch.rand(n, generator=gen, device=device) * 2 - 1) * math.radians(settings.max_degrees)
        shift = (torch.rand(n, 2, generator=gen, device=device) * 2 - 1) * settings.max_translate * 2
    else:
        flip = torch.ones(n, device=device)
        angle = torch.zeros(n, device=device)
        shift = torch.zeros(n, 2, device=device)
    cos, sin = angle.cos(), angle.sin()
    # Rotation in the square crop's own pixel frame, then scaled to each axis.
    theta = torch.stack([
        torch.stack([sx * cos * flip, -sx * sin, cx + sx * shift[:, 0]], dim=-1),
        torch.stack([sy * sin * flip, sy * cos, cy + sy * shift[:, 1]], dim=-1),
    ], dim=1).to(images.dtype)
    grid = F.affine_grid(theta, [n, 3, cut_size, cut_size], align_corners=False)
    source = images.repeat_interleave(settings.count, dim=0)
    cutouts = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if settings.augment:
        cutouts = _colour_and_noise(cutouts, settings, gen)
    return cutouts


def _colour_and_noise(cutouts: torch.Tensor, settings: CutoutSettings, gen: torch.Generator) -> torch.Tensor:
    n, device = cutouts.shape[0], cutouts.device
    grey = cutouts.mean(dim=1, keepdim=True)
    factor = 1 + (torch.rand(n, 1, 1, 1, generator=gen, device=device) * 2 - 1) * settings.saturation
    cutouts = grey + (cutouts - grey) * factor.to(cutouts.dtype)
    scale = torch.rand(n, 1, 1, 1, generator=gen, device=device) * settings.noise
    noise = torch.randn(cutouts.shape, generator=gen, device=device)
    return cutouts + (scale * noise).to(cutouts.dtype)


def make_cutouts_reference(images: torch.Tensor, cut_size: int, settings: CutoutSettings,
                           gen: torch.Generator) -> torch.Tensor:
    """The notebook's per-crop loop: slice, adaptive-average-pool to ``cut_size``,
    flip; then the same colour and noise augmentation. Benchmark baseline only."""
    b, _, height, width = images.shape
    device = images.device
    crops = []
    for i in range(b):
        sizes = _crop_sizes(settings.count, width, height, cut_size, settings.power, gen, device)
        for size in sizes.tolist():
            size = int(size)
            ox = int(torch.randint(0, width - size + 1, (), generator=gen, device=device))
            oy = int(torch.randint(0, height - size + 1, (), generator=gen, device=device))
            crop = F.adaptive_avg_pool2d(images[i:i + 1, :, oy:oy + size, ox:ox + size], cut_size)
            if settings.augment and float(torch.rand((), generator=gen, device=device)) < settings.flip_p:
                crop = crop.flip(-1)
            crops.append(crop)
    cutouts = torch.cat(crops)
    if settings.augment:
        cutouts = _colour_and_noise(cutouts, settings, gen)
    return cutouts
