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

    def embed_images(self, images: torch.Tensor, *, batch_first: bool = False) -> torch.Tensor:
        """Images in [0, 1] at ``input_size`` -> unit-norm embeddings (float32).

        ``batch_first=True`` runs a plain ViT tower through
        :func:`encode_image_batch_first` (the same maths, faster on a CPU);
        any other tower runs open_clip's own forward either way."""
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        visual = self.model.visual
        if batch_first and batch_first_applies(visual):
            features = encode_image_batch_first(visual, x)
        else:
            features = self.model.encode_image(x)
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        device = self.mean.device
        tokens = self.tokenizer(texts).to(device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


def batch_first_applies(visual: nn.Module) -> bool:
    """Whether ``visual`` is the plain open_clip ViT that
    :func:`encode_image_batch_first` reproduces: patch convolution without
    bias, class-token pooling, standard residual blocks with packed q/k/v
    projections, no attention pooling, in eval mode."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if type(visual) is not VisionTransformer or visual.training or visual.attn_pool is not None:
        return False
    conv = visual.conv1
    if conv.bias is not None or conv.stride != conv.kernel_size or conv.padding != (0, 0):
        return False
    if getattr(visual, "pool_type", None) != "tok" or len(visual.transformer.resblocks) == 0:
        return False
    for block in visual.transformer.resblocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return False
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.bias_k is not None:
            return False
    return True


def encode_image_batch_first(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``VisionTransformer.forward`` (Dosovitskiy et al. 2021, as
    CLIP uses it) rewritten with the same weights and the same maths, in the
    layout a CPU runs fastest. Only for towers :func:`batch_first_applies` accepts.

    Why: open_clip runs its blocks through ``nn.MultiheadAttention``, which
    works on a sequence-first *view* of the tokens; its q/k/v projection then
    becomes a batched product over a copy of the weight per token position,
    and the backward pass zero-fills and copies several token-sized buffers a
    block. Here the tokens stay one (batch*tokens, width) matrix, so every
    projection is a single matrix product forward and backward. The patch
    embedding (a convolution whose stride equals its kernel) is likewise one
    matrix product over the flattened patches: oneDNN's backward for that
    convolution took 8x its forward on the build machine. ViT-B-32 on 32
    crops, forward and backward to the pixels, on the 2-core build machine:
    4.0 s -> 3.5 s (about 94 % of the machine's fp32 matrix-product rate).
    The last block runs for the class token alone (step 4).
    Results match open_clip's forward to float rounding
    (tests/test_vqgan_clip_fast_path.py)."""
    conv = visual.conv1
    batch, width, patch = x.shape[0], conv.out_channels, conv.kernel_size[0]
    grid = x.shape[-1] // patch
    # 1. patches as rows: (batch*grid*grid, channels*patch*patch), in conv1's weight order
    patches = x.reshape(batch, x.shape[1], grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    tokens = patches.reshape(batch * grid * grid, -1) @ conv.weight.reshape(width, -1).t()
    # 2. class token, positions, pre-norm
    cls = visual.class_embedding.to(x.dtype).view(1, 1, width).expand(batch, 1, width)
    h = torch.cat([cls, tokens.view(batch, grid * grid, width)], dim=1) + visual.positional_embedding.to(x.dtype)
    h = visual.ln_pre(h)
    length = h.shape[1]
    h = h.reshape(batch * length, width)
    # 3. residual blocks on the (batch*tokens, width) matrix
    *blocks, last = visual.transformer.resblocks
    for block in blocks:
        h = h + block.ls_1(_attend(block.attn, block.ln_1(h), batch, length, class_token_only=False))
        h = h + block.ls_2(block.mlp(block.ln_2(h)))
    # 4. the last block for the class token alone: only its output is pooled, so
    # the other tokens' queries, output projections and MLPs would be computed
    # (and back-propagated through) only to be thrown away. Their keys and
    # values are still needed. ViT-B-32: about 7 % of the tower's products.
    cls = h.view(batch, length, width)[:, 0] + last.ls_1(_attend(last.attn, last.ln_1(h), batch, length, class_token_only=True))
    cls = cls + last.ls_2(last.mlp(last.ln_2(cls)))
    # 5. class-token pooling
    pooled = visual.ln_post(cls)
    return pooled @ visual.proj if visual.proj is not None else pooled


def _attend(attn: nn.MultiheadAttention, normed: torch.Tensor, batch: int, length: int, *,
            class_token_only: bool) -> torch.Tensor:
    """``attn`` on pre-normed tokens (batch*length, width): the output of every
    token, or with ``class_token_only`` that of the class token (batch, width),
    attending over all tokens either way."""
    width, heads = normed.shape[-1], attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if class_token_only:
        q_bias, kv_bias = (None, None) if bias is None else (bias[:width], bias[width:])
        q = F.linear(normed.view(batch, length, width)[:, 0], weight[:width], q_bias).view(batch, 1, heads, width // heads).transpose(1, 2)
        k, v = F.linear(normed, weight[width:], kv_bias).view(batch, length, 2, heads, width // heads).permute(2, 0, 3, 1, 4)
        rows = batch
    else:
        q, k, v = F.linear(normed, weight, bias).view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        rows = batch * length
    mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(rows, width)
    return attn.out_proj(mixed)


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
