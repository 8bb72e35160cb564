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

Shrinking a crop larger than CLIP's input with plain bilinear sampling aliases:
at 480 px a whole-image crop reads only ~77 % of the pixels (the rest get no
gradient) and a 1-pixel checkerboard survives, which the average pooling of the
reference path (and the notebook's area/Lanczos resampling) removes. So the
fast path samples from low-passed copies of the image (:func:`tent_levels`),
each crop blending the two whose filter width brackets its own shrink factor.
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
    # The magnitudes of the references' kornia augmentations: flips as in
    # Crowson's notebook (RandomHorizontalFlip(p=0.5)); rotation, shift and
    # saturation as in nerdyrodent's generate.py (RandomAffine(degrees=15,
    # translate=0.1), ColorJitter(saturation=0.1); the notebook used 30 degrees
    # and 0.01). Unlike kornia's p=0.7, each applies to every crop; see
    # docs/vqgan_clip.md, "Where it differs from the reference".
    flip_p: float = 0.5
    max_degrees: float = 15.0
    max_translate: float = 0.1
    saturation: float = 0.1
    noise: float = 0.1  # per-crop noise scale drawn from U(0, noise), as both references


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

    The image and its low-passed levels are stacked, each with a mirrored
    margin, into one tall mosaic per candidate; every crop is sampled from the
    two levels that bracket its shrink factor (both in the same
    ``grid_sample``) and the two samples are blended.
    """
    b, channels, height, width = images.shape
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
    ], dim=1)

    # The mosaic: level k of candidate i, with a mirrored margin wide enough for
    # any rotated and shifted crop, sits k padded heights down.
    levels = prefilter_levels(min(width, height), cut_size)
    margin = crop_margin(min(width, height), settings)
    padded_w, padded_h = width + 2 * margin, height + 2 * margin
    mosaic_h = levels * padded_h
    low, upper = level_blend(sizes / cut_size, levels)
    slots = 2 if levels > 1 else 1
    # Image coordinates -> mosaic coordinates (both [-1, 1], align_corners=False):
    # x shrinks by width / padded_w; y shrinks by height / mosaic_h and moves to
    # the middle of the crop's level.
    level = torch.stack([low + j for j in range(slots)], dim=1).to(theta.dtype)  # (n, slots)
    theta = theta[:, None].repeat(1, slots, 1, 1)
    theta[:, :, 0] *= width / padded_w
    theta[:, :, 1] *= height / mosaic_h
    theta[:, :, 1, 2] += padded_h * (2 * level + 1) / mosaic_h - 1
    theta = theta.view(b, settings.count, slots, 2, 3).transpose(1, 2)  # (candidate, slot, crop)
    # One batch entry per (candidate, slot), all of one candidate's crops stacked
    # in a tall grid: grid_sample's CPU kernel splits its work by batch entry,
    # and the slots share the mosaic without a copy when there is one candidate.
    grid = F.affine_grid(theta.to(images.dtype).reshape(-1, 2, 3), [n * slots, channels, cut_size, cut_size],
                         align_corners=False)
    grid = grid.view(b * slots, settings.count * cut_size, cut_size, 2)
    mosaic = tent_levels(_mirror(images, margin), levels)
    mosaic = mosaic[:, None].expand(b, slots, *mosaic.shape[1:]).reshape(b * slots, *mosaic.shape[1:])
    samples = F.grid_sample(mosaic, grid, mode="bilinear", padding_mode="border", align_corners=False)
    samples = samples.view(b, slots, channels, settings.count, cut_size, cut_size)
    if slots > 1:
        below, above = samples.unbind(1)  # unbind, not indexing: its backward allocates no zeros
        samples = torch.lerp(below, above, upper.to(images.dtype).view(b, 1, settings.count, 1, 1))
    else:
        samples = samples[:, 0]
    cutouts = samples.transpose(1, 2).reshape(n, channels, cut_size, cut_size)
    if settings.augment:
        cutouts = _colour_and_noise(cutouts, settings, gen)
    return cutouts


def crop_margin(short_side: int, settings: CutoutSettings) -> int:
    """Pixels a crop can reach beyond the image edge: a square crop of side
    ``s <= short_side`` turned by up to ``max_degrees`` spans
    ``s * (|cos| + |sin|)``, and is shifted by up to ``max_translate * s``;
    plus 2 for bilinear taps and crops smaller than ``cut_size``."""
    reach = 0.0
    if settings.augment:
        angle = min(abs(math.radians(settings.max_degrees)), math.pi / 4)
        reach = short_side * (0.5 * (math.cos(angle) + math.sin(angle)) - 0.5 + settings.max_translate)
    return min(math.ceil(max(reach, 0.0)) + 2, short_side)


def _mirror(images: torch.Tensor, margin: int) -> torch.Tensor:
    """Pad by mirroring about the outer pixel edges (the edge pixel repeats):
    what ``grid_sample(padding_mode="reflection", align_corners=False)`` reads
    outside the image, so an unfiltered crop is the same as before the mosaic."""
    images = torch.cat([images[..., :margin].flip(-1), images, images[..., -margin:].flip(-1)], dim=-1)
    return torch.cat([images[..., :margin, :].flip(-2), images, images[..., -margin:, :].flip(-2)], dim=-2)


def prefilter_levels(short_side: int, cut_size: int) -> int:
    """How many levels the largest crop needs: level ``k`` serves a crop
    ``2 ** k`` times larger than ``cut_size``, and a whole-image crop is
    ``short_side / cut_size`` times larger."""
    scale = max(short_side / cut_size, 1.0)
    return 1 + max(0, math.ceil(math.log2(scale) - 1e-6))


def tent_levels(images: torch.Tensor, levels: int) -> torch.Tensor:
    """``(b, c, H, W)`` -> ``(b, c, levels * H, W)``: the image, then below it
    copies low-passed by tents ``2, 4, 8 ...`` pixels wide on each side.

    Level ``k`` is level ``k - 1`` filtered by ``[1, 2, 1] / 4`` with taps
    ``2 ** (k - 1)`` pixels apart (the "a trous" construction), which gives
    exactly the tent of half-width ``2 ** k``: the filter an antialiased
    bilinear resize (PIL, ``F.interpolate(antialias=True)``) uses to shrink by
    ``2 ** k``. Sampling a level bilinearly therefore reaches every pixel under
    the crop and drops what the smaller crop cannot represent, as the
    reference path's average pooling does. The filter reads past the edge
    through reflection padding; :func:`make_cutouts` passes an image with a
    mirrored margin, so crops never sample that padding. Shifted slices
    rather than a depthwise dilated convolution: same result, and about half
    the time on a CPU (19 ms against 45 ms forward + backward for three levels
    of a 686-px image, 2 cores).
    """
    out = [images]
    for k in range(1, levels):
        step = 2 ** (k - 1)
        level = F.pad(out[-1], (step, step, step, step), mode="reflect")
        level = (level[..., :-2 * step] + 2 * level[..., step:-step] + level[..., 2 * step:]) / 4
        level = (level[..., :-2 * step, :] + 2 * level[..., step:-step, :] + level[..., 2 * step:, :]) / 4
        out.append(level)
    return torch.cat(out, dim=2) if levels > 1 else images


def level_blend(scale: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per crop, the lower of the two levels it blends and the weight of the
    upper one, linear in ``log2(scale)`` (trilinear mip-mapping): a crop 1.5x
    the cut size takes 0.42 of the image and 0.58 of level 1; a crop at or
    below the cut size takes the image as it is."""
    if levels == 1:
        return torch.zeros_like(scale, dtype=torch.long), torch.zeros_like(scale)
    position = scale.clamp(min=1.0).log2().clamp(max=levels - 1)
    low = position.floor().clamp(max=levels - 2)
    return low.long(), position - low


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
