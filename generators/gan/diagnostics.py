"""Diagnostics of the three GAN failure modes the seeds describe, with measures
that need no downloaded network.

The first seed names mode collapse, convergence failure and overfitting
(memorisation), and the nearest-neighbour check (Barrat 2018; Borji 2018,
"Pros and Cons of GAN Evaluation Measures"). Every measure is reported beside
the same measure computed between two halves of the real data: that is the
floor a perfect generator would reach, so a number means something on its own.

- Quality (and the "best checkpoint" criterion): Kernel Inception Distance
  (Bińkowski et al. 2018, "Demystifying MMD GANs": unbiased MMD² with a cubic
  polynomial kernel) computed in the feature space of a *randomly initialised*
  convolutional network with a fixed seed, which Naeem et al. 2020 ("Reliable
  Fidelity and Diversity Metrics for Generative Models") found to rank models
  sensibly where no domain-appropriate pretrained network exists. Plus the same
  MMD on 16x16 thumbnails (colour and layout).
- Mode collapse: mean pairwise feature distance among generated samples divided
  by the same among real images (1 = as diverse as the data, near 0 = one
  repeated image).
- Memorisation: Euclidean nearest-neighbour distance from each sample to the
  training images, against the leave-one-out nearest-neighbour distance among
  the real images; the closest pairs are drawn side by side.
- Convergence failure: from the per-epoch losses (discriminator loss collapsing
  towards 0 with accuracy near 1 while the generator loss climbs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_SIZE = 64  # every image is resized to this before feature extraction
MODE_COLLAPSE_RATIO = 0.5  # diversity below half the data's: collapse
COPY_FRACTION = 0.1  # more than 10% of samples are near-copies: memorisation


class RandomFeatures(nn.Module):
    """A fixed, randomly initialised conv net (seed 0): mean and std of each
    block's activations, concatenated. No training, no download."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        widths = [3, 32, 64, 128, 128]
        self.convs = nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            with torch.random.fork_rng():  # the default init must not move the training RNG
                conv = nn.Conv2d(c_in, c_out, 3, 2, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / (c_in * 9)))
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(feats, dim=1)


_FEATURES: RandomFeatures | None = None


def _prepare(images: torch.Tensor, size: int = FEATURE_SIZE) -> torch.Tensor:
    """uint8 or [-1,1] float (N,3,H,W) -> float [-1,1] at ``size``."""
    x = images.float().div(127.5).sub(1.0) if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear", align_corners=None if x.shape[-1] > size else False)
    return x


def features(images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Random-network features of ``images`` (see :class:`RandomFeatures`)."""
    global _FEATURES
    if _FEATURES is None:
        _FEATURES = RandomFeatures()
    x = _prepare(images)
    return torch.cat([_FEATURES(x[i : i + batch]) for i in range(0, len(x), batch)]).double()


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """16x16 thumbnails flattened: colour and coarse layout."""
    return _prepare(images, 16).flatten(1).double()


def kid(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(a,b) = (a·b/d + 1)³
    (Bińkowski et al. 2018). 0 when both sets come from one distribution;
    it can be slightly negative by chance."""
    d = x.shape[1]
    m, n = len(x), len(y)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean Euclidean distance over all distinct pairs."""
    dist = torch.cdist(x, x)
    n = len(x)
    return float(dist.sum() / (n * (n - 1)))


def standardise(reference: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Scale features by the reference set's per-dimension std so no single
    feature dominates a distance. A feature (almost) constant over the real
    images — a black border, a tiny data set — is scaled by a hundredth of the
    typical std instead of its own: dividing by ~0 made a generator's faint
    noise there outweigh everything else, and KID reach 1e27."""
    std = reference.std(dim=0)
    scale = std.clamp_min(max(float(std.mean()) * 1e-2, 1e-6))
    mean = reference.mean(dim=0)
    return [(t - mean) / scale for t in (reference, *others)]


@dataclass
class RealSplit:
    """Real images for the diagnostics: ``a`` is the reference half, ``b`` the
    half used for the real-vs-real floor; ``all`` both, which are images
    ``indices`` of the training set."""

    a: torch.Tensor
    b: torch.Tensor
    indices: torch.Tensor

    @property
    def all(self) -> torch.Tensor:
        return torch.cat([self.a, self.b])


def split_real(images: torch.Tensor, max_images: int = 512, seed: int = 0) -> RealSplit:
    """A seeded random subset of at most ``max_images`` real images, halved."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)[:max_images]
    half = max(1, len(order) // 2)
    return RealSplit(images[order[:half]], images[order[half:]], order)


def nearest_training_images(queries: torch.Tensor, training: torch.Tensor, exclude: torch.Tensor | None = None, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the per-pixel Euclidean distance (at 64x64) to its closest
    training image and that image's index. ``exclude[i]`` is query i's own index
    in ``training`` (leave-one-out). Every training image is searched, in chunks,
    so a copy of any one of them is found in a large set too."""
    q = _prepare(queries).flatten(1).double()
    scale = math.sqrt(q.shape[1])
    best = torch.full((len(q),), float("inf"), dtype=torch.float64)
    best_index = torch.zeros(len(q), dtype=torch.long)
    for start in range(0, len(training), chunk):
        block = _prepare(training[start : start + chunk]).flatten(1).double()
        dist = torch.cdist(q, block) / scale
        if exclude is not None:
            own = ((exclude >= start) & (exclude < start + len(block))).nonzero().squeeze(1)
            dist[own, exclude[own] - start] = float("inf")
        value, index = dist.min(dim=1)
        closer = value < best
        best[closer], best_index[closer] = value[closer], index[closer] + start
    return best, best_index


def quality_measures(fake: torch.Tensor, real: RealSplit, training: torch.Tensor | None = None) -> dict[str, Any]:
    """KID, diversity and nearest-neighbour measures of ``fake`` against the
    real images, each with its real-vs-real floor. The nearest-neighbour search
    covers ``training`` (the whole training set, whose images ``real.indices``
    are) or, without it, ``real.all``; the ``_closest`` pairs index into it."""
    fa, fb, ff = standardise(features(real.a), features(real.b), features(fake))
    ta, tb, tf = standardise(thumbnails(real.a), thumbnails(real.b), thumbnails(fake))

    diversity_real = mean_pairwise_distance(fb)
    diversity_fake = mean_pairwise_distance(ff)

    # memorisation: nearest neighbours in pixel space at 64x64 (the seed's Euclidean check)
    if training is None:
        training, own = real.all, torch.arange(len(real.all))
    else:
        own = real.indices
    real_nn, _ = nearest_training_images(real.all, training, exclude=own)
    fake_nn, fake_nn_index = nearest_training_images(fake, training)
    copy_threshold = 0.5 * float(torch.quantile(real_nn, 0.05))
    copy_fraction = float((fake_nn < copy_threshold).double().mean())

    return {
        "kid": {"value": kid(ff, fa), "floor": kid(fb, fa), "meaning": "lower is better; the floor is real-vs-real"},
        "kid_thumbnails": {"value": kid(tf, ta), "floor": kid(tb, ta), "meaning": "colour and layout; lower is better"},
        "diversity": {
            "value": diversity_fake / diversity_real,
            "floor": mean_pairwise_distance(fa) / diversity_real,
            "meaning": "sample diversity / real diversity; near 0 is mode collapse",
        },
        "nearest_neighbour": {
            "value": float(fake_nn.median()),
            "floor": float(real_nn.median()),
            "copy_threshold": copy_threshold,
            "copy_fraction": copy_fraction,
            "meaning": "median distance from a sample to its closest training image; far below the floor is memorisation",
        },
        "_closest": [(int(i), int(fake_nn_index[i]), float(fake_nn[i])) for i in torch.argsort(fake_nn)[:8]],
    }


def convergence_check(history: list[dict], window: int = 3) -> dict[str, Any]:
    """Convergence failure from the per-epoch metrics: the discriminator wins
    outright (accuracy ~1 on real and fake, loss near 0) for ``window`` epochs,
    or the generator loss keeps climbing over the second half of training."""
    result: dict[str, Any] = {"discriminator_wins": False, "generator_loss_climbing": False}
    if len(history) < window:
        result["note"] = f"needs at least {window} epochs"
        return result
    recent = history[-window:]
    result["discriminator_wins"] = all(h["d_acc_real"] > 0.97 and h["d_acc_fake"] > 0.97 and abs(h["d_loss"]) < 0.1 for h in recent)
    g_losses = [h["g_loss"] for h in history if h["g_loss"] is not None]  # None: an epoch without a generator step
    half = g_losses[len(g_losses) // 2 :]
    if len(half) >= window:
        slope = float(np.polyfit(np.arange(len(half)), half, 1)[0])
        spread = float(np.std(g_losses)) or 1.0
        result["generator_loss_slope"] = slope
        result["generator_loss_climbing"] = slope * len(half) > 2 * spread and half[-1] > half[0]
    return result


def warnings_for(measures: dict[str, Any], convergence: dict[str, Any]) -> list[str]:
    """Plain-language warnings for a person reading the report."""
    warnings = []
    diversity = measures["diversity"]["value"]
    if diversity < MODE_COLLAPSE_RATIO:
        warnings.append(
            f"Mode collapse: the samples are only {diversity:.0%} as varied as the training images "
            "(the generator repeats one or a few images). Try the 'diffaug' recipe, a lower learning rate, "
            "or an earlier checkpoint."
        )
    nn_ = measures["nearest_neighbour"]
    if nn_["copy_fraction"] > COPY_FRACTION:
        warnings.append(
            f"Memorisation: {nn_['copy_fraction']:.0%} of the samples are near-copies of training images "
            "(see the side-by-side pairs). Use more images, augmentation (the 'diffaug' recipe) or an earlier checkpoint."
        )
    if convergence.get("discriminator_wins"):
        warnings.append(
            "Convergence failure: the discriminator tells real from fake almost perfectly and its loss is near 0, "
            "so the generator gets no useful gradient. Restart with the 'diffaug' recipe or a lower discriminator learning rate."
        )
    if convergence.get("generator_loss_climbing"):
        warnings.append("Convergence failure: the generator loss keeps climbing; further training is unlikely to help.")
    return warnings


def stopping_advice(evaluations: list[dict], patience: int = 3) -> dict[str, Any]:
    """Best evaluation by KID and whether the last ``patience`` evaluations improved on it."""
    if not evaluations:
        return {"best_epoch": None, "stopped_helping": False, "advice": "no evaluation yet"}
    best = min(evaluations, key=lambda e: e["kid"])
    after = [e for e in evaluations if e["epoch"] > best["epoch"]]
    stopped = len(after) >= patience
    advice = (
        f"quality (KID) has not improved since epoch {best['epoch']} over {len(after)} evaluations: further training stopped helping; "
        "the best checkpoint is kept as generator.safetensors"
        if stopped
        else f"best so far at epoch {best['epoch']}; quality may still improve"
    )
    return {"best_epoch": best["epoch"], "best_kid": best["kid"], "stopped_helping": stopped, "advice": advice}


def diagnose(
    sample_fn: Callable[[int], torch.Tensor],
    real_images: torch.Tensor,
    history: list[dict] | None = None,
    evaluations: list[dict] | None = None,
    max_images: int = 512,
) -> dict[str, Any]:
    """The full diagnostics report.

    ``sample_fn(n)`` returns ``n`` generated images (uint8 or [-1,1] float);
    ``real_images`` is the uint8 training set; ``history`` the per-epoch
    metrics; ``evaluations`` earlier quality evaluations (for stopping advice).
    The returned dict is JSON-serialisable except ``_closest``/``_images``,
    which :func:`plot_report` uses.
    """
    real = split_real(real_images, max_images)
    fake = sample_fn(len(real.b))
    measures = quality_measures(fake, real, training=real_images)
    convergence = convergence_check(history or [])
    return {
        "measures": {k: v for k, v in measures.items() if not k.startswith("_")},
        "convergence": convergence,
        "warnings": warnings_for(measures, convergence),
        "stopping": stopping_advice(evaluations or []),
        "n_real": len(real.all),
        "n_generated": len(fake),
        "_closest": measures["_closest"],
        "_fake": fake,
        "_real": real_images,
    }


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its private image tensors (what goes in report.json)."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


def plot_losses_on(ax, history: list[dict]) -> None:
    """Generator and discriminator loss per epoch on ``ax`` (epochs without a
    generator step, shorter than n_critic batches, have no generator loss)."""
    with_g = [h for h in history if h["g_loss"] is not None]
    ax.plot([h["epoch"] for h in with_g], [h["g_loss"] for h in with_g], label="generator loss")
    ax.plot([h["epoch"] for h in history], [h["d_loss"] for h in history], label="discriminator loss")
    ax.set_xlabel("epoch")
    ax.legend()


def plot_report(report: dict[str, Any], history: list[dict], evaluations: list[dict], path) -> None:
    """report.png: losses, discriminator accuracy, KID against its floor over
    the epochs, and the closest sample / training-image pairs side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 8))
    grid = fig.add_gridspec(3, 8)
    epochs = [h["epoch"] for h in history]
    ax = fig.add_subplot(grid[0, :4])
    plot_losses_on(ax, history)
    ax.set_title("losses per epoch")
    ax = fig.add_subplot(grid[0, 4:])
    ax.plot(epochs, [h["d_acc_real"] for h in history], label="D accuracy on real")
    ax.plot(epochs, [h["d_acc_fake"] for h in history], label="D accuracy on fake")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("discriminator accuracy")
    ax.legend()
    ax = fig.add_subplot(grid[1, :4])
    if evaluations:
        ax.plot([e["epoch"] for e in evaluations], [e["kid"] for e in evaluations], "o-", color="C0", label="KID (random features)")
        ax.axhline(evaluations[-1]["kid_floor"], color="C0", linestyle="--", label="its real-vs-real floor")
        thumbs = [e for e in evaluations if "kid_thumbnails" in e]  # older checkpoints did not keep it
        if thumbs:
            ax.plot([e["epoch"] for e in thumbs], [e["kid_thumbnails"] for e in thumbs], "s-", color="C1", label="KID (thumbnails: colour, layout)")
            ax.axhline(thumbs[-1]["kid_thumbnails_floor"], color="C1", linestyle=":", label="its real-vs-real floor")
        ax.set_yscale("symlog", linthresh=1e-3)
        # symlog's autoscale mirrors the range below zero; KID is only ever slightly negative
        lowest = min(min(e["kid"], e["kid_floor"], e.get("kid_thumbnails", 0.0), e.get("kid_thumbnails_floor", 0.0)) for e in evaluations)
        ax.set_ylim(bottom=min(0.0, lowest))
        ax.legend(fontsize=7)
    ax.set_title("quality over training (lower is better)")
    ax = fig.add_subplot(grid[1, 4:])
    ax.axis("off")
    text = "\n".join(report["warnings"]) or "No failure detected."
    m = report["measures"]
    lines = [
        f"diversity ratio {m['diversity']['value']:.2f} (real {m['diversity']['floor']:.2f})",
        f"NN distance {m['nearest_neighbour']['value']:.3f} (real {m['nearest_neighbour']['floor']:.3f}), copies {m['nearest_neighbour']['copy_fraction']:.0%}",
        f"KID {m['kid']['value']:.4f} (real {m['kid']['floor']:.4f}), thumbnails {m['kid_thumbnails']['value']:.4f} (real {m['kid_thumbnails']['floor']:.4f})",
        report["stopping"]["advice"],
        "",
        text,
    ]
    import textwrap

    ax.text(0, 1, "\n".join(textwrap.fill(line, 70) for line in lines), va="top", fontsize=8)
    fake, real = report["_fake"], report["_real"]
    for col, (i, j, dist) in enumerate(report["_closest"][:8]):
        ax = fig.add_subplot(grid[2, col])
        pair = torch.cat([_as_uint8(fake[i]), _as_uint8(real[j])], dim=1)  # sample above its neighbour
        ax.imshow(pair.permute(1, 2, 0).numpy())
        ax.set_title(f"d={dist:.3f}", fontsize=7)
        ax.axis("off")
    fig.text(0.5, 0.02, "closest pairs: generated sample (top) above its nearest training image (bottom)", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image
    return image.detach().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
