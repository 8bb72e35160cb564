"""SIGTERM during engagement collection: the collection stops between two
posts, keeps the snapshots it took, and the next run takes the rest.

A daemon back after weeks can have dozens of posts due, a few seconds of
requests each; the collection used to run to its end whatever the shutdown
flag said, past the container's stop timeout (then SIGKILL)."""

from __future__ import annotations

from datetime import timedelta

from fake_instagram.harness import publish_two_posts

from bot.config import load_settings
from bot.engagement import collect_engagement
from bot.store import Store, parse_iso


def test_a_shutdown_stops_collection_between_posts_and_the_next_run_takes_the_rest(fake, tmp_path):
    settings, store, first, second = publish_two_posts()
    later = parse_iso(second["publication"]["published_at"]) + timedelta(hours=2)
    asked = []

    def stop() -> bool:  # SIGTERM arrives while the first post is read
        asked.append(True)
        return len(asked) > 1

    taken = collect_engagement(settings, store, now=later, stop=stop)
    assert [s["post_id"] for s in taken] == [first["id"]]
    assert len(store.require_post(first["id"])["engagement"]) == 1  # kept
    assert store.require_post(second["id"])["engagement"] == []
    rest = collect_engagement(settings, store, now=later)  # the next start
    assert [s["post_id"] for s in rest] == [second["id"]]


def test_the_daemon_hands_its_shutdown_flag_to_the_collection(state_dir, monkeypatch):
    import bot.engagement
    from bot.daemon import Daemon

    given = {}

    def collect(settings, store, **options):
        given.update(options)
        return []

    monkeypatch.setattr(bot.engagement, "collect_engagement", collect)
    daemon = Daemon(load_settings(), Store(state_dir))
    daemon._engagement_job()
    assert given["stop"]() is False
    daemon.stop("received SIGTERM")
    assert given["stop"]() is True
