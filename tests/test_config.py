"""Settings: defaults, then bot.toml, then BOT_* variables; secrets masked and env-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import MASK, load_settings
from bot.errors import ConfigError


def test_defaults_work_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.source == "defaults"
    assert settings.posters.size == "A3" and settings.posters.bleed_mm == 3.0
    assert settings.paths.templates.name == "templates"


def test_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text('[schedule]\ncron = "0 9 * * *"\n[paths]\nstate = "mystate"\n[generators.gan]\nweights = "last"\n')
    settings = load_settings(config, environ={"BOT_SCHEDULE_TIMEZONE": "Asia/Seoul", "BOT_POSTERS_BLEED_MM": "5"})
    assert settings.schedule.cron == "0 9 * * *"
    assert settings.schedule.timezone == "Asia/Seoul"
    assert settings.posters.bleed_mm == 5.0
    assert settings.paths.state == (tmp_path / "mystate").resolve()
    assert settings.generator_config("gan")["weights"] == "last"


def test_secrets_come_from_environment_and_are_masked(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("hunter2\n")
    settings = load_settings(
        None, environ={"BOT_INSTAGRAM_USERNAME": "dstrtd", "BOT_INSTAGRAM_PASSWORD_FILE": str(secret_file)}
    )
    assert settings.instagram.password == "hunter2"
    assert settings.has_instagram_credentials
    shown = settings.as_dict()
    assert shown["instagram"]["password"] == MASK
    assert "hunter2" not in repr(shown)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[instagram]\npassword = 'x'\n", "secret"),
        ("[nonsense]\na = 1\n", "unknown table"),
        ("[schedule]\ncronn = '1'\n", "unknown key schedule.cronn"),
        ("[posters]\nbleed_mm = 'wide'\n", "posters.bleed_mm = 'wide' is not a valid float"),
        ("[posters\n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_explained(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(config, environ={})
    assert str(config) in str(info.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(
    ("table", "key", "generator"),
    [("vqgan_clip", "iteration = 100", "vqgan-clip"), ("gan", 'weight = "last"', "gan")],
)
def test_a_misspelt_generator_setting_is_refused_not_ignored(tmp_path: Path, capsys, table: str, key: str, generator: str) -> None:
    """The generators kept only the keys they knew and dropped the rest: a
    typo in [generators.*] made the post with the default it meant to change."""
    from support import run_bot

    config = tmp_path / "bot.toml"
    config.write_text(f"[generators.{table}]\n{key}\n", encoding="utf-8")
    state = tmp_path / "state"
    code, _, err = run_bot(capsys, "--config", str(config), "config", "show")
    assert code == 2 and f"[generators.{table}]: setting '{key.split()[0]}' is not known to the {generator} generator" in err
    code, _, err = run_bot(capsys, "--config", str(config), "post", "--topic", "night-sky", "--dry-run")
    assert code == 2 and f"[generators.{table}]" in err
    assert not (state / "bot.json").exists() and not (tmp_path / "state").exists()


def test_known_generator_settings_still_load(tmp_path: Path, capsys) -> None:
    from support import run_bot

    config = tmp_path / "bot.toml"
    config.write_text('[generators.gan]\nweights = "last"\n\n[generators.vqgan_clip]\niterations = 300\n', encoding="utf-8")
    code, out, err = run_bot(capsys, "--config", str(config), "config", "show")
    assert code == 0, err
    assert 'weights = "last"' in out and "iterations = 300" in out
