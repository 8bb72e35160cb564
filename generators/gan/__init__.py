"""Trained GANs: train on a folder of images, diagnose, sample.

Public API (the ``bot train / sample / dataset`` commands call only these):

- :func:`train` with a :class:`TrainConfig` — see :mod:`generators.gan.train`
- :func:`load_model`, :func:`sample`, :func:`sample_to_dir` — see :mod:`generators.gan.sample`
- :func:`make_crops` — random crops of one large image as a training set
- :func:`diagnose` — the failure-mode report of :mod:`generators.gan.diagnostics`
- ``ARCHS``, ``DEFAULT_ARCH``, ``ARCH_DEFAULTS``
"""

from generators.gan.data import make_crops
from generators.gan.diagnostics import diagnose
from generators.gan.models import ARCHS, DEFAULT_ARCH, ModelSpec
from generators.gan.sample import LoadedModel, load_model, sample, sample_to_dir
from generators.gan.train import ARCH_DEFAULTS, TrainConfig, TrainingStopped, train

__all__ = [
    "ARCHS",
    "ARCH_DEFAULTS",
    "DEFAULT_ARCH",
    "LoadedModel",
    "ModelSpec",
    "TrainConfig",
    "TrainingStopped",
    "diagnose",
    "load_model",
    "make_crops",
    "sample",
    "sample_to_dir",
    "train",
]
