"""3x3 convolutions through NNPACK's fast-convolution kernels, for the decoder on a CPU.

Why: at the decoder's large feature maps (128-256 channels, 64² to 256²) oneDNN's
direct convolution already runs near this CPU's matrix-product rate, so the only
way to make those layers faster is to do fewer multiplications. Fast convolution
does that: it transforms tiles of the input and the kernel, multiplies them
element-wise and transforms back — Winograd's minimal filtering F(6×6, 3×3) on
8×8 tiles, or FFTs of 16×16 tiles (Lavin & Gray 2016, "Fast Algorithms for
Convolutional Neural Networks"; Mathieu et al. 2014). PyTorch's CPU build ships
NNPACK (Dukhan), which implements both for AVX2 and picks between them by the
size of the map; PyTorch itself calls it only for batches of 16 and more and
never for the backward pass. Measured on the 2-core build machine (torch 2.14,
batch 1), one forward against oneDNN channels-last:

    channels, size    oneDNN    NNPACK
    128, 256²         0.114 s   0.062 s
    256, 128²         0.102 s   0.041 s
    256, 64²          0.025 s   0.013 s
    512, 16²          0.008 s   0.016 s   (too small: the kernel transform dominates)

so :func:`applies` keeps to feature maps of 64×64 pixels and more. Results agree
with the direct convolution to about 2e-5 of the output's largest value.

Only the input gradient is written here: VQGAN+CLIP optimises the latent through
a frozen decoder, so the weights never need a gradient, and :func:`applies`
refuses weights that do. ``torch._nnpack_spatial_convolution`` is a private op:
:func:`available` checks for it (and NNPACK's own start-up) once, and callers
fall back to ``F.conv2d`` when it is missing.
"""

from __future__ import annotations

import functools

import torch

# Smallest feature map (height × width) the NNPACK path is used for; see the table above.
MIN_PIXELS = 64 * 64
# Fewer channels than this (the decoder's 3-channel output conv) and the transforms dominate.
MIN_CHANNELS = 16


@functools.cache
def available() -> bool:
    """Whether this torch build has NNPACK and it started on this CPU. NNPACK
    must be initialised (``_nnpack_available`` does it) before its first call."""
    try:
        return bool(torch._nnpack_available()) and hasattr(torch, "_nnpack_spatial_convolution")
    except (AttributeError, RuntimeError):
        return False


def applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`conv3x3` may replace ``F.conv2d(x, weight, bias, padding=1)``:
    a CPU float32 input of 64×64 pixels or more, frozen weights of at least 16
    channels each way, and NNPACK present."""
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and x.shape[-2] * x.shape[-1] >= MIN_PIXELS
        and min(weight.shape[0], weight.shape[1]) >= MIN_CHANNELS
        and tuple(weight.shape[2:]) == (3, 3)
        and frozen
        and available()
    )


def _nnpack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Stride 1, padding 1, one image at a time: a batch of one takes NNPACK's
    inference kernels; a larger batch takes its training kernels, which measured
    no faster than oneDNN here (0.20 s against 0.22 s for two 128-channel 256² maps)."""
    x, weight = x.contiguous(), weight.contiguous()
    if x.shape[0] == 1:
        return torch._nnpack_spatial_convolution(x, weight, bias, [1, 1])
    return torch.cat([torch._nnpack_spatial_convolution(x[i : i + 1], weight, bias, [1, 1]) for i in range(x.shape[0])])


class _FastConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        return _nnpack(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        # The input gradient of a stride-1, padding-1 3x3 convolution is itself one:
        # of the output gradient, with the kernel's in/out channels swapped and its taps turned 180°.
        return _nnpack(grad, weight.transpose(0, 1).flip(2, 3), None), None, None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` by NNPACK's fast convolution, with
    its input gradient computed the same way. Check :func:`applies` first. The
    output is NCHW-contiguous whatever ``x``'s layout."""
    return _FastConv3x3.apply(x, weight, bias)
