"""Sampling a trained model folder: deterministic per seed, upscaled with Lanczos.

A model with a spatial latent (``--latent-res``) is fully convolutional, so it
can draw a larger image than it was trained on from a larger noise map, as
Spatial GAN does (Jetchev et al. 2016): for a post it draws up to
``MAX_NATIVE_SCALE`` times its training size and Lanczos does the rest, instead
of blowing a 128-px image up tenfold.

Image ``i`` of ``sample(model, n, seed)`` is drawn from the latent of seed
``seed + i`` alone and the generator runs in eval mode (batch norm uses its
running statistics), so an image depends on its seed only, never on ``n`` or
on what else is in the batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from generators.errors import CorruptModel, InvalidRequest, ModelUnavailable
from generators.gan.data import to_uint8
from generators.gan.models import MAX_SEED, ModelSpec, build_generator, set_noise_rng

WEIGHTS = "generator.safetensors"
#: Which generator of a model folder to sample: the best by KID (what ``bot train``
#: keeps as generator.safetensors) or the last epoch's.
WEIGHT_FILES = {"best": WEIGHTS, "last": "generator-last.safetensors"}
MAX_OUTPUT_SIZE = 4096
#: Most images one call draws: more is a typo (an extra zero or three), and it
#: would fill the disk for hours before anyone noticed.
MAX_SAMPLES = 10_000
Progress = Callable[[int, int, dict[str, Any]], None]
#: How much larger than its training crops a spatial-latent model draws. The
#: structures keep their training scale (a galaxy stays 2-10 px), so a larger
#: canvas shows more of them; 4x (512 px from the 128-px Hubble model, 2.6x
#: Lanczos to a 1350-px post) keeps them large enough to see on a phone.
MAX_NATIVE_SCALE = 4


@dataclass
class LoadedModel:
    """A generator ready to sample, with what identifies it."""

    path: Path
    spec: ModelSpec
    generator: torch.nn.Module
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_model(model_dir: Path, weights: str = "best") -> None:
    """:class:`ModelUnavailable` (naming the command that trains one) when the
    folder or its weights are missing; :class:`InvalidRequest` for an unknown ``weights``."""
    if weights not in WEIGHT_FILES:
        raise InvalidRequest(f"--weights {weights!r}: choose one of {', '.join(WEIGHT_FILES)}")
    filename = WEIGHT_FILES[weights]
    if weights == "best" and (model_dir / "config.json").exists() and (model_dir / WEIGHT_FILES["last"]).exists() and not (model_dir / filename).exists():
        # a run stopped before its first evaluation: trained, but with no best generator yet
        raise ModelUnavailable(
            f"{str(model_dir)!r} has no evaluated generator yet ({filename} is written at the run's first evaluation, "
            f"every --eval-every epochs); sample the last epoch's generator with --weights last "
            f"(in a topic: weights = \"last\"), or train on with `bot train --data DIR --out {model_dir} --resume`"
        )
    if not (model_dir / filename).exists() or not (model_dir / "config.json").exists():
        raise ModelUnavailable(
            f"no trained GAN at {str(model_dir)!r} (needs config.json and {filename}); train one with "
            f"`bot train --data DIR --out {model_dir}` (e.g. `bot dataset crops --from IMAGE --size 128 --count 2000 --out DIR` first)"
        )


def load_model(model_dir: Path, weights: str = "best") -> LoadedModel:
    """Rebuild the generator from ``config.json`` and load its weights:
    ``generator.safetensors`` (``best``) or ``generator-last.safetensors`` (``last``).

    Raises :class:`ModelUnavailable` when missing and :class:`CorruptModel`
    when a file is unreadable or the weights do not fit the configuration.
    """
    model_dir = Path(model_dir)
    check_model(model_dir, weights)
    try:
        config = json.loads((model_dir / "config.json").read_text())
        spec = ModelSpec.from_dict(config["spec"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptModel(f"{str(model_dir / 'config.json')!r} is not a valid GAN config ({exc})") from exc
    path = model_dir / WEIGHT_FILES[weights]
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptModel(f"{str(path)!r} is not readable safetensors ({exc}); train or copy the model again") from exc
    generator = build_generator(spec)
    try:
        generator.load_state_dict(state)
    except RuntimeError as exc:
        raise CorruptModel(f"{str(path)!r} does not match {spec} from config.json: {str(exc)[:300]}") from exc
    generator.eval().requires_grad_(False)
    return LoadedModel(path=model_dir, spec=spec, generator=generator, sha256=_sha256(path))


def check_sample_args(n: int, seed: int, size: int | None) -> None:
    """Bad ``n``, ``seed`` or ``size`` as :class:`InvalidRequest`, before any work."""
    if not (1 <= n <= MAX_SAMPLES):
        raise InvalidRequest(f"--n {n}: must be from 1 to {MAX_SAMPLES}")
    if not (0 <= seed <= MAX_SEED - (n - 1)):
        raise InvalidRequest(f"--seed {seed}: must be from 0 to {MAX_SEED - (n - 1)} (image i uses seed SEED+i, at most {MAX_SEED})")
    if size is not None and not (16 <= size <= MAX_OUTPUT_SIZE):
        raise InvalidRequest(f"--size {size}: must be from 16 to {MAX_OUTPUT_SIZE} pixels")


def native_scale(spec: ModelSpec, size: int | None) -> int:
    """How many times its training size the model draws for an output of ``size``:
    1 unless the latent is spatial, else ``size // img_size`` up to ``MAX_NATIVE_SCALE``."""
    if spec.latent_res <= 1 or not size:
        return 1
    return max(1, min(MAX_NATIVE_SCALE, size // spec.img_size))


@torch.no_grad()
def sample_tensor(model: LoadedModel, seeds: list[int], scale: int = 1) -> torch.Tensor:
    """uint8 (N,3,H,W) images, one per seed, at ``scale`` times the training size
    (``scale`` > 1 needs a spatial latent: see :func:`native_scale`)."""
    spec = model.spec
    images = []
    for seed in seeds:  # one at a time: latent and injected noise both come from this seed alone
        rng = torch.Generator().manual_seed(seed)
        if scale > 1:
            r = spec.latent_res * scale
            z = torch.randn(1, spec.z_dim // spec.latent_res**2, r, r, generator=rng)
        else:
            z = torch.randn(1, spec.z_dim, generator=rng)
        set_noise_rng(model.generator, rng)
        images.append(model.generator(z))
    set_noise_rng(model.generator, None)
    return to_uint8(torch.cat(images))


def upscale(image: Image.Image, size: int) -> Image.Image:
    """Resize to ``size`` x ``size`` with Lanczos, the quality resampler in
    Pillow (sharper than bicubic, with little ringing on point sources)."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.LANCZOS)


def sample(model: LoadedModel, n: int, seed: int, size: int | None = None) -> list[Image.Image]:
    """``n`` PIL images for seeds ``seed .. seed+n-1``; when ``size`` is given, drawn
    at :func:`native_scale` and upscaled to ``size``."""
    check_sample_args(n, seed, size)
    images = drawn_images(model, [seed + i for i in range(n)], native_scale(model.spec, size))
    return [upscale(im, size) for im in images] if size else images


def drawn_images(model: LoadedModel, seeds: list[int], scale: int = 1) -> list[Image.Image]:
    """The generator's own output as PIL images (before any upscaling)."""
    return [Image.fromarray(t.permute(1, 2, 0).numpy()) for t in sample_tensor(model, seeds, scale)]


def sample_to_dir(model_dir: Path, out_dir: Path, n: int, seed: int, size: int | None = None, weights: str = "best", progress: Progress | None = None) -> list[Path]:
    """Write ``sample-<seed>.png`` files, one as soon as it is drawn (an
    interrupted run keeps what it drew, and memory does not grow with ``n``);
    returns their paths. Files already there are never overwritten: they may
    come from another model, and a lost image cannot be drawn again."""
    check_sample_args(n, seed, size)
    paths = [out_dir / f"sample-{seed + i}.png" for i in range(n)]
    check_not_taken(paths, out_dir, seed, n)
    model = load_model(model_dir, weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = native_scale(model.spec, size)
    for i, path in enumerate(paths):
        image = drawn_images(model, [seed + i], scale)[0]
        _save_png(upscale(image, size) if size else image, path)
        if progress:
            progress(i + 1, n, {})
    return paths


def check_not_taken(paths: list[Path], out_dir: Path, seed: int, n: int) -> None:
    """:class:`InvalidRequest` when ``--out`` already holds one of the files to write."""
    taken = [p.name for p in paths if p.exists()]
    if taken:
        raise InvalidRequest(
            f"--out {str(out_dir)!r}: already holds {len(taken)} of the {n} files to write (e.g. {taken[0]}); "
            f"nothing is overwritten: choose another --out, or a --seed from {seed + n} on for new images"
        )


def _save_png(image: Image.Image, path: Path) -> None:
    """Write through a temporary name, so that an interrupt never leaves a
    half-written sample that looks like a finished one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_model_dir(model: str, models_dir: str | Path | None) -> Path:
    """A model given as a folder path, or as a name under ``<models_dir>/gan/``.

    A value containing a path separator, or naming an existing folder, is a
    path; otherwise it is a name (``hubble-128`` -> ``models/gan/hubble-128``).
    """
    if not model:
        raise InvalidRequest("model: empty; give a model name under models/gan/ or a model folder path")
    as_path = Path(model).expanduser()
    if as_path.is_dir() or "/" in model or "\\" in model or models_dir is None:
        return as_path
    return Path(models_dir) / "gan" / model
