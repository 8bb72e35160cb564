"""Tiny VQGAN and CLIP models built in-process, for tests and offline demos.

They run through exactly the code paths of the real ones (official checkpoint
format, the model store, open_clip) with widths small enough for a CPU test.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from generators.vqgan_clip.vqgan import VQGAN, VQGANConfig

TINY_CLIP_NAME = "dstrtd-tiny-clip"
TINY_VQGAN = "tiny_vqgan"
TINY_CLIP = "tiny_clip"

TINY_VQGAN_CONFIG = VQGANConfig(
    embed_dim=8, n_embed=64, z_channels=8, ch=32, ch_mult=(1, 1), num_res_blocks=1,
    attn_resolutions=(16,), resolution=32,
)
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip() -> str:
    """Make the tiny architecture known to open_clip (idempotent)."""
    import open_clip

    if TINY_CLIP_NAME not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="dstrtd-tiny-clip-"))
        (folder / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(folder)
    return TINY_CLIP_NAME


class HyperParameters:
    """Stands for the non-tensor objects (callback states, hparams) that real
    Lightning checkpoints pickle, which ``torch.load(weights_only=True)`` refuses."""

    def __init__(self, **values: Any):
        self.__dict__.update(values)


def official_checkpoint(model: VQGAN, extra_loss_keys: bool = True, with_objects: bool = True) -> dict[str, Any]:
    """The model's weights in the layout of a taming-transformers Lightning
    checkpoint: a ``state_dict`` with the ``loss.*`` training weights beside the
    model's, plus the bookkeeping entries Lightning writes."""
    state = dict(model.state_dict())
    if extra_loss_keys:
        state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
        state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 8, 1, 1)
    data: dict[str, Any] = {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8", "state_dict": state}
    if with_objects:
        data["hparams"] = HyperParameters(base_learning_rate=4.5e-6)
    return data


def write_tiny_vqgan(folder: Path, seed: int = 0, cfg: VQGANConfig = TINY_VQGAN_CONFIG) -> tuple[Path, Path, VQGAN]:
    """Write ``last.ckpt`` + ``model.yaml`` in the official format; return them and the model."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = VQGAN(cfg)
    # Spread the codebook so that random latents decode to varied images.
    model.quantize.embedding.weight.data.normal_(0, 1)
    ckpt, config = folder / "last.ckpt", folder / "model.yaml"
    torch.save(official_checkpoint(model), ckpt)
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    return ckpt, config, model


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from generators.vqgan_clip.clip_model import create_architecture

    register_tiny_clip()
    torch.manual_seed(seed)
    model = create_architecture(TINY_CLIP_NAME)
    path = folder / "tiny_clip.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def install_tiny_models(models_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Put a tiny VQGAN and CLIP into the model store at ``models_dir`` through
    ``import``; return the generator config that uses them."""
    from generators.models.store import ModelStore

    # the store keeps its own converted copies: the source files can go
    with tempfile.TemporaryDirectory(prefix="dstrtd-tiny-") as folder:
        work = Path(folder)
        ckpt, config, _ = write_tiny_vqgan(work / "vqgan", seed)
        clip = write_tiny_clip(work / "clip", seed)
        store = ModelStore(models_dir)
        store.import_files(TINY_VQGAN, {"checkpoint": ckpt, "config": config}, kind="vqgan", trust=True)
        store.import_files(TINY_CLIP, {"weights": clip}, kind="clip", open_clip_name=TINY_CLIP_NAME)
    return {"models_dir": str(models_dir), "vqgan": TINY_VQGAN, "clip_model": TINY_CLIP_NAME,
            "clip_weights": TINY_CLIP, "profile": "full"}
