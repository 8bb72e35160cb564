"""`bot engagement`, `bot status` and `bot topics` as a person who has run the
bot for a year reads them: numbers that mean what they say, posts that are
listed, and errors shown as a message rather than a traceback."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from support import run_bot

from bot.engagement import engagement_summary
from bot.store import Store, iso

PUBLISHED = datetime(2025, 3, 1, 17, 0, tzinfo=timezone.utc)


def _published(store: Store, topic: str, when: datetime, likes: list[int]) -> dict[str, Any]:
    """A post published on Instagram at ``when`` with one snapshot per count
    in ``likes`` (at 1 h, 6 h, 24 h, ... after publication)."""
    post = store.create_post({"id": store.new_post_id(topic, when), "topic": topic, "publisher": "instagram"})
    media_id = f"{abs(hash(post['id'])) % 10**12}_42"
    store.update_post(post["id"], status="published", publication={
        "publisher": "instagram", "media_id": media_id, "published_at": iso(when),
        "url": "https://www.instagram.com/p/C0de/", "code": "C0de", "extra": {}})
    for hours, count in zip((1.0, 6.0, 24.0, 72.0, 168.0, 720.0), likes):
        store.append_to_post(post["id"], "engagement", {
            "taken_at": iso(when + timedelta(hours=hours)), "slot_hours": hours, "media_id": media_id,
            "likes": count, "comments": count // 10, "views": None, "plays": None, "insights": None})
    return store.require_post(post["id"])


# -- bot engagement ------------------------------------------------------------------


def test_a_post_with_one_snapshot_shows_no_growth_rather_than_zero(state_dir):
    """Growth is "latest minus first snapshot": with a single snapshot nothing
    was measured, and "+0" read as "this post gained nothing"."""
    store = Store(state_dir)
    one = _published(store, "coral", PUBLISHED, [40])
    two = _published(store, "coral", PUBLISHED + timedelta(days=1), [10, 25])
    rows = {row["post_id"]: row for row in engagement_summary(store)["posts"]}
    assert rows[one["id"]]["likes"] == 40
    assert rows[one["id"]]["likes_growth"] is None and rows[one["id"]]["comments_growth"] is None
    assert rows[two["id"]]["likes_growth"] == 15


def test_a_published_post_without_snapshots_yet_is_listed(state_dir, capsys):
    """A post published this morning (no slot has passed, or the reads failed)
    was missing from the table and the JSON, as if it had never been posted."""
    store = Store(state_dir)
    older = _published(store, "coral", PUBLISHED, [10, 20])
    fresh = _published(store, "glacier", PUBLISHED + timedelta(days=2), [])
    code, out, err = run_bot(capsys, "engagement", "--json")
    assert code == 0, err
    rows = {row["post_id"]: row for row in json.loads(out)["posts"]}
    assert set(rows) == {older["id"], fresh["id"]}
    assert rows[fresh["id"]]["snapshots"] == 0 and rows[fresh["id"]]["likes"] is None
    assert json.loads(out)["topics"]["coral"]["posts"] == 1 and "glacier" not in json.loads(out)["topics"]
    code, out, err = run_bot(capsys, "engagement")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if line.startswith(fresh["id"])]
    assert "no snapshot yet" in line
    store.update_post(fresh["id"], media_missing_since="2025-03-03T19:00:00+00:00")  # one "not found" so far
    code, out, err = run_bot(capsys, "engagement")
    [line] = [line for line in out.splitlines() if line.startswith(fresh["id"])]
    assert "not found since 2025-03-03T19:00:00+00:00" in line


def test_dry_runs_are_not_listed_as_instagram_posts(state_dir, capsys):
    store = Store(state_dir)
    post = store.create_post({"id": store.new_post_id("coral", PUBLISHED), "topic": "coral", "publisher": "outbox"})
    store.update_post(post["id"], status="published",
                      publication={"publisher": "outbox", "media_id": None, "published_at": iso(PUBLISHED)})
    code, out, err = run_bot(capsys, "engagement", "--json")
    assert code == 0, err
    assert json.loads(out)["posts"] == []


def test_an_empty_table_says_what_to_do(state_dir, capsys):
    code, out, err = run_bot(capsys, "engagement")
    assert code == 0, err
    assert "bot engagement collect" in out


def test_a_chart_that_cannot_be_written_is_a_message_not_a_traceback(state_dir, capsys):
    """state/engagement.png taken by a folder (or a file another user owns, a
    full disk): the command ended in an IsADirectoryError traceback."""
    store = Store(state_dir)
    _published(store, "coral", PUBLISHED, [10, 20])
    (state_dir / "engagement.png").mkdir()
    for args in (("engagement",), ("engagement", "--json")):
        code, out, err = run_bot(capsys, *args)
        assert code == 1
        assert "Traceback" not in err
        assert "engagement.png" in err and "--chart" in err


# -- bot status ----------------------------------------------------------------------


def _heartbeat(state_dir: Path, **fields: Any) -> None:
    (state_dir / "heartbeat.json").write_text(json.dumps({"status": "running", "pid": 7, **fields}), encoding="utf-8")


def test_status_with_a_damaged_heartbeat_says_so(state_dir, capsys):
    """A heartbeat edited by hand or damaged on disk (a last_tick that is not
    a time, one without a zone, a last_error that is a string, not an object)
    made `bot status` crash, exactly when a person needs it."""
    cases = [
        {"last_tick": "garbage"},
        {"last_tick": "2025-03-01T17:00:00"},
        {"last_tick": iso(datetime.now(timezone.utc)), "last_error": "boom", "next_runs": None},
    ]
    for fields in cases:
        _heartbeat(state_dir, **fields)
        for args in (("status",), ("status", "--json")):
            code, out, err = run_bot(capsys, *args)
            assert code == 0, (fields, err)
            assert "Traceback" not in err
        data = json.loads(run_bot(capsys, "status", "--json")[1])
        if fields["last_tick"] != cases[2]["last_tick"]:
            assert data["daemon"]["healthy"] is False and data["daemon"]["heartbeat_age_s"] is None
    (state_dir / "heartbeat.json").write_text("[1, 2]", encoding="utf-8")
    code, out, err = run_bot(capsys, "status")
    assert code == 0, err
    assert "NOT HEALTHY" in out


def test_status_text_shows_the_recent_runs(state_dir, capsys):
    """docs/daemon.md: `bot status [--json]` shows ... the last slots, runs and
    alerts. The text left the runs out, so an engagement job failing every
    hour (a refused login) was visible only with --json."""
    store = Store(state_dir)
    finished = iso(datetime.now(timezone.utc))
    store.insert("runs", {"id": "r1", "job": "engagement", "slot": None, "post_id": None, "outcome": "failed",
                          "error": "PublishPaused: Instagram refused the login; run `bot login`",
                          "details": None, "finished_at": finished, "duration_s": 0.4, "pid": 7})
    code, out, err = run_bot(capsys, "status")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if "engagement" in line and "failed" in line]
    assert finished in line and "bot login" in line
    assert json.loads(run_bot(capsys, "status", "--json")[1])["runs"][0]["outcome"] == "failed"


def test_the_chart_gives_comments_their_own_axis_and_time_a_log_scale(tmp_path, monkeypatch) -> None:
    """Comments run at about a tenth of the likes and sat flat near zero on the
    likes axis; on a linear time axis out to 30 days the first day, where most
    likes come, was a sliver."""
    import sys

    import matplotlib.figure

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.store_growth import fill
    from bot.engagement import plot_engagement
    from bot.store import Store

    store = Store(tmp_path / "state")
    fill(store, days=20, per_day=2)
    drawn = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), real_savefig(fig, *a, **k))[1])
    plot_engagement(store, tmp_path / "chart.png")
    [fig] = drawn
    rows = [fig.axes[i : i + 2] for i in range(0, len(fig.axes), 2)]
    assert rows
    for likes, comments in rows:
        assert (likes.get_ylabel(), comments.get_ylabel()) == ("likes", "comments")
        assert likes.get_xscale() == comments.get_xscale() == "symlog"
        most_likes = max(max(line.get_ydata()) for line in likes.get_lines())
        most_comments = max(max(line.get_ydata()) for line in comments.get_lines())
        assert most_comments < most_likes and comments.get_ylim()[1] < likes.get_ylim()[1]
