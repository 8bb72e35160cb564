"""Exactly once across crashes, and double landings detected: the publisher
against the fake Instagram server, through the real instagrapi client."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_instagram import FakeInstagram  # noqa: E402
from fake_instagram.harness import bot_env, run_cli, spawn_cli, write_templates  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.errors import PublishError  # noqa: E402
from bot.publish.base import Submission  # noqa: E402
from bot.publish.instagram import InstagramPublisher  # noqa: E402
from bot.store import Store  # noqa: E402


@pytest.fixture
def fake(tmp_path: Path):
    with FakeInstagram(tmp_path / "tls") as server:
        yield server


@pytest.mark.slow
def test_crash_between_configure_and_record_then_restart_ends_with_one_media(fake, tmp_path, monkeypatch):
    env = bot_env(fake, tmp_path / "state", write_templates(tmp_path / "templates"))
    # the configure lands, then its answer is held: the bot is killed while waiting
    fake.fail("/api/v1/media/configure/", "hang_after")
    child = spawn_cli(env, "post", "--topic", "reef")
    deadline = time.monotonic() + 120
    while not fake.medias and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
    assert fake.medias, f"the child never configured: {child.communicate()[1][-2000:] if child.poll() is not None else ''}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    fake.release()
    post = Store(tmp_path / "state").posts()[0]
    assert post["status"] == "publishing"  # the crash left the attempt unrecorded
    # restart: the bot looks before sending and records the media that landed
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli("post")
    assert code == 0, err
    post = Store(tmp_path / "state").posts()[0]
    assert post["status"] == "published"
    assert len(fake.medias) == 1
    assert post["publication"]["media_id"] == fake.medias[0]["id"]
    assert len(fake.calls("/api/v1/media/configure/")) == 1
    assert len(fake.calls("/rupload_igphoto/")) == 1


def _publisher(fake: FakeInstagram, tmp_path: Path) -> InstagramPublisher:
    env = bot_env(fake, tmp_path / "state", tmp_path / "templates")
    return InstagramPublisher(load_settings(environ=env))


def _submission(tmp_path: Path, attempt: str, previous: list[str] | None = None) -> Submission:
    image = tmp_path / "instagram.jpg"
    Image.new("RGB", (1080, 1350), (30, 60, 90)).save(image, quality=95)
    return Submission("20250101-120000-reef-abcd", attempt, image, "A reef, as a computer sees it. #dstrtd",
                      {"topic": "reef"}, previous or [attempt])


def test_configure_that_landed_twice_is_detected_and_reported(fake, tmp_path, caplog):
    publisher = _publisher(fake, tmp_path)
    submission = _submission(tmp_path, "attempt-1")
    fake.add_media(submission.caption)
    fake.add_media(submission.caption)
    caplog.set_level(logging.WARNING)
    found = publisher.find(submission)
    assert found is not None
    assert found.media_id == fake.medias[0]["id"]  # the first one is kept
    assert found.extra["duplicates"] == [fake.medias[1]["id"]]
    assert "landed 2 times" in caplog.text


def test_find_matches_by_upload_id_and_ignores_other_posts(fake, tmp_path):
    publisher = _publisher(fake, tmp_path)
    fake.add_media("an older post of another topic")
    assert publisher.find(_submission(tmp_path, "attempt-1")) is None
    published = publisher.publish(_submission(tmp_path, "attempt-1"))
    # a later attempt of the same post finds the earlier attempt's media
    again = publisher.find(_submission(tmp_path, "attempt-2", ["attempt-1", "attempt-2"]))
    assert again is not None and again.media_id == published.media_id
    assert again.extra.get("upload_id") == published.extra["upload_id"]


def test_same_caption_from_before_the_post_was_planned_is_not_this_post(fake, tmp_path):
    publisher = _publisher(fake, tmp_path)
    submission = _submission(tmp_path, "attempt-1")
    fake.add_media(submission.caption, taken_at=1_500_000_000)  # 2017: an older post with the same caption
    assert publisher.find(submission) is None


def test_find_pages_back_past_posts_made_by_hand_since_the_attempt(fake, tmp_path):
    """`find` used to read only the latest 18 media: a landed attempt followed
    by more posts made by hand was missed, and the post would be sent twice."""
    publisher = _publisher(fake, tmp_path)
    submission = _submission(tmp_path, "attempt-1")
    from bot.publish.instagram import upload_id_for

    landed = fake.add_media(submission.caption, upload_id_for("attempt-1"))
    for n in range(25):
        fake.add_media(f"posted by hand {n}")
    found = publisher.find(submission)
    assert found is not None and found.media_id == landed["id"]
    assert len(fake.calls("/api/v1/feed/user/")) == 2


def test_find_stops_paging_at_media_older_than_the_post(fake, tmp_path):
    publisher = _publisher(fake, tmp_path)
    for n in range(40):  # all from 2017, long before the post was planned
        fake.add_media(f"an old post {n}", taken_at=1_500_000_000 + n)
    assert publisher.find(_submission(tmp_path, "attempt-1")) is None
    assert len(fake.calls("/api/v1/feed/user/")) == 1


def test_find_that_reaches_its_page_limit_says_unknown(fake, tmp_path, monkeypatch):
    from bot.publish import instagram

    monkeypatch.setattr(instagram, "FEED_PAGES", 2)
    publisher = _publisher(fake, tmp_path)
    for n in range(40):
        fake.add_media(f"posted by hand {n}")
    with pytest.raises(PublishError, match="pages") as info:
        publisher.find(_submission(tmp_path, "attempt-1"))
    assert info.value.outcome_unknown
    assert len(fake.calls("/api/v1/feed/user/")) == 2


@pytest.mark.parametrize("refusal", ["429", "500", "drop"])
def test_find_that_cannot_look_says_unknown(fake, tmp_path, refusal):
    publisher = _publisher(fake, tmp_path)
    publisher.session()
    fake.fail("/api/v1/feed/user/", refusal)
    with pytest.raises(PublishError) as info:
        publisher.find(_submission(tmp_path, "attempt-1"))
    assert info.value.outcome_unknown


def test_publish_refuses_an_image_it_did_not_render(fake, tmp_path):
    publisher = _publisher(fake, tmp_path)
    image = tmp_path / "square.jpg"
    Image.new("RGB", (1080, 1080)).save(image)
    with pytest.raises(PublishError, match="1080x1350"):
        publisher.publish(Submission("p", "a", image, "caption", {}, ["a"]))
    assert fake.requests == []
