"""The store after months of running: filled through its own API with posts,
engagement snapshots, slots and the daemon's run log, it stays compact, loses
nothing, cleans up after crashes, and `bot status`, `bot engagement` and the
daemon's start-up catch-up read it correctly.

The sizes and times at two years of data are measured, not asserted here
(docs/daemon.md, "How big the store grows")."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.store import Store, iso

UTC = timezone.utc
TOPICS = ("reef", "ice")
SNAPSHOT_HOURS = (1.0, 6.0, 24.0)
RUNS_KEPT = 10


def fill_store(store: Store, *, days: int, per_day: int = 2, end: datetime | None = None) -> list[str]:
    """``days`` of a daemon's life ending at ``end``: published Instagram posts
    with engagement snapshots, their slots, and hourly-ish runs; returns the
    post ids, oldest first."""
    end = end or datetime.now(UTC)
    start = end - timedelta(days=days)
    rng = random.Random(days)
    ids = []
    for n in range(days * per_day):
        moment = start + timedelta(hours=n * 24 / per_day)
        topic = TOPICS[n % len(TOPICS)]
        post_id = store.new_post_id(topic, moment)
        store.create_post({"id": post_id, "topic": topic, "slot": iso(moment)})
        store.update_post(post_id, status="published", publication={
            "publisher": "instagram", "media_id": f"{n}_1", "published_at": iso(moment),
            "url": f"https://www.instagram.com/p/{n}/", "extra": {"media_pk": str(n)}})
        likes = 0
        for hours in SNAPSHOT_HOURS:
            likes += rng.randint(0, 20)
            store.append_to_post(post_id, "engagement", {
                "taken_at": iso(moment + timedelta(hours=hours)), "slot_hours": hours, "media_id": f"{n}_1",
                "likes": likes, "comments": likes // 4, "views": None, "plays": None, "insights": None})
        store.upsert("slots", {"slot": iso(moment), "status": "done", "attempts": 1, "post_id": post_id}, key="slot")
        store.insert("runs", {"id": f"r{n}", "job": "post", "outcome": "published", "post_id": post_id,
                              "finished_at": iso(moment)}, keep_last=RUNS_KEPT)
        ids.append(post_id)
    return ids


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A state folder with 15 days of two posts a day (filled once: it takes a few seconds)."""
    state = tmp_path_factory.mktemp("months") / "state"
    ids = fill_store(Store(state), days=15)
    return state, ids


def _copy(months: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import shutil

    state = tmp_path / "state"
    shutil.copytree(months[0], state)
    monkeypatch.setenv("BOT_PATHS_STATE", str(state))
    return state


def test_the_store_is_written_without_indentation_and_keeps_every_record(months) -> None:
    """An indented store was a third larger and four times slower to write
    (indentation turns off the json module's C encoder); every write rewrites
    the whole file."""
    from bot.store import dumps_compact

    state, ids = months
    text = (state / "bot.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == dumps_compact(data) and "\n" not in text
    store = Store(state)
    assert [p["id"] for p in store.posts()] == ids
    assert all(len(p["engagement"]) == len(SNAPSHOT_HOURS) for p in store.posts())
    assert len(store.rows("slots")) == len(ids)


def test_the_run_log_keeps_its_newest_rows_and_nothing_else_is_pruned(months) -> None:
    state, ids = months
    store = Store(state)
    kept = sorted(int(r["id"][1:]) for r in store.rows("runs"))
    assert RUNS_KEPT <= len(kept) <= RUNS_KEPT + 1  # pruned once it holds a tenth more
    assert kept == list(range(len(ids) - len(kept), len(ids)))  # the newest are the ones kept
    assert len(store.posts()) == len(ids)


def test_the_daemon_keeps_its_run_log_bounded(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.daemon
    from bot.config import load_settings
    from bot.daemon import Daemon

    monkeypatch.setattr(bot.daemon, "RUNS_KEPT", 5)
    settings = load_settings()
    daemon = Daemon(settings, Store(state_dir))
    for _ in range(20):
        daemon._record_run("engagement", started=0.0, outcome="collected")
    assert 5 <= len(daemon.store.rows("runs")) <= 6


def test_an_engagement_run_is_recorded_with_counts_not_copies_of_the_snapshots(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run row used to hold the snapshots it took, Instagram's raw
    insights included: a second copy of all engagement data in the store."""
    import bot.engagement
    from bot.config import load_settings
    from bot.daemon import Daemon

    taken = [{"post_id": "p1", "likes": 3, "insights": {"raw": "x" * 1000}}, {"post_id": "p2", "likes": 1}]
    monkeypatch.setattr(bot.engagement, "collect_engagement", lambda settings, store, **options: taken)
    daemon = Daemon(load_settings(), Store(state_dir))
    daemon._engagement_job()
    [run] = daemon.store.rows("runs")
    assert run["outcome"] == "collected"
    assert run["details"] == {"snapshots": 2, "post_ids": ["p1", "p2"]}


def test_temp_files_left_by_a_killed_write_are_removed_when_the_store_opens(months, tmp_path, monkeypatch) -> None:
    """A process killed mid-write leaves a temp file as large as the store; a
    crash-looping daemon used to leave one per crash, for good."""
    state = _copy(months, tmp_path, monkeypatch)
    leftover = state / ".bot.json.k2j3h4.tmp"
    leftover.write_text('{"posts": {"1": {"id"', encoding="utf-8")
    other = state / ".heartbeat.json.abc.tmp"  # not the store's: left alone
    other.write_text("{}", encoding="utf-8")
    before = (state / "bot.json").read_bytes()
    store = Store(state)
    assert not leftover.exists() and other.exists()
    assert (state / "bot.json").read_bytes() == before  # the store itself untouched
    assert len(store.posts()) == len(months[1])


def test_update_post_returns_exactly_what_was_stored(months, tmp_path, monkeypatch) -> None:
    state = _copy(months, tmp_path, monkeypatch)
    store = Store(state)
    post_id = months[1][-1]
    returned = store.update_post(post_id, status="failed", error={"step": "test", "message": "x"})
    assert returned == store.get_post(post_id)
    assert [h["status"] for h in returned["history"]][-2:] == ["published", "failed"]
    appended = store.append_to_post(post_id, "attempts", {"id": "a1", "outcome": "sent"})
    assert appended == store.get_post(post_id)
    replaced = store.replace_in_list(post_id, "attempts", "id", {"id": "a1", "outcome": "published"})
    assert replaced == store.get_post(post_id) and replaced["attempts"][-1]["outcome"] == "published"


def test_status_and_engagement_read_months_of_data_correctly(months, tmp_path, monkeypatch, capsys) -> None:
    from bot.cli import main

    state = _copy(months, tmp_path, monkeypatch)
    ids = months[1]

    def run(*args: str) -> dict[str, Any]:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out = capsys.readouterr().out
        assert exited.value.code == 0, out
        return json.loads(out)

    status = run("status", "--json")
    assert status["published"] == len(ids) and status["attention"] == []
    assert [s["slot"] for s in status["slots"]] == sorted((s["slot"] for s in Store(state).rows("slots")), reverse=True)[:5]
    shown = run("engagement", "--json")
    assert len(shown["posts"]) == len(ids)
    assert {slug: row["posts"] for slug, row in shown["topics"].items()} == {"ice": len(ids) // 2, "reef": len(ids) // 2}
    assert Path(shown["chart"]).is_file()


def test_the_chart_draws_the_latest_posts_of_each_topic(months) -> None:
    """One line and legend entry per post made a chart of 1,460 posts that
    nobody could read and that took most of a minute to draw, also for
    `bot engagement --json`."""
    from bot.engagement import CHART_POSTS_PER_TOPIC, chart_series

    state, ids = months
    series = chart_series(Store(state))
    assert set(series) == set(TOPICS)
    for topic, entry in series.items():
        mine = [i for i in ids if f"-{topic}-" in i]
        assert entry["total"] == len(mine)
        assert [post[0] for post in entry["posts"]] == mine[-CHART_POSTS_PER_TOPIC:]


def test_least_recent_choice_after_months_takes_the_topic_posted_longest_ago(months) -> None:
    from bot import scheduling

    state, ids = months
    store = Store(state)
    choice = scheduling.choose_topic("least-recent", list(TOPICS), store.posts(), store.last_posted(), random.Random(0))
    newest_topic = store.get_post(ids[-1])["topic"]
    assert choice.topic != newest_topic and choice.order[-1] == newest_topic
