"""Numbers in bot.toml or BOT_* that cannot be what the person meant
are refused with the setting named, not silently changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from bot.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # int(2.5) == 2 and int(True) == 1: used to be accepted as 2 and 1
        ("[publish]\nmax_attempts = 2.5\n", "publish.max_attempts = 2.5 is not a valid int"),
        ("[schedule]\ngrace_seconds = true\n", "schedule.grace_seconds = True is not a valid int"),
        ("[publish]\nretry_backoff_seconds = false\n", "publish.retry_backoff_seconds = False is not a valid float"),
        # inf passed every range check and overflowed when a cool-down was computed
        ("[instagram]\ncooldown_seconds = inf\n", "instagram.cooldown_seconds = inf is not a valid float"),
        ("[instagram]\ncooldown_seconds = nan\n", "instagram.cooldown_seconds = nan is not a valid float"),
    ],
)
def test_numbers_that_cannot_be_meant_are_refused(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, environ={})


def test_non_finite_number_from_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match="instagram.cooldown_seconds = 'inf'"):
        load_settings(None, environ={"BOT_INSTAGRAM_COOLDOWN_SECONDS": "inf"})


def test_whole_numbers_still_work(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text("[publish]\nmax_attempts = 5\nretry_backoff_seconds = 10\n[posters]\ndpi = 300.0\n")
    settings = load_settings(config, environ={"BOT_SCHEDULE_JITTER_SECONDS": "30"})
    assert settings.publish.max_attempts == 5 and settings.publish.retry_backoff_seconds == 10.0
    assert settings.posters.dpi == 300 and settings.schedule.jitter_seconds == 30
