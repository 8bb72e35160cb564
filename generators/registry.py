"""The generator registry: one way in for every image generator.

Built-in generators register themselves through :func:`register_generator`
exactly as a third-party plugin would (see ``_load_builtins`` and the
``dstrtd.generators`` entry-point group), in the spirit of simonw/llm's plugins.

A generator turns a :class:`GenerationRequest` into a :class:`GenerationResult`.
It knows prompts, seeds, sizes, devices and weights; it knows nothing about
posting, captions or Instagram.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from PIL import Image

from generators.errors import GeneratorError, UnknownGenerator

# A progress callback receives (step, total, info); info carries e.g. {"loss": 0.71}.
ProgressCallback = Callable[[int, int, dict[str, Any]], None]

# Keys a caller adds to every generator's configuration table, beside the
# user's settings: where the model store is, and what to call each value in
# messages (``bot generate`` passes its flags' names). A generator refusing
# unknown settings must accept these.
CALLER_KEYS = frozenset({"models_dir", "option_names"})


@dataclass
class GenerationRequest:
    """What a caller asks of a generator.

    ``prompts`` is the weighted prompt string of the VQGAN+CLIP convention
    (``"coral reef:1 | blurry:-0.5"``); GANs ignore it. ``model`` names the
    trained model (GAN) or the weights set (VQGAN) to use; ``None`` means the
    generator's configured default. ``options`` holds generator-specific
    settings (iterations, cutouts, stopping rule, ...), validated by the
    generator's ``check``.
    """

    prompts: str = ""
    seed: int = 0
    size: int = 480
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    progress: ProgressCallback | None = None


@dataclass
class GenerationResult:
    """What a generator returns: the image and everything needed to make it again.

    ``parameters`` are the settings actually used (after defaults were applied),
    ``models`` maps a model role (``"vqgan"``, ``"clip"``, ``"generator"``) to
    ``{"name": ..., "sha256": ...}``, ``timings`` are seconds per phase,
    ``loss_curve`` is one float per step when the method has one, and
    ``snapshots`` maps a step number to the image at that step.
    """

    image: Image.Image
    seed: int
    generator: str
    parameters: dict[str, Any]
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    loss_curve: list[float] | None = None
    loss_label: str = "loss"
    snapshots: dict[int, Image.Image] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    """The interface every registered generator offers."""

    name: str

    def check(self, request: GenerationRequest) -> None:
        """Raise :class:`generators.errors.GeneratorError` subclasses for a request
        that cannot run here (bad input, missing weights), before any work.

        ``ModelUnavailable`` must name the command that fixes it.
        """

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Make the image. Calls ``request.progress`` as work advances."""


# A factory builds a generator from its configuration table
# (``[generators.<name>]`` of bot.toml plus ``models_dir``).
GeneratorFactory = Callable[[dict[str, Any]], Generator]

_REGISTRY: dict[str, GeneratorFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}
_LABELS: dict[str, str] = {}
_lock = threading.Lock()
_loaded = False


def register_generator(name: str, factory: GeneratorFactory, description: str = "", label: str = "") -> None:
    """Make a generator available under ``name``. A second registration of the
    same name replaces the first, so a plugin can override a built-in.

    ``description`` is for people running the bot (``bot topics``, ``--help``);
    ``label`` is the short public phrase for what made an image, used in
    captions ("a VQGAN guided by CLIP"); it defaults to the name.
    """
    _REGISTRY[name] = factory
    _DESCRIPTIONS[name] = description
    _LABELS[name] = label


def _load_builtins() -> None:
    """Import the built-in generator modules (each calls ``register_generator``)
    and any installed plugins. Done lazily so that ``import generators`` stays cheap."""
    global _loaded
    with _lock:
        if _loaded:
            return
        for module in _BUILTIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:  # a built-in left out of a slim install
                if exc.name != module:
                    raise
        for entry_point in importlib.metadata.entry_points(group="dstrtd.generators"):
            entry_point.load()  # the plugin's module registers itself on import
        _loaded = True


# Built-ins are listed here, and each of these modules registers itself through
# ``register_generator``, the same path a plugin takes.
_BUILTIN_MODULES: list[str] = [
    "generators.gan.plugin",
    "generators.vqgan_clip.plugin",
]


def generator_names() -> list[str]:
    """Names of all registered generators, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def generator_description(name: str) -> str:
    _load_builtins()
    return _DESCRIPTIONS.get(name, "")


def generator_label(name: str) -> str:
    """The public phrase for what made an image, for captions."""
    _load_builtins()
    return _LABELS.get(name) or name


def get_generator(name: str, config: dict[str, Any] | None = None) -> Generator:
    """Build the generator registered as ``name`` with its configuration table.

    Raises :class:`UnknownGenerator` listing the valid names.
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise UnknownGenerator(
            f"unknown generator {name!r}; available: {', '.join(sorted(_REGISTRY)) or '(none)'}"
        )
    generator = _REGISTRY[name](dict(config or {}))
    if not isinstance(generator, object) or not hasattr(generator, "generate"):
        raise GeneratorError(f"generator {name!r} factory returned {generator!r}, not a generator")
    return generator
