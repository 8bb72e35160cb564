"""The daemon records an outcome for every post run, even when the store (or
its lock) fails around the post: while claiming the slot, or while marking it
done after the post went out. Such failures used to reach APScheduler and leave
no row in the ``runs`` table."""

from __future__ import annotations

import logging
import random
from datetime import datetime, timezone
from pathlib import Path

import pytest

import daemon_plugin  # noqa: F401  (registers the daemon-test generator)
from bot.config import load_settings
from bot.daemon import Daemon, read_heartbeat
from bot.errors import Busy, StoreError
from bot.store import Store
from daemon_helpers import make_environment


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """A daemon whose slot (every minute, a second ago) is due now."""
    second = (datetime.now(timezone.utc).second - 1) % 60
    env = make_environment(tmp_path, BOT_SCHEDULE_CRON=f"{second} * * * * *", BOT_SCHEDULE_GRACE_SECONDS="50")
    for name, value in env.items():
        if name.startswith("BOT_"):
            monkeypatch.setenv(name, value)
    settings = load_settings()
    return Daemon(settings, Store(settings.paths.state), rng=random.Random(0))


def _post_runs(daemon: Daemon) -> list[dict]:
    return [r for r in daemon.store.rows("runs") if r["job"] == "post"]


def test_a_store_lock_timeout_while_claiming_the_slot_is_recorded(daemon, monkeypatch) -> None:
    def locked(slot, reason):
        raise Busy("the store stayed locked by another process for 30 s")

    monkeypatch.setattr(daemon, "_claim", locked)
    assert daemon.run(once=True) == 1  # contained, and --once says it failed
    [run] = _post_runs(daemon)
    assert run["outcome"] == "failed" and "stayed locked" in run["error"] and run["slot"]
    assert daemon.store.posts() == []
    assert "stayed locked" in read_heartbeat(daemon.state_dir)["last_error"]["error"]


def test_a_store_error_marking_the_slot_done_is_recorded_with_the_post(daemon, monkeypatch) -> None:
    update_slot = daemon._update_slot

    def failing(slot, **changes):
        if changes.get("status") == "done":
            raise StoreError("cannot write the store: No space left on device")
        update_slot(slot, **changes)

    monkeypatch.setattr(daemon, "_update_slot", failing)
    daemon.run(once=True)
    [post] = daemon.store.posts()
    assert post["status"] == "published"
    [run] = _post_runs(daemon)
    assert run["outcome"] == "published" and run["post_id"] == post["id"]
    assert "No space left" in run["error"]
    [slot] = daemon.store.rows("slots")
    assert slot["status"] == "started"  # the next start finds the post published and marks it done


def test_when_the_store_cannot_record_the_run_the_log_says_so(daemon, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise StoreError("cannot write the store: Read-only file system")

    monkeypatch.setattr(daemon, "_claim", broken)
    monkeypatch.setattr(daemon.store, "insert", broken)
    with caplog.at_level(logging.ERROR, logger="bot.daemon"):
        daemon.run(once=True)
    text = caplog.text
    assert "cannot record the post run" in text and "Read-only file system" in text and "outcome failed" in text


def test_a_store_error_while_catching_up_is_recorded(daemon, monkeypatch) -> None:
    rows = daemon.store.rows

    def failing(table):
        if table == "slots":
            raise Busy("the store stayed locked by another process for 30 s")
        return rows(table)

    monkeypatch.setattr(daemon.store, "rows", failing)
    daemon._catch_up()  # must not raise
    [run] = [r for r in rows("runs") if r["job"] == "catch-up"]
    assert run["outcome"] == "failed" and "stayed locked" in run["error"]
