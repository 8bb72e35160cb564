"""The ``vqgan-clip`` generator: registry glue around :mod:`generators.vqgan_clip.optimise`.

Configuration (``[generators.vqgan_clip]`` of bot.toml; every key can also be a
request option):

    vqgan = "vqgan_imagenet_f16_16384"   # model store name
    clip_model = "ViT-B-32-quickgelu"     # open_clip architecture
    clip_weights = "clip_vit_b_32_openai" # store name, a file path, or an open_clip tag
    profile = "auto"                      # "auto": "cpu" on a CPU, else "full"

Options (request ``options`` or config): ``iterations`` (hard cap), ``cutouts``,
``cut_power``, ``learning_rate``, ``candidates``, ``stop`` ("plateau"/"none"),
``stop_min_steps``, ``stop_window``, ``stop_min_delta``, ``snapshot_steps``,
``image_prompts`` ("path:weight | ..."), ``init_image``, ``init_weight``,
``width``/``height`` (else ``request.size`` square), ``time_budget_s``, ``fast``,
``precision``, ``compile``, ``profile``, ``max_side``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from generators.errors import InvalidRequest, ModelUnavailable
from generators.registry import GenerationRequest, GenerationResult, register_generator
from generators.vqgan_clip.cutouts import CutoutSettings
from generators.vqgan_clip.optimise import RunSettings, StopRule, optimise
from generators.vqgan_clip.prompts import parse_prompts

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
    "clip_model": "ViT-B-32-quickgelu",
    "clip_weights": "clip_vit_b_32_openai",
    "profile": "auto",
}
ALLOWED_OPTIONS = {
    "iterations", "cutouts", "cut_power", "learning_rate", "candidates", "stop", "stop_min_steps",
    "stop_window", "stop_min_delta", "snapshot_steps", "image_prompts", "init_image", "init_weight",
    "width", "height", "fast", "precision", "compile", "profile", "augment", "vqgan", "clip_model",
    "clip_weights", "max_side", "time_budget_s",
}


def resolve_device(name: str) -> torch.device:
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidRequest(f"device {name!r} is not a torch device; use auto, cpu or cuda[:N]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest(f"device {name!r}: CUDA is not available here; use auto or cpu")
    return device


def _number(options: dict[str, Any], key: str, kind: type, low: float, high: float | None = None) -> Any:
    value = options[key]
    try:
        number = kind(value)
        if isinstance(value, bool) or (kind is int and float(value) != number):
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidRequest(f"{key} {value!r} is not {'an integer' if kind is int else 'a number'}") from None
    if number < low or (high is not None and number > high):
        allowed = f">= {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(f"{key} {value!r} is out of range; allowed: {allowed}")
    return number


def _weighted_paths(spec: str, key: str) -> list[tuple[Path, float]]:
    items = []
    for item in parse_prompts(spec, argument=key):
        path = Path(item.text).expanduser()
        if not path.is_file():
            raise InvalidRequest(f"{key}: image file {str(path)!r} does not exist")
        items.append((path, item.weight))
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
    decoder activations kept for backward (~34 float maps of 128 channels at
    full resolution per candidate), CLIP activations (~45 MB per cutout in fp32),
    and ~1.2 GB of weights. bench/vqgan_clip.py prints it next to the measured peak."""
    bytes_per = 2 if device.type == "cuda" and settings.precision != "fp32" else 4
    pixels = settings.width * settings.height
    decoder = settings.candidates * pixels * 128 * bytes_per * 34
    clip = settings.candidates * settings.cutouts.count * 45_000_000 * bytes_per // 4
    return int(decoder + clip + 1.2e9)


class VQGANCLIPGenerator:
    """Optimise a VQGAN latent so that CLIP scores the image close to the prompts."""

    name = NAME

    def __init__(self, config: dict[str, Any]):
        self.config = {**DEFAULT_CONFIG, **config}
        self.models_dir = Path(self.config.get("models_dir", "models"))
        self._cache: dict[tuple, Any] = {}

    # 1. check inputs -----------------------------------------------------------
    def plan(self, request: GenerationRequest) -> dict[str, Any]:
        """Validate everything and return the resolved plan; raises before any work."""
        options = {k: v for k, v in self.config.items() if k in ALLOWED_OPTIONS}
        unknown = sorted(set(request.options) - ALLOWED_OPTIONS)
        if unknown:
            raise InvalidRequest(f"options {unknown} are not known; allowed: {', '.join(sorted(ALLOWED_OPTIONS))}")
        options.update(request.options)
        if request.model:  # the request's weights set names the VQGAN in the model store
            options["vqgan"] = request.model
        prompts = parse_prompts(request.prompts, argument="prompt")
        device = resolve_device(request.device)
        profile = options.get("profile", "auto")
        if profile not in ("auto", "cpu", "full"):
            raise InvalidRequest(f"profile {profile!r} is not allowed; use auto, cpu or full")
        if profile == "auto":
            profile = "cpu" if device.type == "cpu" else "full"
        options = {**(CPU_PROFILE if profile == "cpu" else FULL_PROFILE), **options}
        width = options.get("width", request.size)
        height = options.get("height", request.size)
        for key, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value % 16:
                raise InvalidRequest(f"size {key} {value!r} is not allowed; use a multiple of 16, at least 16")
        notes = []
        max_side = options.get("max_side")
        if max_side and max(width, height) > max_side:
            scale = max_side / max(width, height)
            new_w, new_h = max(16, int(width * scale) // 16 * 16), max(16, int(height * scale) // 16 * 16)
            notes.append(f"size {width}x{height} reduced to {new_w}x{new_h} by the {profile} profile "
                         "(set option profile='full' to keep it)")
            width, height = new_w, new_h
        for key in ("iterations", "cutouts", "candidates", "stop_min_steps", "stop_window"):
            if key in options:
                options[key] = _number(options, key, int, 1, 100_000)
        for key, low in (("cut_power", 0.0), ("learning_rate", 0.0), ("init_weight", 0.0), ("stop_min_delta", 0.0),
                         ("time_budget_s", 0.0)):
            if key in options:
                options[key] = _number(options, key, float, low)
        if options.get("stop", "plateau") not in ("plateau", "none"):
            raise InvalidRequest(f"stop {options['stop']!r} is not allowed; use plateau or none")
        if options.get("precision", "auto") not in ("auto", "fp32", "bf16"):
            raise InvalidRequest(f"precision {options['precision']!r} is not allowed; use auto, fp32 or bf16")
        if options.get("compile", "auto") not in ("auto", "on", "off"):
            raise InvalidRequest(f"compile {options['compile']!r} is not allowed; use auto, on or off")
        snapshot_steps = options.get("snapshot_steps", [])
        if isinstance(snapshot_steps, str):
            snapshot_steps = [s for s in snapshot_steps.replace(",", " ").split() if s]
        try:
            snapshot_steps = tuple(sorted({int(s) for s in snapshot_steps}))
        except (TypeError, ValueError):
            raise InvalidRequest(f"snapshot_steps {options.get('snapshot_steps')!r} must be step numbers") from None
        image_prompts = _weighted_paths(options["image_prompts"], "image_prompts") if options.get("image_prompts") else []
        init_image = options.get("init_image")
        if init_image and not Path(init_image).expanduser().is_file():
            raise InvalidRequest(f"init_image {init_image!r} does not exist")
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
                                   augment=bool(options.get("augment", True))),
            stop=stop, snapshot_steps=snapshot_steps, init_weight=options.get("init_weight", 0.0),
            time_budget_s=options.get("time_budget_s", 0.0),
            fast=bool(options.get("fast", True)), precision=options.get("precision", "auto"),
            compile=options.get("compile", "auto"),
        )
        need, have = estimate_memory(settings, device), _available_memory(device)
        if need > 0.9 * have:
            raise InvalidRequest(
                f"size {width}x{height} with {settings.cutouts.count} cutouts and {settings.candidates} "
                f"candidate(s) needs about {need / 2**30:.1f} GiB; {device} has {have / 2**30:.1f} GiB free. "
                "Use a smaller size, fewer cutouts or fewer candidates"
            )
        models = self._model_files(options)
        return {"prompts": prompts, "device": device, "settings": settings, "profile": profile, "notes": notes,
                "image_prompts": image_prompts, "init_image": init_image, "models": models}

    def check(self, request: GenerationRequest) -> None:
        self.plan(request)

    def _model_files(self, options: dict[str, Any]) -> dict[str, Any]:
        from generators.models.store import ModelStore
        from generators.vqgan_clip.clip_model import check_clip_name

        store = ModelStore(self.models_dir)
        vqgan_name = options.get("vqgan", DEFAULT_CONFIG["vqgan"])
        vqgan_paths = store.paths(vqgan_name)  # raises ModelUnavailable naming the fix
        clip_name = options.get("clip_model", DEFAULT_CONFIG["clip_model"])
        check_clip_name(clip_name)
        clip_weights = str(options.get("clip_weights", DEFAULT_CONFIG["clip_weights"]))
        entry = store.entry(clip_weights)
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
        started = time.perf_counter()
        vqgan, perceptor = self._load(plan["models"], plan["device"])
        load_s = time.perf_counter() - started
        settings: RunSettings = plan["settings"]
        image_prompts = [(_load_image(p, None), w) for p, w in plan["image_prompts"]]
        init = _load_image(Path(plan["init_image"]), (settings.width, settings.height)) if plan["init_image"] else None
        outcome = optimise(
            vqgan, perceptor, plan["prompts"], settings, seed=request.seed, device=plan["device"],
            image_prompts=[(img.to(plan["device"]), w) for img, w in image_prompts],
            init_image=init, progress=request.progress,
        )
        best = outcome.best
        parameters = {
            "prompts": request.prompts,
            "parsed_prompts": [{"text": p.text, "weight": p.weight} for p in plan["prompts"]],
            "seed": request.seed,
            "device": str(plan["device"]),
            "profile": plan["profile"],
            "image_prompts": [f"{p}:{w}" for p, w in plan["image_prompts"]],
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


def _store_names() -> set[str]:
    from generators.models.known import KNOWN_MODELS

    return set(KNOWN_MODELS)


def _load_image(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    """An image file as a (3, H, W) float tensor in [0, 1], optionally resized."""
    from PIL import Image
    import numpy as np

    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None:
            img = img.resize(size, Image.LANCZOS)
        array = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def factory(config: dict[str, Any]) -> VQGANCLIPGenerator:
    return VQGANCLIPGenerator(config)


register_generator(
    NAME,
    factory,
    "VQGAN + CLIP: optimise a VQGAN latent until CLIP scores the image close to the prompt "
    "(needs: bot models fetch vqgan_imagenet_f16_16384 clip_vit_b_32_openai)",
    label="VQGAN+CLIP, an image model (VQGAN) steered step by step until a text-image model (CLIP) "
    "matches it to the words that describe the scene",
)
