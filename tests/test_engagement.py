"""Engagement snapshots from the fake Instagram server: taken on a thinning
schedule, appended (never overwritten), summarised and charted."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from fake_instagram.harness import publish_two_posts, run_cli

from bot.config import load_settings
from bot.engagement import collect_engagement, due_slot, engagement_summary, plot_engagement
from bot.errors import PublishPaused
from bot.store import Store, iso, parse_iso


def test_snapshots_accumulate_on_the_schedule(fake, tmp_path):
    assert run_cli("post", "--topic", "reef")[0] == 0
    settings = load_settings()
    store = Store(settings.paths.state)
    post = store.posts()[0]
    published = parse_iso(post["publication"]["published_at"])

    assert collect_engagement(settings, store, now=published + timedelta(minutes=30)) == []  # no slot yet
    first = collect_engagement(settings, store, now=published + timedelta(hours=2))
    assert [s["slot_hours"] for s in first] == [1.0]
    assert collect_engagement(settings, store, now=published + timedelta(hours=3)) == []  # slot 1 h is taken
    second = collect_engagement(settings, store, now=published + timedelta(hours=7))
    assert [s["slot_hours"] for s in second] == [6.0]

    snapshots = store.require_post(post["id"])["engagement"]
    assert len(snapshots) == 2  # appended, the first kept as it was
    assert snapshots[0]["likes"] == first[0]["likes"]
    assert snapshots[1]["likes"] > snapshots[0]["likes"]
    assert snapshots[1]["insights"]["inline_insights_node"]["metrics"]["reach_count"] == 100  # raw, business account
    assert len(fake.calls("/info/")) == 2

    summary = engagement_summary(store)
    row = summary["posts"][0]
    assert row["likes"] == snapshots[1]["likes"]
    assert row["likes_growth"] == snapshots[1]["likes"] - snapshots[0]["likes"]
    assert summary["topics"]["reef"]["posts"] == 1
    chart = plot_engagement(store, tmp_path / "chart.png")
    with Image.open(chart) as image:
        assert image.format == "PNG"

    code, out, err = run_cli("engagement", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["posts"][0]["snapshots"] == 2
    assert Path(shown["chart"]).is_file()


def test_a_long_pause_takes_one_snapshot_for_the_latest_slot():
    published = parse_iso("2025-01-01T12:00:00+00:00")
    post = {"status": "published", "engagement": [],
            "publication": {"publisher": "instagram", "media_id": "1_2", "published_at": iso(published)}}
    hours = [1.0, 6.0, 24.0, 72.0, 168.0, 720.0]
    assert due_slot(post, hours, published + timedelta(days=10)) == 168.0
    post["engagement"].append({"slot_hours": 168.0, "taken_at": iso(published + timedelta(days=10))})
    assert due_slot(post, hours, published + timedelta(days=11)) is None
    assert due_slot(post, hours, published + timedelta(days=31)) == 720.0
    outbox = {**post, "engagement": [], "publication": {**post["publication"], "publisher": "outbox"}}
    assert due_slot(outbox, hours, published + timedelta(days=31)) is None


def test_throttled_collection_stops_and_keeps_the_post(fake, tmp_path):
    assert run_cli("post", "--topic", "reef")[0] == 0
    settings = load_settings()
    store = Store(settings.paths.state)
    published = parse_iso(store.posts()[0]["publication"]["published_at"])
    fake.fail("/info/", "429")
    assert collect_engagement(settings, store, now=published + timedelta(hours=2)) == []
    assert store.posts()[0]["engagement"] == []
    assert [s["slot_hours"] for s in collect_engagement(settings, store, now=published + timedelta(hours=2))] == [1.0]


def test_a_refused_login_stops_collection_and_says_to_run_bot_login(fake, tmp_path, monkeypatch):
    """A bad login used to be logged as a warning: `bot engagement collect`
    exited 0 having taken nothing, and nobody knew."""
    assert run_cli("post", "--topic", "reef")[0] == 0
    monkeypatch.setenv("BOT_INSTAGRAM_ENGAGEMENT_SCHEDULE_HOURS", "0")  # due at once
    fake.expire_sessions()
    fake.password = "changed in the app"
    code, out, err = run_cli("engagement", "collect")
    assert code == 1
    assert "refused the login" in err and "bot login" in err


def test_a_challenge_mid_run_keeps_the_snapshots_taken_and_fails(fake, tmp_path):
    settings, store, first, second = publish_two_posts()
    fake.fail(f"/media/{second['publication']['extra']['media_pk']}/info/", "challenge_required")
    published = parse_iso(second["publication"]["published_at"])
    with pytest.raises(PublishPaused, match="bot login") as info:
        collect_engagement(settings, store, now=published + timedelta(hours=2))
    assert "1 snapshot" in str(info.value)
    assert len(store.require_post(first["id"])["engagement"]) == 1  # kept
    assert store.require_post(second["id"])["engagement"] == []


def test_the_daemon_records_a_refused_login_as_a_failed_engagement_run(fake, tmp_path, monkeypatch):
    from bot.daemon import Daemon

    assert run_cli("post", "--topic", "reef")[0] == 0
    fake.expire_sessions()
    fake.password = "changed in the app"
    monkeypatch.setenv("BOT_SCHEDULE_CRON", "0 0 1 1 *")
    monkeypatch.setenv("BOT_INSTAGRAM_ENGAGEMENT_SCHEDULE_HOURS", "0")  # due at once
    settings = load_settings()
    daemon = Daemon(settings, Store(settings.paths.state))
    daemon._engagement_job()
    [run] = [r for r in daemon.store.rows("runs") if r["job"] == "engagement"]
    assert run["outcome"] == "failed" and "bot login" in run["error"]


def test_collect_exits_1_when_instagram_asks_to_slow_down(fake, tmp_path, monkeypatch):
    """A throttled run took nothing, logged a warning and exited 0: a cron job
    or a person could not tell it from a run with nothing due."""
    assert run_cli("post", "--topic", "reef")[0] == 0
    monkeypatch.setenv("BOT_INSTAGRAM_ENGAGEMENT_SCHEDULE_HOURS", "0")  # due at once
    fake.fail("/info/", "429")
    code, out, err = run_cli("engagement", "collect", "--json")
    assert code == 1 and json.loads(out) == []  # stdout stays one JSON document
    assert "0 of 1 due snapshot(s) taken" in err and "slow down" in err and "next run" in err
    code, out, err = run_cli("engagement", "collect")
    assert code == 0 and "1 snapshot(s) taken" in out, err


def test_collect_names_the_posts_it_could_not_read_and_keeps_the_rest(fake, tmp_path):
    settings, store, first, second = publish_two_posts()
    fake.fail(f"/media/{second['publication']['extra']['media_pk']}/info/", "500", times=10)
    published = parse_iso(second["publication"]["published_at"])
    taken = collect_engagement(settings, store, now=published + timedelta(hours=2))
    assert [s["post_id"] for s in taken] == [first["id"]] and taken.unread == [second["id"]]
    assert not taken.complete and taken.due == 2
    assert len(store.require_post(first["id"])["engagement"]) == 1
