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
   not be installed to read these files. The stub unpickler reads every pickle
   record of the file, the legacy (non-zip) format's header records included,
   resolves only plain names (never a dotted path such as ``f.__globals__``,
   which would reach any builtin), and refuses TorchScript archives, which
   ``torch.load`` would hand to ``torch.jit.load``.
4. A file that is neither a zip checkpoint nor a pickle (an HTML error page
   saved as ``last.ckpt``, say) is ``CorruptModel``, not ``UntrustedCheckpoint``:
   trusting it would not help.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from generators.errors import CorruptModel


def sha256_file(path: str | Path, chunk: int = 1 << 20, *, progress: Callable[[int], None] | None = None) -> str:
    """The file's sha256 in hex. ``progress`` gets the bytes read so far after
    every chunk: a model of gigabytes takes a while to hash, and the caller may
    want to show that work goes on."""
    digest = hashlib.sha256()
    read = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            read += len(block)
            if progress is not None:
                progress(read)
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
        if not _looks_like_torch_pickle(path):
            raise CorruptModel(
                f"checkpoint {path} is not a PyTorch checkpoint (it starts with {_head(path)!r})"
            ) from exc
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

def _head(path: Path, size: int = 16) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def _zip_names(path: Path) -> list[str] | None:
    """The member names of a zip file, or None when ``path`` is not a zip."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _looks_like_torch_pickle(path: Path) -> bool:
    """Whether ``path`` has the shape of a ``torch.save`` file: a zip holding
    ``data.pkl``, or a legacy stream that starts with a pickle protocol 2-5
    header. Tells "needs trust" apart from "is not a checkpoint at all"."""
    names = _zip_names(path)
    if names is not None:
        return any(n.rsplit("/", 1)[-1] == "data.pkl" for n in names)
    head = _head(path, 2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


# Globals a tensor checkpoint legitimately needs; everything else becomes a stub.
# Resolved here, never through ``pickle.Unpickler.find_class``, which imports
# modules and walks dotted attribute paths.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
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
    return type(str(name), (_Stub,), {"__module__": f"stub.{module}"})


class _StubUnpickler(pickle.Unpickler):
    """Builds tensors and plain containers; every other global a file names
    becomes a :class:`_Stub` subclass, so REDUCE / BUILD only ever call
    ``_Stub`` or the tensor-rebuilding functions listed above."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        # Only plain names: protocol 4 resolves "a.b.c" by walking attributes,
        # so "_rebuild_tensor.__builtins__.get" would hand out eval.
        if isinstance(name, str) and name.isidentifier():
            if module == "torch._utils" and name.startswith("_rebuild_"):
                found = getattr(torch._utils, name, None)
                if inspect.isfunction(found):
                    return found
            if module == "torch":
                found = getattr(torch, name, None)
                if isinstance(found, torch.dtype) or (isinstance(found, type) and name.endswith("Storage")):
                    return found
        return _stub_class(module, name)


def _stub_load(file: Any, **kwargs: Any) -> Any:
    return _StubUnpickler(file, **kwargs).load()


# torch.load takes a "pickle module": it subclasses our Unpickler for the main
# object (and handles persistent ids, the tensor storages, itself), and calls
# the module's ``load`` for the legacy format's other records (magic number,
# protocol, system info, storage keys). Both must be the stub unpickler: plain
# ``pickle.load`` there would run whatever the first record reduces to.
_stub_pickle = types.ModuleType("dstrtd_stub_pickle")
_stub_pickle.Unpickler = _StubUnpickler  # type: ignore[attr-defined]
_stub_pickle.load = _stub_load  # type: ignore[attr-defined]
_stub_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def _load_with_stubs(path: Path) -> Any:
    names = _zip_names(path)
    if names is not None and any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in names):
        # torch.load would pass it to torch.jit.load, which runs the archive's code.
        raise CorruptModel(f"checkpoint {path} is a TorchScript archive; only tensor checkpoints are read here")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stub_pickle)
    except Exception as exc:
        raise CorruptModel(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
