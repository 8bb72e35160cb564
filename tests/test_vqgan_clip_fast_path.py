"""The CPU fast path's rewrites keep the maths: folded upsampling in the VQGAN
decoder and the batch-first CLIP image tower give the same values and the same
gradients as the reference forms, to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from generators.vqgan_clip.clip_model import (
    batch_first_applies,
    create_architecture,
    encode_image_batch_first,
    load_clip,
)
from generators.vqgan_clip.optimise import RunSettings, prepare_models
from generators.vqgan_clip.tiny import TINY_VQGAN_CONFIG, register_tiny_clip
from generators.vqgan_clip.vqgan import VQGAN, Upsample, fold_upsample_conv


def _forward_and_grads(module: nn.Module, x: torch.Tensor, out_grad: torch.Tensor | None = None):
    """Output, gradient to the input and gradients to the parameters."""
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    out_grad = torch.randn_like(out, generator=torch.Generator().manual_seed(1)) if out_grad is None else out_grad
    out.backward(out_grad)
    return out.detach(), x.grad, {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= rtol * b.abs().max())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_folded_upsampling_is_the_same_linear_map(layout):
    torch.manual_seed(0)
    reference = Upsample(16)
    folded = copy.deepcopy(reference)
    folded.folded = True
    reference, folded = reference.to(memory_format=layout), folded.to(memory_format=layout)
    x = torch.randn(2, 16, 7, 5).contiguous(memory_format=layout)  # odd sizes: the borders must match too

    out_ref, dx_ref, dw_ref = _forward_and_grads(reference, x)
    out_fold, dx_fold, dw_fold = _forward_and_grads(folded, x)

    assert out_fold.shape == (2, 16, 14, 10)
    assert _close(out_fold, out_ref) and _close(dx_fold, dx_ref)
    # the fold is differentiable: the 3x3 weight gets the same gradient
    assert _close(dw_fold["conv.weight"], dw_ref["conv.weight"]) and _close(dw_fold["conv.bias"], dw_ref["conv.bias"])


def test_fold_has_fewer_taps_than_upsample_then_convolve():
    weight = torch.randn(4, 3, 3, 3)
    kernel = fold_upsample_conv(weight)
    assert kernel.shape == (3, 4, 4, 4)
    # every 3x3 tap is used exactly 4 times over the 16 folded taps (once per output phase)
    assert torch.allclose(kernel.sum(dim=(2, 3)), 4 * weight.sum(dim=(2, 3)).t(), atol=1e-5)


def test_decoder_with_folded_upsampling_decodes_the_same_image():
    torch.manual_seed(0)
    model = VQGAN(TINY_VQGAN_CONFIG).eval().requires_grad_(False)
    z = torch.randn(1, TINY_VQGAN_CONFIG.embed_dim, 8, 8)
    decode = _Decode(model)
    out_ref, dz_ref, _ = _forward_and_grads(decode, z)
    model.fold_upsampling(True)
    out_fold, dz_fold, _ = _forward_and_grads(decode, z, torch.randn_like(out_ref, generator=torch.Generator().manual_seed(1)))
    model.fold_upsampling(False)
    out_again, _, _ = _forward_and_grads(decode, z)

    assert _close(out_fold, out_ref) and _close(dz_fold, dz_ref)
    assert torch.equal(out_again, out_ref)  # switching back restores taming's exact forward
    assert set(model.state_dict()) == set(VQGAN(TINY_VQGAN_CONFIG).state_dict())  # nothing added to the checkpoint


class _Decode(nn.Module):
    def __init__(self, model: VQGAN):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


@pytest.fixture(scope="module")
def tiny_perceptor():
    torch.manual_seed(0)
    return load_clip(register_tiny_clip(), None)


def test_batch_first_clip_tower_matches_open_clip(tiny_perceptor):
    visual = tiny_perceptor.model.visual
    assert batch_first_applies(visual)
    crops = torch.rand(5, 3, tiny_perceptor.input_size, tiny_perceptor.input_size)
    # give the class token and positions values, as trained weights have
    with torch.no_grad():
        visual.class_embedding.normal_()
        visual.positional_embedding.normal_(0, 0.5)

    ref = crops.clone().requires_grad_(True)
    new = crops.clone().requires_grad_(True)
    out_ref, out_new = visual(ref), encode_image_batch_first(visual, new)
    weights = torch.randn_like(out_ref)
    (out_ref * weights).sum().backward()
    (out_new * weights).sum().backward()

    assert _close(out_new, out_ref) and _close(new.grad, ref.grad)
    a = tiny_perceptor.embed_images(crops, batch_first=True)
    b = tiny_perceptor.embed_images(crops)
    assert _close(a, b)


def test_other_towers_keep_open_clips_forward(tiny_perceptor):
    visual = copy.deepcopy(tiny_perceptor.model.visual)
    for change in (lambda v: setattr(v, "pool_type", "avg"),
                   lambda v: setattr(v, "attn_pool", nn.Identity()),
                   lambda v: v.train()):
        other = copy.deepcopy(visual)
        change(other)
        assert not batch_first_applies(other)
    resnet = create_architecture("RN50").visual.eval()
    assert not batch_first_applies(resnet)


@pytest.mark.parametrize(("fast", "rewrites", "on"), [(True, "auto", True), (False, "auto", False),
                                                      (True, "off", False), (False, "on", False)])
def test_cpu_runs_switch_the_rewrites_with_fast(tiny_perceptor, fast, rewrites, on):
    model = VQGAN(TINY_VQGAN_CONFIG).eval().requires_grad_(False)
    model.fold_upsampling(not on)  # a model left in the other state by an earlier run
    settings = RunSettings(fast=fast, compile="off", rewrites=rewrites)
    _, embed = prepare_models(model, tiny_perceptor, settings, torch.device("cpu"))
    assert all(m.folded == on for m in model.modules() if isinstance(m, Upsample))
    assert embed.keywords == {"batch_first": on}


def test_folded_kernel_follows_the_weight():
    """The folded kernel is kept between steps for a frozen weight, and made
    again when the weight changes in place (e.g. a new checkpoint loaded)."""
    torch.manual_seed(0)
    up = Upsample(4).requires_grad_(False)
    up.folded = True
    x = torch.randn(1, 4, 3, 3)
    first = up(x)
    assert up._folded_kernel() is up._folded_kernel()
    with torch.no_grad():
        up.conv.weight.mul_(2)
    second = up(x)
    reference = Upsample(4).requires_grad_(False)
    reference.load_state_dict(up.state_dict())
    assert _close(second, reference(x)) and not _close(second, first)


def test_batch_first_tower_runs_the_last_block_for_the_class_token_only(tiny_perceptor):
    """Only the class token's output is pooled: the last block's queries, output
    projection and MLP for the other tokens are not computed, forward or backward."""
    from torch.utils.flop_counter import FlopCounterMode

    visual = tiny_perceptor.model.visual
    batch, size = 4, tiny_perceptor.input_size
    crops = torch.rand(batch, 3, size, size)

    def flops(forward) -> int:
        x = crops.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            forward(x).sum().backward()
        return counter.get_total_flops()

    width = visual.transformer.width
    tokens = (size // visual.conv1.kernel_size[0]) ** 2 + 1
    last = visual.transformer.resblocks[-1]
    per_token = 2 * width * (width + width) + 2 * width * sum(p.shape[0] for n, p in last.mlp.named_parameters() if n.endswith("weight"))
    # q and out projections plus the MLP, for the batch's non-class tokens, forward (1x) and input gradient (1x)
    saved = 2 * batch * (tokens - 1) * per_token
    assert flops(visual) - flops(lambda x: encode_image_batch_first(visual, x)) >= saved
