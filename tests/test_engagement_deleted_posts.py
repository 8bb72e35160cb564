"""Engagement collection when a published post was deleted on Instagram."""

from __future__ import annotations

import json
from datetime import timedelta

from fake_instagram.harness import publish_two_posts, run_cli

from bot import scheduling
from bot.config import load_settings
from bot.engagement import collect_engagement, due_slot, engagement_summary
from bot.store import Store, parse_iso


def _two_posts_first_deleted(fake):
    settings, store, first, second = publish_two_posts()
    with fake.lock:  # the artist deleted the first post in the app
        fake.medias = [m for m in fake.medias if m["id"] != first["publication"]["media_id"]]
    return settings, store, first, second


def _one_post():
    """One published post: settings, store, its record and when it was published."""
    assert run_cli("post", "--topic", "reef")[0] == 0
    settings = load_settings()
    store = Store(settings.paths.state)
    [post] = store.posts()
    return settings, store, post, parse_iso(post["publication"]["published_at"])


def _info_calls(fake, post) -> int:
    return len(fake.calls(f"/media/{post['publication']['extra']['media_pk']}/info/"))


def test_a_deleted_post_does_not_stop_the_others(fake, tmp_path):
    settings, store, first, second = _two_posts_first_deleted(fake)
    published = parse_iso(second["publication"]["published_at"])
    taken = collect_engagement(settings, store, now=published + timedelta(hours=2))
    assert [s["post_id"] for s in taken] == [second["id"]]
    assert store.require_post(first["id"])["engagement"] == []
    assert store.require_post(first["id"])["status"] == "published"


def test_a_deleted_post_is_recorded_as_gone_and_never_asked_about_again(fake, tmp_path):
    """A deleted post never gets a snapshot, so it used to stay due and every
    engagement run (hourly) asked Instagram about it again, for months."""
    settings, store, first, second = _two_posts_first_deleted(fake)
    published = parse_iso(second["publication"]["published_at"])
    # one "not found" is not enough (GONE_AFTER): still asked a few hours later
    for hours in (2, 7):
        collect_engagement(settings, store, now=published + timedelta(hours=hours))
        missing = store.require_post(first["id"])
        assert missing.get("media_gone_at") is None
        assert parse_iso(missing["media_missing_since"]) == published + timedelta(hours=2)
    assert _info_calls(fake, first) == 2
    collect_engagement(settings, store, now=published + timedelta(hours=26))  # a day after the first answer
    gone = store.require_post(first["id"])
    assert parse_iso(gone["media_gone_at"]) == published + timedelta(hours=26)
    assert "not found" in gone["media_gone_reason"].lower()
    assert due_slot(gone, settings.instagram.engagement_schedule_hours, published + timedelta(days=40)) is None
    for hours in (80, 200):
        collect_engagement(settings, store, now=published + timedelta(hours=hours))
    assert _info_calls(fake, first) == 3
    assert len(store.require_post(second["id"])["engagement"]) == 5  # the other post goes on

    summary = engagement_summary(store)
    rows = {row["post_id"]: row for row in summary["posts"]}
    assert rows[first["id"]]["gone_at"] == gone["media_gone_at"] and rows[first["id"]]["snapshots"] == 0
    assert rows[second["id"]]["gone_at"] is None
    code, out, err = run_cli("engagement", "--json")
    assert code == 0, err
    assert {row["post_id"]: row["gone_at"] for row in json.loads(out)["posts"]}[first["id"]] == gone["media_gone_at"]
    code, out, err = run_cli("engagement")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if line.startswith(first["id"])]
    assert "deleted on Instagram" in line and gone["media_gone_at"][:10] in line


def test_a_post_that_answers_again_is_not_taken_for_deleted(fake, tmp_path):
    settings, store, post, published = _one_post()
    with fake.lock:  # a wrong "not found" from Instagram, once
        media, fake.medias = fake.medias, []
    collect_engagement(settings, store, now=published + timedelta(hours=2))
    assert store.require_post(post["id"])["media_missing_since"]
    with fake.lock:
        fake.medias = media
    taken = collect_engagement(settings, store, now=published + timedelta(hours=30))
    assert [s["post_id"] for s in taken] == [post["id"]]
    answered = store.require_post(post["id"])
    assert answered.get("media_missing_since") is None and answered.get("media_gone_at") is None


def test_a_failed_read_is_not_taken_for_a_deleted_post(fake, tmp_path):
    settings, store, post, published = _one_post()
    fake.fail("/info/", "500")
    assert collect_engagement(settings, store, now=published + timedelta(hours=2)) == []
    assert store.require_post(post["id"]).get("media_gone_at") is None
    assert [s["post_id"] for s in collect_engagement(settings, store, now=published + timedelta(hours=2))] == [post["id"]]


def test_topic_choice_ignores_deleted_posts():
    def post(topic: str, likes: int, **extra):
        return {"topic": topic, "status": "published", "engagement": [{"slot_hours": 24, "likes": likes}], **extra}

    deleted = post("reef", 1000, media_gone_at="2026-01-02T00:00:00+00:00")
    outcomes, median = scheduling.topic_outcomes([post("reef", 1), post("ice", 5), deleted])
    assert outcomes == {"reef": (0, 1), "ice": (1, 0)} and median == 3
