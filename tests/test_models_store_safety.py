"""Checkpoint safety: no code in a checkpoint runs, whatever the format and
whoever vouches for the file.

Each malicious file tries to create a marker file while it is read; the test
asserts the marker never appears and the read either fails with a clear
``CorruptModel`` or returns the tensors. The payloads cover the two ways the
stub unpickler was bypassed: the legacy (non-zip) format's header records,
which ``torch.load`` read with plain ``pickle.load``, and protocol-4 dotted
names (``_rebuild_tensor.__builtins__.get``), which walk attributes to ``eval``.
"""

from __future__ import annotations

import builtins
import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from generators.errors import CorruptModel
from generators.models import KNOWN_MODELS, ModelSpec, ModelStore, SourceFile, register_known_model, sha256_file
from generators.models.checkpoints import UntrustedCheckpoint, load_state_dict
from generators.vqgan_clip.tiny import TINY_VQGAN_CONFIG, official_checkpoint, write_tiny_vqgan
from generators.vqgan_clip.vqgan import VQGAN
from test_models_store import _Server  # tests/ is on sys.path


class _OpenFile:
    """Reduces to ``builtins.open(marker, "w")``: unpickling it creates the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _short_str(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def _dotted_eval_pickle(marker: Path) -> bytes:
    """A protocol-4 pickle that asks for the global ``torch._utils``
    ``_rebuild_tensor.__builtins__.get`` (an allowed-looking name), fetches
    ``eval`` with it and calls it: plain find_class walks that dotted path."""
    code = f"open({str(marker)!r}, 'w').close()"
    return (b"\x80\x04" + _short_str("torch._utils") + _short_str("_rebuild_tensor.__builtins__.get") + b"\x93"
            + _short_str("eval") + b"\x85R" + _short_str(code) + b"\x85R.")


class _Anything(dict):
    """Whatever a record names, built from anything, holding nothing."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass


class _RecordSkipper(pickle.Unpickler):
    """Reads past one pickle record without building anything real."""

    def find_class(self, module, name):
        return _Anything

    def persistent_load(self, saved_id):
        return None


def _legacy_records(obj) -> list[bytes]:
    """The pickle records of a legacy (non-zip) ``torch.save`` of ``obj``:
    magic number, protocol, system info, the object, storage keys, (storages)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    raw = buffer.getvalue()
    stream, records, start = io.BytesIO(raw), [], 0
    for _ in range(5):
        _RecordSkipper(stream).load()
        records.append(raw[start:stream.tell()])
        start = stream.tell()
    records.append(raw[start:])  # storage bytes
    return records


def _legacy_payload_first(marker: Path, path: Path) -> Path:
    """A legacy checkpoint whose first record (read for the magic number)
    reduces to ``open(marker, "w")``; the rest is a real checkpoint."""
    records = _legacy_records(official_checkpoint(VQGAN(TINY_VQGAN_CONFIG)))
    path.write_bytes(pickle.dumps(_OpenFile(marker), protocol=2) + b"".join(records[1:]))
    return path


def _legacy_payload_main(marker: Path, path: Path) -> Path:
    """A legacy checkpoint whose main object is the dotted-name eval pickle."""
    records = _legacy_records({})
    path.write_bytes(b"".join(records[:3]) + _dotted_eval_pickle(marker) + b"".join(records[4:]))
    return path


def _zip_payload(marker: Path, path: Path) -> Path:
    """A zip checkpoint whose ``data.pkl`` is the dotted-name eval pickle."""
    buffer = io.BytesIO()
    torch.save(official_checkpoint(VQGAN(TINY_VQGAN_CONFIG)), buffer)
    buffer.seek(0)
    with zipfile.ZipFile(buffer) as original, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in original.infolist():
            data = original.read(info)
            out.writestr(info.filename, _dotted_eval_pickle(marker) if info.filename.endswith("/data.pkl") else data)
    return path


def _zip_lightning_payload(marker: Path, path: Path) -> Path:
    """A zip checkpoint with real weights and a callback object that reduces to open()."""
    data = official_checkpoint(VQGAN(TINY_VQGAN_CONFIG))
    data["callbacks"] = {"EvilCallback": _OpenFile(marker)}
    torch.save(data, path)
    return path


def _legacy_lightning_payload(marker: Path, path: Path) -> Path:
    data = official_checkpoint(VQGAN(TINY_VQGAN_CONFIG))
    data["callbacks"] = {"EvilCallback": _OpenFile(marker)}
    torch.save(data, path, _use_new_zipfile_serialization=False)
    return path


MALICIOUS = {
    "legacy_first_record": _legacy_payload_first,
    "legacy_dotted_name": _legacy_payload_main,
    "zip_dotted_name": _zip_payload,
    "zip_callback_object": _zip_lightning_payload,
    "legacy_callback_object": _legacy_lightning_payload,
}


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
def test_no_code_runs_from_a_malicious_checkpoint_even_when_trusted(tmp_path: Path, kind: str):
    marker = tmp_path / "pwned"
    path = MALICIOUS[kind](marker, tmp_path / "evil.ckpt")
    with pytest.raises(UntrustedCheckpoint, match="refusing"):
        load_state_dict(path)
    assert not marker.exists()
    try:
        state = load_state_dict(path, allow_full_unpickle=True)
    except CorruptModel as exc:
        assert str(path) in str(exc)
    else:  # a safe load: the weights, with the payload left as an inert stub
        assert "encoder.conv_in.weight" in state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert not marker.exists(), f"{kind}: the checkpoint ran code"


def test_a_torchscript_archive_is_not_handed_to_torch_jit_load(tmp_path: Path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CorruptModel, match="TorchScript"):
        load_state_dict(path, allow_full_unpickle=True)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.mark.parametrize("kind", ["legacy_first_record", "zip_dotted_name"])
def test_fetch_of_a_malicious_checkpoint_with_a_matching_published_sum_runs_no_code(tmp_path: Path, server, kind):
    # Even a file whose sum matches the published one (a compromised source)
    # goes through the stub unpickler only.
    marker = tmp_path / "pwned"
    evil = MALICIOUS[kind](marker, tmp_path / "evil.ckpt")
    _, config, _ = write_tiny_vqgan(tmp_path / "tiny")
    server.files = {"/evil/last.ckpt": evil.read_bytes(), "/evil/model.yaml": config.read_bytes()}
    spec = ModelSpec(name="evil_vqgan", kind="vqgan", description="", files=(
        SourceFile("checkpoint", server.url + "/evil/last.ckpt", "last.ckpt", sha256_file(evil)),
        SourceFile("config", server.url + "/evil/model.yaml", "model.yaml", sha256_file(config)),
    ))
    register_known_model(spec)
    store = ModelStore(tmp_path / "models")
    try:
        with pytest.raises(CorruptModel, match="cannot be read|holds no state dict"):
            store.fetch(spec.name)
    finally:
        KNOWN_MODELS.pop(spec.name, None)
    assert not marker.exists()
    assert store.entry(spec.name) is None and not (tmp_path / "models" / spec.name).exists()
    assert not (tmp_path / "models" / ".downloads" / spec.name).exists()  # not reused by the next try


def test_fetch_without_a_published_sum_never_unpickles_without_trust(tmp_path: Path, server):
    marker = tmp_path / "pwned"
    evil = _legacy_payload_first(marker, tmp_path / "evil.ckpt")
    _, config, _ = write_tiny_vqgan(tmp_path / "tiny")
    server.files = {"/evil/last.ckpt": evil.read_bytes(), "/evil/model.yaml": config.read_bytes()}
    spec = ModelSpec(name="evil_unverified", kind="vqgan", description="", files=(
        SourceFile("checkpoint", server.url + "/evil/last.ckpt", "last.ckpt"),
        SourceFile("config", server.url + "/evil/model.yaml", "model.yaml"),
    ))
    register_known_model(spec)
    store = ModelStore(tmp_path / "models")
    try:
        with pytest.raises(UntrustedCheckpoint, match=f"bot models fetch {spec.name} --trust"):
            store.fetch(spec.name)
        assert not marker.exists()
        with pytest.raises(CorruptModel):
            store.fetch(spec.name, trust=True)
    finally:
        KNOWN_MODELS.pop(spec.name, None)
    assert not marker.exists()
    assert store.entry(spec.name) is None


@pytest.mark.parametrize("kind", ["legacy_first_record", "legacy_dotted_name", "zip_dotted_name"])
def test_import_with_trust_of_a_malicious_checkpoint_runs_no_code(tmp_path: Path, kind: str):
    marker = tmp_path / "pwned"
    evil = MALICIOUS[kind](marker, tmp_path / "evil.ckpt")
    _, config, _ = write_tiny_vqgan(tmp_path / "tiny")
    store = ModelStore(tmp_path / "models")
    with pytest.raises(CorruptModel):
        store.import_files("evil", {"checkpoint": evil, "config": config}, kind="vqgan", trust=True)
    assert not marker.exists()
    assert store.entry("evil") is None
