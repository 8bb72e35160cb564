"""The VQGAN matches taming-transformers' names and arithmetic and loads checkpoints safely."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from generators.errors import CorruptModel
from generators.models.checkpoints import UntrustedCheckpoint, load_state_dict
from generators.vqgan_clip.tiny import TINY_VQGAN_CONFIG, official_checkpoint, write_tiny_vqgan
from generators.vqgan_clip.vqgan import (
    IMAGENET_F16_16384,
    AttnBlock,
    Downsample,
    VQGAN,
    VQGANConfig,
)


def test_f16_16384_has_the_official_state_dict_names():
    # Names that taming's VQModel (configs of vqgan_imagenet_f16_16384) produces:
    # 5 levels, 2 res blocks, attention at 16x16, nin shortcuts where channels change.
    keys = set(VQGAN(IMAGENET_F16_16384).state_dict())
    expected = {
        "encoder.conv_in.weight",
        "encoder.down.0.block.1.conv2.bias",
        "encoder.down.0.downsample.conv.weight",
        "encoder.down.2.block.0.nin_shortcut.weight",
        "encoder.down.4.attn.1.proj_out.weight",
        "encoder.mid.attn_1.q.weight",
        "encoder.norm_out.weight",
        "decoder.conv_in.weight",
        "decoder.mid.block_2.norm2.bias",
        "decoder.up.4.attn.2.k.bias",
        "decoder.up.3.block.0.nin_shortcut.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.2.conv1.weight",
        "decoder.conv_out.bias",
        "quantize.embedding.weight",
        "quant_conv.weight",
        "post_quant_conv.bias",
    }
    assert expected <= keys
    # Nothing a taming VQModel lacks: no downsample at the last level, no upsample at level 0.
    assert "encoder.down.4.downsample.conv.weight" not in keys
    assert "decoder.up.0.upsample.conv.weight" not in keys
    assert not any(k.startswith("loss.") for k in keys)
    assert tuple(VQGAN(IMAGENET_F16_16384).state_dict()["quantize.embedding.weight"].shape) == (16384, 256)


def test_attention_matches_tamings_explicit_formula():
    torch.manual_seed(0)
    block = AttnBlock(32).eval()
    x = torch.randn(2, 32, 5, 7)
    h = block.norm(x)
    q, k, v = block.q(h), block.k(h), block.v(h)
    b, c, hh, ww = q.shape
    w_ = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww)) * (c ** -0.5)
    w_ = torch.softmax(w_, dim=2)
    out = torch.bmm(v.reshape(b, c, hh * ww), w_.permute(0, 2, 1)).reshape(b, c, hh, ww)
    expected = x + block.proj_out(out)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_downsample_pads_right_and_bottom_only():
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 2, 2] = 1.0  # picks the bottom-right tap
        down.conv.bias.zero_()
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = down(x)
    assert y.shape == (1, 1, 2, 2)
    # Output (1,1) reads input (4,4) -> the zero padding at the bottom-right.
    assert y[0, 0, 1, 1].item() == 0.0
    assert y[0, 0, 0, 0].item() == x[0, 0, 2, 2].item()


def test_quantizer_picks_the_nearest_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    model = VQGAN(TINY_VQGAN_CONFIG)
    codebook = model.quantize.embedding.weight.detach()
    z = torch.randn(1, codebook.shape[1], 3, 3, requires_grad=True)
    z_q = model.quantize(z)
    flat = z.detach().movedim(1, -1).reshape(-1, codebook.shape[1])
    nearest = torch.cdist(flat, codebook).argmin(1)
    torch.testing.assert_close(z_q.detach().movedim(1, -1).reshape(-1, codebook.shape[1]), codebook[nearest])
    z_q.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_official_checkpoint_round_trips_key_for_key(tmp_path: Path):
    ckpt, config, original = write_tiny_vqgan(tmp_path)
    loaded = VQGAN.from_checkpoint(ckpt, config, allow_full_unpickle=True)
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loaded.decode(loaded.encode(image)).shape == (1, 3, 32, 32)


def test_config_yaml_round_trips(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(IMAGENET_F16_16384.to_dict()))
    assert VQGANConfig.from_yaml(path) == IMAGENET_F16_16384
    assert IMAGENET_F16_16384.downsample_factor == 16


def test_config_that_does_not_match_the_checkpoint_is_refused(tmp_path: Path):
    ckpt, config, _ = write_tiny_vqgan(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["model"]["params"]["n_embed"] = 128
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(CorruptModel, match="quantize.embedding.weight"):
        VQGAN.from_checkpoint(ckpt, config, allow_full_unpickle=True)


def test_other_model_targets_are_refused(tmp_path: Path):
    data = TINY_VQGAN_CONFIG.to_dict()
    data["model"]["target"] = "taming.models.vqgan.GumbelVQ"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CorruptModel, match="GumbelVQ"):
        VQGANConfig.from_yaml(path)


@pytest.mark.parametrize(("text", "says"), [("", "holds nothing"), ("- a\n- b\n", "holds list"),
                                            ("model: just a string\n", "another layout")])
def test_a_config_that_is_not_a_taming_config_is_named_as_such(tmp_path: Path, text: str, says: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(CorruptModel, match=f"not a taming config .*{says}"):
        VQGANConfig.from_yaml(path)


class _Payload:
    def __reduce__(self):
        return (Path("/tmp/dstrtd-payload-ran").write_text, ("ran",))


def test_untrusted_pickle_is_refused_and_trusted_one_never_runs_code(tmp_path: Path):
    marker = Path("/tmp/dstrtd-payload-ran")
    marker.unlink(missing_ok=True)
    model = VQGAN(TINY_VQGAN_CONFIG)
    data = official_checkpoint(model)
    data["callbacks"] = {"x": _Payload()}
    path = tmp_path / "evil.ckpt"
    torch.save(data, path)
    with pytest.raises(UntrustedCheckpoint, match="refusing"):
        load_state_dict(path)
    state = load_state_dict(path, allow_full_unpickle=True)  # stubbed: the payload is not called
    assert not marker.exists()
    assert "loss.discriminator.main.0.weight" in state


def test_a_plain_state_dict_loads_with_weights_only(tmp_path: Path):
    model = VQGAN(TINY_VQGAN_CONFIG)
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    assert set(load_state_dict(path)) == set(model.state_dict())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoints_raise_corrupt_model(tmp_path: Path, damage: str):
    ckpt, _, _ = write_tiny_vqgan(tmp_path)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(CorruptModel):
        load_state_dict(ckpt, allow_full_unpickle=True)


def test_spherical_distance_matches_the_seed_values():
    from generators.vqgan_clip.prompts import spherical_distance

    def at_cosine(c: float) -> float:
        a = torch.tensor([1.0, 0.0])
        b = torch.tensor([c, math.sqrt(1 - c * c)])
        return spherical_distance(a, b).item()

    # The seed's curve starts near 0.90 (cosine ~0.2) and ends near 0.65 (cosine ~0.4).
    assert at_cosine(0.2) == pytest.approx(0.93, abs=0.01)
    assert at_cosine(0.4) == pytest.approx(0.67, abs=0.01)
    assert at_cosine(1.0) == pytest.approx(0.0, abs=1e-6)
    # It is 2 * (half the angle)^2: the squared great-circle distance, halved.
    assert at_cosine(0.0) == pytest.approx(2 * (math.pi / 4) ** 2, abs=1e-5)
