"""The model store (``models/``): fetch, import, verify; safe checkpoint reading."""

from generators.models.checkpoints import UntrustedCheckpoint, load_state_dict, sha256_file
from generators.models.known import KNOWN_MODELS, ModelSpec, SourceFile, register_known_model
from generators.models.store import ModelStore

__all__ = [
    "KNOWN_MODELS",
    "ModelSpec",
    "ModelStore",
    "SourceFile",
    "UntrustedCheckpoint",
    "load_state_dict",
    "register_known_model",
    "sha256_file",
]
