"""The VQGAN+CLIP optimisation loop (Crowson 2021; Esser et al. 2021; Radford et al. 2021).

Read it top to bottom in :func:`optimise`: a latent grid ``z`` (one per
candidate) is quantised to the nearest VQGAN codebook vectors, decoded to an
image, cut into augmented crops, scored by CLIP against the weighted prompts
with the spherical-distance loss, and moved by Adam. The loss of every step is
recorded; snapshots are kept at chosen steps; the loop stops at the hard cap or
earlier when :class:`StopRule` finds the curve has flattened.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from generators.host_memory import reuse_freed_memory
from generators.vqgan_clip import nnpack_conv
from generators.vqgan_clip.clip_model import Perceptor
from generators.vqgan_clip.cutouts import CutoutSettings, make_cutouts, make_cutouts_reference
from generators.vqgan_clip.prompts import WeightedPrompt, prompt_loss
from generators.vqgan_clip.vqgan import VQGAN

Progress = Callable[[int, int, dict[str, Any]], None]


@dataclass(frozen=True)
class StopRule:
    """Stop when the loss curve has flattened.

    After at least ``min_steps`` steps (and ``2 * window``), compare the mean
    loss of the last ``window`` steps with the mean of the ``window`` steps
    before them; stop when it fell by less than ``min_delta``. The loss is the
    mean over candidates. The defaults follow the seed's curves: 0.90 -> ~0.70
    in the first ~180 steps, then ~0.02 per 200 steps, i.e. about 0.005 per
    50 steps around step 250, so the rule stops near the 250-500 steps the seed
    recommends; ``min_delta = 0`` only stops when the loss stops falling at all.
    """

    min_steps: int = 150
    window: int = 50
    min_delta: float = 0.004

    def should_stop(self, curve: list[float]) -> bool:
        t = len(curve)
        if t < max(self.min_steps, 2 * self.window):
            return False
        recent = sum(curve[-self.window:]) / self.window
        previous = sum(curve[-2 * self.window:-self.window]) / self.window
        return previous - recent < self.min_delta


@dataclass
class RunSettings:
    width: int = 256
    height: int = 256
    iterations: int = 500  # hard cap
    learning_rate: float = 0.1  # Adam's step size on z: generate.py's default (Crowson's notebook: 0.05)
    candidates: int = 1
    cutouts: CutoutSettings = field(default_factory=CutoutSettings)
    stop: StopRule | None = field(default_factory=StopRule)
    snapshot_steps: tuple[int, ...] = ()
    init_weight: float = 0.0
    # Wall-clock cap in seconds (0 = none). The CPU profile sets one so that a post
    # never takes an hour on a busy machine; the step it stopped at is reported,
    # and iterations = that step reproduces the image.
    time_budget_s: float = 0.0
    # Speed switches (see docs/vqgan_clip.md): "fast" = batched cutouts,
    # channels-last (NCHW where NNPACK runs) and, on a CPU, the rewrites below
    # (same maths); "precision" "auto" = bf16 autocast on CUDA, fp32 elsewhere;
    # "compile" "auto" = torch.compile on CUDA only.
    fast: bool = True
    precision: str = "auto"
    compile: str = "auto"
    # The fast path's same-maths rewrites (folded upsampling, batch-first CLIP
    # tower, and on a CPU NNPACK's fast 3x3 convolutions in the decoder):
    # "auto" = on a CPU only, where they were measured; "on" / "off".
    rewrites: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["snapshot_steps"] = list(self.snapshot_steps)
        return data


@dataclass
class Outcome:
    image: Image.Image  # the best candidate
    best: int
    scores: list[float]  # final prompt loss of each candidate on the whole image (lower is better)
    curves: list[list[float]]  # per step, the loss of each candidate
    stop_step: int
    stopped_early: bool
    stop_reason: str  # "iterations" | "plateau" | "time budget"
    snapshots: dict[int, Image.Image]
    timings: dict[str, float]
    candidates: list[Image.Image]


class _ClampWithGrad(torch.autograd.Function):
    """Clamp to [0, 1] but let a gradient through where it points back into the
    range (Crowson's ``clamp_with_grad``), so saturated pixels can recover."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(0, 1)) >= 0)


def resolve_precision(settings: RunSettings, device: torch.device) -> torch.dtype:
    if settings.precision == "bf16" or (settings.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def rewrites_apply(settings: RunSettings, device: torch.device) -> bool:
    """Whether this run uses the fast path's same-maths rewrites (folded
    upsampling, batch-first CLIP tower, NNPACK convolutions on a CPU)."""
    return settings.fast and (settings.rewrites == "on" or (settings.rewrites == "auto" and device.type != "cuda"))


def compile_applies(settings: RunSettings, device: torch.device) -> bool:
    """Whether this run compiles the decoder and the image encoder (fast path only)."""
    return settings.fast and (settings.compile == "on" or (settings.compile == "auto" and device.type == "cuda"))


def nnpack_applies(settings: RunSettings, device: torch.device) -> bool:
    """Whether the decoder's large 3x3 convolutions run through NNPACK: a CPU
    run with the rewrites on and not compiled (the NNPACK op has no shape
    function, so torch.compile cannot trace it), in a torch build that has NNPACK."""
    return (device.type == "cpu" and rewrites_apply(settings, device) and not compile_applies(settings, device)
            and nnpack_conv.available())


def memory_format_for(settings: RunSettings, device: torch.device) -> torch.memory_format:
    """Channels-last in fast mode, which cuDNN's and oneDNN's convolutions
    prefer, except where NNPACK runs the decoder's large convolutions: it reads
    and writes NCHW, and on the 2-core build machine (torch 2.14) the decoder's
    forward+backward at 256 px took 2.0 s in NCHW with NNPACK against 2.8 s
    channels-last without it (and 2.9 s NCHW without it). An earlier
    measurement of the whole step had found channels-last 1.4x slower on
    this CPU; re-measure after a torch upgrade."""
    if not settings.fast or nnpack_applies(settings, device):
        return torch.contiguous_format
    return torch.channels_last


@contextlib.contextmanager
def backend_flags(settings: RunSettings, device: torch.device) -> Iterator[None]:
    """Set the CUDA backend flags for one run and put them back after it.

    The flags are process-wide: set and left on, they would change the
    numerics of whatever else runs in the process afterwards (GAN training,
    another generator). On CUDA: TF32 matmuls and convolutions (fp32 range,
    10-bit mantissa) unless ``precision`` is "fp32", which promises full fp32;
    cuDNN autotuning, which picks the fastest convolution algorithms (and so
    is one reason two CUDA runs differ, see docs/vqgan_clip.md). Nothing is
    touched for other devices."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved_tf32, saved_benchmark = _tf32_state(), cudnn.benchmark
    try:
        _set_tf32(saved_tf32[0], settings.precision != "fp32")
        cudnn.benchmark = True
        yield
    finally:
        _restore_tf32(saved_tf32)
        cudnn.benchmark = saved_benchmark


def _tf32_state() -> tuple[str, Any, Any]:
    """Which TF32 switches this process uses, and their values. torch 2.9+
    has ``fp32_precision`` beside the legacy ``allow_tf32``; once a process has
    set the new ones, reading the legacy ones raises, and setting both makes
    torch refuse to read either. So keep to whichever the process uses."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        return "legacy", matmul.allow_tf32, cudnn.allow_tf32
    except RuntimeError:
        return "precision", matmul.fp32_precision, cudnn.conv.fp32_precision


def _set_tf32(api: str, on: bool) -> None:
    value = on if api == "legacy" else ("tf32" if on else "ieee")
    _restore_tf32((api, value, value))


def _restore_tf32(state: tuple[str, Any, Any]) -> None:
    """Write a state of :func:`_tf32_state`'s shape back to its switches."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    api, matmul_value, conv_value = state
    if api == "legacy":
        matmul.allow_tf32, cudnn.allow_tf32 = matmul_value, conv_value
    else:
        matmul.fp32_precision, cudnn.conv.fp32_precision = matmul_value, conv_value


def prepare_models(vqgan: VQGAN, perceptor: Perceptor, settings: RunSettings, device: torch.device):
    """Move models to ``device`` in the layout the fast path wants; return the
    (possibly compiled) decode and image-embedding callables. The backend
    flags are :func:`backend_flags`'s business, around the whole run."""
    if device.type != "cuda" and settings.fast:
        reuse_freed_memory()  # a 256-px decode frees and re-maps hundreds of MiB a step otherwise
    vqgan.to(device=device, memory_format=memory_format_for(settings, device))
    # Same maths, fewer or larger matrix products; measured on a CPU only so far (docs/vqgan_clip.md).
    rewrite = rewrites_apply(settings, device)
    vqgan.fold_upsampling(rewrite)
    vqgan.fast_convolutions(nnpack_applies(settings, device))
    decode: Callable[[torch.Tensor], torch.Tensor] = vqgan.decode
    embed: Callable[[torch.Tensor], torch.Tensor] = functools.partial(perceptor.embed_images, batch_first=rewrite)
    if compile_applies(settings, device):
        decode = torch.compile(vqgan.decode, dynamic=False)
        embed = torch.compile(embed, dynamic=False)
    return decode, embed


def fit_to_area(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """An image prompt ``(3, h, w)`` in [0, 1] as the notebook cuts it
    (``resize_image``): aspect ratio kept, shrunk with Lanczos (PIL) to the
    output's area ``width * height`` when it is larger, and left as it is
    otherwise. Without this a large photo would be cut at its own resolution,
    so its cutouts would show small parts of it instead of most of it."""
    h, w = image.shape[-2:]
    ratio = w / h
    area = min(w * h, width * height)
    size = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
    if size == (w, h):
        return image
    resized = to_pil(image).resize(size, Image.LANCZOS)
    array = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)
    return array.permute(2, 0, 1).to(device=image.device, dtype=image.dtype)


def embed_prompts(perceptor: Perceptor, prompts: list[WeightedPrompt], image_prompts: list[tuple[torch.Tensor, float]],
                  cut: CutoutSettings, gen: torch.Generator,
                  output_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Text prompts embed directly; an image prompt is embedded as the mean
    distance over its own cutouts, i.e. ``count`` prompts of weight ``w / count``,
    cut from the image fitted to the output's area (``output_size`` = (width,
    height); :func:`fit_to_area`), as the notebook does."""
    embeds, weights = [], []
    if prompts:
        embeds.append(perceptor.embed_texts([p.text for p in prompts]))
        weights += [p.weight for p in prompts]
    with torch.no_grad():
        for image, weight in image_prompts:
            if output_size is not None:
                image = fit_to_area(image, *output_size)
            crops = make_cutouts(image[None], perceptor.input_size, cut, gen)
            embeds.append(perceptor.embed_images(crops))
            weights += [weight / crops.shape[0]] * crops.shape[0]
    device = perceptor.mean.device
    return torch.cat(embeds).float(), torch.tensor(weights, device=device, dtype=torch.float32)


def initial_latent(vqgan: VQGAN, settings: RunSettings, init_image: torch.Tensor | None,
                   gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Random codebook entries per cell (the notebook's one-hot @ codebook), or
    the quantised encoding of the init image; one latent per candidate."""
    f = vqgan.config.downsample_factor
    h, w = settings.height // f, settings.width // f
    with torch.no_grad():
        if init_image is None:
            indices = torch.randint(vqgan.config.n_embed, (settings.candidates, h, w), generator=gen, device=device)
            z = vqgan.quantize.lookup(indices)
        else:
            z = vqgan.encode(init_image[None].to(device) * 2 - 1).repeat(settings.candidates, 1, 1, 1)
    return z.float().contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def optimise(vqgan: VQGAN, perceptor: Perceptor, prompts: list[WeightedPrompt], settings: RunSettings, *,
             seed: int, device: torch.device, image_prompts: list[tuple[torch.Tensor, float]] | None = None,
             init_image: torch.Tensor | None = None, progress: Progress | None = None) -> Outcome:
    """Run the optimisation. On a CPU the same seed, settings and torch give
    the same image; on CUDA they do not (docs/vqgan_clip.md, Reproducibility)."""
    with backend_flags(settings, device):
        return _optimise(vqgan, perceptor, prompts, settings, seed=seed, device=device,
                         image_prompts=image_prompts, init_image=init_image, progress=progress)


def _optimise(vqgan: VQGAN, perceptor: Perceptor, prompts: list[WeightedPrompt], settings: RunSettings, *,
              seed: int, device: torch.device, image_prompts: list[tuple[torch.Tensor, float]] | None,
              init_image: torch.Tensor | None, progress: Progress | None) -> Outcome:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # 1. one random generator on the device drives init, cutouts and noise
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = resolve_precision(settings, device)
    decode, embed = prepare_models(vqgan, perceptor, settings, device)
    cut_size = perceptor.input_size
    cutter = make_cutouts if settings.fast else make_cutouts_reference
    memory_format = memory_format_for(settings, device)

    # 2. targets and starting point
    prompt_embeds, weights = embed_prompts(perceptor, prompts, image_prompts or [], settings.cutouts, gen,
                                           output_size=(settings.width, settings.height))
    z = initial_latent(vqgan, settings, init_image, gen, device).requires_grad_(True)
    z_start = z.detach().clone()
    codebook = vqgan.quantize.embedding.weight
    z_min = codebook.min(dim=0).values[None, :, None, None]
    z_max = codebook.max(dim=0).values[None, :, None, None]
    optimizer = torch.optim.Adam([z], lr=settings.learning_rate)

    def synth(latent: torch.Tensor) -> torch.Tensor:
        z_q = vqgan.quantize(latent).to(memory_format=memory_format)
        with _autocast(device, dtype):
            image = decode(z_q)
        return _ClampWithGrad.apply(image.float().add(1).div(2))

    def step_loss(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = synth(latent)
        crops = cutter(image, cut_size, settings.cutouts, gen)
        with _autocast(device, dtype):
            embeds = embed(crops)
        embeds = embeds.float().view(settings.candidates, settings.cutouts.count, -1)
        losses = prompt_loss(embeds, prompt_embeds, weights)
        if settings.init_weight:
            losses = losses + (latent - z_start).pow(2).mean(dim=(1, 2, 3)) * settings.init_weight / 2
        return losses, image

    timings["setup_s"] = time.perf_counter() - start

    # 3. the loop
    curves: list[list[float]] = []
    mean_curve: list[float] = []
    snapshots: dict[int, Image.Image] = {}
    loop_start = time.perf_counter()
    step, stopped_early, stop_reason = 0, False, "iterations"
    for step in range(1, settings.iterations + 1):
        optimizer.zero_grad(set_to_none=True)
        losses, image = step_loss(z)
        losses.sum().backward()
        optimizer.step()
        with torch.no_grad():
            z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
        values = losses.detach().float().cpu().tolist()
        curves.append(values)
        mean_curve.append(sum(values) / len(values))
        if step in settings.snapshot_steps:
            snapshots[step] = to_pil(image[int(torch.tensor(values).argmin())])
        if progress:
            progress(step, settings.iterations, {"loss": min(values)})
        if settings.stop is not None and settings.stop.should_stop(mean_curve):
            stopped_early, stop_reason = step < settings.iterations, "plateau"
            break
        if settings.time_budget_s and time.perf_counter() - loop_start > settings.time_budget_s:
            stopped_early, stop_reason = step < settings.iterations, "time budget"
            break
    timings["optimise_s"] = time.perf_counter() - loop_start
    timings["seconds_per_iteration"] = timings["optimise_s"] / max(step, 1)

    # 4. final images, scored on the whole (un-augmented) image; keep the best
    with torch.no_grad():
        final = synth(z)
        whole = F.interpolate(final, size=(cut_size, cut_size), mode="bilinear", antialias=True, align_corners=False)
        with _autocast(device, dtype):
            scores_t = prompt_loss(embed(whole).float()[:, None, :], prompt_embeds, weights)
        scores = scores_t.cpu().tolist()
    best = min(range(len(scores)), key=scores.__getitem__)
    images = [to_pil(img) for img in final]
    timings["total_s"] = time.perf_counter() - start
    return Outcome(
        image=images[best], best=best, scores=scores, curves=curves, stop_step=step,
        stopped_early=stopped_early, stop_reason=stop_reason, snapshots=snapshots, timings=timings, candidates=images,
    )
