"""``bot login`` releases posts paused by a challenge under the same post lock
the pipeline holds, so it never changes a post the daemon is working on."""

from __future__ import annotations

from fake_instagram.harness import run_cli

from bot.config import load_settings
from bot.store import Store, exclusive


def _paused_post(store: Store) -> str:
    store.create_post({"id": "20260101-120000-reef-abcd", "topic": "reef"})
    store.update_post("20260101-120000-reef-abcd", status="paused",
                      error={"step": "publish", "message": "challenge_required"})
    return "20260101-120000-reef-abcd"


def test_login_releases_paused_posts(fake, tmp_path):
    settings = load_settings()
    post_id = _paused_post(Store(settings.paths.state))
    code, out, err = run_cli("login")
    assert code == 0, err
    assert f"post {post_id}: paused -> rendered" in out
    assert Store(settings.paths.state).require_post(post_id)["status"] == "rendered"


def test_login_beside_a_running_post_leaves_paused_posts_and_says_why(fake, tmp_path):
    settings = load_settings()
    post_id = _paused_post(Store(settings.paths.state))
    with exclusive(settings.paths.state, "post", "bot run"):
        code, out, err = run_cli("login")
    assert code == 1
    assert "session saved" in out  # the login itself is kept
    assert "bot run" in err and "post.lock" in err and "not released" in err and "bot login" in err
    assert Store(settings.paths.state).require_post(post_id)["status"] == "paused"
