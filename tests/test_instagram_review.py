"""Review of the Instagram publisher and `bot login` by someone who runs the
bot for months: broken or loose session files, a bad authenticator seed,
challenges `bot login` cannot finish, a forced password change, slow-down
answers at login, and a caption or image Instagram would refuse only after
the upload. Each test failed before its fix. Everything runs the real
instagrapi client against the fake server (tests/fake_instagram)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from fake_instagram.harness import run_cli

from bot.config import load_settings
from bot.errors import PublishError, PublishPaused
from bot.publish.base import Submission
from bot.publish.instagram import InstagramPublisher, SESSION_FILE
from bot.store import Store

SEED = "JBSWY3DPEHPK3PXPJBSWY3DP"


def _session(tmp_path: Path) -> Path:
    return tmp_path / "state" / SESSION_FILE


def _posts(tmp_path: Path) -> list[dict]:
    return Store(tmp_path / "state").posts()


def _submission(tmp_path: Path, caption: str = "A reef, as a computer sees it. #dstrtd", image: Path | None = None) -> Submission:
    if image is None:
        image = tmp_path / "post" / "instagram.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (1080, 1350), (30, 60, 90)).save(image, quality=95)
    return Submission("20250101-120000-reef-abcd", "attempt-1", image, caption, {"topic": "reef"}, ["attempt-1"])


# -- the saved session ------------------------------------------------------------------


@pytest.mark.parametrize("content", ['{"uuids": {"phone_id": "x"', "[]", "\xff\xfe not text"])
def test_post_with_a_broken_session_file_logs_in_again_and_publishes(fake, tmp_path, content):
    """A session file that is not a session used to fail every post with the
    parse error ("unexpected error while logging in (JSONDecodeError ...)"),
    then "cannot tell whether an earlier attempt was published", run after
    run. Now it is set aside and the bot logs in as on a first run."""
    _session(tmp_path).parent.mkdir(parents=True)
    _session(tmp_path).write_bytes(content.encode("latin-1"))
    code, out, err = run_cli("post", "--topic", "reef")
    assert code == 0, err
    [post] = _posts(tmp_path)
    assert post["status"] == "published" and len(fake.medias) == 1
    assert len(fake.calls("send_login_request")) == 1
    saved = json.loads(_session(tmp_path).read_text())
    assert saved["authorization_data"]["sessionid"]
    aside = _session(tmp_path).with_name(SESSION_FILE + ".corrupt")
    assert aside.read_bytes() == content.encode("latin-1")  # kept for a person to look at
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600


def test_login_with_a_broken_session_file_replaces_it(fake, tmp_path):
    """`bot login` crashed with a JSONDecodeError traceback on such a file,
    though it is the command a person runs to repair the session."""
    _session(tmp_path).parent.mkdir(parents=True)
    _session(tmp_path).write_text('{"uuids": ')
    code, out, err = run_cli("login")
    assert code == 0, err
    assert "Logged in as" in out
    assert json.loads(_session(tmp_path).read_text())["authorization_data"]["sessionid"]


def test_a_session_file_others_can_read_is_made_owner_only_when_loaded(fake, tmp_path):
    """A session restored from a backup or copied from another machine came
    with mode 0644 and stayed readable by every user for as long as no run
    saved it again (here: every run cools down at the session check)."""
    assert run_cli("login")[0] == 0
    os.chmod(_session(tmp_path), 0o644)
    fake.fail("/api/v1/accounts/current_user/", "please_wait")
    code, _, err = run_cli("post", "--topic", "reef")
    assert code == 1 and "slow down" in err
    assert stat.S_IMODE(_session(tmp_path).stat().st_mode) == 0o600


def test_an_unreadable_session_file_says_how_to_fix_it(fake, tmp_path, monkeypatch):
    """A session file this user cannot read (written by root, say) was
    reported as a "network error or server error" and retried as one."""
    assert run_cli("login")[0] == 0
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == SESSION_FILE:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    publisher = InstagramPublisher(load_settings())
    with pytest.raises(PublishPaused) as info:
        publisher.session()
    message = str(info.value)
    assert "Permission denied" in message and "chown" in message and "network" not in message


# -- the authenticator seed -------------------------------------------------------------


def test_a_malformed_totp_seed_is_refused_before_any_work(fake, tmp_path, monkeypatch):
    """A typo in the seed used to surface only at login, after the image was
    generated: "unexpected error while logging in (Error: Non-base32 digit
    found)", the post retried until it failed."""
    monkeypatch.setenv("BOT_INSTAGRAM_TOTP_SEED", "not a base32 seed!!")
    code, out, err = run_cli("post", "--topic", "reef")
    assert code == 2
    assert "BOT_INSTAGRAM_TOTP_SEED" in err and "Traceback" not in err
    assert _posts(tmp_path) == [] and fake.requests == []


def test_login_with_a_malformed_totp_seed_says_so(fake, tmp_path, monkeypatch):
    """`bot login` ended in a binascii.Error traceback."""
    monkeypatch.setenv("BOT_INSTAGRAM_TOTP_SEED", "not a base32 seed!!")
    code, out, err = run_cli("login")
    assert code == 2
    assert "BOT_INSTAGRAM_TOTP_SEED" in err
    assert fake.requests == []


def test_a_valid_seed_written_in_groups_and_lower_case_still_logs_in(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("BOT_INSTAGRAM_TOTP_SEED", "jbsw y3dp ehpk 3pxp jbsw y3dp")
    assert run_cli("post", "--topic", "reef")[0] == 0
    assert len(fake.medias) == 1


# -- bot login: what Instagram says, and what to do ---------------------------------------


def test_login_challenge_the_bot_cannot_complete_says_what_to_do(fake, tmp_path):
    """instagrapi's challenge flow raises an AssertionError on a step it does
    not know: `bot login` showed that traceback and nothing else."""
    assert run_cli("login")[0] == 0
    fake.fail("/api/v1/accounts/current_user/", "challenge_required")
    code, out, err = run_cli("login")
    assert code == 1
    assert "Traceback" not in err and "AssertionError" in err
    assert "Instagram app" in err and "bot login" in err


@pytest.mark.parametrize("refusal", ["429", "please_wait", "feedback_required"])
def test_login_told_to_slow_down_says_to_wait(fake, tmp_path, refusal):
    """It printed "login failed: ClientThrottledError: rate limited" and
    nothing about waiting: a person tries again at once, which makes it worse."""
    fake.fail("send_login_request", refusal)
    code, out, err = run_cli("login")
    assert code == 1
    assert "wait at least an hour" in err
    assert not _session(tmp_path).exists()


def test_login_refused_password_names_the_setting_and_is_not_garbled(fake, tmp_path, monkeypatch):
    """The secret filter took "BadPassword: The password ..." for a password
    field and printed "BadPassword: ******** password you entered is
    incorrect", which reads as if a password had been shown."""
    monkeypatch.setenv("BOT_INSTAGRAM_PASSWORD", "not the password")
    code, out, err = run_cli("login")
    assert code == 2
    assert "The password you entered is incorrect" in err
    assert "BOT_INSTAGRAM_PASSWORD" in err


def test_post_with_a_refused_password_names_the_setting(fake, tmp_path, monkeypatch):
    """The paused post said only "run `bot login`", which is refused the same
    way while BOT_INSTAGRAM_PASSWORD is wrong."""
    monkeypatch.setenv("BOT_INSTAGRAM_PASSWORD", "not the password")
    code, out, err = run_cli("post", "--topic", "reef")
    assert code == 1
    [post] = _posts(tmp_path)
    assert post["status"] == "paused"
    assert "BOT_INSTAGRAM_PASSWORD" in post["error"]["message"]
    assert "The password you entered" in post["error"]["message"]


def test_password_change_challenge_asks_hidden_twice_and_says_to_update_the_setting(fake, tmp_path, caplog):
    """Instagram's "change your password" step went to instagrapi's own
    prompt: input(), the new password echoed on the terminal, asked once, and
    BOT_INSTAGRAM_PASSWORD left out of date without a word (the daemon's next
    login is then refused). Now: a hidden prompt with confirmation, masked in
    the log, and a line saying which setting to update."""
    from click.testing import CliRunner

    from fake_instagram.harness import _as_click

    from bot.cli import main

    new_password = "a new Instagram password 2026"
    assert run_cli("login")[0] == 0
    fake.fail("/api/v1/accounts/current_user/", "challenge_required")
    fake.challenge_step = {
        "step_name": "change_password",
        "step_data": {"new_password1": "None", "new_password2": "None"},
        "challenge_context": json.dumps({"step_name": "change_password", "challenge_type_enum": "PASSWORD_RESET"}),
    }
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(_as_click(main), ["-v", "login"], input=f"{new_password}\n{new_password}\n",
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert fake.password == new_password  # Instagram got it
    assert "Repeat for confirmation" in result.stderr
    assert "update BOT_INSTAGRAM_PASSWORD" in result.stderr
    for text in (result.stdout, result.stderr, caplog.text):
        assert new_password not in text


# -- what is sent ----------------------------------------------------------------------


def test_a_jpeg_cut_short_is_not_uploaded(fake, tmp_path):
    """Only the header was checked: a JPEG cut short (disk full, interrupted
    copy) has the right size and format and was uploaded and configured."""
    publisher = InstagramPublisher(load_settings())
    submission = _submission(tmp_path)
    data = submission.image_path.read_bytes()
    submission.image_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PublishError, match="truncated") as info:
        publisher.publish(submission)
    assert not info.value.retryable
    assert fake.requests == []


def test_a_caption_edited_past_instagrams_limits_is_not_sent(fake, tmp_path):
    """The caption is checked when it is rendered, but the publisher sends
    what caption.txt holds when it publishes, which a person may have edited
    meanwhile (to fix a fact, to add tags). It was uploaded and configured."""
    publisher = InstagramPublisher(load_settings())
    caption = "A reef. " + " ".join(f"#reef{n}" for n in range(12))
    with pytest.raises(PublishError, match="hashtags") as info:
        publisher.publish(_submission(tmp_path, caption=caption))
    assert "caption.txt" in str(info.value)
    assert info.value.retryable and not info.value.outcome_unknown
    assert fake.requests == []


def test_a_session_that_cannot_be_saved_after_publishing_does_not_make_the_outcome_unknown(fake, tmp_path, monkeypatch, caplog):
    """The post is out once the configure call answers with its media; a full
    disk while saving the refreshed session afterwards used to turn that into
    "outcome unknown", an alarming message for a post that had landed."""
    import errno

    import bot.publish.instagram as instagram

    publisher = InstagramPublisher(load_settings())
    real_save = instagram.save_session
    saves = []

    def save_then_disk_full(client, path):
        saves.append(path)
        if len(saves) > 1:  # the login's save works; the one after the configure call does not
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(client, path)

    monkeypatch.setattr(instagram, "save_session", save_then_disk_full)
    with caplog.at_level(logging.WARNING, logger="bot.publish.instagram"):
        publication = publisher.publish(_submission(tmp_path))
    assert publication.media_id and len(fake.medias) == 1
    assert "published, but the session could not be saved" in caplog.text
