"""The health check tells a daemon stuck in a job from an idle one.

The heartbeat is written by the daemon's main thread, so it stays fresh while a
job thread hangs (a network call that never returns, a deadlock in a
generator). Before ``busy`` was recorded, such a daemon was "healthy" forever
and never posted again (APScheduler skips a job whose last run is still
running)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.daemon import heartbeat_health, read_heartbeat

UTC = timezone.utc
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _beat(**extra) -> dict:
    return {"status": "running", "pid": 7, "last_tick": "2026-01-01T11:59:50+00:00", **extra}


def test_a_job_running_past_the_limit_makes_the_daemon_unhealthy() -> None:
    stuck = _beat(busy={"post": {"since": "2026-01-01T04:00:00+00:00", "slot": "2026-01-01T05:00+01:00"}})
    healthy, why = heartbeat_health(stuck, max_age_seconds=30, max_busy_seconds=3600, now=NOW)
    assert healthy is False
    assert "post job has made no progress for 28800 s" in why and "stuck" in why and "limit 3600 s" in why


def test_a_job_within_the_limit_and_an_idle_daemon_are_healthy_and_told_apart() -> None:
    working = _beat(busy={"engagement": {"since": "2026-01-01T11:59:00+00:00"}})
    healthy, why = heartbeat_health(working, max_age_seconds=30, max_busy_seconds=3600, now=NOW)
    assert healthy and "engagement job running for 60 s" in why
    healthy, why = heartbeat_health(_beat(busy={}), max_age_seconds=30, max_busy_seconds=3600, now=NOW)
    assert healthy and "(idle)" in why


def test_a_heartbeat_from_before_the_clock_was_set_back_is_not_fresh() -> None:
    """The daemon ticks every heartbeat_seconds with the current clock, so a
    last_tick far in the future means it has not ticked since the clock was
    set back. Before, the negative age passed as fresh until the clock caught up."""
    ahead = _beat(last_tick="2026-01-01T13:00:00+00:00")  # written before the clock went back an hour
    healthy, why = heartbeat_health(ahead, max_age_seconds=30, max_busy_seconds=3600, now=NOW)
    assert healthy is False and "3600 s in the future" in why and "clock" in why
    slightly = _beat(last_tick="2026-01-01T12:00:05+00:00")  # a few seconds of skew: still fresh
    assert heartbeat_health(slightly, max_age_seconds=30, max_busy_seconds=3600, now=NOW)[0] is True


def test_a_stuck_job_is_found_on_the_monotonic_clock_whatever_the_wall_clock_did() -> None:
    """running_s comes from time.monotonic(): a job that has run 7 hours is
    stuck even if the wall clock was set back and its start looks recent."""
    stuck = _beat(busy={"post": {"since": "2026-01-01T11:59:00+00:00", "running_s": 25200.0}})
    healthy, why = heartbeat_health(stuck, max_age_seconds=30, max_busy_seconds=3600, now=NOW)
    assert healthy is False and "no progress for 25210 s" in why  # + the tick's 10 s age
    young = _beat(busy={"post": {"since": "2026-01-01T04:00:00+00:00", "running_s": 60.0}})  # clock jumped ahead
    healthy, why = heartbeat_health(young, max_age_seconds=30, max_busy_seconds=3600, now=NOW)
    assert healthy and "post job running for 70 s" in why


def test_a_long_job_that_reports_progress_is_not_stuck() -> None:
    """A CPU generation given a two-hour budget reports every step: it is
    working, not stuck. Before, any job over the limit was called stuck."""
    long = _beat(busy={"post": {"since": "2026-01-01T05:00:00+00:00", "running_s": 25200.0, "quiet_s": 4.0}})
    healthy, why = heartbeat_health(long, max_age_seconds=30, max_busy_seconds=3600, now=NOW)
    assert healthy and "post job running for 25210 s" in why
    silent = _beat(busy={"post": {"since": "2026-01-01T05:00:00+00:00", "running_s": 25200.0, "quiet_s": 3700.0}})
    healthy, why = heartbeat_health(silent, max_age_seconds=30, max_busy_seconds=3600, now=NOW)
    assert not healthy and "no progress for 3710 s (running for 25210 s" in why


def test_the_daemon_records_when_a_job_last_made_progress(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import load_settings
    from bot.daemon import Daemon
    from bot.store import Store

    clock = [1000.0]
    monkeypatch.setattr("bot.daemon.time.monotonic", lambda: clock[0])
    daemon = Daemon(load_settings(), Store(state_dir), rng=random.Random(0))
    with daemon._running("post", slot="2026-01-01T05:00+00:00"):
        clock[0] += 5000
        daemon._progress(1, 500, {})  # a generation step
        clock[0] += 20
        daemon._beat()
        busy = read_heartbeat(state_dir)["busy"]["post"]
        assert busy["running_s"] == 5020.0 and busy["quiet_s"] == 20.0
    assert read_heartbeat(state_dir)["busy"] == {}


def test_the_busy_limit_is_the_grace_period_but_at_least_an_hour() -> None:
    from bot.config import load_settings
    from bot.daemon import default_max_busy

    assert default_max_busy(load_settings(environ={})) == 6 * 3600
    assert default_max_busy(load_settings(environ={"BOT_SCHEDULE_GRACE_SECONDS": "60"})) == 3600


def test_the_daemon_marks_a_job_busy_while_it_runs(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.engagement
    from bot.config import load_settings
    from bot.daemon import Daemon
    from bot.store import Store

    seen = []

    def collect(settings, store, **options):
        seen.append(read_heartbeat(state_dir)["busy"])
        return []

    monkeypatch.setattr(bot.engagement, "collect_engagement", collect)
    daemon = Daemon(load_settings(), Store(state_dir), rng=random.Random(0))
    daemon._engagement_job()
    [during] = seen
    assert list(during) == ["engagement"] and datetime.fromisoformat(during["engagement"]["since"])
    assert 0 <= during["engagement"]["running_s"] < 60
    assert read_heartbeat(state_dir)["busy"] == {}  # idle again


def test_the_health_check_command_fails_for_a_stuck_job(tmp_path: Path) -> None:
    import os

    state = tmp_path / "state"
    state.mkdir()
    now = datetime.now(UTC)
    tick = now.isoformat(timespec="seconds")
    since = (now - timedelta(hours=7)).isoformat(timespec="seconds")
    (state / "heartbeat.json").write_text(json.dumps(_beat(last_tick=tick, busy={"post": {"since": since}})))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env["BOT_PATHS_STATE"] = str(state)

    def check(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot", "healthcheck", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    stuck = check()  # default limit: the 6-hour grace period
    assert stuck.returncode == 1 and "post job has made no progress" in stuck.stderr
    assert check("--max-busy", "36000").returncode == 0
    refused = check("--max-busy", "0")
    assert refused.returncode == 2 and "--max-busy" in refused.stderr


def test_a_shutdown_while_topics_are_passed_over_starts_no_new_post(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM arriving while the daemon went through topics it cannot post
    here used to be noticed only at the next generation's progress report: a
    new post was planned after the shutdown was asked for."""
    import daemon_plugin  # noqa: F401  (registers the daemon-test generator)
    from bot import scheduling
    from bot.config import load_settings
    from bot.daemon import Daemon
    from bot.store import Store
    from daemon_helpers import make_environment

    for name, value in make_environment(tmp_path, BOT_SCHEDULE_CRON="0 0 1 1 *").items():
        if name.startswith("BOT_"):
            monkeypatch.setenv(name, value)
    settings = load_settings()
    daemon = Daemon(settings, Store(settings.paths.state), rng=random.Random(0))
    choose = daemon._choose_topics

    def choose_then_sigterm() -> scheduling.TopicChoice:
        choice = choose()
        daemon.stop("received SIGTERM")
        return choice

    monkeypatch.setattr(daemon, "_choose_topics", choose_then_sigterm)
    daemon._post_slot("2026-01-01T00:00+00:00", reason="schedule")
    assert daemon.store.posts() == []
    [slot] = daemon.store.rows("slots")
    assert slot["status"] == "interrupted" and slot["attempts"] == 0
    [run] = daemon.store.rows("runs")
    assert run["outcome"] == "interrupted"


@pytest.mark.parametrize("content", ["[1, 2]", '{"status": "runn', "\x00\x01"])
def test_a_damaged_heartbeat_file_is_unhealthy_not_a_traceback(tmp_path: Path, content: str) -> None:
    import os

    state = tmp_path / "state"
    state.mkdir()
    (state / "heartbeat.json").write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")} | {"BOT_PATHS_STATE": str(state)}
    checked = subprocess.run([sys.executable, "-m", "bot", "healthcheck"], env=env, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "no valid last_tick" in checked.stderr  # not "no heartbeat file": the file is there
