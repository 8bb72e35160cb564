"""The outbox publisher after a crash: what an earlier attempt left half-made
is cleared, and a sent post's folder survives a power loss."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from bot.config import load_settings
from bot.publish.base import Submission
from bot.publish.outbox import OutboxPublisher


def _submission(tmp_path: Path, post_id: str = "20260101-090000-coral-ab12") -> Submission:
    image = tmp_path / "post.jpg"
    Image.new("RGB", (1080, 1350), "navy").save(image, "JPEG")
    return Submission(post_id=post_id, attempt_id="a1", image_path=image, caption="Coral.", metadata={})


def test_a_crashed_attempts_staging_folder_is_cleared_and_the_post_sent_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    outbox = OutboxPublisher(load_settings(environ={"BOT_PATHS_STATE": str(state)}))
    submission = _submission(tmp_path)
    left = state / "outbox" / f".{submission.post_id}.k3x9"  # a kill between mkdtemp and the rename
    left.mkdir(parents=True)
    (left / "image.jpg").write_bytes(b"\xff\xd8 half")
    other = state / "outbox" / ".20260102-090000-glacier-cd34.q1w2"  # another post's: not ours to touch
    other.mkdir()
    outbox.publish(submission)
    names = sorted(p.name for p in (state / "outbox").iterdir())
    assert names == [other.name, submission.post_id]
    assert sorted(p.name for p in (state / "outbox" / submission.post_id).iterdir()) == ["caption.txt", "image.jpg", "sent.json"]


def test_the_rename_that_publishes_is_synced_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder's appearance is the proof a post was sent: the outbox folder
    holding it is fsynced after the rename, not only the files inside."""
    state = tmp_path / "state"
    outbox = OutboxPublisher(load_settings(environ={"BOT_PATHS_STATE": str(state)}))
    synced_dirs: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            synced_dirs.append(info.st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    submission = _submission(tmp_path)
    outbox.publish(submission)
    assert (state / "outbox").stat().st_ino in synced_dirs
    assert (state / "outbox" / submission.post_id).stat().st_ino in synced_dirs


def test_a_damaged_outbox_record_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    from bot.errors import PublishError

    state = tmp_path / "state"
    outbox = OutboxPublisher(load_settings(environ={"BOT_PATHS_STATE": str(state)}))
    submission = _submission(tmp_path)
    outbox.publish(submission)
    record = state / "outbox" / submission.post_id / "sent.json"
    record.write_text('{"post_id": "cut sho', encoding="utf-8")
    with pytest.raises(PublishError, match="outbox record .*sent.json is unreadable") as caught:
        outbox.find(submission)
    assert not caught.value.retryable and "move" in str(caught.value)
