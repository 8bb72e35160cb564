"""Follow-up to the review of ``bot models`` and ``bot generate``: progress on
long steps (never on --json's stdout), errors that name the flag or setting
the user gave, a re-import that would change a model's kind, and outputs
that a full disk leaves half-written. The models are the tiny ones of
generators/vqgan_clip/tiny.py; nothing is downloaded."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import bot.cli.models as models_cli
import bot.store
from generators import get_generator
from generators.errors import InvalidRequest
from generators.models import KNOWN_MODELS, ModelSpec, ModelStore, SourceFile, register_known_model
from generators.models.store import FetchOutcome
from generators.vqgan_clip.tiny import TINY_CLIP_NAME, write_tiny_clip, write_tiny_vqgan
from support import run_bot, vqgan_bot_config, write_test_templates


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-followup")
    ckpt, config, _ = write_tiny_vqgan(folder / "vqgan")
    return {"checkpoint": ckpt, "config": config, "clip": write_tiny_clip(folder / "clip")}


@pytest.fixture
def bars_shown(monkeypatch):
    """Draw the CLI's progress bars although stderr is not a terminal here."""
    real = models_cli.progress_bar
    monkeypatch.setattr(models_cli, "progress_bar", lambda label, enabled=None, **kwargs: real(label, enabled=True, **kwargs))


def _vqgan_args(tiny_files) -> list[str]:
    return ["--checkpoint", str(tiny_files["checkpoint"]), "--config", str(tiny_files["config"])]


# ---------------------------------------------------------------- 1. progress on long steps


def test_import_reports_hashing_and_converting(tmp_path, tiny_files):
    seen: list[tuple[int, int, dict]] = []
    ModelStore(tmp_path / "models").import_files(
        "mine", {"checkpoint": tiny_files["checkpoint"], "config": tiny_files["config"]}, kind="vqgan",
        trust=True, progress=lambda done, total, info: seen.append((done, total, dict(info))))
    steps = [info["step"] for _, _, info in seen]
    assert steps[0] == "hashing" and "converting" in steps and steps[-1] == "hashing"
    converted = [(done, total) for done, total, info in seen if info["step"] == "converting"]
    assert converted[0][0] == 0 and converted[-1][0] == converted[-1][1] > 0
    assert all(0 <= done <= total for done, total, _ in seen)


def test_cli_import_shows_a_progress_bar_on_stderr(tmp_path, tiny_files, capsys, monkeypatch, bars_shown):
    # A checkpoint of about 1 GB was read, hashed and converted with nothing on screen.
    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "models"))
    code, out, err = run_bot(capsys, "models", "import", "mine", *_vqgan_args(tiny_files), "--trust")
    assert code == 0 and out.startswith("mine: installed")
    assert "importing mine" in err and "step=hashing" in err and "step=converting" in err


def test_cli_verify_json_keeps_progress_off_stdout(tmp_path, tiny_files, capsys, monkeypatch, bars_shown):
    ModelStore(tmp_path / "models").import_files("mine", {"weights": tiny_files["clip"]}, kind="clip",
                                                 open_clip_name=TINY_CLIP_NAME)
    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "models"))
    code, out, err = run_bot(capsys, "models", "verify", "--json")
    assert code == 0 and json.loads(out) == [{"name": "mine", "ok": True, "problems": []}]
    assert "verifying" in err and "step=checking" in err


@pytest.fixture
def installed_known(tmp_path, tiny_files):
    """A known model, installed by import (its URLs are never asked for)."""
    spec = ModelSpec(name="followup_tiny_vqgan", kind="vqgan", description="tiny", files=(
        SourceFile("checkpoint", "http://127.0.0.1:9/last.ckpt", "last.ckpt", ""),
        SourceFile("config", "http://127.0.0.1:9/model.yaml", "model.yaml", ""),
    ))
    register_known_model(spec)
    ModelStore(tmp_path / "models").import_files(
        spec.name, {"checkpoint": tiny_files["checkpoint"], "config": tiny_files["config"]}, trust=True)
    yield spec
    KNOWN_MODELS.pop(spec.name, None)


def test_fetch_reports_checking_an_installed_model(tmp_path, installed_known, capsys, monkeypatch, bars_shown):
    # "already installed" came after hashing the whole model in silence.
    seen: list[dict] = []
    result = ModelStore(tmp_path / "models").fetch(installed_known.name,
                                                   progress=lambda done, total, info: seen.append(dict(info)))
    assert result.outcome is FetchOutcome.ALREADY_INSTALLED
    assert seen and {info["step"] for info in seen} == {"checking"}
    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "models"))
    code, out, err = run_bot(capsys, "models", "fetch", installed_known.name)
    assert code == 0 and f"{installed_known.name}: already installed" in out
    assert "step=checking" in err and "step=checking" not in out


# ---------------------------------------------------------------- 2. errors name the flag or the setting


def _generate(capsys, config: Path, out: Path, *args: str) -> tuple[int, str, str]:
    return run_bot(capsys, "--config", str(config), "generate", "--prompt", "reef", "--device", "cpu",
                   "--out", str(out), *args)


@pytest.mark.parametrize("args, expected", [
    (["--size", "32", "--iterations", "2", "--snapshot", "5"], "--snapshot [5]: [5] not allowed; allowed: whole "
                                                                "step numbers from 1 to --iterations (2)"),
    (["--size", "32", "--iterations", "0"], "--iterations 0 is out of range"),
    (["--size", "40x32", "--iterations", "2"], "--size width 40 is not allowed"),
    (["--size", "32", "--snapshot", "999"], "allowed: whole step numbers from 1 to the cpu profile's iterations (250)"),
])
def test_generate_errors_name_the_flag(tiny_config, tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    code, _, err = _generate(capsys, vqgan_bot_config(tiny_config, tmp_path), tmp_path / "out", *args)
    assert code == 2 and expected in err
    assert "snapshot_steps" not in err
    assert not (tmp_path / "out").exists()


def test_generate_errors_name_the_bot_toml_setting(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    config = vqgan_bot_config(tiny_config, tmp_path)
    config.write_text(config.read_text() + "cutouts = 0\n")
    code, _, err = _generate(capsys, config, tmp_path / "out", "--size", "32")
    assert code == 2 and "generators.vqgan_clip.cutouts 0 is out of range" in err
    code, _, err = _generate(capsys, config, tmp_path / "out", "--size", "32", "--cutouts", "-1")
    assert code == 2 and "--cutouts -1 is out of range" in err  # the flag wins over the setting


def test_generate_errors_name_the_topic_setting(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    templates = write_test_templates(tmp_path / "templates", "vqgan-clip", (("reef", "Reef"),))
    topics = templates / "topics.toml"
    topics.write_text(topics.read_text() + "\n[topics.reef.options]\nsize = 40\nstop_window = 0\n")
    monkeypatch.setenv("BOT_PATHS_TEMPLATES", str(templates))
    config = vqgan_bot_config(tiny_config, tmp_path)
    code, _, err = run_bot(capsys, "--config", str(config), "generate", "--topic", "reef", "--device", "cpu",
                           "--out", str(tmp_path / "out"))
    assert code == 2 and "topics.reef.options.size 40 is not allowed" in err
    code, _, err = run_bot(capsys, "--config", str(config), "generate", "--topic", "reef", "--size", "32",
                           "--device", "cpu", "--out", str(tmp_path / "out"))
    assert code == 2 and "topics.reef.options.stop_window 0 is out of range" in err


def test_the_generator_names_options_as_its_caller_says_and_by_key_otherwise(tiny_config):
    from generators import GenerationRequest

    request = GenerationRequest(prompts="reef", size=32, device="cpu", options={"iterations": 0})
    with pytest.raises(InvalidRequest, match="^iterations 0 is out of range"):
        get_generator("vqgan-clip", tiny_config).check(request)
    named = get_generator("vqgan-clip", {**tiny_config, "option_names": {"iterations": "steps"}})
    with pytest.raises(InvalidRequest, match="^steps 0 is out of range"):
        named.check(request)


# ---------------------------------------------------------------- 3. a re-import may not change the kind


def test_reimport_under_the_other_kind_is_refused_and_changes_nothing(tmp_path, tiny_files, capsys, monkeypatch):
    # The model silently became a VQGAN, and every setting that named it as
    # clip_weights failed only once the weights were loaded.
    root = tmp_path / "models"
    store = ModelStore(root)
    store.import_files("mine", {"weights": tiny_files["clip"]}, kind="clip", open_clip_name=TINY_CLIP_NAME)
    before = (root / "manifest.json").read_bytes(), (root / "mine" / "model.safetensors").read_bytes()
    with pytest.raises(InvalidRequest, match="model 'mine' is installed as a clip model, not vqgan; .*another name"):
        store.import_files("mine", {"checkpoint": tiny_files["checkpoint"], "config": tiny_files["config"]},
                           kind="vqgan", trust=True)
    monkeypatch.setenv("BOT_PATHS_MODELS", str(root))
    code, _, err = run_bot(capsys, "models", "import", "mine", *_vqgan_args(tiny_files), "--trust")
    assert code == 2 and "'mine' is installed as a clip model, not vqgan" in err
    assert ((root / "manifest.json").read_bytes(), (root / "mine" / "model.safetensors").read_bytes()) == before
    # the same kind again is an update, as before
    code, out, _ = run_bot(capsys, "models", "import", "mine", "--weights", str(tiny_files["clip"]),
                           "--clip-model", TINY_CLIP_NAME)
    assert code == 0 and out.startswith("mine: installed")


# ---------------------------------------------------------------- 4. a full disk while writing the outputs


@pytest.mark.parametrize("existing", [False, True])
def test_a_full_disk_while_writing_outputs_is_a_message_and_leaves_none(tiny_config, tmp_path, capsys,
                                                                        monkeypatch, existing):
    # Before: a traceback, and image.png and loss_curve.png without their
    # manifest, which also made the next run into --out refuse the folder.
    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    config = vqgan_bot_config(tiny_config, tmp_path)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    real = bot.store.atomic_write_bytes

    def full_on_snapshots(path, *args, **kwargs):
        if Path(path).name.startswith("step-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(bot.store, "atomic_write_bytes", full_on_snapshots)
    args = ["--size", "32", "--iterations", "2", "--cutouts", "2", "--snapshot", "1", "--seed", "1"]
    code, stdout, err = _generate(capsys, config, out, *args)
    assert code == 1 and stdout == "" and "Traceback" not in err
    assert f"--out '{out}'" in err and "No space left on device" in err
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) if out.exists() else []
    assert left == (["notes.txt"] if existing else [])
    monkeypatch.setattr(bot.store, "atomic_write_bytes", real)
    code, _, _ = _generate(capsys, config, out, *args)
    assert code == 0 and (out / "snapshots" / "step-00001.png").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["image"] == str(out / "image.png")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_generate_says_which_snapshot_steps_the_run_stopped_before(tmp_path, monkeypatch, capsys):
    """A --snapshot step past where the plateau rule or the time budget
    stopped the run left no image, and nothing said why."""
    from support import run_bot, vqgan_bot_config

    from generators.vqgan_clip.tiny import install_tiny_models

    tiny = install_tiny_models(tmp_path / "models")
    monkeypatch.setenv("BOT_PATHS_MODELS", tiny["models_dir"])
    config = vqgan_bot_config(tiny, tmp_path)
    out = tmp_path / "out"
    code, _, err = run_bot(capsys, "--config", str(config), "generate", "--prompt", "coral reef", "--size", "32",
                           "--iterations", "50", "--cutouts", "2", "--seed", "3", "--snapshot", "1",
                           "--snapshot", "40", "--time-budget", "0.000001", "--device", "cpu", "--out", str(out))
    assert code == 0, err
    assert (out / "snapshots" / "step-00001.png").is_file() and not (out / "snapshots" / "step-00040.png").exists()
    assert "no snapshot at step 40: the run stopped at step 1 (time budget)" in err
