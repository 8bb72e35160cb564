"""A VQGAN (Esser, Rombach & Ommer 2021, "Taming Transformers for High-Resolution
Image Synthesis") written for this project.

Why our own code: the ``taming-transformers`` package on PyPI is unmaintained and
pulls in an old pytorch-lightning. The modules below reproduce the *inference*
half of taming's ``VQModel`` (``taming/models/vqgan.py``,
``taming/modules/diffusionmodules/model.py``, ``taming/modules/vqvae/quantize.py``
``VectorQuantizer2``): the same module tree, so the same state-dict names
(``encoder.*``, ``decoder.*``, ``quantize.embedding.weight``, ``quant_conv.*``,
``post_quant_conv.*``), and the same arithmetic (GroupNorm with 32 groups and
eps 1e-6, swish, asymmetric (0,1,0,1) padding before the stride-2 conv, nearest
upsampling, single-head attention scaled by 1/sqrt(C)). Training pieces (the
LPIPS/discriminator loss stored under ``loss.*`` in official checkpoints, the
commitment loss, index remapping) are not part of this model: the checkpoint
loader drops ``loss.*`` keys and refuses any other unknown key.

Two numerically equivalent substitutions, both faster: ``F.silu`` for
``x * sigmoid(x)`` and ``F.scaled_dot_product_attention`` for the explicit
bmm/softmax/bmm of ``AttnBlock``; they agree to float rounding (checked in
tests/test_vqgan_model.py against a literal transcription of the formulas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from generators.errors import CorruptModel
from generators.vqgan_clip import nnpack_conv

VQMODEL_TARGETS = ("taming.models.vqgan.VQModel",)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VQGANConfig:
    """The ``model.params`` of a taming-transformers YAML config (VQModel only)."""

    embed_dim: int
    n_embed: int
    z_channels: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    resolution: int
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = False
    dropout: float = 0.0
    lossconfig: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent cell along one side (16 for the ``f16`` models)."""
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "VQGANConfig":
        """Read a taming-transformers config file; raise ``CorruptModel`` naming
        the file and the key that is missing or unsupported."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise CorruptModel(f"VQGAN config {path}: cannot read it ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> "VQGANConfig":
        try:
            model = data["model"]
            target = model.get("target", "")
            params = model["params"]
            dd = params["ddconfig"]
        except KeyError as exc:
            raise CorruptModel(f"VQGAN config {source}: missing key {exc} (expected model.params.ddconfig)") from exc
        except (TypeError, AttributeError):  # an empty file, a list, a string where a mapping belongs
            held = "nothing" if data is None else ("another layout" if isinstance(data, dict) else type(data).__name__)
            raise CorruptModel(
                f"VQGAN config {source}: not a taming config (expected a mapping model.params.ddconfig; "
                f"the file holds {held})"
            ) from None
        if target not in VQMODEL_TARGETS:
            raise CorruptModel(
                f"VQGAN config {source}: model.target is {target!r}; supported: {', '.join(VQMODEL_TARGETS)}"
            )
        try:
            return cls(
                embed_dim=int(params["embed_dim"]),
                n_embed=int(params["n_embed"]),
                z_channels=int(dd["z_channels"]),
                ch=int(dd["ch"]),
                ch_mult=tuple(int(m) for m in dd["ch_mult"]),
                num_res_blocks=int(dd["num_res_blocks"]),
                attn_resolutions=tuple(int(r) for r in dd.get("attn_resolutions", [])),
                resolution=int(dd["resolution"]),
                in_channels=int(dd.get("in_channels", 3)),
                out_ch=int(dd.get("out_ch", 3)),
                double_z=bool(dd.get("double_z", False)),
                dropout=float(dd.get("dropout", 0.0)),
                lossconfig=dict(params.get("lossconfig") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptModel(f"VQGAN config {source}: bad or missing model parameter {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout taming-transformers writes (``model.target/params``)."""
        return {
            "model": {
                "target": VQMODEL_TARGETS[0],
                "params": {
                    "embed_dim": self.embed_dim,
                    "n_embed": self.n_embed,
                    "ddconfig": {
                        "double_z": self.double_z,
                        "z_channels": self.z_channels,
                        "resolution": self.resolution,
                        "in_channels": self.in_channels,
                        "out_ch": self.out_ch,
                        "ch": self.ch,
                        "ch_mult": list(self.ch_mult),
                        "num_res_blocks": self.num_res_blocks,
                        "attn_resolutions": list(self.attn_resolutions),
                        "dropout": self.dropout,
                    },
                    "lossconfig": self.lossconfig or {"target": "taming.modules.losses.DummyLoss"},
                },
            }
        }


# The two configs the VQGAN+CLIP notebooks use (taming-transformers README,
# "vqgan_imagenet_f16_1024" and "vqgan_imagenet_f16_16384"); the loss section
# is irrelevant for inference and left out.
IMAGENET_F16_DDCONFIG = dict(
    z_channels=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
    attn_resolutions=(16,), resolution=256, in_channels=3, out_ch=3, double_z=False, dropout=0.0,
)
IMAGENET_F16_16384 = VQGANConfig(embed_dim=256, n_embed=16384, **IMAGENET_F16_DDCONFIG)
IMAGENET_F16_1024 = VQGANConfig(embed_dim=256, n_embed=1024, **IMAGENET_F16_DDCONFIG)


# ----------------------------------------------------------------------------- blocks


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Conv3x3(nn.Conv2d):
    """taming's 3x3, stride-1, padding-1 convolution (same parameters, same
    state-dict names), which on a CPU can run through NNPACK's fast convolution
    once :meth:`VQGAN.fast_convolutions` switches it on: the same linear map to
    float rounding, fewer multiplications (:mod:`generators.vqgan_clip.nnpack_conv`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, 1, 1)
        self.nnpack = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nnpack and nnpack_conv.applies(x, self.weight, self.bias):
            return nnpack_conv.conv3x3(x, self.weight, self.bias)
        return super().forward(x)


# For each tap of a 4-tap, stride-2 transposed kernel: the taps of a 3-tap kernel
# that land on the same input pixel once the input is upsampled 2x (nearest).
_FOLDED_TAPS = ([2], [1, 2], [0, 1], [0])


def fold_upsample_conv(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution (padding 1) applied after 2x nearest upsampling, as the
    weight of one 4x4, stride-2, padding-1 transposed convolution on the small
    input: the same linear map (up to float rounding), with 2.25x fewer
    multiply-adds, because each upsampled pixel repeats an input pixel and the
    taps that read the same pixel are summed once instead of multiplied twice
    (the subpixel view of upsampling: Shi et al. 2016, Odena et al. 2016).
    ``weight`` (out, in, 3, 3) -> (in, out, 4, 4). Differentiable."""
    rows = torch.stack([weight[:, :, taps].sum(2) for taps in _FOLDED_TAPS], 2)
    return torch.stack([rows[:, :, :, taps].sum(3) for taps in _FOLDED_TAPS], 3).transpose(0, 1)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv3x3(channels, channels)
        # Set by VQGAN.fold_upsampling: same maths, fewer multiply-adds (fold_upsample_conv).
        self.folded = False
        self._fold_cache: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return F.conv_transpose2d(x, self._folded_kernel(), self.conv.bias, stride=2, padding=1)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def _folded_kernel(self) -> torch.Tensor:
        """The folded weight, in the model's memory layout. Kept while the
        weight is frozen and unchanged: folding the 512-channel kernel takes
        ~60 ms on a CPU, about 1.5 % of a step, for the same result every step."""
        weight = self.conv.weight
        channels_last = weight.is_contiguous(memory_format=torch.channels_last)
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, channels_last)
        if self._fold_cache is not None and self._fold_cache[0] == key and not weight.requires_grad:
            return self._fold_cache[1]
        kernel = fold_upsample_conv(weight)
        if channels_last:
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        self._fold_cache = None if weight.requires_grad else (key, kernel)
        return kernel


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # taming pads right and bottom only, then convolves with stride 2.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            # taming's VQModel always uses the 1x1 "nin" shortcut (conv_shortcut=False).
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, 1x1 convs for q, k, v."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = h.shape
        # (b, c, h, w) -> (b, 1, hw, c): one head; SDPA scales by 1/sqrt(c) as taming does.
        q, k, v = (t.reshape(b, 1, c, height * width).transpose(-1, -2) for t in (self.q(h), self.k(h), self.v(h)))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, height, width)
        return x + self.proj_out(out)


def _level() -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList()
    level.attn = nn.ModuleList()
    return level


def _mid(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = Conv3x3(cfg.in_channels, cfg.ch)
        in_mult = (1,) + cfg.ch_mult
        resolution = cfg.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level = _level()
            block_in, block_out = cfg.ch * in_mult[i], cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if resolution in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_in)
                resolution //= 2
            self.down.append(level)
        self.mid = _mid(block_in, cfg.dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = Conv3x3(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        resolution = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = Conv3x3(cfg.z_channels, block_in)
        self.mid = _mid(block_in, cfg.dropout)
        ups: list[nn.Module] = []
        for i in reversed(range(levels)):
            level = _level()
            block_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if resolution in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                resolution *= 2
            ups.insert(0, level)  # index i holds the level at resolution i, as in taming
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in)
        self.conv_out = Conv3x3(block_in, cfg.out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser (taming's ``VectorQuantizer2``, inference part),
    with the straight-through gradient used by VQGAN+CLIP."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each cell of ``z`` (b, c, h, w) -> (b, h, w)."""
        flat = z.movedim(1, -1).reshape(-1, self.embed_dim)
        codebook = self.embedding.weight
        # |z - e|^2 = |z|^2 + |e|^2 - 2 z.e, the expansion taming uses.
        distance = (
            flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        )
        return distance.argmin(1).reshape(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for (b, h, w) indices, as (b, c, h, w)."""
        return self.embedding(indices).movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Quantise ``z``; the gradient passes straight through to ``z``
        (van den Oord et al. 2017, as in taming's ``z + (z_q - z).detach()``)."""
        z_q = self.lookup(self.indices(z)).to(z.dtype)
        return z + (z_q - z).detach()


class VQGAN(nn.Module):
    """Encoder, quantiser and decoder with taming's ``VQModel`` state-dict names."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, image: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Image in [-1, 1] (b, 3, H, W) -> latent (b, embed_dim, H/f, W/f), quantised by default."""
        z = self.quant_conv(self.encoder(image))
        return self.quantize(z) if quantize else z

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latent -> image in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image))

    def fold_upsampling(self, on: bool = True) -> None:
        """Run the decoder's upsampling blocks as folded transposed convolutions
        (:func:`fold_upsample_conv`) or, with ``on=False``, as taming writes them.
        The weights and the state dict are the same either way."""
        for module in self.decoder.modules():
            if isinstance(module, Upsample):
                module.folded = on

    def fast_convolutions(self, on: bool = True) -> bool:
        """Let the 3x3 convolutions run through NNPACK's fast convolution where
        it pays (CPU, float32, feature maps of 64×64 and more, frozen weights:
        :func:`nnpack_conv.applies`) or, with ``on=False``, always through
        ``F.conv2d``. Returns whether NNPACK is there to be used: without it the
        switch changes nothing. NNPACK wants NCHW tensors; channels-last inputs
        are copied first, so switch the model to NCHW with it."""
        usable = on and nnpack_conv.available()
        for module in self.modules():
            if isinstance(module, Conv3x3):
                module.nnpack = usable
        return usable

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | Path, config_path: str | Path, *,
                        allow_full_unpickle: bool = False) -> "VQGAN":
        """Build the model from a taming config and load the weights strictly.

        ``ckpt_path`` is either the model store's ``.safetensors`` file or an
        official Lightning ``.ckpt`` (``{"state_dict": ...}``); see
        :func:`generators.models.checkpoints.load_state_dict` for what is
        unpickled when. Raises ``CorruptModel`` when the weights do not match
        the config, naming missing, unexpected and mis-shaped keys.
        """
        from generators.models.checkpoints import load_state_dict

        cfg = VQGANConfig.from_yaml(config_path)
        state = load_state_dict(ckpt_path, allow_full_unpickle=allow_full_unpickle)
        model = cls(cfg)
        model.load_official_state_dict(state, source=str(ckpt_path))
        return model.eval().requires_grad_(False)

    def load_official_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load strictly after dropping the ``loss.*`` training keys; any other
        difference (missing, unexpected, wrong shape) raises ``CorruptModel``."""
        state = inference_state_dict(state)
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(state))
            if tuple(state[k].shape) != tuple(own[k].shape)
        ]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
            if shapes:
                parts.append(f"{len(shapes)} with another shape (e.g. {'; '.join(shapes[:2])})")
            raise CorruptModel(
                f"VQGAN weights {source} do not match the config: {', '.join(parts)}"
            )
        self.load_state_dict(state, strict=True)


def inference_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's part of an official state dict: ``loss.*`` (LPIPS and
    discriminator weights used only in training) removed."""
    return {k: v for k, v in state.items() if not k.startswith("loss.")}
