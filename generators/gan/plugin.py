"""Registers the trained-GAN generator as ``gan`` (``bot post`` uses it when a
topic names ``generator = "gan"`` and a ``model``, e.g. ``hubble-128``).

Config (the ``[generators.gan]`` table of bot.toml plus ``models_dir``):
``model`` is the default model name (``hubble-128``) and ``weights`` the default
generator of a model folder (``best``, or ``last``: see ``bot sample --weights``).
A request's ``model`` is a folder under ``<models_dir>/gan/`` or a path to a model
folder; its options (a topic's ``[topics.NAME.options]``) may set ``weights``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from generators.errors import InvalidRequest
from generators.gan.models import MAX_SEED
from generators.gan.sample import MAX_OUTPUT_SIZE, WEIGHT_FILES, LoadedModel, check_model, drawn_images, load_model, native_scale, resolve_model_dir, upscale
from generators.registry import CALLER_KEYS, GenerationRequest, GenerationResult, register_generator

DEFAULT_MODEL = "hubble-128"
OPTIONS = ("weights",)  # what a topic's options may set for this generator
CONFIG_KEYS = ("model", "weights")  # [generators.gan] in bot.toml


class GanGenerator:
    """Samples one image per seed from a trained model folder, upscaled with Lanczos."""

    name = "gan"

    def __init__(self, config: dict[str, Any]):
        unknown = sorted(set(config) - set(CONFIG_KEYS) - CALLER_KEYS)
        if unknown:  # a misspelt setting was dropped without a word
            raise InvalidRequest(f"setting {unknown[0]!r} is not known to the gan generator; "
                                 f"allowed: {', '.join(CONFIG_KEYS)}")
        self.models_dir = Path(config.get("models_dir", "models"))
        self.default_model = str(config.get("model", DEFAULT_MODEL))
        self.default_weights = config.get("weights", "best")
        self._cache: dict[tuple[str, str, float], LoadedModel] = {}
        self._lock = threading.Lock()

    def _model_dir(self, request: GenerationRequest) -> Path:
        return resolve_model_dir(request.model or self.default_model, self.models_dir)

    def _weights(self, request: GenerationRequest) -> str:
        """Which generator of the model folder: the request's ``weights`` option or the config's."""
        unknown = sorted(set(request.options) - set(OPTIONS))
        if unknown:
            raise InvalidRequest(f"option {unknown[0]!r}: the gan generator takes only {', '.join(OPTIONS)}")
        weights = request.options.get("weights", self.default_weights)
        if weights not in WEIGHT_FILES:
            raise InvalidRequest(f"weights {weights!r}: choose one of {', '.join(WEIGHT_FILES)}")
        return weights

    def _load(self, model_dir: Path, weights: str) -> LoadedModel:
        """Load once per weights file version (keyed on its modification time)."""
        path = model_dir / WEIGHT_FILES[weights]
        key = (str(model_dir.resolve()), weights, path.stat().st_mtime)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = load_model(model_dir, weights)
            return self._cache[key]

    def check(self, request: GenerationRequest) -> None:
        """Bad size/seed/device -> InvalidRequest; no model -> ModelUnavailable
        (naming `bot train`); unreadable weights -> CorruptModel. No sampling."""
        if not (16 <= request.size <= MAX_OUTPUT_SIZE):
            raise InvalidRequest(f"size {request.size}: must be from 16 to {MAX_OUTPUT_SIZE} pixels")
        if not (0 <= request.seed <= MAX_SEED):
            raise InvalidRequest(f"seed {request.seed}: must be from 0 to {MAX_SEED}")
        if request.device not in ("auto", "cpu"):
            raise InvalidRequest(f"device {request.device!r}: the GAN generator samples on 'cpu' (or 'auto')")
        weights = self._weights(request)
        model_dir = self._model_dir(request)
        check_model(model_dir, weights)
        self._load(model_dir, weights)  # raises CorruptModel for broken weights or config

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """One sample for ``request.seed``, drawn at :func:`native_scale` and upscaled to ``request.size`` square."""
        self.check(request)
        started = time.perf_counter()
        if request.progress:
            request.progress(0, 1, {"stage": "sampling"})
        weights = self._weights(request)
        model = self._load(self._model_dir(request), weights)
        loaded = time.perf_counter()
        with torch.no_grad():
            drawn = drawn_images(model, [request.seed], native_scale(model.spec, request.size))[0]
        image = upscale(drawn, request.size)
        if request.progress:
            request.progress(1, 1, {"stage": "done"})
        done = time.perf_counter()
        return GenerationResult(
            image=image,
            seed=request.seed,
            generator=self.name,
            parameters={
                "model": str(model.path),
                "weights": weights,
                "arch": model.spec.arch,
                "native_size": model.spec.img_size,
                "drawn_size": drawn.width,
                "size": request.size,
                "upscaler": "lanczos",
                "z_dim": model.spec.z_dim,
                "device": "cpu",
            },
            models={"generator": {"name": model.path.name, "sha256": model.sha256}},
            timings={"load": loaded - started, "sample": done - loaded},
        )


def _factory(config: dict[str, Any]) -> GanGenerator:
    return GanGenerator(config)


register_generator(
    "gan",
    _factory,
    "A GAN trained with `bot train` (offline; default model hubble-128, galaxies of the Hubble Deep Field)",
    label="a generative adversarial network (GAN), two neural networks trained against each other "
    "on real photographs until one of them makes pictures the other can't tell apart",
)
