"""Image synthesis for DSTRTD: a registry of generators, usable as a library.

    from generators import get_generator, GenerationRequest
    result = get_generator("gan", {"models_dir": "models"}).generate(
        GenerationRequest(model="hubble-128", seed=7))

This package never imports ``bot``: it knows prompts, seeds, sizes and weights,
nothing about posting.
"""

from generators.errors import (
    CorruptModel,
    GeneratorError,
    InvalidRequest,
    ModelUnavailable,
    UnknownGenerator,
)
from generators.registry import (
    GenerationRequest,
    GenerationResult,
    Generator,
    generator_description,
    generator_label,
    generator_names,
    get_generator,
    register_generator,
)

__all__ = [
    "CorruptModel",
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "GeneratorError",
    "InvalidRequest",
    "ModelUnavailable",
    "UnknownGenerator",
    "generator_description",
    "generator_label",
    "generator_names",
    "get_generator",
    "register_generator",
]
