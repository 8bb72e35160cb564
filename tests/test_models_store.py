"""The model store: fetch from a local HTTP server (full, resumed, truncated,
wrong checksum), import, verify, and nothing half-written on failure."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from generators.errors import CorruptModel, InvalidRequest, ModelUnavailable
from generators.models import KNOWN_MODELS, ModelSpec, ModelStore, SourceFile, register_known_model, sha256_file
from generators.models import store as store_module
from generators.models.checkpoints import UntrustedCheckpoint
from generators.models.store import FetchOutcome
from generators.vqgan_clip.tiny import write_tiny_clip, write_tiny_vqgan
from generators.vqgan_clip.vqgan import VQGAN


class _Server:
    """Serves files from memory with Range support; can cut a response short.

    ``etags`` gives a file an ETag, and a Range request whose If-Range differs
    from it gets the whole file (200), as RFC 9110 says. ``range_mode`` makes a
    file misbehave on Range: ``"ignore"`` answers 200 with the whole file,
    ``"from_zero"`` answers 206 with the bytes from offset 0."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate_next: dict[str, int] = {}
        self.etags: dict[str, str] = {}
        self.range_mode: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.if_ranges: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                server.if_ranges.append((self.path, self.headers.get("If-Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                etag = server.etags.get(self.path)
                if_range = self.headers.get("If-Range")
                mode = server.range_mode.get(self.path)
                use_range = (bool(self.headers.get("Range")) and mode != "ignore"
                             and (if_range is None or if_range == etag))
                start = 0
                if use_range:
                    start = 0 if mode == "from_zero" else int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if etag:
                    self.send_header("ETag", etag)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                cut = server.truncate_next.pop(self.path, None)
                self.wfile.write(part if cut is None else part[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    ckpt, config, model = write_tiny_vqgan(folder / "vqgan")
    return {"checkpoint": ckpt, "config": config, "model": model, "clip": write_tiny_clip(folder / "clip")}


@pytest.fixture
def tiny_spec(server, tiny_files):
    """A known model served by the local server, with published sums."""
    ckpt, config = tiny_files["checkpoint"].read_bytes(), tiny_files["config"].read_bytes()
    server.files = {"/tiny/last.ckpt": ckpt, "/tiny/model.yaml": config}
    spec = ModelSpec(
        name="tiny_test_vqgan", kind="vqgan", description="tiny test model",
        files=(
            SourceFile("checkpoint", server.url + "/tiny/last.ckpt", "last.ckpt", sha256_file(tiny_files["checkpoint"])),
            SourceFile("config", server.url + "/tiny/model.yaml", "model.yaml", sha256_file(tiny_files["config"])),
        ),
    )
    register_known_model(spec)
    yield spec
    KNOWN_MODELS.pop(spec.name, None)


def _store_contents(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if ".downloads" not in p.parts and p.name != ".store.lock"}


def test_fetch_downloads_checks_converts_and_records(tmp_path, tiny_spec, tiny_files, server):
    store = ModelStore(tmp_path / "models")
    seen = []
    result = store.fetch(tiny_spec.name, progress=lambda done, total, info: seen.append((done, total)))
    assert result.outcome is FetchOutcome.INSTALLED
    assert seen and seen[-1][0] == seen[-1][1]
    paths = store.paths(tiny_spec.name)
    assert paths["weights"].suffix == ".safetensors"
    loaded = VQGAN.from_checkpoint(paths["weights"], paths["config"])
    for key, value in tiny_files["model"].state_dict().items():
        assert (loaded.state_dict()[key] == value).all(), key
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    recorded = manifest["models"][tiny_spec.name]
    assert recorded["files"]["weights"]["sha256"] == sha256_file(paths["weights"])
    assert recorded["original"]["checkpoint"]["sha256_verified"] is True
    assert result.entry == recorded
    assert not (tmp_path / "models" / ".downloads" / tiny_spec.name).exists()
    assert store.verify() == [{"name": tiny_spec.name, "ok": True, "problems": []}]
    listed = {row["name"]: row for row in store.list()}
    assert listed[tiny_spec.name]["installed"] and not listed["vqgan_imagenet_f16_16384"]["installed"]


def test_fetch_resumes_a_partial_download_with_range(tmp_path, tiny_spec, server):
    store = ModelStore(tmp_path / "models")
    body = server.files["/tiny/last.ckpt"]
    part = tmp_path / "models" / ".downloads" / tiny_spec.name / "last.ckpt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:1000])
    store.fetch(tiny_spec.name)
    assert ("/tiny/last.ckpt", "bytes=1000-") in server.requests
    assert store.verify()[0]["ok"]


def test_truncated_download_fails_clearly_keeps_the_store_clean_and_resumes(tmp_path, tiny_spec, server):
    store = ModelStore(tmp_path / "models")
    server.truncate_next["/tiny/last.ckpt"] = 500_000
    with pytest.raises(CorruptModel, match="truncated|broke off"):
        store.fetch(tiny_spec.name)
    assert _store_contents(tmp_path / "models") == set()  # no model folder, no manifest
    with pytest.raises(ModelUnavailable, match=f"bot models fetch {tiny_spec.name}"):
        store.paths(tiny_spec.name)
    part = tmp_path / "models" / ".downloads" / tiny_spec.name / "last.ckpt.part"
    kept = part.stat().st_size
    assert 0 < kept <= 500_000
    store.fetch(tiny_spec.name)  # the next fetch resumes from the kept part
    assert ("/tiny/last.ckpt", f"bytes={kept}-") in server.requests
    assert store.verify()[0]["ok"]


@pytest.fixture
def unverified_spec(tiny_spec):
    """The tiny model with no published sums, like the heibox checkpoints."""
    spec = ModelSpec(name="tiny_unverified", kind="vqgan", description="",
                     files=tuple(SourceFile(f.role, f.url, f.filename, None) for f in tiny_spec.files))
    register_known_model(spec)
    yield spec
    KNOWN_MODELS.pop(spec.name, None)


def test_fetch_without_a_published_sum_needs_trust_and_records_it_as_unverified(tmp_path, unverified_spec,
                                                                                tiny_spec, server):
    # The heibox checkpoints publish no sha256, so nobody vouches for the
    # pickle: without --trust it is refused (the download is kept for the
    # retry); with it, the sum is recorded as unverified.
    store = ModelStore(tmp_path / "models")
    # every message that names the fetch command names one that works
    assert f"run: bot models fetch {unverified_spec.name} --trust (or:" in store.missing_message(unverified_spec.name)
    assert f"run: bot models fetch {tiny_spec.name} (or:" in store.missing_message(tiny_spec.name)
    with pytest.raises(UntrustedCheckpoint, match=f"bot models fetch {unverified_spec.name} --trust"):
        store.fetch(unverified_spec.name)
    assert _store_contents(tmp_path / "models") == set()
    assert (tmp_path / "models" / ".downloads" / unverified_spec.name / "last.ckpt").is_file()
    entry = store.fetch(unverified_spec.name, trust=True).entry
    assert [r for r in server.requests if r[0] == "/tiny/last.ckpt"] == [("/tiny/last.ckpt", None)]  # not again
    assert entry["original"]["checkpoint"]["sha256_verified"] is False
    assert entry["original"]["checkpoint"]["sha256"] == tiny_spec.files[0].sha256


def test_checksum_mismatch_is_refused(tmp_path, tiny_spec, server):
    server.files["/tiny/last.ckpt"] = server.files["/tiny/last.ckpt"][:-10] + b"0123456789"
    store = ModelStore(tmp_path / "models")
    with pytest.raises(CorruptModel, match="sha256"):
        store.fetch(tiny_spec.name)
    assert _store_contents(tmp_path / "models") == set()


def test_config_mismatch_leaves_nothing_half_written(tmp_path, tiny_files):
    bad_config = tmp_path / "bad.yaml"
    data = yaml.safe_load(tiny_files["config"].read_text())
    data["model"]["params"]["ddconfig"]["ch"] = 64
    bad_config.write_text(yaml.safe_dump(data))
    store = ModelStore(tmp_path / "models")
    with pytest.raises(CorruptModel, match="do not match the config"):
        store.import_files("mine", {"checkpoint": tiny_files["checkpoint"], "config": bad_config}, kind="vqgan", trust=True)
    assert _store_contents(tmp_path / "models") == set()


def test_import_refuses_an_unknown_pickle_unless_trusted(tmp_path, tiny_files):
    store = ModelStore(tmp_path / "models")
    files = {"checkpoint": tiny_files["checkpoint"], "config": tiny_files["config"]}
    with pytest.raises(UntrustedCheckpoint):
        store.import_files("mine", files, kind="vqgan")
    assert _store_contents(tmp_path / "models") == set()
    store.import_files("mine", files, kind="vqgan", trust=True)
    assert store.verify("mine")[0]["ok"]


def test_import_clip_and_unknown_architecture(tmp_path, tiny_files):
    from generators.vqgan_clip.tiny import TINY_CLIP_NAME

    store = ModelStore(tmp_path / "models")
    store.import_files("clip", {"weights": tiny_files["clip"]}, kind="clip", open_clip_name=TINY_CLIP_NAME)
    assert store.entry("clip")["open_clip_name"] == TINY_CLIP_NAME
    with pytest.raises(InvalidRequest, match="not an open_clip architecture"):
        store.import_files("clip2", {"weights": tiny_files["clip"]}, kind="clip", open_clip_name="ViT-Nope-1")
    with pytest.raises(CorruptModel):  # tiny weights into a real architecture: shapes differ
        store.import_files("clip3", {"weights": tiny_files["clip"]}, kind="clip", open_clip_name="RN50")
    assert set(store.manifest()["models"]) == {"clip"}


def test_verify_detects_a_changed_file(tmp_path, tiny_files):
    store = ModelStore(tmp_path / "models")
    store.import_files("mine", {"checkpoint": tiny_files["checkpoint"], "config": tiny_files["config"]},
                       kind="vqgan", trust=True)
    weights = store.paths("mine")["weights"]
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    result = store.verify("mine")[0]
    assert not result["ok"] and "sha256" in result["problems"][0]


def test_unknown_model_name_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="known models"):
        ModelStore(tmp_path / "models").fetch("no_such_model")
    assert not (tmp_path / "models").exists()


def test_cli_models_list_json(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bot.cli import cli

    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "models"))
    run = CliRunner().invoke(cli, ["models", "list", "--json"], catch_exceptions=False)
    assert run.exit_code == 0
    names = {row["name"] for row in json.loads(run.output)}
    assert {"vqgan_imagenet_f16_16384", "vqgan_imagenet_f16_1024", "clip_vit_b_32_openai"} <= names


# ---------------------------------------------------------------- bad downloads are not reused


@pytest.mark.parametrize("bad", ["html_checkpoint", "broken_yaml"])
def test_a_download_that_fails_to_convert_is_deleted_and_downloaded_again(tmp_path, unverified_spec, server, bad):
    # No published sum and no Content-Length problem: only the conversion can
    # tell the file is wrong. It must not be reused by the next fetch.
    good = dict(server.files)
    if bad == "html_checkpoint":
        server.files["/tiny/last.ckpt"] = b"<!DOCTYPE html><html><body>Share link expired</body></html>"
        expected = "not a PyTorch checkpoint"
    else:
        server.files["/tiny/model.yaml"] = b"model: [unclosed"
        expected = "cannot read it"
    store = ModelStore(tmp_path / "models")
    with pytest.raises(CorruptModel, match=expected) as info:
        store.fetch(unverified_spec.name, trust=True)
    assert not isinstance(info.value, UntrustedCheckpoint)  # trusting the file would not help
    assert "were deleted" in str(info.value)
    assert not (tmp_path / "models" / ".downloads" / unverified_spec.name).exists()
    assert _store_contents(tmp_path / "models") == set()
    server.files = good
    store.fetch(unverified_spec.name, trust=True)
    assert store.verify()[0]["ok"]


def test_an_html_page_is_corrupt_not_untrusted(tmp_path, unverified_spec, server):
    server.files["/tiny/last.ckpt"] = b"<html>404</html>"
    with pytest.raises(CorruptModel, match="not a PyTorch checkpoint") as info:
        ModelStore(tmp_path / "models").fetch(unverified_spec.name)
    assert not isinstance(info.value, UntrustedCheckpoint)


def test_force_discards_earlier_downloads(tmp_path, tiny_spec, server):
    folder = tmp_path / "models" / ".downloads" / tiny_spec.name
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"a bad file left by an earlier try")
    (folder / "model.yaml.part").write_bytes(b"garbage")
    store = ModelStore(tmp_path / "models")
    store.fetch(tiny_spec.name, force=True)
    assert ("/tiny/last.ckpt", None) in server.requests and ("/tiny/model.yaml", None) in server.requests
    assert store.verify()[0]["ok"]


@pytest.mark.parametrize("mode", ["from_zero", "ignore"])
def test_resume_starts_over_when_the_server_does_not_send_the_bytes_asked_for(tmp_path, tiny_spec, server, mode):
    server.range_mode["/tiny/last.ckpt"] = mode
    part = tmp_path / "models" / ".downloads" / tiny_spec.name / "last.ckpt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files["/tiny/last.ckpt"][:1000])
    store = ModelStore(tmp_path / "models")
    store.fetch(tiny_spec.name)
    assert ("/tiny/last.ckpt", "bytes=1000-") in server.requests
    assert store.verify()[0]["ok"]


def test_resume_sends_if_range_and_restarts_when_the_file_changed(tmp_path, tiny_spec, tiny_files, server):
    good = server.files["/tiny/last.ckpt"]
    # First try: an older file of the same name, cut off half way.
    _, _, older = write_tiny_vqgan(tmp_path / "older", seed=1)
    older_bytes = (tmp_path / "older" / "last.ckpt").read_bytes()
    assert older_bytes != good
    server.files["/tiny/last.ckpt"] = older_bytes
    server.etags["/tiny/last.ckpt"] = '"v1"'
    server.truncate_next["/tiny/last.ckpt"] = 100_000
    store = ModelStore(tmp_path / "models")
    with pytest.raises(CorruptModel, match="truncated|broke off"):
        store.fetch(tiny_spec.name)
    # The file changes on the server before the resume.
    server.files["/tiny/last.ckpt"] = good
    server.etags["/tiny/last.ckpt"] = '"v2"'
    store.fetch(tiny_spec.name)
    assert ("/tiny/last.ckpt", '"v1"') in server.if_ranges
    assert store.verify()[0]["ok"]


# ---------------------------------------------------------------- fetch repairs a damaged install


@pytest.mark.parametrize("damage", ["deleted", "changed", "crash_between_renames"])
def test_fetch_installs_again_when_the_installed_files_are_damaged(tmp_path, tiny_spec, server, damage):
    store = ModelStore(tmp_path / "models")
    first = store.fetch(tiny_spec.name).entry
    weights = store.paths(tiny_spec.name)["weights"]
    if damage == "deleted":
        weights.unlink()
        with pytest.raises(ModelUnavailable, match=f"run: bot models fetch {tiny_spec.name}"):
            store.paths(tiny_spec.name)
    elif damage == "changed":
        weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
        assert not store.verify(tiny_spec.name)[0]["ok"]
    else:  # _install moved the old folder aside and died before the new one was renamed in
        aside = tmp_path / "models" / f".old-{tiny_spec.name}-crash"
        aside.mkdir()
        (tmp_path / "models" / tiny_spec.name).rename(aside / "x")
    again = store.fetch(tiny_spec.name)
    assert again.outcome is FetchOutcome.REINSTALLED
    assert again.entry["installed_at"] >= first["installed_at"] and store.verify()[0]["ok"]
    assert store.paths(tiny_spec.name)["weights"].is_file()
    assert not list((tmp_path / "models").glob(".old-*")) and not list((tmp_path / "models").glob(".tmp-*"))
    requests = len(server.requests)
    intact = store.fetch(tiny_spec.name)  # intact now: nothing downloaded
    assert intact.outcome is FetchOutcome.ALREADY_INSTALLED and intact.entry == store.entry(tiny_spec.name)
    assert len(server.requests) == requests


def _run_bot(capsys, monkeypatch, tmp_path, *args: str) -> tuple[int, str, str]:
    from bot.cli import main

    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "models"))
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_cli_fetch_reinstalls_a_damaged_model_and_says_when_nothing_was_done(tmp_path, tiny_spec, server,
                                                                               capsys, monkeypatch):
    code, out, _ = _run_bot(capsys, monkeypatch, tmp_path, "models", "fetch", tiny_spec.name)
    assert code == 0 and f"{tiny_spec.name}: installed" in out
    code, out, _ = _run_bot(capsys, monkeypatch, tmp_path, "models", "fetch", tiny_spec.name)
    assert code == 0 and f"{tiny_spec.name}: already installed" in out
    weights = tmp_path / "models" / tiny_spec.name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    code, out, _ = _run_bot(capsys, monkeypatch, tmp_path, "models", "verify")
    assert code == 1 and f"reinstall: bot models fetch {tiny_spec.name}" in out
    code, out, _ = _run_bot(capsys, monkeypatch, tmp_path, "models", "fetch", tiny_spec.name)
    assert code == 0 and f"{tiny_spec.name}: reinstalled" in out
    code, out, _ = _run_bot(capsys, monkeypatch, tmp_path, "models", "verify")
    assert code == 0 and f"{tiny_spec.name}: ok" in out


def _count_hashes(monkeypatch, root: Path) -> Counter:
    """Every sha256 the store takes from now on, by file path relative to ``root``."""
    hashed: Counter = Counter()
    real = store_module.sha256_file

    def counting(path, *args, **kwargs):
        hashed[Path(path).relative_to(root).as_posix()] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "sha256_file", counting)
    return hashed


def test_cli_fetch_hashes_each_installed_file_once(tmp_path, tiny_spec, server, capsys, monkeypatch):
    # A real model takes a while to hash: the CLI learns from fetch whether the
    # installed files were intact instead of checking them a second time.
    name = tiny_spec.name
    _run_bot(capsys, monkeypatch, tmp_path, "models", "fetch", name)
    weights, config = f"{name}/model.safetensors", f"{name}/config.yaml"
    hashed = _count_hashes(monkeypatch, tmp_path / "models")
    code, out, _ = _run_bot(capsys, monkeypatch, tmp_path, "models", "fetch", name)
    assert code == 0 and f"{name}: already installed" in out
    assert hashed == {weights: 1, config: 1}
    damaged = tmp_path / "models" / weights
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    hashed.clear()
    code, out, _ = _run_bot(capsys, monkeypatch, tmp_path, "models", "fetch", name)
    assert code == 0 and f"{name}: reinstalled" in out
    # The damaged install once to find the damage, each download once to check
    # it, and the new install once to record it in the manifest.
    assert hashed == {weights: 2, config: 2, f".downloads/{name}/last.ckpt": 1, f".downloads/{name}/model.yaml": 1}


def test_cli_fetch_without_a_published_sum_names_the_trust_flag(tmp_path, unverified_spec, server,
                                                                capsys, monkeypatch):
    code, _, err = _run_bot(capsys, monkeypatch, tmp_path, "models", "fetch", unverified_spec.name)
    assert code == 1 and f"bot models fetch {unverified_spec.name} --trust" in err
    code, out, _ = _run_bot(capsys, monkeypatch, tmp_path, "models", "fetch", unverified_spec.name, "--trust")
    assert code == 0 and f"{unverified_spec.name}: installed" in out


def test_paths_of_a_damaged_imported_model_names_the_import_command(tmp_path, tiny_files):
    store = ModelStore(tmp_path / "models")
    store.import_files("mine", {"checkpoint": tiny_files["checkpoint"], "config": tiny_files["config"]},
                       kind="vqgan", trust=True)
    store.paths("mine")["weights"].unlink()
    with pytest.raises(ModelUnavailable, match="run: bot models import mine --checkpoint CKPT --config YAML"):
        store.paths("mine")


# ---------------------------------------------------------------- CLIP import without an architecture


def test_import_of_an_unknown_clip_without_an_architecture_names_the_option(tmp_path, tiny_files, capsys,
                                                                            monkeypatch):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(InvalidRequest, match="--clip-model.*required.*'my_clip'|'my_clip'.*--clip-model.*required"):
        store.import_files("my_clip", {"weights": tiny_files["clip"]}, kind="clip")
    assert not (tmp_path / "models").exists() or _store_contents(tmp_path / "models") == set()
    code, _, err = _run_bot(capsys, monkeypatch, tmp_path, "models", "import", "my_clip",
                            "--weights", str(tiny_files["clip"]))
    assert code == 2 and "--clip-model is required" in err and "not an open_clip architecture" not in err
