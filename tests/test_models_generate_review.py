"""A user's review of ``bot models`` and ``bot generate``: inputs that used to
give a traceback, change the store or overwrite an output before failing, and
downloads that failed for no fault of the file. Checkpoints are served from
127.0.0.1 only; the models are the tiny ones of generators/vqgan_clip/tiny.py."""

from __future__ import annotations

import errno
import gzip
import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from generators import GenerationRequest, InvalidRequest, get_generator
from generators.errors import CorruptModel, DownloadFailed
from generators.models import KNOWN_MODELS, ModelSpec, ModelStore, SourceFile, register_known_model, sha256_file
from generators.models import store as store_module
from generators.vqgan_clip import plugin
from generators.vqgan_clip.tiny import TINY_CLIP_NAME, write_tiny_clip, write_tiny_vqgan
from support import run_bot, vqgan_bot_config


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-review")
    ckpt, config, _ = write_tiny_vqgan(folder / "vqgan")
    return {"checkpoint": ckpt, "config": config, "clip": write_tiny_clip(folder / "clip")}


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the lock file aside) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".store.lock"}


def _request(seed: int = 0, device: str = "cpu", **options) -> GenerationRequest:
    base = {"iterations": 3, "cutouts": 2, "stop": "none"}
    request = GenerationRequest(prompts="coral reef", seed=seed, size=32, device=device, options={**base, **options})
    request.progress = lambda *a: pytest.fail("work started")
    return request


# ---------------------------------------------------------------- a local server with gzip and a pause


class _Server:
    """Serves ``files`` from memory. Compresses a body with gzip when the
    client accepts it (as nginx does for text types), and can hold a
    response half-way until ``release`` is set."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hold: set[str] = set()
        self.started = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                encoded = "gzip" in (self.headers.get("Accept-Encoding") or "")
                if encoded:
                    body = gzip.compress(body)
                self.send_response(200)
                if encoded:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.hold:  # the first request only
                    server.hold.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    server.started.set()
                    server.release.wait(30)
                    body = body[len(body) // 2:]
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tiny_files):
    """The tiny VQGAN as a known download with published sums, served locally."""
    server = _Server()
    server.files = {"/r/last.ckpt": tiny_files["checkpoint"].read_bytes(), "/r/model.yaml": tiny_files["config"].read_bytes()}
    spec = ModelSpec(name="review_tiny_vqgan", kind="vqgan", description="tiny", files=(
        SourceFile("checkpoint", server.url + "/r/last.ckpt", "last.ckpt", sha256_file(tiny_files["checkpoint"])),
        SourceFile("config", server.url + "/r/model.yaml", "model.yaml", sha256_file(tiny_files["config"])),
    ))
    register_known_model(spec)
    yield server, spec
    KNOWN_MODELS.pop(spec.name, None)
    server.close()


def test_a_download_the_server_compresses_is_not_taken_for_a_truncated_one(tmp_path, served):
    # Content-Length counts the gzip bytes and requests decodes them: the
    # byte count never matched, and every retry failed the same way.
    server, spec = served
    store = ModelStore(tmp_path / "models")
    store.fetch(spec.name)
    assert store.verify(spec.name)[0]["ok"]


def test_a_second_fetch_of_the_same_model_waits_for_none_and_corrupts_nothing(tmp_path, served):
    # Two fetches of one model appended to the same .part file.
    server, spec = served
    server.hold.add("/r/last.ckpt")
    store = ModelStore(tmp_path / "models")
    errors: list[BaseException] = []

    def first() -> None:
        try:
            store.fetch(spec.name)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert server.started.wait(30)
    try:
        with pytest.raises(DownloadFailed, match=f"another `bot models fetch` of {spec.name!r} is running"):
            ModelStore(tmp_path / "models").fetch(spec.name)
    finally:
        server.release.set()
        thread.join(60)
    assert not errors and store.verify(spec.name)[0]["ok"]


# ---------------------------------------------------------------- import under a known model's name


@pytest.mark.parametrize("known, files, kind", [
    ("clip_vit_b_32_openai", ("checkpoint", "config"), "vqgan"),
    ("vqgan_imagenet_f16_16384", ("clip",), "clip"),
])
def test_import_under_a_known_name_of_the_other_kind_is_refused(tmp_path, tiny_files, capsys, monkeypatch,
                                                                 known, files, kind):
    # A VQGAN installed as clip_vit_b_32_openai was listed as installed, made
    # `fetch` say "already installed", and failed every generate after loading.
    store = ModelStore(tmp_path / "models")
    paths = {("weights" if f == "clip" else f): tiny_files[f] for f in files}
    with pytest.raises(InvalidRequest, match=f"model '{known}' is a {KNOWN_MODELS[known].kind} model.*not {kind}"):
        store.import_files(known, paths, kind=kind, open_clip_name=TINY_CLIP_NAME, trust=True)
    assert not (tmp_path / "models").exists() or _snapshot(tmp_path / "models") == {}
    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "models"))
    args = (["--checkpoint", str(tiny_files["checkpoint"]), "--config", str(tiny_files["config"])] if kind == "vqgan"
            else ["--weights", str(tiny_files["clip"]), "--clip-model", "ViT-B-32-quickgelu"])
    code, _, err = run_bot(capsys, "models", "import", known, *args, "--trust")
    assert code == 2 and f"'{known}' is a {KNOWN_MODELS[known].kind} model" in err


# ---------------------------------------------------------------- a manifest of the wrong shape


@pytest.mark.parametrize("manifest", [
    "[]",
    '{"models": []}',
    '{"models": {"x": null}}',
    '{"models": {"x": {"kind": "vqgan"}}}',
    '{"models": {"x": {"kind": "vqgan", "files": {"weights": {"path": "../../etc/passwd", "sha256": "0"}}}}}',
])
def test_a_manifest_of_the_wrong_shape_is_reported_not_a_traceback(tmp_path, capsys, monkeypatch, manifest):
    root = tmp_path / "models"
    root.mkdir()
    (root / "manifest.json").write_text(manifest)
    with pytest.raises(CorruptModel, match="model manifest .*manifest.json"):
        ModelStore(root).list()
    monkeypatch.setenv("BOT_PATHS_MODELS", str(root))
    for command in (["list"], ["verify"]):
        code, _, err = run_bot(capsys, "models", *command)
        assert code == 1 and "model manifest" in err and "Traceback" not in err
    assert (root / "manifest.json").read_text() == manifest  # never overwritten


# ---------------------------------------------------------------- a full disk, file modes


def test_a_full_disk_during_import_is_a_message_and_leaves_the_store_as_it_was(tmp_path, tiny_files, capsys,
                                                                            monkeypatch):
    root = tmp_path / "models"
    ModelStore(root).import_files("mine", {"weights": tiny_files["clip"]}, kind="clip", open_clip_name=TINY_CLIP_NAME)
    before = _snapshot(root)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "_convert_clip", full)
    monkeypatch.setenv("BOT_PATHS_MODELS", str(root))
    code, _, err = run_bot(capsys, "models", "import", "mine", "--weights", str(tiny_files["clip"]),
                           "--clip-model", TINY_CLIP_NAME)
    assert code == 1 and "No space left on device" in err and "mine" in err
    assert _snapshot(root) == before and not list(root.glob(".tmp-*"))


def test_the_store_is_readable_by_others_as_any_new_file_would_be(tmp_path, tiny_files):
    # mkstemp/mkdtemp start owner-only: a store fetched on the host was
    # unreadable to the container's user (and to anyone but the fetcher).
    old = os.umask(0o022)
    try:
        store = ModelStore(tmp_path / "models")
        store.import_files("mine", {"weights": tiny_files["clip"]}, kind="clip", open_clip_name=TINY_CLIP_NAME)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "models" / "manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "models" / "mine").stat().st_mode) == 0o755


# ---------------------------------------------------------------- generate: models of the wrong kind


@pytest.mark.parametrize("options, match", [
    ({"vqgan": "tiny_clip"}, r"vqgan 'tiny_clip' is a clip model in the model store; .*vqgan model.*tiny_vqgan"),
    ({"clip_weights": "tiny_vqgan"}, r"clip_weights 'tiny_vqgan' is a vqgan model in the model store; .*clip"),
])
def test_a_store_model_of_the_wrong_kind_is_refused_before_loading(tiny_config, options, match):
    # Before: a KeyError traceback for the first, and for the second a check
    # that passed and a generate that failed after loading the models.
    config = {k: v for k, v in tiny_config.items() if k != "clip_model"}
    generator = get_generator("vqgan-clip", {**config, **options})
    with pytest.raises(InvalidRequest, match=match):
        generator.check(_request())
    assert not generator._cache


# ---------------------------------------------------------------- generate: seed and device


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_a_seed_torch_cannot_take_is_refused_by_the_check(generator, seed):
    # Before: "ValueError: Overflow when unpacking long long" after the models loaded.
    with pytest.raises(InvalidRequest, match=f"seed {seed} is out of range; allowed: "):
        generator.check(_request(seed=seed))


@pytest.mark.parametrize("device", ["meta", "mps", "xpu"])
def test_a_device_other_than_cpu_or_cuda_is_refused(device):
    with pytest.raises(InvalidRequest, match=f"device '{device}'.*use auto, cpu or cuda"):
        plugin.resolve_device(device)


def test_a_cuda_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InvalidRequest, match=r"device 'cuda:3'.*1 GPU.*cuda:0"):
        plugin.resolve_device("cuda:3")
    assert plugin.resolve_device("cuda:0") == torch.device("cuda:0")


def test_cli_generate_names_a_bad_seed_or_device_with_exit_2(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    config = vqgan_bot_config(tiny_config, tmp_path)
    base = ["--config", str(config), "generate", "--prompt", "reef", "--size", "32", "--iterations", "2",
            "--cutouts", "2", "--out", str(tmp_path / "out")]
    code, _, err = run_bot(capsys, *base, "--device", "meta")
    assert code == 2 and "device 'meta'" in err
    code, _, err = run_bot(capsys, *base, "--device", "cpu", "--seed", str(2**64))
    assert code == 2 and f"seed {2**64} is out of range" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- generate: never overwrite an earlier image


@pytest.mark.parametrize("earlier", ["image.png", "manifest.json", "loss_curve.png", "snapshots/step-00002.png"])
def test_generate_refuses_an_out_folder_holding_an_earlier_image(tiny_config, tmp_path, capsys, monkeypatch,
                                                                 earlier):
    # Before: the new image replaced the earlier one and its manifest (the only
    # record of how to make it again), and the earlier run's snapshots stayed
    # beside the new image as if they were its own.
    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    config = vqgan_bot_config(tiny_config, tmp_path)
    out = tmp_path / "out"
    (out / earlier).parent.mkdir(parents=True, exist_ok=True)
    (out / earlier).write_bytes(b"the earlier run's file")
    code, _, err = run_bot(capsys, "--config", str(config), "generate", "--prompt", "reef", "--size", "32",
                           "--iterations", "2", "--cutouts", "2", "--device", "cpu", "--out", str(out))
    assert code == 2 and f"--out '{out}'" in err and earlier.split("/")[0] in err
    assert (out / earlier).read_bytes() == b"the earlier run's file"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [earlier]


def test_generate_writes_into_an_existing_folder_without_an_earlier_image(tiny_config, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    config = vqgan_bot_config(tiny_config, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, stdout, _ = run_bot(capsys, "--config", str(config), "generate", "--prompt", "reef", "--size", "32",
                              "--iterations", "2", "--cutouts", "2", "--device", "cpu", "--seed", "1",
                              "--out", str(out), "--json")
    assert code == 0 and json.loads(stdout)["seed"] == 1
    assert (out / "image.png").is_file() and (out / "notes.txt").read_text() == "mine"


def test_import_refuses_clip_model_for_a_vqgan_instead_of_ignoring_it(tmp_path, tiny_files, capsys, monkeypatch):
    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "models"))
    code, _, err = run_bot(capsys, "models", "import", "mine", "--checkpoint", str(tiny_files["checkpoint"]),
                           "--config", str(tiny_files["config"]), "--clip-model", "ViT-B-16", "--trust")
    assert code == 2 and "--clip-model 'ViT-B-16' is only allowed with --weights" in err
    assert not (tmp_path / "models").exists()
