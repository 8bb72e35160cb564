"""The daemon's rules without a subprocess: cron parsing, slot keys and windows,
topic choice, back-off, and ``bot run --once`` against a real store (missed
slots, grace period, restarts)."""

from __future__ import annotations

import random
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import daemon_plugin  # noqa: F401  (registers the daemon-test generator and the flaky publisher)
from bot import scheduling
from bot.config import load_settings
from bot.daemon import Daemon, heartbeat_health, read_heartbeat
from bot.errors import Busy, ConfigError
from bot.store import Store, exclusive
from daemon_helpers import make_environment

UTC = timezone.utc
BERLIN = scheduling.zone("Europe/Berlin")


# -- cron and slots ---------------------------------------------------------------


def test_five_field_cron_uses_crontab_weekdays_in_the_configured_zone() -> None:
    trigger = scheduling.cron_trigger("0 18 * * 0", "Europe/Berlin")  # Sundays, as crontab(5) says
    fire = trigger.get_next_fire_time(None, datetime(2026, 11, 23, 12, 0, tzinfo=UTC))  # a Monday
    assert fire.weekday() == 6 and (fire.hour, fire.minute) == (18, 0)
    assert fire.utcoffset() == timedelta(hours=1)
    weekdays = scheduling.cron_trigger("30 9 * * 1-5", "UTC")
    start = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)  # a Saturday
    assert weekdays.get_next_fire_time(None, start) == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


def test_six_field_cron_has_a_seconds_field() -> None:
    trigger = scheduling.cron_trigger("*/5 * * * * *", "UTC")
    fire = trigger.get_next_fire_time(None, datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert fire == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "expression, timezone_name, fragment",
    [("0 18 * *", "UTC", "4 fields"), ("0 25 * * *", "UTC", "not a valid cron"), ("0 18 * * 9", "UTC", "0-7"),
     ("0 18 * * *", "Mars/Olympus", "not a known time zone")],
)
def test_bad_schedules_are_refused_with_the_setting_named(expression: str, timezone_name: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        scheduling.cron_trigger(expression, timezone_name)


def test_slot_key_is_the_nominal_time_in_the_configured_zone() -> None:
    moment = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    assert scheduling.slot_key(moment, BERLIN) == "2026-11-23T18:00+01:00"
    assert scheduling.slot_key(moment + timedelta(seconds=3), UTC) == "2026-11-23T17:00:03+00:00"


def test_due_slot_is_the_latest_fire_within_grace_and_jitter() -> None:
    daily = scheduling.cron_trigger("0 18 * * *", "Europe/Berlin")
    slot = datetime(2026, 11, 23, 18, 0, tzinfo=BERLIN)
    assert scheduling.due_slot(daily, slot, grace_seconds=0) == slot
    assert scheduling.due_slot(daily, slot + timedelta(hours=2), grace_seconds=3 * 3600) == slot
    assert scheduling.due_slot(daily, slot + timedelta(hours=4), grace_seconds=3 * 3600) is None
    # a jittered fire 10 minutes late still belongs to the 18:00 slot
    assert scheduling.due_slot(daily, slot + timedelta(minutes=10), grace_seconds=0, jitter_seconds=900) == slot
    # three days off: only the latest slot, never one per missed day
    assert scheduling.due_slot(daily, slot + timedelta(days=3, hours=1), grace_seconds=7 * 86400) == slot + timedelta(days=3)
    assert scheduling.due_slot(daily, slot - timedelta(minutes=1), grace_seconds=60) is None


def test_retry_delay_doubles() -> None:
    assert [scheduling.retry_delay(n, 30) for n in (1, 2, 3)] == [30, 60, 120]


# -- topic choice -------------------------------------------------------------------


def _post(topic: str, likes: int, hours: float = 24.0) -> dict:
    return {"topic": topic, "status": "published", "engagement": [{"slot_hours": hours, "likes": likes, "comments": 0}]}


def test_least_recent_takes_never_posted_topics_first_in_file_order_then_the_oldest() -> None:
    last = {"reef": datetime(2026, 1, 2, tzinfo=UTC), "ice": datetime(2026, 1, 1, tzinfo=UTC)}
    choice = scheduling.choose_least_recent(["reef", "ice", "forest", "bees"], last)
    assert choice.order == ["forest", "bees", "ice", "reef"] and "never posted" in choice.reason
    assert scheduling.choose_least_recent(["reef", "ice"], last).topic == "ice"


def test_engagement_score_compares_posts_at_a_day_old() -> None:
    post = {"engagement": [{"slot_hours": 6, "likes": 5}, {"slot_hours": 24, "likes": 9, "comments": 2}, {"slot_hours": 72, "likes": 40}]}
    assert scheduling.engagement_score(post) == 11
    assert scheduling.engagement_score({"engagement": [{"slot_hours": 6, "likes": 5}]}) is None  # too young
    assert scheduling.engagement_score({"engagement": []}) is None


def test_thompson_sampling_favours_topics_that_did_well_but_keeps_exploring() -> None:
    posts = [_post("reef", 100) for _ in range(8)] + [_post("ice", 1) for _ in range(8)] + [_post("ice", 2)]
    rng = random.Random(1)
    picks = Counter(scheduling.choose_thompson(["reef", "ice", "forest"], posts, rng).topic for _ in range(300))
    assert picks["reef"] > picks["forest"] > picks["ice"]
    assert picks["forest"] > 0  # an untried topic still gets drawn
    choice = scheduling.choose_thompson(["reef", "ice"], posts, random.Random(0), last_topic="reef")
    assert choice.order == ["ice", "reef"]  # never the same topic twice in a row
    assert "Beta(1+" in choice.reason and choice.details["reef"]["wins"] == 8


def test_choose_topic_refuses_an_unknown_strategy() -> None:
    with pytest.raises(ConfigError, match="least-recent, engagement"):
        scheduling.choose_topic("random", ["reef"], [], {}, random.Random(0))


# -- bot run --once against a real store ----------------------------------------------


@pytest.fixture
def once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Build a Daemon for --once runs with the given schedule settings."""

    def build(**variables: str) -> Daemon:
        for name, value in make_environment(tmp_path, **variables).items():
            if name.startswith("BOT_") or name.startswith("DAEMON_"):
                monkeypatch.setenv(name, value)
        settings = load_settings()
        return Daemon(settings, Store(settings.paths.state), rng=random.Random(0))

    return build


def _cron_every_minute_at(second: int) -> str:
    return f"{second} * * * * *"


def test_once_posts_the_due_slot_once_and_a_second_run_does_not_repeat_it(once, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    daemon = once(BOT_SCHEDULE_CRON=_cron_every_minute_at((now.second - 1) % 60), BOT_SCHEDULE_GRACE_SECONDS="50")
    assert daemon.run(once=True) == 0
    [post] = daemon.store.posts()
    assert post["status"] == "published"
    [slot] = daemon.store.rows("slots")
    assert slot["post_id"] == post["id"] and slot["status"] == "done"
    again = once(BOT_SCHEDULE_CRON=_cron_every_minute_at((now.second - 1) % 60), BOT_SCHEDULE_GRACE_SECONDS="50")
    assert again.run(once=True) == 0
    assert len(again.store.posts()) == 1  # the slot is in the store: not posted again
    assert read_heartbeat(tmp_path / "state")["status"] == "stopped"


def test_slots_missed_beyond_the_grace_period_are_not_posted(once) -> None:
    now = datetime.now(UTC)
    daemon = once(BOT_SCHEDULE_CRON=f"0 0 {(now - timedelta(days=2)).day} * *", BOT_SCHEDULE_GRACE_SECONDS="3600")
    assert daemon.run(once=True) == 0
    assert daemon.store.posts() == [] and daemon.store.rows("slots") == []


def test_a_slot_left_started_by_a_crash_is_resumed_by_the_next_start(once) -> None:
    now = datetime.now(UTC)
    daemon = once(BOT_SCHEDULE_CRON=_cron_every_minute_at((now.second - 1) % 60), BOT_SCHEDULE_GRACE_SECONDS="50")
    key = scheduling.slot_key(scheduling.due_slot(daemon.nominal, now, grace_seconds=50), daemon.zone)
    daemon.store.upsert("slots", {"slot": key, "status": "started", "attempts": 1, "post_id": None}, key="slot")
    assert daemon.run(once=True) == 0
    [slot] = daemon.store.rows("slots")
    assert slot["status"] == "done" and slot["attempts"] == 2 and len(daemon.store.posts()) == 1


def test_once_refuses_to_run_beside_a_running_daemon(once, tmp_path: Path) -> None:
    daemon = once(BOT_SCHEDULE_CRON="0 0 1 1 *")
    with exclusive(tmp_path / "state", "daemon", "bot run"):
        with pytest.raises(Busy, match="bot run"):
            daemon.run(once=True)


def test_bad_schedule_settings_are_refused_before_anything_runs(once, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schedule.strategy = 'best'"):
        once(BOT_SCHEDULE_CRON="0 18 * * *", BOT_SCHEDULE_STRATEGY="best")
    assert not (tmp_path / "state" / "heartbeat.json").exists()


def test_heartbeat_health() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    fresh = {"status": "running", "pid": 7, "last_tick": "2026-01-01T11:59:50+00:00"}
    assert heartbeat_health(fresh, max_age_seconds=30, now=now)[0] is True
    assert heartbeat_health(fresh, max_age_seconds=5, now=now)[0] is False
    assert heartbeat_health({**fresh, "status": "stopped"}, max_age_seconds=30, now=now)[0] is False
    assert heartbeat_health(None, max_age_seconds=30, now=now) == (False, "no heartbeat file: the daemon has not started here")


def test_engagement_strategy_logs_and_stores_its_reasoning(once, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.now(UTC)
    daemon = once(
        BOT_SCHEDULE_CRON=_cron_every_minute_at((now.second - 1) % 60),
        BOT_SCHEDULE_GRACE_SECONDS="50",
        BOT_SCHEDULE_STRATEGY="engagement",
    )
    with caplog.at_level("INFO", logger="bot.daemon"):
        assert daemon.run(once=True) == 0
    [slot] = daemon.store.rows("slots")
    assert slot["topic_choice"]["strategy"] == "engagement"
    assert sorted(slot["topic_choice"]["order"]) == ["ice", "reef"]
    [post] = daemon.store.posts()
    assert post["topic"] == slot["topic_choice"]["order"][0]
    assert any("Thompson draw" in r.getMessage() and f"topic {post['topic']}" in r.getMessage() for r in caplog.records)


def test_a_topic_whose_model_is_missing_is_passed_over_for_the_next(once, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    daemon = once(BOT_SCHEDULE_CRON=_cron_every_minute_at((now.second - 1) % 60), BOT_SCHEDULE_GRACE_SECONDS="50")
    topics = tmp_path / "templates" / "topics.toml"
    text = topics.read_text()
    # reef comes first in the file but cannot be made here
    topics.write_text(text.replace('generator = "daemon-test"\n', 'generator = "daemon-test"\noptions = { missing_weights = true }\n', 1))
    assert daemon.run(once=True) == 0
    [post] = daemon.store.posts()
    assert post["topic"] == "ice" and post["status"] == "published"


def test_a_failing_engagement_job_is_contained_and_recorded(once, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import bot.engagement

    daemon = once(BOT_SCHEDULE_CRON="0 0 1 1 *")

    def broken(settings, store, **options):
        raise RuntimeError("the API changed")

    monkeypatch.setattr(bot.engagement, "collect_engagement", broken)
    daemon._engagement_job()  # must not raise
    [run] = daemon.store.rows("runs")
    assert run["job"] == "engagement" and run["outcome"] == "failed" and "the API changed" in run["error"]
    assert "the API changed" in read_heartbeat(tmp_path / "state")["last_error"]["error"]

    monkeypatch.setitem(sys.modules, "bot.engagement", None)  # as if the module were not there
    daemon._engagement_job()
    assert [r["outcome"] for r in daemon.store.rows("runs")] == ["failed", "unavailable"]


def test_status_shows_the_slots_posts_and_daemon_state(once, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    now = datetime.now(UTC)
    daemon = once(BOT_SCHEDULE_CRON=_cron_every_minute_at((now.second - 1) % 60), BOT_SCHEDULE_GRACE_SECONDS="50")
    assert daemon.run(once=True) == 0
    [post] = daemon.store.posts()
    with pytest.raises(SystemExit) as exited:
        main(["status"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "daemon: NOT HEALTHY" in out and "--once finished" in out
    assert "published posts: 1" in out and "posts needing attention: none" in out
    assert f"done (attempts 1, post {post['id']})" in out
