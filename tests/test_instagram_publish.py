"""`bot post` through the real instagrapi client against a fake Instagram
server (tests/fake_instagram), configured only through BOT_* settings:
a normal publish, each refusal, lost answers, sessions, and no secret in logs."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from fake_instagram.harness import run_cli

from bot.store import Store


def the_post(tmp_path: Path) -> dict:
    posts = Store(tmp_path / "state").posts()
    assert len(posts) == 1
    return posts[0]


def test_publish_sends_one_upload_and_one_configure_and_records_the_media(fake, tmp_path):
    code, out, err = run_cli("post", "--topic", "reef", "--json")
    assert code == 0, err
    assert len(fake.calls("/rupload_igphoto/", "POST")) == 1
    assert len(fake.calls("/api/v1/media/configure/", "POST")) == 1
    assert len(fake.medias) == 1
    post = the_post(tmp_path)
    media = fake.medias[0]
    assert post["status"] == "published"
    assert post["publication"]["media_id"] == media["id"]
    assert post["publication"]["code"] == media["code"]
    assert json.loads(out)["publication"]["code"] == media["code"]
    # the bot's own 1080x1350 JPEG went up byte for byte (instagrapi would re-encode it)
    jpeg = tmp_path / "state" / post["artefacts"]["instagram"]
    assert fake.uploads[media["upload_id"]] == jpeg.stat().st_size
    # the caption sent is the archived caption
    caption = (tmp_path / "state" / post["artefacts"]["caption"]).read_text(encoding="utf-8")
    assert media["caption"]["text"] == caption
    # every host the client used was redirected here, login host and public key URL included
    hosts = {r.host for r in fake.requests}
    assert {"b.i.instagram.com", "i.instagram.com"} <= hosts
    assert fake.calls("/api/v1/qe/sync/", "GET")  # the password public key
    # the session is saved for the next run, readable by this user only
    session = tmp_path / "state" / "instagram_session.json"
    assert stat.S_IMODE(session.stat().st_mode) == 0o600


def test_second_post_reuses_the_saved_session(fake, tmp_path):
    assert run_cli("post", "--topic", "reef")[0] == 0
    assert run_cli("post", "--topic", "ice")[0] == 0
    assert len(fake.calls("send_login_request")) == 1
    assert len(fake.medias) == 2


def test_expired_session_logs_in_again_once(fake, tmp_path):
    assert run_cli("post", "--topic", "reef")[0] == 0
    fake.expire_sessions()
    assert run_cli("post", "--topic", "ice")[0] == 0
    assert len(fake.calls("send_login_request")) == 2
    assert len(fake.medias) == 2


@pytest.mark.parametrize("refusal", ["429", "please_wait", "feedback_required"])
def test_slow_down_refusals_cool_the_post_down(fake, tmp_path, refusal):
    fake.fail("/api/v1/media/configure/", refusal)
    code, out, err = run_cli("post", "--topic", "reef")
    assert code == 1
    post = the_post(tmp_path)
    assert post["status"] == "cooling_down"
    assert post["retry_after"] > post["updated_at"]
    assert fake.medias == []
    assert len(fake.calls("/api/v1/media/configure/")) == 1  # no retry below the bot
    # still cooling down: a new run sends nothing
    assert run_cli("post")[0] == 1
    assert len(fake.calls("/api/v1/media/configure/")) == 1


@pytest.mark.parametrize("refusal", ["429", "please_wait"])
def test_slow_down_on_upload_cools_down_too(fake, tmp_path, refusal):
    fake.fail("/rupload_igphoto/", refusal)
    assert run_cli("post", "--topic", "reef")[0] == 1
    assert the_post(tmp_path)["status"] == "cooling_down"
    assert fake.calls("/api/v1/media/configure/") == []


def test_challenge_pauses_until_bot_login(fake, tmp_path):
    fake.fail("/api/v1/media/configure/", "challenge_required")
    code, out, err = run_cli("post", "--topic", "reef")
    assert code == 1
    post = the_post(tmp_path)
    assert post["status"] == "paused"
    assert "bot login" in post["error"]["message"]
    assert fake.medias == []
    # a person logs in: the post goes back to rendered, and the next run publishes it once
    code, out, err = run_cli("login", "--json")
    assert code == 0, err
    assert json.loads(out)["released_posts"] == [post["id"]]
    assert the_post(tmp_path)["status"] == "rendered"
    assert run_cli("post")[0] == 0
    assert the_post(tmp_path)["status"] == "published"
    assert len(fake.medias) == 1


def test_login_required_relogs_once_then_publishes(fake, tmp_path):
    assert run_cli("post", "--topic", "reef")[0] == 0
    fake.fail("/api/v1/media/configure/", "login_required", times=1)
    assert run_cli("post", "--topic", "ice")[0] == 0
    assert len(fake.calls("send_login_request")) == 2
    assert len(fake.medias) == 2


def test_login_required_after_relogin_pauses(fake, tmp_path):
    fake.fail("/api/v1/media/configure/", "login_required", times=2)
    assert run_cli("post", "--topic", "reef")[0] == 1
    assert the_post(tmp_path)["status"] == "paused"
    assert len(fake.calls("send_login_request")) == 2  # the first login and one relogin, no more
    assert fake.medias == []


def test_server_error_is_not_retried_below_the_bot_and_ends_with_one_media(fake, tmp_path):
    fake.fail("/api/v1/media/configure/", "500")
    assert run_cli("post", "--topic", "reef")[0] == 1
    assert len(fake.calls("/api/v1/media/configure/")) == 1  # requests' own retry is off
    assert the_post(tmp_path)["status"] == "publishing"  # outcome unknown: look before trying again
    assert run_cli("post")[0] == 0
    assert the_post(tmp_path)["status"] == "published"
    assert len(fake.medias) == 1


def test_dropped_connection_after_configure_ends_with_exactly_one_media(fake, tmp_path):
    fake.fail("/api/v1/media/configure/", "drop_after")
    assert run_cli("post", "--topic", "reef")[0] == 1
    assert len(fake.medias) == 1  # it landed, but the answer was lost
    assert len(fake.calls("/api/v1/media/configure/")) == 1  # and nothing re-sent it
    post = the_post(tmp_path)
    assert post["status"] == "publishing"
    # the retry looks first, finds the media and records it instead of posting again
    assert run_cli("post")[0] == 0
    post = the_post(tmp_path)
    assert post["status"] == "published"
    assert post["publication"]["media_id"] == fake.medias[0]["id"]
    assert len(fake.medias) == 1
    assert len(fake.calls("/api/v1/media/configure/")) == 1


def test_unreadable_feed_is_unknown_not_safe_to_post(fake, tmp_path):
    fake.fail("/api/v1/media/configure/", "drop_after")
    assert run_cli("post", "--topic", "reef")[0] == 1
    fake.fail("/api/v1/feed/user/", "429")
    code, out, err = run_cli("post")
    assert code == 1
    # unknown, so nothing is sent; the 429 cools the post down (it checks again after that)
    assert the_post(tmp_path)["status"] == "cooling_down"
    assert len(fake.calls("/api/v1/media/configure/")) == 1
    assert len(fake.medias) == 1


def test_no_secret_in_logs_output_manifest_or_config(fake, tmp_path, caplog, monkeypatch):
    seed = "JBSWY3DPEHPK3PXPJBSWY3DP"
    monkeypatch.setenv("BOT_INSTAGRAM_TOTP_SEED", seed)
    caplog.set_level(logging.DEBUG)
    fake.fail("/api/v1/media/configure/", "login_required", times=1)
    code, out, err = run_cli("-v", "post", "--topic", "reef")
    assert code == 0, err
    session = json.loads((tmp_path / "state" / "instagram_session.json").read_text())
    sessionid = session["authorization_data"]["sessionid"]
    secrets = [fake.password, sessionid, seed]
    shown = run_cli("config", "show")[1]
    post = the_post(tmp_path)
    manifest = (tmp_path / "state" / post["artefacts"]["manifest"]).read_text()
    store_text = (tmp_path / "state" / "bot.json").read_text()
    assert caplog.records  # the run did log, at debug level
    for secret in secrets:
        for where, text in [("log", caplog.text), ("stdout", out), ("stderr", err), ("config show", shown),
                            ("manifest", manifest), ("store", store_text)]:
            assert secret not in text, f"secret found in {where}"
    assert "Bearer IGT:2:ey" not in caplog.text
