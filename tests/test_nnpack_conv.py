"""NNPACK's fast 3x3 convolutions in the VQGAN decoder keep the maths: the same
values and the same gradient to the latent as ``F.conv2d``, to float rounding;
they run only where they apply, and the decoder falls back to ``F.conv2d``
where NNPACK is missing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generators.vqgan_clip import nnpack_conv
from generators.vqgan_clip.optimise import RunSettings, memory_format_for, prepare_models
from generators.vqgan_clip.tiny import TINY_VQGAN_CONFIG, register_tiny_clip
from generators.vqgan_clip.clip_model import load_clip
from generators.vqgan_clip.vqgan import VQGAN, Conv3x3

needs_nnpack = pytest.mark.skipif(not nnpack_conv.available(), reason="this torch build has no NNPACK")


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    return bool((a - b).abs().max() <= rtol * b.abs().max())


@pytest.fixture
def nnpack_calls(monkeypatch):
    """Count calls into NNPACK, so a test can tell the fast path ran."""
    calls = []
    real = torch._nnpack_spatial_convolution

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counting)
    return calls


@needs_nnpack
@pytest.mark.parametrize("batch", [1, 2])
def test_conv3x3_matches_conv2d_and_its_input_gradient(batch, nnpack_calls):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, 67, 70, generator=generator)  # sizes that are no multiple of the tiles
    weight = torch.randn(24, 16, 3, 3, generator=generator) * 0.1  # no symmetry: a missing flip would show
    bias = torch.randn(24, generator=generator)
    out_grad = torch.randn(batch, 24, 67, 70, generator=generator)

    ref_x, new_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    reference = F.conv2d(ref_x, weight, bias, padding=1)
    reference.backward(out_grad)
    fast = nnpack_conv.conv3x3(new_x, weight, bias)
    fast.backward(out_grad)

    assert fast.shape == reference.shape
    assert _close(fast, reference) and _close(new_x.grad, ref_x.grad)
    assert len(nnpack_calls) == 2 * batch  # forward and backward, one image at a time
    assert torch.equal(nnpack_conv.conv3x3(x, weight, bias), nnpack_conv.conv3x3(x, weight, bias))  # deterministic


@needs_nnpack
def test_conv3x3_accepts_channels_last_input():
    x = torch.randn(1, 16, 64, 64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(16, 16, 3, 3)
    assert _close(nnpack_conv.conv3x3(x, weight, None), F.conv2d(x, weight, padding=1))


@pytest.mark.parametrize(("why", "x", "weight"), [
    ("small map", torch.zeros(1, 16, 32, 64), torch.zeros(16, 16, 3, 3)),
    ("few channels", torch.zeros(1, 16, 64, 64), torch.zeros(3, 16, 3, 3)),
    ("float64", torch.zeros(1, 16, 64, 64, dtype=torch.float64), torch.zeros(16, 16, 3, 3, dtype=torch.float64)),
    ("weights that train", torch.zeros(1, 16, 64, 64), torch.zeros(16, 16, 3, 3, requires_grad=True)),
    ("not 3x3", torch.zeros(1, 16, 64, 64), torch.zeros(16, 16, 5, 5)),
    ("not a CPU tensor", torch.zeros(1, 16, 64, 64, device="meta"), torch.zeros(16, 16, 3, 3, device="meta")),
])
def test_applies_only_where_it_pays_and_the_weights_are_frozen(why, x, weight):
    assert not nnpack_conv.applies(x, weight, None), why


@needs_nnpack
def test_applies_to_a_large_map_with_frozen_weights():
    assert nnpack_conv.applies(torch.zeros(1, 16, 64, 64), torch.zeros(16, 16, 3, 3), torch.zeros(16))
    assert not nnpack_conv.applies(torch.zeros(1, 16, 64, 64), torch.zeros(16, 16, 3, 3), torch.zeros(16, requires_grad=True))


def _decode_with_grad(model: VQGAN, z: torch.Tensor, out_grad: torch.Tensor | None = None):
    z = z.clone().requires_grad_(True)
    out = model.decode(z)
    out_grad = torch.randn_like(out, generator=torch.Generator().manual_seed(1)) if out_grad is None else out_grad
    out.backward(out_grad)
    return out.detach(), z.grad, out_grad


@needs_nnpack
def test_decoder_with_nnpack_decodes_the_same_image(nnpack_calls):
    torch.manual_seed(0)
    model = VQGAN(TINY_VQGAN_CONFIG).eval().requires_grad_(False)
    z = torch.randn(1, TINY_VQGAN_CONFIG.embed_dim, 32, 32)  # decodes to 64x64: the last level's maps qualify
    out_ref, dz_ref, out_grad = _decode_with_grad(model, z)
    assert not nnpack_calls

    assert model.fast_convolutions(True)
    out_fast, dz_fast, _ = _decode_with_grad(model, z, out_grad)
    assert nnpack_calls and all(shape[-2] * shape[-1] >= nnpack_conv.MIN_PIXELS for shape in nnpack_calls)
    assert _close(out_fast, out_ref) and _close(dz_fast, dz_ref)

    model.fast_convolutions(False)
    assert torch.equal(_decode_with_grad(model, z, out_grad)[0], out_ref)  # switched off: taming's exact forward again
    assert set(model.state_dict()) == set(VQGAN(TINY_VQGAN_CONFIG).state_dict())


def test_without_nnpack_the_switch_changes_nothing(monkeypatch):
    monkeypatch.setattr(nnpack_conv, "available", lambda: False)
    model = VQGAN(TINY_VQGAN_CONFIG).eval().requires_grad_(False)
    assert model.fast_convolutions(True) is False
    assert not any(m.nnpack for m in model.modules() if isinstance(m, Conv3x3))
    settings = RunSettings(fast=True, compile="off", rewrites="auto")
    assert memory_format_for(settings, torch.device("cpu")) == torch.channels_last


@needs_nnpack
@pytest.mark.parametrize(("fast", "rewrites", "on"), [(True, "auto", True), (True, "on", True),
                                                      (True, "off", False), (False, "on", False)])
def test_cpu_runs_switch_nnpack_with_the_rewrites(fast, rewrites, on):
    torch.manual_seed(0)
    perceptor = load_clip(register_tiny_clip(), None)
    model = VQGAN(TINY_VQGAN_CONFIG).eval().requires_grad_(False)
    model.fast_convolutions(not on)  # a model left in the other state by an earlier run
    settings = RunSettings(fast=fast, compile="off", rewrites=rewrites)
    prepare_models(model, perceptor, settings, torch.device("cpu"))
    assert all(m.nnpack == on for m in model.modules() if isinstance(m, Conv3x3))
    # NNPACK reads NCHW: the run keeps the model and its latents in that layout
    expected = torch.contiguous_format if on or not fast else torch.channels_last
    assert memory_format_for(settings, torch.device("cpu")) == expected
    assert model.decoder.conv_in.weight.is_contiguous(memory_format=expected)


def test_memory_estimate_counts_nnpacks_workspace(monkeypatch):
    """NNPACK keeps a workspace the size of its largest convolution's tile
    transforms: a CPU run that uses it is estimated that much higher."""
    from generators.vqgan_clip.plugin import estimate_memory

    settings = RunSettings(width=1024, height=1024, fast=True, rewrites="auto")
    monkeypatch.setattr(nnpack_conv, "available", lambda: True)
    with_nnpack = estimate_memory(settings, torch.device("cpu"))
    monkeypatch.setattr(nnpack_conv, "available", lambda: False)
    without = estimate_memory(settings, torch.device("cpu"))
    # measured on the build machine: 1.5 GB kept after one 128-channel 1024x1024 convolution
    assert 1.3e9 < with_nnpack - without < 1.7e9
    assert estimate_memory(RunSettings(width=1024, height=1024, rewrites="off"), torch.device("cpu")) == without


@needs_nnpack
def test_a_compiled_cpu_run_keeps_nnpack_off():
    """torch.compile cannot trace the NNPACK op (it has no shape function): a
    CPU run with compile "on" failed at its first step with the rewrites on."""
    torch.manual_seed(0)
    perceptor = load_clip(register_tiny_clip(), None)
    model = VQGAN(TINY_VQGAN_CONFIG).eval().requires_grad_(False)
    settings = RunSettings(fast=True, compile="on", rewrites="auto")
    prepare_models(model, perceptor, settings, torch.device("cpu"))  # compiles lazily: nothing is traced here
    assert not any(m.nnpack for m in model.modules() if isinstance(m, Conv3x3))
    assert memory_format_for(settings, torch.device("cpu")) == torch.channels_last
