"""Training a GAN on a folder of images: ``train(TrainConfig(...))``.

One loop, read top to bottom (in the style of nanoGPT's train.py): one
checkpoint dict holds everything (``checkpoint.pt``: both networks, the EMA
generator, both optimisers, the epoch, the RNG states, the history, a digest
of the training images), and
``--resume`` reads it back key for key, so a resumed seeded run produces the
same numbers as an uninterrupted one.

The output folder (a "model folder") holds:

- ``config.json``        the network spec and training settings (rebuilds the generator)
- ``generator.safetensors``  the best generator so far by KID (EMA weights for ``diffaug``)
- ``generator-last.safetensors``  the generator of the last epoch
- ``checkpoint.pt``      full training state for ``--resume`` (not needed to sample);
  ``checkpoint-prev.pt`` the one before it, in case a crash spoils the last
- ``.train.lock``        held while a run trains into the folder
- ``cache/``             the decoded training images
- ``metrics.jsonl``      one line per epoch: G loss, D loss, D accuracy on real and fake, ...
- ``samples/epoch-NNNN.png``  sample grids from a fixed set of latents
- ``loss_curve.png``, ``report.json``, ``report.png``  the diagnostics
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from generators.errors import CorruptModel, GeneratorError, InvalidRequest
from generators.gan import diagnostics
from generators.gan.augment import DEFAULT_POLICY, check_policy, diff_augment
from generators.gan.data import load_images, to_float, to_uint8, update_cache
from generators.gan.models import ARCHS, DEFAULT_ARCH, MAX_SEED, MAX_SIZE, MIN_SIZE, ModelSpec, build_discriminator, build_generator, set_noise_rng
from generators.host_memory import reuse_freed_memory

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
PREVIOUS_CHECKPOINT = "checkpoint-prev.pt"
LOCK_FILE = ".train.lock"
MIN_IMAGES = 4  # KID and the diversity ratio compare two halves of the data, each needing two images
#: The fully connected GAN of Goodfellow et al. grows with the square of the image
#: side (its layers see every pixel): 1.2 billion parameters at 512 px. Above this
#: size the convolutional architectures are the only sensible choice.
MLP_MAX_SIZE = 128
Progress = Callable[[int, int, dict[str, Any]], None]
#: Everything a run writes into its model folder (``*.tmp`` files are its
#: half-written ones). A new run refuses a folder holding anything else, so that
#: it never overwrites a user's own config.json, report.json or samples/.
MODEL_FOLDER_NAMES = frozenset({
    "config.json", "generator.safetensors", "generator-last.safetensors", "checkpoint.pt", PREVIOUS_CHECKPOINT,
    LOCK_FILE, "cache", "metrics.jsonl", "samples", "loss_curve.png", "report.json", "report.png",
})


class TrainingStopped(GeneratorError):
    """Training stopped before its last epoch (an interrupt, a full disk, a
    read-only folder). The message says which epoch the checkpoint holds and how
    to go on from it; nothing before that epoch is lost."""

# Per-architecture optimiser defaults, from each paper (and the second seed's
# PyTorch-GAN runs): Adam 2e-4 (0.5, 0.999) for GAN/DCGAN (Radford et al.),
# RMSprop 5e-5 with clip 0.01 and 5 critic steps for WGAN (Arjovsky et al.),
# Adam 1e-4 (0.0, 0.9) with 5 critic steps and lambda 10 for WGAN-GP
# (Gulrajani et al.), Adam 2e-4 (0.5, 0.999) for the diffaug recipe.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "gan": {"lr": 2e-4, "b1": 0.5, "b2": 0.999, "n_critic": 1},
    "dcgan": {"lr": 2e-4, "b1": 0.5, "b2": 0.999, "n_critic": 1},
    "wgan": {"lr": 5e-5, "b1": 0.5, "b2": 0.999, "n_critic": 5},
    "wgan-gp": {"lr": 1e-4, "b1": 0.0, "b2": 0.9, "n_critic": 5},
    "diffaug": {"lr": 2e-4, "b1": 0.5, "b2": 0.999, "n_critic": 1},
}
G_NORMS = ("batch", "none")  # first: the default, and what older model folders used
G_PADDINGS = ("reflect", "circular")
SPEC_FIELDS = ("arch", "img_size", "z_dim", "width", "max_width", "latent_res", "g_norm", "patch_res", "g_padding")
HYPER_FIELDS = ("lr", "lr_d", "b1", "b2", "n_critic", "clip_value", "gp_lambda", "batch_size", "seed", "ema_kimg", "augment")


@dataclass
class TrainConfig:
    """Settings of one training run. ``None`` means "the architecture's default"
    on a new run and "what the checkpoint used" on ``resume``."""

    data: Path
    out: Path
    arch: str | None = None
    img_size: int | None = None
    z_dim: int | None = None
    width: int | None = None
    max_width: int | None = None
    latent_res: int | None = None
    g_norm: str | None = None
    patch_res: int | None = None
    g_padding: str | None = None
    epochs: int = 50
    batch_size: int | None = None
    lr: float | None = None
    lr_d: float | None = None
    b1: float | None = None
    b2: float | None = None
    n_critic: int | None = None
    clip_value: float | None = None
    gp_lambda: float | None = None
    ema_kimg: float | None = None
    augment: str | None = None
    seed: int | None = None
    resume: bool = False
    new_data: bool = False
    sample_every: int = 5
    eval_every: int = 5
    threads: int | None = None
    device: str = "auto"


@dataclass
class Resolved:
    """A ``TrainConfig`` with every default filled in."""

    spec: ModelSpec
    batch_size: int
    lr: float
    lr_d: float
    b1: float
    b2: float
    n_critic: int
    clip_value: float
    gp_lambda: float
    ema_kimg: float
    augment: str
    seed: int

    def hyper(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HYPER_FIELDS}


# --- 1. check inputs ----------------------------------------------------------


def check_config(config: TrainConfig) -> tuple[Resolved, dict | None]:
    """Every bad-input check on the settings, before anything is written. Returns
    the resolved settings and, with ``--resume``, the checkpoint."""
    if config.arch is not None and config.arch not in ARCHS:
        raise InvalidRequest(f"--arch {config.arch!r}: choose one of {', '.join(ARCHS)}")
    if config.img_size is not None:
        size = config.img_size
        if size < MIN_SIZE or size > MAX_SIZE or size & (size - 1):
            raise InvalidRequest(f"--img-size {size}: must be a power of two from {MIN_SIZE} to {MAX_SIZE} (32, 64, 128, 256, 512)")
    for name in ("epochs", "batch_size", "z_dim", "width", "max_width", "latent_res", "patch_res", "n_critic", "sample_every", "eval_every", "threads"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise InvalidRequest(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if config.width is not None and config.max_width is not None and config.max_width < config.width:
        raise InvalidRequest(f"--max-width {config.max_width}: must be at least --width {config.width} (the channel count only grows towards low resolutions)")
    if config.seed is not None and not (0 <= config.seed <= MAX_SEED):
        raise InvalidRequest(f"--seed {config.seed}: must be from 0 to {MAX_SEED}")
    for name in ("ema_kimg", "gp_lambda"):
        value = getattr(config, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise InvalidRequest(f"--{name.replace('_', '-')} {value}: must be 0 or more (a finite number)")
    check_device(config.device)
    check_folders(config.data, config.out)
    if config.batch_size is not None and config.batch_size < 2:
        raise InvalidRequest(f"--batch-size {config.batch_size}: must be at least 2 (batch norm and accuracy need two images)")
    for name in ("lr", "lr_d"):
        value = getattr(config, name)
        if value is not None and not (0 < value < 1):
            raise InvalidRequest(f"--{name.replace('_', '-')} {value}: must be between 0 and 1")
    for name in ("b1", "b2"):
        value = getattr(config, name)
        if value is not None and not (0 <= value < 1):
            raise InvalidRequest(f"--{name} {value}: must be in [0, 1)")
    if config.augment is not None:
        try:
            check_policy(config.augment)
        except ValueError as exc:
            raise InvalidRequest(f"--augment {config.augment!r}: {exc}") from exc
    if config.clip_value is not None and not (config.clip_value > 0 and math.isfinite(config.clip_value)):
        raise InvalidRequest(f"--clip-value {config.clip_value}: must be a finite number above 0")
    if config.new_data and not config.resume:
        raise InvalidRequest("--new-data: only means something with --resume (a new run trains on --data anyway); add --resume or leave --new-data out")

    checkpoint_path = config.out / "checkpoint.pt"
    checkpoint = None
    if config.resume:
        if not checkpoint_path.exists():
            raise InvalidRequest(f"--resume: {str(checkpoint_path)!r} does not exist; train without --resume first")
        checkpoint = read_checkpoint(checkpoint_path)
        resolved = _resolve_from_checkpoint(config, checkpoint)
        if checkpoint["epoch"] >= config.epochs:
            raise InvalidRequest(f"--epochs {config.epochs}: the checkpoint has already trained {checkpoint['epoch']} epochs; ask for more")
    else:
        if checkpoint_path.exists() or (config.out / "generator.safetensors").exists():
            raise InvalidRequest(f"--out {str(config.out)!r}: already holds a trained model; pass --resume to continue it or choose another --out")
        resolved = _resolve_new(config)
    if config.out.exists() and not config.out.is_dir():
        raise InvalidRequest(f"--out {str(config.out)!r}: exists and is not a folder")
    if not config.resume:
        check_new_model_folder(config.out)
    return resolved, checkpoint


def check_new_model_folder(out: Path) -> None:
    """A new run writes config.json, report.json, samples/... into ``--out``: a
    folder holding anything else (a user's photos, notes, another tool's
    config.json) is refused rather than overwritten. What an earlier run
    interrupted before its first checkpoint left there is fine."""
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in MODEL_FOLDER_NAMES and not p.name.endswith(".tmp"))
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InvalidRequest(
            f"--out {str(out)!r}: is not empty and not a model folder (it holds {shown}); "
            "a run would overwrite files there, so choose a new or empty folder (e.g. models/gan/NAME)"
        )


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and a CUDA device must exist."""
    if device in ("auto", "cpu"):
        return
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InvalidRequest(f"--device {device!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InvalidRequest(f"--device {device!r}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    if index and int(index) >= torch.cuda.device_count():
        raise InvalidRequest(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")


def resolve_device(device: str) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_folders(data: Path, out: Path) -> None:
    """The model folder must not be inside the data folder (its sample grids and
    plots would be read back as training images on the next run), nor the other
    way round."""
    data_real, out_real = data.resolve(), out.resolve()
    if out_real == data_real or data_real in out_real.parents:
        raise InvalidRequest(f"--out {str(out)!r}: is inside --data {str(data)!r}, so its sample grids would become training images; put the model folder elsewhere")
    if out_real in data_real.parents:
        raise InvalidRequest(f"--data {str(data)!r}: is inside --out {str(out)!r}; keep the training images outside the model folder")


def _resolve_new(config: TrainConfig) -> Resolved:
    arch = config.arch or DEFAULT_ARCH
    defaults = ARCH_DEFAULTS[arch]
    lr = config.lr if config.lr is not None else defaults["lr"]
    spec = ModelSpec(
        arch=arch,
        img_size=config.img_size or 64,
        z_dim=config.z_dim or 128,
        width=config.width or 32,
        max_width=config.max_width or 256,
        latent_res=config.latent_res or 1,
        g_norm=config.g_norm or G_NORMS[0],
        patch_res=config.patch_res or 1,
        g_padding=config.g_padding or G_PADDINGS[0],
    )
    if spec.max_width < spec.width:
        raise InvalidRequest(f"--max-width {spec.max_width}: must be at least --width {spec.width} (the channel count only grows towards low resolutions)")
    if arch == "gan" and spec.img_size > MLP_MAX_SIZE:
        raise InvalidRequest(
            f"--img-size {spec.img_size}: --arch gan (fully connected) goes up to {MLP_MAX_SIZE}; "
            "its size grows with the square of the image side. Use --arch dcgan or diffaug for larger images"
        )
    if spec.latent_res > 1:
        r = spec.latent_res
        if arch != "diffaug" or r & (r - 1) or r < 4 or r > spec.img_size // 4 or spec.z_dim % (r * r):
            raise InvalidRequest(
                f"--latent-res {r}: a spatial latent needs --arch diffaug, a power of two from 4 to img-size/4 "
                f"and a --z-dim divisible by {r * r} (got --arch {arch}, --z-dim {spec.z_dim})"
            )
    for name, allowed in (("g_norm", G_NORMS), ("g_padding", G_PADDINGS)):  # the first choice is the default
        value = getattr(spec, name)
        if value not in allowed or (value != allowed[0] and arch != "diffaug"):
            raise InvalidRequest(
                f"--{name.replace('_', '-')} {value!r}: choose one of {', '.join(allowed)}; "
                f"{allowed[1]!r} needs --arch diffaug (got --arch {arch})"
            )
    if spec.patch_res > 1:
        r = spec.patch_res
        if arch != "diffaug" or r & (r - 1) or r < 4 or r > spec.img_size // 4:
            raise InvalidRequest(f"--patch-res {r}: a patch discriminator needs --arch diffaug and a power of two from 4 to img-size/4 (got --arch {arch}, --img-size {spec.img_size})")
    return Resolved(
        spec=spec,
        batch_size=config.batch_size or 64,
        lr=lr,
        lr_d=config.lr_d if config.lr_d is not None else lr,
        b1=config.b1 if config.b1 is not None else defaults["b1"],
        b2=config.b2 if config.b2 is not None else defaults["b2"],
        n_critic=config.n_critic or defaults["n_critic"],
        clip_value=config.clip_value if config.clip_value is not None else 0.01,
        gp_lambda=config.gp_lambda if config.gp_lambda is not None else 10.0,
        ema_kimg=config.ema_kimg if config.ema_kimg is not None else 10.0,
        augment=config.augment if config.augment is not None else DEFAULT_POLICY,
        seed=config.seed if config.seed is not None else 0,
    )


def _resolve_from_checkpoint(config: TrainConfig, checkpoint: dict) -> Resolved:
    """On resume the checkpoint's settings win; an explicit different value is an error
    (a different network cannot load these weights; a different optimiser setting
    would silently break the "same numbers" promise)."""
    spec = ModelSpec.from_dict(checkpoint["spec"])
    hyper = {"lr_d": checkpoint["hyper"]["lr"], **checkpoint["hyper"]}  # checkpoints before --lr-d used one rate
    mismatches = []
    for name in SPEC_FIELDS:
        given = getattr(config, name)
        if given is not None and given != getattr(spec, name):
            mismatches.append(f"--{name.replace('_', '-')} {given} (checkpoint: {getattr(spec, name)})")
    for name in HYPER_FIELDS:
        given = getattr(config, name)
        if given is not None and given != hyper[name]:
            mismatches.append(f"--{name.replace('_', '-')} {given} (checkpoint: {hyper[name]})")
    if mismatches:
        raise InvalidRequest(
            f"--resume: incompatible with the checkpoint in {str(config.out)!r}: {'; '.join(mismatches)}; "
            "leave these flags out to continue with the checkpoint's settings, or train into another --out"
        )
    return Resolved(spec=spec, **hyper)


def read_checkpoint(path: Path) -> dict:
    """Load ``checkpoint.pt``; :class:`CorruptModel` if it is unreadable or not ours
    (naming the previous epoch's copy when there is one)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        previous = path.with_name(PREVIOUS_CHECKPOINT)
        fix = (
            f"the previous epoch's checkpoint is kept beside it: `mv {previous} {path}` and --resume again"
            if previous.exists() and previous != path
            else "delete it and train again"
        )
        raise CorruptModel(f"{str(path)!r} is not a readable checkpoint ({type(exc).__name__}: {exc}); {fix}") from exc
    required = {"format", "spec", "hyper", "epoch", "step", "generator", "discriminator", "generator_ema", "opt_g", "opt_d", "rng"}
    if not isinstance(checkpoint, dict) or not required <= checkpoint.keys():
        raise CorruptModel(f"{str(path)!r} is not a GAN checkpoint of this program (missing keys)")
    if checkpoint["format"] != CHECKPOINT_FORMAT:
        raise CorruptModel(f"{str(path)!r} has checkpoint format {checkpoint['format']}, this program reads {CHECKPOINT_FORMAT}")
    return checkpoint


# --- losses -------------------------------------------------------------------


def d_loss_and_accuracy(arch: str, real_out: torch.Tensor, fake_out: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Discriminator loss and its accuracy on the real and the fake batch.

    Accuracy, as the first seed tracks it: the fraction of real images the
    discriminator scores as real and of fakes it scores as fake. The decision
    threshold is 0 on the logit (BCE) or the hinge margin centre (diffaug); a
    Wasserstein critic's scores have no fixed origin, so its threshold is the
    midpoint between the mean real and mean fake score.
    """
    if arch in ("gan", "dcgan"):
        loss = F.binary_cross_entropy_with_logits(real_out, torch.ones_like(real_out)) + F.binary_cross_entropy_with_logits(fake_out, torch.zeros_like(fake_out))
        loss = loss / 2
        threshold = 0.0
    elif arch == "diffaug":
        loss = F.relu(1 - real_out).mean() + F.relu(1 + fake_out).mean()
        threshold = 0.0
    else:  # wgan, wgan-gp
        loss = fake_out.mean() - real_out.mean()
        threshold = float((real_out.detach().mean() + fake_out.detach().mean()) / 2)
    acc_real = float((real_out.detach() > threshold).float().mean())
    acc_fake = float((fake_out.detach() < threshold).float().mean())
    return loss, acc_real, acc_fake


def g_loss(arch: str, fake_out: torch.Tensor) -> torch.Tensor:
    """Non-saturating BCE for GAN/DCGAN (Goodfellow et al.), -D(G(z)) otherwise."""
    if arch in ("gan", "dcgan"):
        return F.binary_cross_entropy_with_logits(fake_out, torch.ones_like(fake_out))
    return -fake_out.mean()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """(||grad D(x_hat)|| - 1)^2 on random interpolates (Gulrajani et al. 2017)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)[0]
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# --- helpers ------------------------------------------------------------------


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, batch_size: int, images_seen: int, ema_kimg: float) -> None:
    """Exponential moving average of the generator weights with the half-life
    in images and the ramp-up of Karras et al. 2020 (StyleGAN2-ADA): the
    half-life is at most 5% of the images seen so far, so an early EMA is not
    stuck near the random initialisation."""
    half_life = min(ema_kimg * 1000, images_seen * 0.05)
    beta = 0.5 ** (batch_size / max(half_life, 1e-8))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def sampling_generator(resolved: Resolved, G: nn.Module, G_ema: nn.Module) -> nn.Module:
    """The network whose samples we show and keep: the EMA for diffaug."""
    return G_ema if resolved.spec.arch == "diffaug" else G


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, batch: int = 64, noise_seed: int = 0) -> torch.Tensor:
    """Images in [-1, 1] from latents, in eval mode (batch-independent), with
    injected noise from a private RNG so the training RNG is not moved."""
    was_training = G.training
    G.eval()
    set_noise_rng(G, torch.Generator().manual_seed(noise_seed))
    device = next(G.parameters()).device
    out = torch.cat([G(z[i : i + batch].to(device)).cpu() for i in range(0, len(z), batch)])
    set_noise_rng(G, None)
    G.train(was_training)
    return out


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """Latents from a private RNG, so sampling never disturbs the training RNG."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    """A PNG grid of images in [-1, 1] (torchvision's make_grid)."""
    from PIL import Image
    from torchvision.utils import make_grid

    nrow = nrow or int(math.ceil(math.sqrt(len(images))))
    grid = make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=64)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def plot_losses(history: list[dict], path: Path) -> None:
    """loss_curve.png: G and D loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    diagnostics.plot_losses_on(ax, history)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write ``checkpoint.pt`` so that a crash at any moment leaves a readable one:
    the new file is written and synced beside the old, the old one is kept as
    ``checkpoint-prev.pt`` (a hard link, so no copy of a large file), and only
    then renamed over. Months of training must not hang on one file."""
    tmp = path.with_name(path.name + ".tmp")
    with _removed_on_failure(tmp), tmp.open("wb") as handle:
        torch.save(checkpoint, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if path.exists():
        previous, link = path.with_name(PREVIOUS_CHECKPOINT), path.with_name(PREVIOUS_CHECKPOINT + ".tmp")
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, link)
        os.replace(link, previous)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def training_lock(out: Path) -> Iterator[None]:
    """One ``bot train`` per model folder: a second one (a cron job and a manual
    start, say) would interleave its checkpoint and metrics with the first."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidRequest(f"--out {str(out)!r}: another `bot train` is training into this folder; wait for it to finish or stop it") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """Delete a half-written temporary file when writing it fails: on a full
    disk a partial checkpoint would otherwise keep the space the next try needs."""
    try:
        yield
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with _removed_on_failure(tmp):
        tmp.write_text(text)
    os.replace(tmp, path)


def export_generator(G: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Generator weights only, as safetensors (what sampling and the bundle need)."""
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in G.state_dict().items()}
    with _removed_on_failure(tmp):
        save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def export_weights(sampler: nn.Module, out: Path, epoch: int, best: dict | None, *, only_if_stale: bool = False) -> None:
    """Write ``generator-last.safetensors`` for ``epoch`` and, when ``epoch`` is
    the best one, ``generator.safetensors``. Called after each checkpoint and,
    with ``only_if_stale``, on resume: a run stopped between its checkpoint and
    these files left them an epoch behind, and the checkpoint's weights are
    exactly that epoch's, so they are written from it."""
    wanted = {"generator-last.safetensors": {"epoch": str(epoch)}}
    if best is not None and best["epoch"] == epoch:
        wanted["generator.safetensors"] = {"epoch": str(epoch), "kid": str(best["kid"])}
    for name, metadata in wanted.items():
        if only_if_stale and _exported_epoch(out / name) == metadata["epoch"]:
            continue
        export_generator(sampler, out / name, metadata)


def _exported_epoch(path: Path) -> str | None:
    """The epoch recorded in an exported weights file, or None when it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("epoch")
    except (OSError, SafetensorError):
        return None


def _metrics_history(path: Path, checkpoint: dict) -> list[dict]:
    """The per-epoch rows up to the checkpoint's epoch, and ``metrics.jsonl``
    rewritten to match them (a run stopped after writing a line but before its
    checkpoint must not leave a duplicate). The checkpoint holds the rows itself;
    checkpoints from before it did are read from the file, skipping lines a
    crash left half-written."""
    rows = checkpoint.get("history")
    if rows is None:
        rows = []
        for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], start=1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                if line.strip():
                    log.warning("%s: skipping unreadable line %d", path, number)
    rows = [r for r in rows if r["epoch"] <= checkpoint["epoch"]]
    _atomic_text("".join(json.dumps(r) + "\n" for r in rows), path)
    return rows


# --- the training run ---------------------------------------------------------


def data_digest(images: torch.Tensor) -> str:
    """What the model trains on, as decoded pixels: a moved or re-touched folder
    keeps its digest, an added, removed or edited image changes it."""
    return hashlib.sha256(images.contiguous().numpy()).hexdigest()[:16]


def check_resumed_data(config: TrainConfig, checkpoint: dict, images: torch.Tensor, digest: str) -> None:
    """``--resume`` must train on the images the checkpoint was trained on,
    unless ``--new-data`` says that a change is meant."""
    trained_on = checkpoint.get("data")  # checkpoints from before this check did not record it
    if trained_on is None or trained_on["digest"] == digest or config.new_data:
        return
    raise InvalidRequest(
        f"--data {str(config.data)!r}: not the images this model was trained on ({trained_on['images']} images from "
        f"{trained_on['path']!r}; now {len(images)}); resume with the same folder, or pass --new-data to go on training "
        "on these images (the run then no longer matches an uninterrupted one, and the best-checkpoint search starts again)"
    )


def train(config: TrainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train (or resume) and return a summary: output folder, epochs, best epoch,
    final metrics and diagnostics warnings."""
    # 1. check inputs (nothing is written before every check has passed)
    resolved, checkpoint = check_config(config)
    images, data_report = load_images(config.data, resolved.spec.img_size, cache_dir=config.out / "cache")
    if len(images) < MIN_IMAGES:
        raise InvalidRequest(f"--data {str(config.data)!r}: only {len(images)} usable image(s); at least {MIN_IMAGES} are needed")
    digest = data_digest(images)
    if checkpoint is not None:
        check_resumed_data(config, checkpoint, images, digest)
    if config.threads:
        torch.set_num_threads(config.threads)
    reuse_freed_memory()  # no page faults per step for the large activation blocks (see host_memory)

    # 2. one trainer per model folder, then the loop; the data cache is written
    #    under the lock too, so a second `bot train` refused here cannot write or
    #    prune the caches of the running one
    with training_lock(config.out):
        update_cache(images, data_report)
        data = {"path": str(config.data), "images": len(images), "digest": digest}
        start = checkpoint["epoch"] if checkpoint else 0
        position = RunPosition(epoch=start + 1, saved=start)
        try:
            return _fit(config, resolved, checkpoint, images, data, data_report.to_dict(), progress, position)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by `bot train`
            raise TrainingStopped(f"training interrupted during epoch {position.epoch} of {config.epochs}; {_how_to_go_on(config, position)}") from None
        except OSError as exc:  # a full disk, a folder made read-only, a network share gone
            raise TrainingStopped(
                f"could not write to --out {str(config.out)!r} during epoch {position.epoch} of {config.epochs} ({exc}); "
                f"free some space or make the folder writable, then {_how_to_go_on(config, position)}"
            ) from exc


@dataclass
class RunPosition:
    """Where a run is: the epoch being trained and the last one whose checkpoint
    is on disk, so that a stopped run can say what is kept and how to go on."""

    epoch: int
    saved: int


def _how_to_go_on(config: TrainConfig, position: RunPosition) -> str:
    """The command that continues a stopped run (or why there is nothing to continue)."""
    if position.saved == 0:
        return "no epoch had finished, so nothing was saved: run the same command again (without --resume)"
    return (
        f"{str(config.out / 'checkpoint.pt')!r} holds epoch {position.saved}, intact; continue with "
        f"`bot train --data {shlex.quote(str(config.data))} --out {shlex.quote(str(config.out))} --epochs {config.epochs} --resume`"
    )


def _fit(config: TrainConfig, resolved: Resolved, checkpoint: dict | None, images: torch.Tensor, data: dict, data_report: dict, progress: Progress | None, position: RunPosition) -> dict[str, Any]:
    spec = resolved.spec
    device = resolve_device(config.device)

    # 3. build networks and optimisers (seeded), or read them back from the checkpoint
    torch.manual_seed(resolved.seed)
    G, D = build_generator(spec).to(device), build_discriminator(spec).to(device)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    if spec.arch == "wgan":
        opt_g = torch.optim.RMSprop(G.parameters(), lr=resolved.lr)
        opt_d = torch.optim.RMSprop(D.parameters(), lr=resolved.lr_d)
    else:
        opt_g = torch.optim.Adam(G.parameters(), lr=resolved.lr, betas=(resolved.b1, resolved.b2))
        opt_d = torch.optim.Adam(D.parameters(), lr=resolved.lr_d, betas=(resolved.b1, resolved.b2))
    start_epoch, step, evaluations, best = 0, 0, [], None
    metrics_path = config.out / "metrics.jsonl"
    history: list[dict] = []
    if checkpoint is not None:
        G.load_state_dict(checkpoint["generator"])
        D.load_state_dict(checkpoint["discriminator"])
        G_ema.load_state_dict(checkpoint["generator_ema"])
        opt_g.load_state_dict(checkpoint["opt_g"])
        opt_d.load_state_dict(checkpoint["opt_d"])
        torch.set_rng_state(checkpoint["rng"])
        if device.type == "cuda" and "cuda_rng" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        start_epoch, step = checkpoint["epoch"], checkpoint["step"]
        evaluations, best = checkpoint["evaluations"], checkpoint["best"]
        if checkpoint.get("data", data)["digest"] != data["digest"]:  # --new-data: KIDs against other images do not compare
            best = None
            log.warning("training on changed data (--new-data): the best-checkpoint search starts again")
        history = _metrics_history(metrics_path, checkpoint)
        export_weights(sampling_generator(resolved, G, G_ema), config.out, start_epoch, best, only_if_stale=True)
        log.info("resuming %s from epoch %d (step %d) to epoch %d", config.out, start_epoch, step, config.epochs)
    else:
        metrics_path.unlink(missing_ok=True)
    _atomic_text(json.dumps({"spec": spec.to_dict(), "hyper": resolved.hyper(), "data": str(config.data), "data_report": data_report}, indent=2), config.out / "config.json")

    fixed_z = latents(64, spec.z_dim, seed=resolved.seed + 12345)
    n_batches = len(images) // resolved.batch_size or 1
    batch_size = min(resolved.batch_size, len(images))
    total_steps = config.epochs * n_batches
    def augment(x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, resolved.augment) if spec.arch == "diffaug" else x

    # 4. the loop: one epoch = one pass over the shuffled images. Every random draw
    # of the loop itself comes from the CPU RNG, so the stream (and a resume) does
    # not depend on the device; augmentation and noise draw on the device.
    for epoch in range(start_epoch + 1, config.epochs + 1):
        position.epoch = epoch
        started = time.perf_counter()
        sums = {"g_loss": 0.0, "d_loss": 0.0, "d_acc_real": 0.0, "d_acc_fake": 0.0}
        d_steps = g_steps = 0
        order = torch.randperm(len(images))
        for b in range(n_batches):
            real = to_float(images[order[b * batch_size : (b + 1) * batch_size]].to(device))
            z = torch.randn(len(real), spec.z_dim).to(device)

            # 4a. discriminator (critic) step
            with torch.no_grad():  # same values as G(z).detach(), without recording a graph
                fake = G(z)
            real_out, fake_out = D(augment(real)), D(augment(fake))
            loss_d, acc_real, acc_fake = d_loss_and_accuracy(spec.arch, real_out, fake_out)
            if spec.arch == "wgan-gp":
                loss_d = loss_d + resolved.gp_lambda * gradient_penalty(D, real, fake)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            if spec.arch == "wgan":  # the Lipschitz constraint by weight clipping (Arjovsky et al.)
                for p in D.parameters():
                    p.data.clamp_(-resolved.clip_value, resolved.clip_value)
            sums["d_loss"] += loss_d.item()
            sums["d_acc_real"] += acc_real
            sums["d_acc_fake"] += acc_fake
            d_steps += 1
            step += 1

            # 4b. generator step, every n_critic discriminator steps
            if step % resolved.n_critic == 0:
                D.requires_grad_(False)  # the G step needs gradients through D, not D's own: skip computing them
                loss_g = g_loss(spec.arch, D(augment(G(torch.randn(len(real), spec.z_dim).to(device)))))
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                D.requires_grad_(True)
                update_ema(G_ema, G, len(real), step * len(real), resolved.ema_kimg)
                sums["g_loss"] += loss_g.item()
                g_steps += 1
            if progress:
                progress((epoch - 1) * n_batches + b + 1, total_steps, {"epoch": epoch, "d_loss": loss_d.item(), "g_loss": sums["g_loss"] / max(g_steps, 1)})

        # 5. end of epoch: metrics, samples, evaluation, checkpoint
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "step": step,
            # an epoch shorter than n_critic batches has no generator step: no loss, rather than a false 0
            "g_loss": sums["g_loss"] / g_steps if g_steps else None,
            "d_loss": sums["d_loss"] / d_steps,
            "d_acc_real": sums["d_acc_real"] / d_steps,
            "d_acc_fake": sums["d_acc_fake"] / d_steps,
            "seconds": round(seconds, 3),
            "images_per_s": round(d_steps * batch_size / seconds, 2),
        }
        sampler = sampling_generator(resolved, G, G_ema)
        last_epoch = epoch == config.epochs
        if epoch % config.sample_every == 0 or last_epoch or epoch == 1:
            save_grid(generate(sampler, fixed_z), config.out / "samples" / f"epoch-{epoch:04d}.png", nrow=8)
        report = None
        if epoch % config.eval_every == 0 or last_epoch:
            report = _evaluate(sampler, spec, images, history + [row], evaluations, epoch, resolved.seed)
            row.update({key: value for key, value in evaluations[-1].items() if key != "epoch"})
            if math.isfinite(evaluations[-1]["kid"]) and (best is None or evaluations[-1]["kid"] < best["kid"]):
                best = {"epoch": epoch, "kid": evaluations[-1]["kid"]}
        history.append(row)
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "spec": spec.to_dict(),
            "hyper": resolved.hyper(),
            "epoch": epoch,
            "step": step,
            "generator": G.state_dict(),
            "discriminator": D.state_dict(),
            "generator_ema": G_ema.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "rng": torch.get_rng_state(),
            "evaluations": evaluations,
            "best": best,
            "history": history,
            "data": data,
        }
        if device.type == "cuda":
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state(device)
        save_checkpoint(checkpoint, config.out / "checkpoint.pt")
        position.saved = epoch
        # the weights files follow the checkpoint, never lead it: a stop in
        # between leaves them an epoch behind, and a resume rewrites them
        export_weights(sampler, config.out, epoch, best)
        if report is not None:
            _write_report(report, history, evaluations, best, config.out)
        log.info("epoch %d/%d %s", epoch, config.epochs, json.dumps(row))

    # 6. summary
    final = json.loads((config.out / "report.json").read_text()) if (config.out / "report.json").exists() else {}
    return {
        "out": str(config.out),
        "epochs": config.epochs,
        "best": best,
        "last": history[-1] if history else None,
        "warnings": final.get("warnings", []),
        "data": data_report,
    }


def _evaluate(sampler: nn.Module, spec: ModelSpec, images: torch.Tensor, history: list[dict], evaluations: list[dict], epoch: int, seed: int) -> dict:
    """Run the diagnostics and append this epoch's numbers to ``evaluations``."""
    counter = iter(range(1_000_000))

    def sample_fn(n: int) -> torch.Tensor:
        return generate(sampler, latents(n, spec.z_dim, seed=seed + 777 + next(counter)))

    report = diagnostics.diagnose(sample_fn, images, history, evaluations)
    m = report["measures"]
    # Both KIDs are kept per epoch: on the bundled Hubble model they disagreed on
    # the best epoch (docs/gan.md, run 7), so the user needs to see both curves.
    evaluations.append({
        "epoch": epoch, "kid": m["kid"]["value"], "kid_floor": m["kid"]["floor"],
        "kid_thumbnails": m["kid_thumbnails"]["value"], "kid_thumbnails_floor": m["kid_thumbnails"]["floor"],
        "diversity": m["diversity"]["value"],
    })
    report["stopping"] = diagnostics.stopping_advice(evaluations)
    return report


def _write_report(report: dict, history: list[dict], evaluations: list[dict], best: dict | None, out: Path) -> None:
    public = diagnostics.public(report)
    public["best"] = best
    public["epochs_trained"] = history[-1]["epoch"] if history else 0
    _atomic_text(json.dumps(public, indent=2), out / "report.json")
    diagnostics.plot_report(report, history, evaluations, out / "report.png")
    plot_losses(history, out / "loss_curve.png")


def config_fields() -> list[str]:
    """Names of the :class:`TrainConfig` fields (for the CLI)."""
    return [f.name for f in fields(TrainConfig)]


__all__ = ["TrainConfig", "TrainingStopped", "train", "read_checkpoint", "ARCH_DEFAULTS", "asdict"]
