"""Engagement collection when a published post was deleted on Instagram."""

from __future__ import annotations

from datetime import timedelta

from fake_instagram.harness import run_cli

from bot.config import load_settings
from bot.engagement import collect_engagement
from bot.store import Store, parse_iso


def test_a_deleted_post_does_not_stop_the_others(fake, tmp_path):
    assert run_cli("post", "--topic", "reef")[0] == 0
    assert run_cli("post", "--topic", "ice")[0] == 0
    settings = load_settings()
    store = Store(settings.paths.state)
    first, second = store.posts()
    with fake.lock:  # the artist deleted the first post in the app
        fake.medias = [m for m in fake.medias if m["id"] != first["publication"]["media_id"]]
    published = parse_iso(second["publication"]["published_at"])
    taken = collect_engagement(settings, store, now=published + timedelta(hours=2))
    assert [s["post_id"] for s in taken] == [second["id"]]
    assert store.require_post(first["id"])["engagement"] == []
    assert store.require_post(first["id"])["status"] == "published"
