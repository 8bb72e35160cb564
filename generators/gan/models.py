"""Generator and discriminator networks for every architecture ``bot train`` offers.

Architectures (``ARCHS``) and what each one implements:

- ``gan``: the original fully connected GAN (Goodfellow et al. 2014, "Generative
  Adversarial Nets"), as in eriklindernoren/PyTorch-GAN ``gan.py`` which the
  second seed trained on Hubble images: MLP generator with batch norm, MLP
  discriminator with a sigmoid output, binary cross-entropy.
- ``dcgan``: Radford et al. 2016, "Unsupervised Representation Learning with Deep
  Convolutional GANs": transposed-convolution generator with batch norm and
  ReLU, strided-convolution discriminator with LeakyReLU, BCE.
- ``wgan``: Arjovsky et al. 2017, "Wasserstein GAN": the DCGAN networks with a
  linear critic (no sigmoid), weight clipping and RMSprop.
- ``wgan-gp``: Gulrajani et al. 2017, "Improved Training of Wasserstein GANs":
  the same critic without batch norm (the gradient penalty is per sample) and
  a gradient penalty instead of clipping.
- ``diffaug``: the small-data recipe and the default. Discriminator with
  spectral normalisation (Miyato et al. 2018, "Spectral Normalization for GANs"),
  hinge loss (Lim & Ye 2017, "Geometric GAN"; Miyato et al. 2018), Differentiable
  Augmentation of real and fake images (Zhao et al. 2020, "Differentiable
  Augmentation for Data-Efficient GAN Training"), an exponential moving average
  of the generator weights used for sampling (Karras et al. 2018, "Progressive
  Growing of GANs"; Yazici et al. 2019, "The Unusual Effectiveness of Averaging in
  GAN Training"), and a resize-convolution generator (Odena et al. 2016,
  "Deconvolution and Checkerboard Artifacts").

Every network is built from ``ModelSpec`` alone, so a saved ``config.json``
rebuilds the same network for sampling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import spectral_norm

ARCHS = ("gan", "dcgan", "wgan", "wgan-gp", "diffaug")
DEFAULT_ARCH = "diffaug"
MIN_SIZE, MAX_SIZE = 32, 512
MAX_SEED = 2**63 - 1  # torch's manual_seed takes a signed 64-bit integer (training and sampling seeds)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the shape of the two networks.

    ``width`` is the channel count of the generator's last (full-resolution)
    block; the count doubles at every halving of the resolution up to
    ``max_width``. A checkpoint can only resume into the same spec.
    """

    arch: str = DEFAULT_ARCH
    img_size: int = 64
    z_dim: int = 128
    width: int = 32
    max_width: int = 256
    channels: int = 3
    latent_res: int = 1
    g_norm: str = "batch"
    patch_res: int = 1
    g_padding: str = "reflect"

    # ``latent_res`` > 1 (diffaug only) makes the latent spatial: z is read as a
    # (z_dim / latent_res², latent_res, latent_res) noise map, as in Spatial GAN
    # (Jetchev, Bergmann & Vollgraf 2016, "Texture Synthesis with Spatial GANs"):
    # for stationary images such as a star field each region of the image then
    # has its own noise and the generator learns local structure first.
    #
    # ``g_norm`` (diffaug only) is the generator's normalisation: "batch" (DCGAN)
    # or "none" (plain convolutions with LeakyReLU). Batch norm forces every
    # channel to zero mean and unit variance over the batch, so after the ReLU
    # about half of each feature map is lit: sparse images (a few small
    # galaxies on a black sky) come out as lit regions with contour-like edges.
    #
    # ``patch_res`` > 1 (diffaug only) makes the discriminator stop halving at
    # that resolution and score every patch of an R×R grid (PatchGAN, Isola et al.
    # 2017, "Image-to-Image Translation with Conditional Adversarial Networks";
    # Spatial GAN's discriminator is fully convolutional in the same way): for a
    # texture-like data set every image gives R² local verdicts instead of one.
    #
    # ``g_padding`` (diffaug only) pads the generator's 3x3 convolutions:
    # "reflect" (the default, and what older model folders used) or "circular".
    # Any padding that differs from the image's inside tells the network where
    # the border is; the Hubble run with reflect padding grew bright smears along
    # the borders after epoch 12 while its inside kept improving. With circular
    # padding the network works on a torus: it cannot tell a border pixel from
    # any other, so it cannot paint anything at the borders only (the images
    # tile seamlessly as a side effect).

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def channels_at(spec: ModelSpec, resolution: int) -> int:
    """Channels of the feature map at ``resolution``: ``width`` at full size,
    doubling with every halving, capped at ``max_width``."""
    return min(spec.max_width, spec.width * (spec.img_size // resolution))


def _resolutions(spec: ModelSpec) -> list[int]:
    """4, 8, ..., img_size."""
    return [2**k for k in range(2, int(math.log2(spec.img_size)) + 1)]


# --- generators -------------------------------------------------------------


class MLPGenerator(nn.Module):
    """Fully connected generator of the original GAN (PyTorch-GAN ``gan.py`` layout)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        hidden = [128, 256, 512, 1024]
        layers: list[nn.Module] = []
        previous = spec.z_dim
        for i, size in enumerate(hidden):
            layers.append(nn.Linear(previous, size))
            if i > 0:
                layers.append(nn.BatchNorm1d(size, 0.8))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            previous = size
        layers += [nn.Linear(previous, spec.channels * spec.img_size**2), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return self.net(z).view(z.shape[0], s.channels, s.img_size, s.img_size)


class NoiseInjection(nn.Module):
    """Per-pixel Gaussian noise times a learned per-channel weight, added after a
    convolution (Karras, Laine & Aila 2019, "A Style-Based Generator
    Architecture for GANs", section 3.2). It gives the generator a cheap source
    of stochastic detail: a field of small, independent galaxies cannot be
    grown from a 4x4 latent alone (our Hubble runs without it drew smooth
    contours). The noise comes from ``rng`` when set (sampling seeds it per
    image, so an image depends only on its seed) or from the global torch RNG.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, channels, 1, 1), 0.1))
        self.rng: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], 1, x.shape[2], x.shape[3])
        if self.rng is None:
            noise = torch.randn(shape, dtype=x.dtype, device=x.device)
        else:  # a sampling RNG lives on the CPU, so an image's noise is the same on every device
            noise = torch.randn(shape, generator=self.rng, dtype=x.dtype, device=self.rng.device).to(x.device)
        return x + self.weight * noise


def set_noise_rng(G: nn.Module, rng: torch.Generator | None) -> None:
    """Point every :class:`NoiseInjection` of ``G`` at ``rng`` (None: the global RNG)."""
    for module in G.modules():
        if isinstance(module, NoiseInjection):
            module.rng = rng


def _norm_act(spec: ModelSpec, channels: int) -> list[nn.Module]:
    """What follows each generator convolution: batch norm + ReLU (DCGAN), or
    LeakyReLU alone when ``spec.g_norm == "none"`` (see :class:`ModelSpec`)."""
    if spec.g_norm == "none":
        return [nn.LeakyReLU(0.2, inplace=True)]
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class ConvGenerator(nn.Module):
    """DCGAN generator: project z to 4x4, then double the resolution per block.

    ``resize_conv`` (the diffaug recipe) selects nearest-neighbour upsampling +
    3x3 convolution (Odena et al. 2016) instead of a 4x4 stride-2 transposed
    convolution (Radford et al. 2016), which avoids checkerboard artefacts on a
    dark sky, and adds noise injection at 16x16 and above.
    """

    def __init__(self, spec: ModelSpec, resize_conv: bool = False):
        super().__init__()
        self.spec = spec
        resolutions = _resolutions(spec)
        start = max(4, spec.latent_res)
        first = channels_at(spec, start)
        if spec.latent_res > 1:  # spatial latent (Spatial GAN): a 3x3 convolution of the noise map
            project: nn.Module = nn.Conv2d(spec.z_dim // spec.latent_res**2, first, 3, 1, 1, bias=False, padding_mode=spec.g_padding)
        else:
            project = nn.ConvTranspose2d(spec.z_dim, first, 4, 1, 0, bias=False)
        self.project = nn.Sequential(project, *_norm_act(spec, first))
        blocks: list[nn.Module] = []
        for res in [r for r in resolutions[1:] if r > start]:
            c_in, c_out = channels_at(spec, res // 2), channels_at(spec, res)
            if resize_conv:
                # not zero padding: it tells the network where the border is, and it
                # paints a frame there (seen on the Hubble model); see ModelSpec.g_padding
                up: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False, padding_mode=spec.g_padding)]
            else:
                up = [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
            noise = [NoiseInjection(c_out)] if resize_conv and res >= 16 else []
            blocks.append(nn.Sequential(*up, *noise, *_norm_act(spec, c_out)))
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Sequential(nn.Conv2d(spec.width, spec.channels, 3, 1, 1, padding_mode=spec.g_padding if resize_conv else "zeros"), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = self.spec.latent_res
        # a spatial latent may come as a larger noise map: the network is fully
        # convolutional, so it then draws a larger image (see sample.native_scale)
        x = self.project(z if z.dim() == 4 else z.view(z.shape[0], -1, r, r))
        return self.to_rgb(self.blocks(x))


# --- discriminators -----------------------------------------------------------


class MLPDiscriminator(nn.Module):
    """Fully connected discriminator of the original GAN; outputs logits."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(spec.channels * spec.img_size**2, 512),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 256),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(256, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class ConvDiscriminator(nn.Module):
    """Strided-convolution discriminator halving the resolution down to 4x4
    (one score per image), or down to ``spec.patch_res`` (a score per patch).

    ``norm`` is ``"batch"`` (DCGAN, WGAN), ``"none"`` (WGAN-GP: batch norm
    would couple the samples the gradient penalty treats separately) or
    ``"spectral"`` (every layer spectrally normalised, Miyato et al. 2018).
    The output is an unbounded score; the loss applies the sigmoid where the
    architecture has one (numerically stabler than a Sigmoid layer).
    """

    def __init__(self, spec: ModelSpec, norm: str = "batch"):
        super().__init__()
        wrap = spectral_norm if norm == "spectral" else (lambda m: m)
        layers: list[nn.Module] = [wrap(nn.Conv2d(spec.channels, spec.width, 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True)]
        last = max(4, spec.patch_res)
        for res in reversed([r for r in _resolutions(spec)[1:] if r // 2 >= last]):
            c_in, c_out = channels_at(spec, res), channels_at(spec, res // 2)
            layers.append(wrap(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm != "batch")))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        if spec.patch_res > 1:  # a score per patch, same grid size
            layers += [wrap(nn.Conv2d(channels_at(spec, last), 1, 3, 1, 1))]
        else:
            layers += [wrap(nn.Conv2d(channels_at(spec, 4), 1, 4, 1, 0))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = getattr(module, "weight_orig", module.weight)
        nn.init.normal_(weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_generator(spec: ModelSpec) -> nn.Module:
    """The generator of ``spec.arch``, initialised with the current torch RNG."""
    if spec.arch == "gan":
        net: nn.Module = MLPGenerator(spec)
    else:
        net = ConvGenerator(spec, resize_conv=spec.arch == "diffaug")
    net.apply(_init_weights)
    return net


def build_discriminator(spec: ModelSpec) -> nn.Module:
    """The discriminator (critic) of ``spec.arch``."""
    if spec.arch == "gan":
        net: nn.Module = MLPDiscriminator(spec)
    else:
        norm = {"dcgan": "batch", "wgan": "batch", "wgan-gp": "none", "diffaug": "spectral"}[spec.arch]
        net = ConvDiscriminator(spec, norm=norm)
    if spec.arch != "diffaug":  # spectral norm keeps PyTorch's default init (Miyato et al.)
        net.apply(_init_weights)
    return net
