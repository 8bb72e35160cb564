"""The ``vqgan-clip`` generator: registry glue around :mod:`generators.vqgan_clip.optimise`.

Configuration (``[generators.vqgan_clip]`` of bot.toml; every key can also be a
request option):

    vqgan = "vqgan_imagenet_f16_16384"   # model store name
    clip_weights = "clip_vit_b_32_openai" # store name, a file path, or an open_clip tag
    clip_model = "ViT-B-32-quickgelu"     # open_clip architecture; leave it out for store weights:
                                          # it defaults to the one the store recorded for them
    profile = "auto"                      # "auto": "cpu" on a CPU, else "full"

Options (request ``options`` or config): ``iterations`` (hard cap), ``cutouts``,
``cut_power``, ``learning_rate``, ``candidates``, ``stop`` ("plateau"/"none"),
``stop_min_steps``, ``stop_window``, ``stop_min_delta``, ``snapshot_steps``,
``image_prompts`` ("path:weight | ..."), ``init_image``, ``init_weight``,
``width``/``height`` (else ``request.size`` square), ``time_budget_s``, ``fast``,
``precision``, ``compile``, ``profile``, ``max_side`` (0 = no cap).

``option_names`` (config, set by a caller such as the CLI, not by people):
``{key: name}`` for error messages, so that they name what the user typed or
wrote (``{"iterations": "--iterations", "cutouts": "topics.reef.options.cutouts"}``).
Besides the options, the keys ``prompts``, ``size``, ``seed``, ``device`` and
``model`` name the request's fields. A key it leaves out is named as itself.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from generators.errors import InvalidRequest, ModelUnavailable
from generators.registry import CALLER_KEYS, GenerationRequest, GenerationResult, register_generator
from generators.vqgan_clip.cutouts import CutoutSettings
from generators.vqgan_clip.optimise import RunSettings, StopRule, nnpack_applies, optimise
from generators.vqgan_clip.prompts import parse_prompts

if TYPE_CHECKING:
    import PIL.Image

NAME = "vqgan-clip"
LOSS_LABEL = "spherical distance loss"

# Full profile: the seed's settings (480 px, 500 steps as the cap, plateau stop).
FULL_PROFILE: dict[str, Any] = {
    "iterations": 500, "cutouts": 32, "cut_power": 1.0, "stop_min_steps": 150,
}
# CPU profile: sized so that a post takes well under an hour on 2 cores
# (bench/results/vqgan_clip-cpu.json; docs/vqgan_clip.md has the arithmetic).
CPU_PROFILE: dict[str, Any] = {
    "iterations": 250, "cutouts": 16, "cut_power": 1.0, "stop_min_steps": 120, "max_side": 256,
    "time_budget_s": 40 * 60,
}
DEFAULT_CONFIG: dict[str, Any] = {
    "vqgan": "vqgan_imagenet_f16_16384",
    "clip_weights": "clip_vit_b_32_openai",
    "profile": "auto",
}
# The architecture for CLIP weights the store has no record of (a file path or an
# open_clip tag). Store weights use the architecture recorded at install time.
FALLBACK_CLIP_MODEL = "ViT-B-32-quickgelu"
ALLOWED_OPTIONS = {
    "iterations", "cutouts", "cut_power", "learning_rate", "candidates", "stop", "stop_min_steps",
    "stop_window", "stop_min_delta", "snapshot_steps", "image_prompts", "init_image", "init_weight",
    "width", "height", "fast", "precision", "compile", "profile", "augment", "vqgan", "clip_model",
    "clip_weights", "max_side", "time_budget_s",
}


def resolve_device(name: str, *, argument: str = "device") -> torch.device:
    """The torch device for ``--device``: auto, cpu or cuda[:N]. Other torch
    devices (meta, mps, xpu ...) and a GPU index past the last GPU are refused
    here: they passed the check before and failed after the models loaded.
    ``argument`` is what the messages call it (e.g. ``--device``)."""
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidRequest(f"{argument} {name!r} is not a torch device; use auto, cpu or cuda[:N]") from exc
    if device.type not in ("cpu", "cuda"):
        raise InvalidRequest(f"{argument} {name!r} is not supported; use auto, cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest(f"{argument} {name!r}: CUDA is not available here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InvalidRequest(f"{argument} {name!r}: this machine has {count} GPU(s); use auto, cuda or "
                             f"cuda:0 to cuda:{count - 1}")
    return device


# What torch.Generator.manual_seed accepts: a signed or an unsigned 64-bit integer.
SEED_RANGE = (-(2**63), 2**64 - 1)


def _check_seed(seed: Any, name: str = "seed") -> None:
    """A seed torch can take; a larger one failed with an OverflowError only
    after the models had loaded."""
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidRequest(f"{name} {seed!r} is not an integer; allowed: between {low} and {high}")
    if not low <= seed <= high:
        raise InvalidRequest(f"{name} {seed} is out of range; allowed: between {low} and {high}")


def _parse(value: Any, kind: type) -> Any:
    """``value`` as a finite ``kind`` (int or float); ``ValueError`` otherwise.
    Numeric strings are accepted (topics and config files may quote them);
    booleans, fractions for an int, NaN and infinity are not."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and not isinstance(value, int) and float(value) != number:
            raise ValueError  # 2.5 or "2.5" is not a step count
    except (TypeError, OverflowError):  # OverflowError: int(float("inf"))
        raise ValueError from None
    if not math.isfinite(number):
        raise ValueError
    return number


def _number(options: dict[str, Any], key: str, kind: type, low: float, high: float | None = None, *,
            name: str | None = None) -> Any:
    """``options[key]`` as a finite ``kind`` in ``[low, high]``. NaN is refused
    explicitly: every comparison with it is false, so it would pass the range
    check and then, e.g. as ``stop_min_delta``, keep the plateau rule from
    ever firing. Messages call it ``name`` (the key by default)."""
    value = options[key]
    name = name or key
    allowed = f">= {low}" if high is None else f"between {low} and {high}"
    try:
        number = _parse(value, kind)
    except ValueError:
        what = "an integer" if kind is int else "a finite number"
        raise InvalidRequest(f"{name} {value!r} is not {what}; allowed: {allowed}") from None
    if number < low or (high is not None and number > high):
        raise InvalidRequest(f"{name} {value!r} is out of range; allowed: {allowed}")
    return number


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _flag(options: dict[str, Any], key: str, default: bool, *, name: str | None = None) -> bool:
    """``options[key]`` as a boolean. ``bool("false")`` is True, so a quoted
    value from a topic or an environment variable must be read, not cast.
    Messages call it ``name`` (the key by default)."""
    value = options.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidRequest(f"{name or key} {value!r} is not a boolean; allowed: true or false")


def _side(key: str, value: Any) -> int:
    """A width or height in pixels: a whole multiple of 16 (the VQGAN's
    downsampling factor), at least 16."""
    allowed = "use a whole number of pixels that is a multiple of 16, at least 16"
    try:
        number = _parse(value, int)
    except ValueError:
        raise InvalidRequest(f"{key} {value!r} is not a whole number; {allowed}") from None
    if number < 16 or number % 16:
        raise InvalidRequest(f"{key} {value!r} is not allowed; {allowed}")
    return number


def _max_side(options: dict[str, Any], name: str = "max_side") -> int:
    """The profile's cap on the longest side: 0 (no cap) or at least 16."""
    max_side = _number(options, "max_side", int, 0, 100_000, name=name)
    if 0 < max_side < 16:
        raise InvalidRequest(f"{name} {options['max_side']!r} is out of range; allowed: 0 (no cap) or 16 to 100000")
    return max_side


def _snapshot_steps(raw: Any, iterations: int, *, name: str = "snapshot_steps",
                    iterations_name: str = "iterations") -> tuple[int, ...]:
    """Step numbers in ``1..iterations``: a step outside that range would never
    be reached, and the snapshot would be silently missing from the output."""
    allowed = f"whole step numbers from 1 to {iterations_name} ({iterations})"
    items = raw.replace(",", " ").split() if isinstance(raw, str) else raw
    if isinstance(items, int) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, (list, tuple, set)):
        raise InvalidRequest(f"{name} {raw!r} is not a list of steps; allowed: {allowed}")
    steps, bad = set(), []
    for item in items:
        try:
            steps.add(_number({"snapshot_steps": item}, "snapshot_steps", int, 1, iterations))
        except InvalidRequest:
            bad.append(item)
    if bad:
        raise InvalidRequest(f"{name} {raw!r}: {bad!r} not allowed; allowed: {allowed}")
    return tuple(sorted(steps))


def _read_image(key: str, path: Path) -> PIL.Image.Image:
    """The image file at ``path``, read once and decoded to RGB.

    A file that PIL cannot read is refused here, in ``plan``, before the
    models load (a minute on a CPU) and with the option's name, rather than as
    a traceback from the optimisation's setup; the plan keeps the decoded
    image, so ``generate`` uses what was checked without reading it again."""
    from PIL import Image

    if not path.is_file():
        raise InvalidRequest(f"{key}: image file {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # structure and chunk checksums, without decoding
        with Image.open(io.BytesIO(data)) as img:
            # verify() misses truncated pixel data, which decoding finds; it
            # also leaves the image unusable, hence a second open.
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error ... by format
        raise InvalidRequest(
            f"{key}: {str(path)!r} is not an image file that can be read ({type(exc).__name__}: {exc}); "
            "use a PNG, JPEG, WebP or other image PIL reads"
        ) from None


def _weighted_images(spec: str, key: str) -> list[tuple[Path, float, PIL.Image.Image]]:
    """Each ``path:weight`` of ``spec`` with its decoded image."""
    items = []
    for item in parse_prompts(spec, argument=key):
        path = Path(item.text).expanduser()
        items.append((path, item.weight, _read_image(key, path)))
    return items


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def estimate_memory(settings: RunSettings, device: torch.device) -> int:
    """Rough peak bytes of one optimisation step (f16 VQGAN, ViT-B/32 class CLIP):
    decoder activations kept for backward (~34 maps of 128 channels at full
    resolution per candidate), CLIP activations (~45 MB per cutout in fp32,
    half that under bf16 autocast), and ~1.2 GB of weights.
    bench/vqgan_clip.py prints it next to the measured peak.

    The decoder's maps count 4 bytes a value even under bf16 autocast:
    GroupNorm runs in fp32 there, and the residual sums of bf16 and fp32 stay
    fp32. Counting 2 bytes (as before) under-estimated an H100 run
    (bench/results/vqgan_clip-h100.json, bench/vqgan_clip.py, fast mode without
    compile): 4.56 GiB measured at 480x480 with 32 cutouts against 3.66
    estimated, 5.05 against 4.33 with 64 cutouts. With 4 bytes the estimate is
    5.52 and 6.19 GiB: above both, by about a fifth (those runs used ~3.2
    bytes a value). The CPU (fp32) estimate: 3.89 GB at 256x256 with 32
    cutouts (NNPACK's workspace included) against a 3.99 GB process peak,
    Python and its libraries included (bench/results/vqgan_clip-cpu.json).

    Where NNPACK runs the decoder's convolutions (a CPU fast path), its
    workspace comes on top and stays allocated: the transforms of the input
    and output tiles of the largest convolution (128 channels at full size,
    16x16 tiles that each cover 14x14 pixels) and of its kernel. Measured on
    the build machine after one such convolution: 126 MB kept at 256x256,
    298 MB at 480x480, 1.5 GB at 1024x1024; this counts 112, 338 and 1,453 MB."""
    clip_bytes = 2 if device.type == "cuda" and settings.precision != "fp32" else 4
    pixels = settings.width * settings.height
    decoder = settings.candidates * pixels * 128 * 4 * 34
    clip = settings.candidates * settings.cutouts.count * 45_000_000 * clip_bytes // 4
    workspace = 0
    if nnpack_applies(settings, device):
        tiles = math.ceil(settings.width / 14) * math.ceil(settings.height / 14)
        workspace = 2 * tiles * 256 * 128 * 4 + 128 * 128 * 256 * 4
    return int(decoder + clip + workspace + 1.2e9)


class VQGANCLIPGenerator:
    """Optimise a VQGAN latent so that CLIP scores the image close to the prompts."""

    name = NAME

    def __init__(self, config: dict[str, Any]):
        # a misspelt setting (iteration = 100) was dropped without a word
        unknown = sorted(set(config) - ALLOWED_OPTIONS - CALLER_KEYS)
        if unknown:
            raise InvalidRequest(f"setting {unknown[0]!r} is not known to the vqgan-clip generator; "
                                 f"allowed: {', '.join(sorted(ALLOWED_OPTIONS))}")
        self.config = {**DEFAULT_CONFIG, **config}
        self.models_dir = Path(self.config.get("models_dir", "models"))
        names = self.config.get("option_names") or {}
        if not isinstance(names, Mapping):
            raise InvalidRequest(f"option_names {names!r} is not allowed; use a table of option = name")
        self.option_names: dict[str, str] = {str(k): str(v) for k, v in names.items()}
        self._cache: dict[tuple, Any] = {}

    # 1. check inputs -----------------------------------------------------------
    def plan(self, request: GenerationRequest) -> dict[str, Any]:
        """Validate everything and return the resolved plan; raises before any work."""
        # Messages name each value as its user gave it (option_names), else by its key.
        names = dict(self.option_names)
        options = {k: v for k, v in self.config.items() if k in ALLOWED_OPTIONS}
        unknown = sorted(set(request.options) - ALLOWED_OPTIONS)
        if unknown:
            raise InvalidRequest(f"options {', '.join(names.get(k, k) for k in unknown)} are not known; "
                                 f"allowed: {', '.join(sorted(ALLOWED_OPTIONS))}")
        options.update(request.options)
        if request.model:  # the request's weights set names the VQGAN in the model store
            options["vqgan"] = request.model
            names["vqgan"] = names.get("model", "vqgan")
        prompts = parse_prompts(request.prompts, argument=names.get("prompts", "prompt"))
        _check_seed(request.seed, names.get("seed", "seed"))
        device = resolve_device(request.device, argument=names.get("device", "device"))
        profile = options.get("profile", "auto")
        if profile not in ("auto", "cpu", "full"):
            raise InvalidRequest(f"{names.get('profile', 'profile')} {profile!r} is not allowed; use auto, cpu or full")
        if profile == "auto":
            profile = "cpu" if device.type == "cpu" else "full"
        defaults = CPU_PROFILE if profile == "cpu" else FULL_PROFILE
        names.update({k: f"the {profile} profile's {k}" for k in defaults if k not in options})
        options = {**defaults, **options}

        def name(key: str) -> str:
            return names.get(key, key)

        # name what the value came from: an option, or the request's square size
        size = names.get("size", "size")
        width = (_side(names.get("width", "size width"), options["width"]) if "width" in options
                 else _side(size, request.size))
        height = (_side(names.get("height", "size height"), options["height"]) if "height" in options
                  else _side(size, request.size))
        for key in ("iterations", "cutouts", "candidates", "stop_min_steps", "stop_window"):
            if key in options:
                options[key] = _number(options, key, int, 1, 100_000, name=name(key))
        for key, low in (("cut_power", 0.0), ("learning_rate", 0.0), ("init_weight", 0.0), ("stop_min_delta", 0.0),
                         ("time_budget_s", 0.0)):
            if key in options:
                options[key] = _number(options, key, float, low, name=name(key))
        notes = []
        max_side = _max_side(options, name("max_side")) if options.get("max_side") is not None else 0
        if max_side and max(width, height) > max_side:
            scale = max_side / max(width, height)
            new_w, new_h = max(16, int(width * scale) // 16 * 16), max(16, int(height * scale) // 16 * 16)
            notes.append(f"size {width}x{height} reduced to {new_w}x{new_h} by the {profile} profile "
                         "(set option profile='full' to keep it)")
            width, height = new_w, new_h
        if options.get("stop", "plateau") not in ("plateau", "none"):
            raise InvalidRequest(f"{name('stop')} {options['stop']!r} is not allowed; use plateau or none")
        if options.get("precision", "auto") not in ("auto", "fp32", "bf16"):
            raise InvalidRequest(f"{name('precision')} {options['precision']!r} is not allowed; use auto, fp32 or bf16")
        if options.get("compile", "auto") not in ("auto", "on", "off"):
            raise InvalidRequest(f"{name('compile')} {options['compile']!r} is not allowed; use auto, on or off")
        snapshot_steps = _snapshot_steps(options.get("snapshot_steps", []), options["iterations"],
                                         name=name("snapshot_steps"), iterations_name=name("iterations"))
        image_prompts = (_weighted_images(options["image_prompts"], name("image_prompts"))
                         if options.get("image_prompts") else [])
        init_image = options.get("init_image")
        init_pixels = _read_image(name("init_image"), Path(init_image).expanduser()) if init_image else None
        stop = None
        if options.get("stop", "plateau") == "plateau":
            stop = StopRule(
                min_steps=options.get("stop_min_steps", StopRule.min_steps),
                window=options.get("stop_window", StopRule.window),
                min_delta=options.get("stop_min_delta", StopRule.min_delta),
            )
        settings = RunSettings(
            width=width, height=height, iterations=options["iterations"],
            learning_rate=options.get("learning_rate", 0.1), candidates=options.get("candidates", 1),
            cutouts=CutoutSettings(count=options["cutouts"], power=options["cut_power"],
                                   augment=_flag(options, "augment", True, name=name("augment"))),
            stop=stop, snapshot_steps=snapshot_steps, init_weight=options.get("init_weight", 0.0),
            time_budget_s=options.get("time_budget_s", 0.0),
            fast=_flag(options, "fast", True, name=name("fast")), precision=options.get("precision", "auto"),
            compile=options.get("compile", "auto"),
        )
        need, have = estimate_memory(settings, device), _available_memory(device)
        if need > 0.9 * have:
            raise InvalidRequest(
                f"size {width}x{height} with {settings.cutouts.count} cutouts and {settings.candidates} "
                f"candidate(s) needs about {need / 2**30:.1f} GiB; {device} has {have / 2**30:.1f} GiB free. "
                "Use a smaller size, fewer cutouts or fewer candidates"
            )
        models = self._model_files(options, name)
        return {"prompts": prompts, "device": device, "settings": settings, "profile": profile, "notes": notes,
                "image_prompts": image_prompts, "init_image": init_image, "init_pixels": init_pixels,
                "models": models}

    def check(self, request: GenerationRequest) -> None:
        self.plan(request)

    def _model_files(self, options: dict[str, Any], name: Callable[[str], str] = str) -> dict[str, Any]:
        """The store files (or open_clip tag) of the VQGAN and the CLIP;
        ``name(key)`` is what messages call an option."""
        from generators.models.store import ModelStore
        from generators.vqgan_clip.clip_model import check_clip_name

        store = ModelStore(self.models_dir)
        vqgan_name = options.get("vqgan", DEFAULT_CONFIG["vqgan"])
        vqgan_paths = store.paths(vqgan_name)  # raises ModelUnavailable naming the fix
        _check_kind(store, name("vqgan"), vqgan_name, "vqgan")
        clip_weights = str(options.get("clip_weights", DEFAULT_CONFIG["clip_weights"]))
        entry = store.entry(clip_weights)
        if entry is not None:
            _check_kind(store, name("clip_weights"), clip_weights, "clip")
        if options.get("clip_model") is not None:
            check_clip_name(options["clip_model"])  # an unknown name is the clearer error
        clip_name = _clip_architecture(options.get("clip_model"), clip_weights, (entry or {}).get("open_clip_name"),
                                       name)
        check_clip_name(clip_name)
        if entry is not None:
            clip_path: str = str(store.paths(clip_weights)["weights"])
            clip_sha = entry["files"]["weights"]["sha256"]
        elif Path(clip_weights).expanduser().is_file():
            from generators.models.checkpoints import sha256_file

            clip_path, clip_sha = str(Path(clip_weights).expanduser()), sha256_file(Path(clip_weights).expanduser())
        elif clip_weights in _store_names() or clip_weights.endswith((".safetensors", ".bin", ".pt", ".pth")):
            raise ModelUnavailable(store.missing_message(clip_weights))
        else:
            clip_path, clip_sha = clip_weights, f"open_clip pretrained tag {clip_weights}"
        vqgan_entry = store.entry(vqgan_name) or {}
        return {
            "vqgan": {"name": vqgan_name, "sha256": vqgan_entry["files"]["weights"]["sha256"],
                      "weights": str(vqgan_paths["weights"]), "config": str(vqgan_paths["config"])},
            "clip": {"name": f"{clip_name} ({clip_weights})", "sha256": clip_sha, "weights": clip_path,
                     "architecture": clip_name},
        }

    # 2. generate ---------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> GenerationResult:
        plan = self.plan(request)
        settings: RunSettings = plan["settings"]
        image_prompts = [(_to_tensor(image), w) for _, w, image in plan["image_prompts"]]
        init = (_to_tensor(plan["init_pixels"], (settings.width, settings.height))
                if plan["init_pixels"] is not None else None)
        out_of_memory = None
        try:
            started = time.perf_counter()
            vqgan, perceptor = self._load(plan["models"], plan["device"])
            load_s = time.perf_counter() - started
            outcome = optimise(
                vqgan, perceptor, plan["prompts"], settings, seed=request.seed, device=plan["device"],
                image_prompts=[(img.to(plan["device"]), w) for img, w in image_prompts],
                init_image=init, progress=request.progress,
            )
        except torch.cuda.OutOfMemoryError as exc:
            # Raised outside this block: the traceback holds the run's frames and
            # with them its GPU tensors, which must be freed before the bot goes on.
            out_of_memory = _out_of_memory_message(settings, plan["device"], exc)
        if out_of_memory is not None:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise InvalidRequest(out_of_memory)
        best = outcome.best
        parameters = {
            "prompts": request.prompts,
            "parsed_prompts": [{"text": p.text, "weight": p.weight} for p in plan["prompts"]],
            "seed": request.seed,
            "device": str(plan["device"]),
            "profile": plan["profile"],
            "image_prompts": [f"{p}:{w}" for p, w, _ in plan["image_prompts"]],
            "init_image": plan["init_image"],
            **settings.as_dict(),
            "torch": torch.__version__,
        }
        return GenerationResult(
            image=outcome.image,
            seed=request.seed,
            generator=NAME,
            parameters=parameters,
            models={role: {"name": m["name"], "sha256": m["sha256"]} for role, m in plan["models"].items()},
            timings={"load_s": load_s, **outcome.timings},
            loss_curve=[step[best] for step in outcome.curves],
            loss_label=LOSS_LABEL,
            snapshots=outcome.snapshots,
            extras={
                "stop_step": outcome.stop_step,
                "stopped_early": outcome.stopped_early,
                "stop_reason": outcome.stop_reason,
                "best_candidate": best,
                "candidate_scores": outcome.scores,
                "candidate_curves": [[step[i] for step in outcome.curves] for i in range(settings.candidates)]
                if settings.candidates > 1 else None,
                "notes": plan["notes"],
            },
        )

    def _load(self, models: dict[str, Any], device: torch.device):
        from generators.vqgan_clip.clip_model import load_clip
        from generators.vqgan_clip.vqgan import VQGAN

        key = (models["vqgan"]["weights"], models["clip"]["weights"], models["clip"]["architecture"], str(device))
        if key not in self._cache:
            self._cache.clear()
            vqgan = VQGAN.from_checkpoint(models["vqgan"]["weights"], models["vqgan"]["config"])
            perceptor = load_clip(models["clip"]["architecture"], models["clip"]["weights"], device)
            self._cache[key] = (vqgan.to(device), perceptor)
        return self._cache[key]


def _clip_architecture(requested: Any, weights: str, recorded: str | None,
                       name: Callable[[str], str] = str) -> str:
    """The open_clip architecture to build for ``weights``.

    For store weights it is the one the store converted them for
    (``open_clip_name`` in the entry): architectures that differ only in the
    activation (``ViT-B-32`` and ``ViT-B-32-quickgelu``) have the same
    state-dict keys, so the wrong one would load strictly and silently compute
    something else. An explicit ``clip_model`` that disagrees is refused."""
    if not recorded:
        return FALLBACK_CLIP_MODEL if requested is None else requested
    if requested is None or requested == recorded:
        return recorded
    raise InvalidRequest(
        f"{name('clip_model')} {requested!r} does not match {name('clip_weights')} {weights!r}, which the model "
        f"store installed for the open_clip architecture {recorded!r}; leave {name('clip_model')} out (it "
        f"defaults to the store's) or set it to {recorded!r}"
    )


def _check_kind(store: Any, key: str, name: str, kind: str) -> None:
    """Refuse a store model of the other kind (a CLIP named as ``vqgan``, or
    the reverse) before anything loads: it failed with a KeyError, or only
    once the weights did not fit the network."""
    found = (store.entry(name) or {}).get("kind")
    if found != kind:
        same_kind = sorted(row["name"] for row in store.list() if row["installed"] and row["kind"] == kind)
        raise InvalidRequest(
            f"{key} {name!r} is a {found} model in the model store; {key} needs a {kind} model "
            f"(installed: {', '.join(same_kind) or 'none'}; see bot models list)"
        )


def _store_names() -> set[str]:
    from generators.models.known import KNOWN_MODELS

    return set(KNOWN_MODELS)


def _out_of_memory_message(settings: RunSettings, device: torch.device, exc: BaseException) -> str:
    """What ran out, the estimate it passed, and what to lower."""
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "CUDA out of memory"
    return (
        f"size {settings.width}x{settings.height} with {settings.cutouts.count} cutouts and "
        f"{settings.candidates} candidate(s) ran out of memory on {device} (estimated "
        f"{estimate_memory(settings, device) / 2**30:.1f} GiB; {detail}). Use a smaller size, fewer cutouts "
        "or fewer candidates, or free the GPU of other work"
    )


def _to_tensor(image: PIL.Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB image as a (3, H, W) float tensor in [0, 1], resized to ``size`` when given."""
    from PIL import Image
    import numpy as np

    if size is not None:
        image = image.resize(size, Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def factory(config: dict[str, Any]) -> VQGANCLIPGenerator:
    return VQGANCLIPGenerator(config)


register_generator(
    NAME,
    factory,
    "VQGAN + CLIP: optimise a VQGAN latent until CLIP scores the image close to the prompt "
    "(needs: bot models fetch --trust vqgan_imagenet_f16_16384 clip_vit_b_32_openai)",
    label="VQGAN+CLIP, an image model (VQGAN) steered step by step until a text-image model (CLIP) "
    "matches it to the words that describe the scene",
)
