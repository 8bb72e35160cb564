"""CLIP (Radford et al. 2021) through open_clip: the perceptor that scores images
against prompts.

A model is an open_clip architecture name (``ViT-B-32-quickgelu``) plus weights:
a local file (the model store's safetensors, or any ``.safetensors``/``.bin`` in
open_clip's layout) or an open_clip pretrained tag (downloaded by open_clip from
its hub; never in tests). With local weights ``HF_HUB_OFFLINE=1`` is set, so a
missing file fails at once instead of after a minute of network retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from generators.errors import InvalidRequest


def check_clip_name(name: str) -> None:
    """Raise ``InvalidRequest`` for an architecture open_clip does not know."""
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        close = [m for m in known if m.lower().startswith(name.lower()[:5])][:8]
        raise InvalidRequest(
            f"clip_model {name!r} is not an open_clip architecture; e.g. {', '.join(close or known[:8])}"
        )


@dataclass
class Perceptor:
    """The parts of CLIP the optimisation uses."""

    model: nn.Module
    tokenizer: object
    name: str
    input_size: int
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] at ``input_size`` -> unit-norm embeddings (float32)."""
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        device = self.mean.device
        tokens = self.tokenizer(texts).to(device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


class _DropNoWeightsWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded" when built with
    ``pretrained=None``; we load the weights ourselves right after, so the
    warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_open_clip():
    root, quiet = logging.getLogger(), _DropNoWeightsWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def create_architecture(name: str):
    """The open_clip model ``name`` with random weights, on the CPU."""
    import open_clip

    with _quiet_open_clip():
        return open_clip.create_model(name, pretrained=None, device="cpu")


def load_clip(name: str, weights: str | os.PathLike[str] | None, device: torch.device | str = "cpu") -> Perceptor:
    """Build ``name`` and load ``weights`` (file path, pretrained tag, or ``None``
    for random initialisation, used by the benchmark). A file is loaded strictly
    through :func:`generators.models.checkpoints.load_state_dict` (safetensors or
    a tensors-only pickle)."""
    import open_clip

    check_clip_name(name)
    local = weights is not None and Path(weights).exists()
    if local or weights is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = create_architecture(name)
        if local:
            from generators.models.checkpoints import load_state_dict

            from generators.errors import CorruptModel

            state = load_state_dict(weights)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise CorruptModel(f"CLIP weights {weights} do not match {name}: {str(exc)[:400]}") from exc
    else:
        model = open_clip.create_model(name, pretrained=str(weights), device="cpu")
    model = model.eval().requires_grad_(False).to(device)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return Perceptor(
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        input_size=int(size),
        mean=torch.tensor(mean, device=device).view(1, 3, 1, 1),
        std=torch.tensor(std, device=device).view(1, 3, 1, 1),
    )
