"""Reading checkpoint files without running code from them.

Pickle-based checkpoints (``.ckpt``, ``.pt``, ``.bin``) can execute arbitrary code
when unpickled. The policy here:

1. ``.safetensors`` files are read with safetensors (no code at all). The model
   store keeps every model in this form, so run time loads safetensors only.
2. Any other file is first read with ``torch.load(weights_only=True)``, which
   accepts tensors and plain containers and refuses everything else.
3. Official Lightning ``.ckpt`` files also carry training-callback objects that
   (2) refuses. Those are unpickled only when the caller vouches for the file
   (``allow_full_unpickle=True``: the store does so only when the file's sha256
   matches a known official checkpoint, or the user imported it with
   ``--trust``), and even then through :class:`_StubUnpickler`, which builds
   tensors but turns every other class into an inert placeholder: nothing
   named in the file is ever called. That is also why pytorch-lightning need
   not be installed to read these files.
"""

from __future__ import annotations

import collections
import hashlib
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from generators.errors import CorruptModel


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class UntrustedCheckpoint(CorruptModel):
    """A pickle checkpoint that needs a full unpickle, from a source nobody vouched for."""


def load_state_dict(path: str | Path, *, allow_full_unpickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as a flat ``{name: tensor}`` dict (the
    ``state_dict`` entry of a Lightning checkpoint when there is one).

    Raises ``CorruptModel`` for a missing, truncated or unreadable file and
    :class:`UntrustedCheckpoint` when only a full unpickle could read it and
    ``allow_full_unpickle`` is false.
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptModel(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_full_unpickle:
            raise UntrustedCheckpoint(
                f"checkpoint {path} holds objects besides tensors and is not a known official "
                f"checkpoint (sha256 {sha256_file(path)[:16]}...); refusing to unpickle it. "
                "If you trust it: bot models import --trust ..."
            ) from exc
        data = _load_with_stubs(path)
    except Exception as exc:  # truncated zip, garbage bytes, ...
        raise CorruptModel(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    return _tensors_of(data, path)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CorruptModel(f"checkpoint {path} is not a readable safetensors file ({exc})") from exc


def _tensors_of(data: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CorruptModel(f"checkpoint {path} holds no state dict of tensors")
    return {str(k): v for k, v in data.items()}


# --------------------------------------------------------------------- stub unpickling

# Globals a tensor checkpoint legitimately needs; everything else becomes a stub.
_ALLOWED_MODULE_PREFIXES = ("torch._utils",)
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._tensor", "_rebuild_from_type_v2"): None,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}


class _Stub:
    """Stands in for any class a checkpoint names (Lightning callbacks, argparse
    namespaces, numpy scalars...). Accepts any construction and state; does nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_Stub":
        return _Stub(*args)


def _stub_class(module: str, name: str) -> type:
    return type(name, (_Stub,), {"__module__": f"stub.{module}"})


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key] or super().find_class(module, name)
        if module.startswith(_ALLOWED_MODULE_PREFIXES) and name.startswith("_rebuild"):
            return super().find_class(module, name)
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        return _stub_class(module, name)


# torch.load takes a "pickle module": it subclasses our Unpickler and handles
# persistent ids (tensor storages) itself.
_stub_pickle = types.ModuleType("dstrtd_stub_pickle")
_stub_pickle.Unpickler = _StubUnpickler  # type: ignore[attr-defined]
_stub_pickle.load = pickle.load  # type: ignore[attr-defined]
_stub_pickle.__name__ = "dstrtd_stub_pickle"


def _load_with_stubs(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stub_pickle)
    except Exception as exc:
        raise CorruptModel(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
