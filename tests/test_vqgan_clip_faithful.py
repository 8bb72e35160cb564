"""Faithfulness of the VQGAN+CLIP generator to the method it implements.

Each test restates a piece of the reference (taming-transformers' ``VQModel``
inference path; the VQGAN+CLIP loop of Crowson's notebook and its generate.py
descendants; open_clip's preprocessing constants) as plain formulas written
here, and checks our implementation against them on small random inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from generators.vqgan_clip import optimise as optimise_module
from generators.vqgan_clip.clip_model import load_clip
from generators.vqgan_clip.cutouts import CutoutSettings, _crop_sizes, make_cutouts
from generators.vqgan_clip.optimise import RunSettings, StopRule, initial_latent, optimise
from generators.vqgan_clip.prompts import WeightedPrompt, prompt_loss, spherical_distance
from generators.vqgan_clip.tiny import TINY_VQGAN_CONFIG, register_tiny_clip
from generators.vqgan_clip.vqgan import VQGAN, VQGANConfig

# ----------------------------------------------------------------------------- VQGAN numerics

# Two levels of channels (so 1x1 "nin" shortcuts), attention inside a level and
# in the middle, two downsamplings and two upsamplings.
SMALL = VQGANConfig(embed_dim=8, n_embed=64, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2,
                    attn_resolutions=(8,), resolution=32)


class _Taming:
    """taming-transformers' Encoder / Decoder / VectorQuantizer2 forward, written
    out as functions of a state dict: GroupNorm(32, eps=1e-6), x * sigmoid(x),
    single-head attention with explicit softmax(q k^T / sqrt(C)), (0, 1, 0, 1)
    zero padding before the stride-2 convolution, nearest 2x upsampling."""

    def __init__(self, state: dict[str, torch.Tensor], cfg: VQGANConfig):
        self.s, self.cfg = state, cfg

    def norm(self, x, name):
        return F.group_norm(x, 32, self.s[name + ".weight"], self.s[name + ".bias"], eps=1e-6)

    @staticmethod
    def swish(x):
        return x * torch.sigmoid(x)

    def conv(self, x, name, stride=1, padding=1):
        return F.conv2d(x, self.s[name + ".weight"], self.s[name + ".bias"], stride=stride, padding=padding)

    def has(self, name):
        return name + ".weight" in self.s or name + ".q.weight" in self.s

    def resnet(self, x, name):
        h = self.conv(self.swish(self.norm(x, name + ".norm1")), name + ".conv1")
        h = self.conv(self.swish(self.norm(h, name + ".norm2")), name + ".conv2")
        if self.has(name + ".nin_shortcut"):
            x = self.conv(x, name + ".nin_shortcut", padding=0)
        return x + h

    def attention(self, x, name):
        h = self.norm(x, name + ".norm")
        q, k, v = (self.conv(h, f"{name}.{p}", padding=0) for p in "qkv")
        b, c, height, width = q.shape
        q, k, v = (t.reshape(b, c, height * width) for t in (q, k, v))
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c ** -0.5, dim=2)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, height, width)
        return x + self.conv(out, name + ".proj_out", padding=0)

    def middle(self, h, prefix):
        h = self.resnet(h, prefix + ".mid.block_1")
        h = self.attention(h, prefix + ".mid.attn_1")
        return self.resnet(h, prefix + ".mid.block_2")

    def encode_pre_quant(self, x):
        levels, blocks = len(self.cfg.ch_mult), self.cfg.num_res_blocks
        h = self.conv(x, "encoder.conv_in")
        for i in range(levels):
            for j in range(blocks):
                h = self.resnet(h, f"encoder.down.{i}.block.{j}")
                if self.has(f"encoder.down.{i}.attn.{j}"):
                    h = self.attention(h, f"encoder.down.{i}.attn.{j}")
            if i != levels - 1:
                h = self.conv(F.pad(h, (0, 1, 0, 1), value=0.0), f"encoder.down.{i}.downsample.conv", 2, 0)
        h = self.middle(h, "encoder")
        h = self.conv(self.swish(self.norm(h, "encoder.norm_out")), "encoder.conv_out")
        return self.conv(h, "quant_conv", padding=0)

    def quantise(self, z):
        codebook = self.s["quantize.embedding.weight"]
        flat = z.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
        nearest = torch.cdist(flat.double(), codebook.double()).argmin(1)
        return codebook[nearest].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)

    def decode(self, z_q):
        levels, blocks = len(self.cfg.ch_mult), self.cfg.num_res_blocks
        h = self.conv(self.conv(z_q, "post_quant_conv", padding=0), "decoder.conv_in")
        h = self.middle(h, "decoder")
        for i in reversed(range(levels)):
            for j in range(blocks + 1):
                h = self.resnet(h, f"decoder.up.{i}.block.{j}")
                if self.has(f"decoder.up.{i}.attn.{j}"):
                    h = self.attention(h, f"decoder.up.{i}.attn.{j}")
            if i != 0:
                h = self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv")
        return self.conv(self.swish(self.norm(h, "decoder.norm_out")), "decoder.conv_out")


def _small_vqgan(seed: int = 0) -> VQGAN:
    torch.manual_seed(seed)
    model = VQGAN(SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init, so that every term matters
            p.normal_(0, 0.2)
    return model.requires_grad_(False)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1.0)


@pytest.mark.parametrize("folded", [False, True])
def test_vqgan_encode_quantise_decode_follow_tamings_formulas(folded):
    model = _small_vqgan()
    model.fold_upsampling(folded)
    reference = _Taming(model.state_dict(), SMALL)
    image = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = reference.encode_pre_quant(image)
        _close(model.encode(image, quantize=False), z)
        z_q = reference.quantise(z)
        _close(model.encode(image), z_q, 1e-6)
        _close(model.decode(z_q), reference.decode(z_q))


def test_quantiser_is_a_straight_through_nearest_code_lookup():
    model = _small_vqgan()
    codebook = model.quantize.embedding.weight
    z = (torch.randn(2, 8, 3, 5, generator=torch.Generator().manual_seed(2)) * 0.3).requires_grad_(True)
    z_q = model.quantize(z)
    _close(z_q.detach(), _Taming(model.state_dict(), SMALL).quantise(z.detach()), 1e-6)
    # The gradient reaches z unchanged (the notebook's replace_grad / taming's z + (z_q - z).detach()).
    upstream = torch.randn(z_q.shape, generator=torch.Generator().manual_seed(3))
    z_q.backward(upstream)
    assert torch.equal(z.grad, upstream)
    # lookup of (b, h, w) indices: the notebook's one_hot @ codebook, viewed (b, h, w, c) -> (b, c, h, w).
    indices = torch.randint(64, (2, 3, 5), generator=torch.Generator().manual_seed(4))
    one_hot = F.one_hot(indices.reshape(-1), 64).float() @ codebook
    assert torch.equal(model.quantize.lookup(indices), one_hot.view(2, 3, 5, 8).permute(0, 3, 1, 2))


# ----------------------------------------------------------------------------- latent initialisation


def test_random_initial_latent_is_the_notebooks_random_codes():
    model = _small_vqgan()
    settings = RunSettings(width=48, height=32, candidates=1)  # f = 4: 12 x 8 cells
    z = initial_latent(model, settings, None, torch.Generator().manual_seed(7), torch.device("cpu"))
    # notebook: randint(n_toks, [toksY * toksX]) -> one_hot @ codebook -> view(-1, toksY, toksX, e) -> permute
    indices = torch.randint(SMALL.n_embed, [8 * 12], generator=torch.Generator().manual_seed(7))
    expected = (F.one_hot(indices, SMALL.n_embed).float() @ model.quantize.embedding.weight)
    assert torch.equal(z, expected.view(-1, 8, 12, SMALL.embed_dim).permute(0, 3, 1, 2))


def test_init_image_latent_is_the_quantised_encoding_of_the_image_in_minus_one_to_one():
    model = _small_vqgan()
    settings = RunSettings(width=48, height=32, candidates=2)
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(8))
    z = initial_latent(model, settings, image, torch.Generator(), torch.device("cpu"))
    reference = _Taming(model.state_dict(), SMALL)
    with torch.no_grad():
        expected = reference.quantise(reference.encode_pre_quant(image[None] * 2 - 1))
    assert z.shape == (2, 8, 8, 12)
    _close(z[0:1], expected, 1e-6)
    _close(z[1:2], expected, 1e-6)


# ----------------------------------------------------------------------------- prompt loss


def _notebook_prompt(image_embeds: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    """The notebook's ``Prompt.forward`` with stop = -inf, for one candidate:
    normalise both, 2 * arcsin(|a - b| / 2)^2 for every (cutout, target row)
    pair, times the sign of the weight, mean over all pairs, times |weight|."""
    a = F.normalize(image_embeds, dim=-1)[:, None, :]
    b = F.normalize(target, dim=-1)[None, :, :]
    dists = (a - b).norm(dim=2).div(2).arcsin().pow(2).mul(2) * math.copysign(1.0, weight)
    return abs(weight) * dists.mean()


def test_prompt_loss_is_the_notebooks_weighted_sum_with_negative_weights_and_image_prompts():
    gen = torch.Generator().manual_seed(5)
    candidates, cutouts, d = 2, 6, 16
    images = torch.randn(candidates, cutouts, d, generator=gen)
    texts = torch.randn(2, d, generator=gen)
    image_prompt = torch.randn(cutouts, d, generator=gen)  # an image prompt: the embeddings of its own cutouts
    text_weights, image_weight = [1.0, -0.5], 0.75
    # ours: an image prompt is `cutouts` prompts of weight w / cutouts (optimise.embed_prompts)
    embeds = F.normalize(torch.cat([texts, image_prompt]), dim=-1)
    weights = torch.tensor(text_weights + [image_weight / cutouts] * cutouts)
    ours = prompt_loss(F.normalize(images, dim=-1), embeds, weights)
    for c in range(candidates):
        expected = sum(_notebook_prompt(images[c], texts[i:i + 1], w) for i, w in enumerate(text_weights))
        expected = expected + _notebook_prompt(images[c], image_prompt, image_weight)
        assert float(ours[c]) == pytest.approx(float(expected), abs=1e-6)


def test_spherical_distance_is_half_the_squared_angle():
    for cosine in (-0.5, 0.0, 0.2, 0.35, 0.4, 0.9):
        a = torch.tensor([1.0, 0.0], dtype=torch.float64)
        b = torch.tensor([cosine, math.sqrt(1 - cosine ** 2)], dtype=torch.float64)
        assert float(spherical_distance(a, b)) == pytest.approx(math.acos(cosine) ** 2 / 2, rel=1e-9)
    # What the docs quote for the seed's start and end values.
    assert round(math.acos(0.2) ** 2 / 2, 2) == 0.94 and round(math.acos(0.4) ** 2 / 2, 2) == 0.67


# ----------------------------------------------------------------------------- cutouts


@pytest.mark.parametrize("power", [0.5, 1.0, 3.0])
def test_crop_sizes_are_drawn_like_the_notebooks(power):
    width, height, cut = 300, 200, 64
    ours = _crop_sizes(500, width, height, cut, power, torch.Generator().manual_seed(9), torch.device("cpu"))
    draws = torch.rand(500, generator=torch.Generator().manual_seed(9))
    expected = [int(u ** power * (min(width, height) - min(width, height, cut)) + min(width, height, cut))
                for u in draws.tolist()]
    assert [int(s) for s in ours.tolist()] == expected
    assert min(expected) >= cut and max(expected) <= min(width, height)


def test_cutout_noise_is_a_per_crop_scale_up_to_noise_fac_times_gaussian_noise():
    # A flat grey image: flips, rotations, shifts and saturation leave it as it is,
    # so what remains is the notebook's facs ~ U(0, 0.1) per crop times randn.
    image = torch.full((1, 3, 96, 96), 0.5)
    crops = make_cutouts(image, 32, CutoutSettings(count=64), torch.Generator().manual_seed(10))
    spread = (crops - 0.5).flatten(1).std(dim=1)
    assert float(spread.max()) < 0.1 * 1.1 and float(spread.min()) < 0.02
    assert 0.035 < float(spread.mean()) < 0.065  # E[U(0, 0.1)] = 0.05


# ----------------------------------------------------------------------------- CLIP preprocessing

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def test_clip_input_is_normalised_with_openais_mean_and_std_at_the_towers_resolution():
    perceptor = load_clip(register_tiny_clip(), None)
    assert perceptor.input_size == 32
    assert perceptor.mean.flatten().tolist() == pytest.approx(OPENAI_MEAN)
    assert perceptor.std.flatten().tolist() == pytest.approx(OPENAI_STD)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.normalize(perceptor.model.encode_image((images - mean) / std), dim=-1)
        _close(perceptor.embed_images(images), expected)


@pytest.mark.slow
def test_vit_b_32_takes_224_pixels():
    perceptor = load_clip("ViT-B-32-quickgelu", None)
    assert perceptor.input_size == 224
    assert perceptor.mean.flatten().tolist() == pytest.approx(OPENAI_MEAN)
    assert perceptor.std.flatten().tolist() == pytest.approx(OPENAI_STD)


# ----------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    vqgan = VQGAN(TINY_VQGAN_CONFIG).eval()
    with torch.no_grad():
        vqgan.quantize.embedding.weight.normal_(0, 1)
    return vqgan.requires_grad_(False), load_clip(register_tiny_clip(), None)


class _RecordingAdam(torch.optim.Adam):
    made: list["_RecordingAdam"] = []

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        _RecordingAdam.made.append(self)


def test_adam_with_default_moments_moves_z_and_z_stays_in_the_codebooks_range(tiny_models, monkeypatch):
    vqgan, perceptor = tiny_models
    _RecordingAdam.made.clear()
    monkeypatch.setattr(torch.optim, "Adam", _RecordingAdam)
    settings = RunSettings(width=32, height=32, iterations=3, learning_rate=5.0, stop=None,
                           cutouts=CutoutSettings(count=2))
    optimise(vqgan, perceptor, [WeightedPrompt("coral reef", 1.0)], settings, seed=1, device=torch.device("cpu"))
    (adam,) = _RecordingAdam.made
    group = adam.param_groups[0]
    assert group["lr"] == 5.0 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    assert group["weight_decay"] == 0 and not group["amsgrad"]
    (z,) = group["params"]
    codebook = vqgan.quantize.embedding.weight
    low, high = codebook.min(dim=0).values.view(1, -1, 1, 1), codebook.max(dim=0).values.view(1, -1, 1, 1)
    assert bool(((z >= low) & (z <= high)).all())
    # lr 5 is far beyond the range of every channel: the per-channel clamp is what holds z in.
    assert bool(((z == low) | (z == high)).any())


def _reference_resize_image(image: Image.Image, out_size: tuple[int, int]) -> Image.Image:
    """The notebook's ``resize_image``: keep the aspect ratio, shrink to the
    output's area when larger, Lanczos."""
    ratio = image.size[0] / image.size[1]
    area = min(image.size[0] * image.size[1], out_size[0] * out_size[1])
    size = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
    return image.resize(size, Image.LANCZOS)


@pytest.mark.parametrize("prompt_size", [(128, 96), (20, 24)])
def test_image_prompts_are_cut_from_the_image_fitted_to_the_output_area(tiny_models, monkeypatch, prompt_size):
    vqgan, perceptor = tiny_models
    seen: list[torch.Tensor] = []

    def recording(images, *args, **kwargs):
        seen.append(images.detach().clone())
        return make_cutouts(images, *args, **kwargs)

    monkeypatch.setattr(optimise_module, "make_cutouts", recording)
    rng = np.random.default_rng(12)
    pil = Image.fromarray(rng.integers(0, 256, (prompt_size[1], prompt_size[0], 3), dtype=np.uint8))
    tensor = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()
    settings = RunSettings(width=32, height=32, iterations=1, stop=None, cutouts=CutoutSettings(count=2))
    optimise(vqgan, perceptor, [WeightedPrompt("reef", 1.0)], settings, seed=1, device=torch.device("cpu"),
             image_prompts=[(tensor, 0.5)])
    expected_pil = _reference_resize_image(pil, (32, 32))
    expected = torch.from_numpy(np.asarray(expected_pil, dtype=np.float32) / 255).permute(2, 0, 1)
    first = seen[0]  # the image prompt's cutouts are made before the loop starts
    assert first.shape[-2:] == (expected_pil.size[1], expected_pil.size[0])
    assert torch.allclose(first[0], expected, atol=1e-6)


def test_plateau_rule_is_the_documented_comparison_of_two_windows():
    rule = StopRule(min_steps=30, window=10, min_delta=0.004)
    gen = torch.Generator().manual_seed(13)
    curve = (0.9 - 0.25 * (1 - torch.exp(-torch.arange(200) / 40.0)) + 0.01 * torch.randn(200, generator=gen)).tolist()
    for t in range(1, 201):
        documented = (t >= max(30, 20)
                      and np.mean(curve[t - 20:t - 10]) - np.mean(curve[t - 10:t]) < 0.004)
        assert rule.should_stop(curve[:t]) == documented, t
