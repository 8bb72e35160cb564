"""The CLI's conventions, checked across commands: every command and group
has examples in its help; bad input a person plausibly types exits 2 with a
message naming the argument, never a traceback, and changes nothing; runtime
failures exit 1; ``--json`` output stays one JSON document even when the
command asks questions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from bot.cli import cli, main
from support import REPO
from support import run_bot as run


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in _commands(cli)])
def test_every_command_and_group_has_examples(path):
    result = CliRunner().invoke(cli, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output, f"`bot {path} --help` shows no examples"


# -- output folders ---------------------------------------------------------------


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


@pytest.fixture
def big_image(tmp_path: Path) -> Path:
    path = tmp_path / "big.png"
    Image.new("RGB", (96, 96), (20, 40, 60)).save(path)
    return path


def _out_cases(a_file: Path) -> list[str]:
    return [str(a_file), str(a_file / "sub"), ""]


def test_generate_out_that_cannot_be_a_folder_exits_2_before_generating(state_dir, tmp_path, a_file, capsys,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in _out_cases(a_file):
        code, _, err = run(capsys, "generate", "--topic", "night-sky", "--out", out)
        no_traceback(err)
        assert code == 2 and "--out" in err, (out, err)
    assert sorted(os.listdir(tmp_path)) == ["afile", "state"]


def test_sample_out_that_cannot_be_a_folder_exits_2(state_dir, tmp_path, a_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in _out_cases(a_file):
        code, _, err = run(capsys, "sample", "--model", "hubble-128", "--n", "1", "--out", out)
        no_traceback(err)
        assert code == 2 and "--out" in err, (out, err)
    assert sorted(os.listdir(tmp_path)) == ["afile", "state"]


def test_dataset_crops_out_that_cannot_be_a_folder_exits_2(tmp_path, a_file, big_image, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in _out_cases(a_file):
        code, _, err = run(capsys, "dataset", "crops", "--from", str(big_image), "--size", "16", "--count", "2",
                           "--out", out)
        no_traceback(err)
        assert code == 2 and "--out" in err, (out, err)
    assert sorted(os.listdir(tmp_path)) == ["afile", "big.png"]


def test_dataset_crops_negative_seed_exits_2_and_creates_nothing(tmp_path, big_image, capsys):
    code, _, err = run(capsys, "dataset", "crops", "--from", str(big_image), "--size", "16", "--count", "2",
                       "--seed", "-1", "--out", str(tmp_path / "crops"))
    no_traceback(err)
    assert code == 2 and "--seed" in err and "-1" in err
    assert not (tmp_path / "crops").exists()


def test_train_out_inside_a_file_exits_2(tmp_path, a_file, big_image, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.new("RGB", (32, 32), (i * 40, 40, 60)).save(data / f"{i}.png")
    code, _, err = run(capsys, "train", "--data", str(data), "--out", str(a_file / "model"), "--img-size", "32",
                       "--epochs", "1")
    no_traceback(err)
    assert code == 2 and "--out" in err
    assert not (data / "cache").exists()


@pytest.mark.parametrize("chart, words", [("afile/chart.png", ["--chart", "afile"]),
                                          ("chart.txt", ["--chart", "chart.txt", ".png"]),
                                          ("", ["--chart", "empty"])])
def test_engagement_chart_that_cannot_be_written_exits_2(state_dir, tmp_path, a_file, capsys, monkeypatch,
                                                          chart, words):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "engagement", "--chart", str(tmp_path / chart) if chart else "")
    no_traceback(err)
    assert code == 2, err
    for word in words:
        assert word in err
    assert sorted(os.listdir(tmp_path)) == ["afile", "state"]


# -- models -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "../escape", "a/b", "manifest.json", "gan"])
def test_models_import_refuses_names_that_are_not_a_folder_name(tmp_path, capsys, monkeypatch, name):
    from generators.vqgan_clip.tiny import write_tiny_vqgan

    ckpt, config, _ = write_tiny_vqgan(tmp_path / "tiny")
    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "store" / "models"))
    code, _, err = run(capsys, "models", "import", name, "--checkpoint", str(ckpt), "--config", str(config),
                       "--trust")
    no_traceback(err)
    assert code == 2 and "model name" in err and repr(name) in err, err
    assert not (tmp_path / "store" / "escape").exists()
    assert not (tmp_path / "store" / "models").exists() or not any((tmp_path / "store" / "models").iterdir())


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_models_import_of_a_file_that_is_no_model_is_bad_input(tmp_path, capsys, monkeypatch, content):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(content)
    store = tmp_path / "store" / "models"
    monkeypatch.setenv("BOT_PATHS_MODELS", str(store))
    code, _, err = run(capsys, "models", "import", "my_clip", "--weights", str(weights), "--clip-model", "ViT-B-32")
    no_traceback(err)
    assert code == 2 and "w.safetensors" in err, err
    assert not (store / "my_clip").exists()


def test_models_fetch_network_failure_is_a_runtime_failure(tmp_path, capsys, monkeypatch):
    from generators.models import KNOWN_MODELS, ModelSpec, SourceFile, register_known_model

    spec = ModelSpec(name="unreachable_test_model", kind="vqgan", description="served nowhere",
                     files=(SourceFile("checkpoint", "http://127.0.0.1:9/last.ckpt", "last.ckpt", "0" * 64),
                            SourceFile("config", "http://127.0.0.1:9/model.yaml", "model.yaml", "0" * 64)))
    register_known_model(spec)
    monkeypatch.setenv("BOT_PATHS_MODELS", str(tmp_path / "models"))
    try:
        code, _, err = run(capsys, "models", "fetch", spec.name)
    finally:
        KNOWN_MODELS.pop(spec.name, None)
    no_traceback(err)
    assert code == 1 and "cannot download" in err and "retry" in err


# -- settings -----------------------------------------------------------------------


def test_config_file_that_is_not_text_exits_2(state_dir, tmp_path, capsys):
    binary = tmp_path / "bot.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    code, _, err = run(capsys, "--config", str(binary), "config", "show")
    no_traceback(err)
    assert code == 2 and str(binary) in err and "UTF-8" in err


def test_secret_file_that_is_not_text_exits_2(state_dir, tmp_path, capsys, monkeypatch):
    secret = tmp_path / "password"
    secret.write_bytes(b"\xff\xfe\x00")
    monkeypatch.setenv("BOT_INSTAGRAM_PASSWORD_FILE", str(secret))
    code, _, err = run(capsys, "config", "show")
    no_traceback(err)
    assert code == 2 and "BOT_INSTAGRAM_PASSWORD_FILE" in err and "UTF-8" in err


def test_empty_path_setting_is_refused_not_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOT_PATHS_STATE", "")
    code, _, err = run(capsys, "status")
    no_traceback(err)
    assert code == 2 and "BOT_PATHS_STATE" in err and "paths.state" in err
    assert os.listdir(tmp_path) == []


# -- publishers -------------------------------------------------------------------


def test_unknown_publisher_is_refused_even_with_dry_run(state_dir, capsys):
    code, _, err = run(capsys, "post", "--topic", "night-sky", "--publisher", "instagarm", "--dry-run")
    assert code == 2 and "instagarm" in err and "outbox" in err
    assert not (state_dir / "archive").exists()


def test_a_forced_generator_that_does_not_suit_the_topic_names_both(state_dir, capsys):
    # night-sky's options set size 1350 for its GAN; VQGAN sizes are multiples of 16
    code, _, err = run(capsys, "post", "--topic", "night-sky", "--generator", "vqgan-clip", "--dry-run")
    assert code == 2
    assert "topic night-sky with generator vqgan-clip: size 1350 is not allowed" in err
    assert not (state_dir / "archive").exists()


# -- --json with questions ----------------------------------------------------------


def test_login_json_keeps_prompts_off_stdout(fake, monkeypatch):
    from fake_instagram.harness import _as_click

    password = os.environ["BOT_INSTAGRAM_PASSWORD"]
    monkeypatch.delenv("BOT_INSTAGRAM_PASSWORD")
    result = CliRunner().invoke(_as_click(main), ["login", "--json"], input=password + "\n",
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["username"] == fake.username
    assert "Password for" in result.stderr
