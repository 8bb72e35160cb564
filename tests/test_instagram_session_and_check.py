"""The Instagram session file is never readable by others, not even
for a moment, and not after a crash."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bot.publish import instagram


class _Client:
    def get_settings(self) -> dict:
        return {"authorization_data": {"sessionid": "1234%3Asecret-session-cookie"}}


def test_session_file_is_owner_only_from_the_moment_it_appears(tmp_path: Path, monkeypatch) -> None:
    """The session cookie is as good as the password. It used to be renamed into
    place with the usual 0644 mode and only then chmod-ed to 0600: a crash in
    between left it readable by every user of the machine."""
    previous = os.umask(0o022)

    def crash(*args, **kwargs):
        raise SystemExit("injected crash after the session file was renamed into place")

    monkeypatch.setattr(os, "chmod", crash)
    path = tmp_path / instagram.SESSION_FILE
    try:
        instagram.save_session(_Client(), path)
    except SystemExit:
        pass
    finally:
        os.umask(previous)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_slow_down_while_checking_an_earlier_attempt_cools_the_post_down(fake, tmp_path: Path) -> None:
    """Instagram answered "slow down" to the feed read that checks whether an
    earlier attempt landed. The post used to stay "publishing" with no
    retry_after, so the next run (the daemon's, 30 s later) read the feed
    again at once. Now it cools down like any other slow-down, and the check
    waits; nothing is ever sent again without it."""
    from fake_instagram.harness import run_cli

    from bot.store import Store, parse_iso, utcnow

    fake.fail("/api/v1/media/configure/", "drop_after")  # landed, answer lost
    assert run_cli("post", "--topic", "reef")[0] == 1
    fake.fail("/api/v1/feed/user/", "429")
    code, _, err = run_cli("post")
    assert code == 1 and "slow down" in err
    [post] = Store(tmp_path / "state").posts()
    assert post["status"] == "cooling_down"
    assert parse_iso(post["retry_after"]) > utcnow()
    reads = len(fake.calls("/api/v1/feed/user/"))
    code, _, err = run_cli("post")
    assert code == 1 and "cooling down until" in err
    assert len(fake.calls("/api/v1/feed/user/")) == reads  # it did not ask again
    assert len(fake.calls("/api/v1/media/configure/")) == 1 and len(fake.medias) == 1


def test_challenge_while_checking_an_earlier_attempt_pauses_the_post(fake, tmp_path: Path) -> None:
    """A challenge on that check used to leave the post "publishing": the daemon
    then retried it (logging in against the challenge) instead of leaving it
    for a person, as it does with every other challenge."""
    from fake_instagram.harness import run_cli

    from bot.store import Store

    fake.fail("/api/v1/media/configure/", "drop_after")
    assert run_cli("post", "--topic", "reef")[0] == 1
    fake.fail("/api/v1/feed/user/", "challenge_required")
    code, _, err = run_cli("post")
    assert code == 1 and "bot login" in err
    [post] = Store(tmp_path / "state").posts()
    assert post["status"] == "paused"
    # a person runs `bot post` again: it checks first, finds the media, records it
    code, _, err = run_cli("post")
    assert code == 0, err
    [post] = Store(tmp_path / "state").posts()
    assert post["status"] == "published" and post["publication"]["media_id"] == fake.medias[0]["id"]
    assert len(fake.calls("/api/v1/media/configure/")) == 1 and len(fake.medias) == 1
