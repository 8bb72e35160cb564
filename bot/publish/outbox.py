"""The ``outbox`` publisher: writes exactly what would be sent to ``state/outbox/<post-id>/``.

Used for dry runs and whenever no Instagram credentials are configured. The
folder appears whole or not at all (written beside it, then renamed), so its
presence is the proof that an attempt landed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bot.config import Settings
from bot.errors import PublishError
from bot.publish.base import Publication, Submission, register_publisher
from bot.store import fsync_dir, iso, utcnow


class OutboxPublisher:
    name = "outbox"

    def __init__(self, settings: Settings):
        self.root = Path(settings.paths.state) / "outbox"

    def check(self) -> None:
        """The outbox needs nothing but a writable state folder, checked by the pipeline."""

    def find(self, submission: Submission) -> Publication | None:
        record = self.root / submission.post_id / "sent.json"
        if not record.is_file():
            return None
        try:
            sent = json.loads(record.read_text(encoding="utf-8"))
            return Publication(
                publisher=self.name,
                published_at=sent["published_at"],
                media_id=sent["media_id"],
                url=(self.root / submission.post_id).as_uri(),
                extra={"attempt_id": sent["attempt_id"]},
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # the folder only ever appears whole, so the post was sent; its
            # record was edited or damaged since
            raise PublishError(
                f"the outbox record {record} is unreadable ({type(exc).__name__}: {exc}); the post was "
                f"written to the outbox: repair that file, or move {record.parent} away to send it again",
                retryable=False,
            ) from None

    def publish(self, submission: Submission) -> Publication:
        existing = self.find(submission)
        if existing is not None:  # never send the same post twice
            return existing
        self.root.mkdir(parents=True, exist_ok=True)
        # staging folders of this post left by a crashed attempt: the post is
        # sent once, from a fresh one (one post at a time per state folder)
        for stale in self.root.glob(f".{submission.post_id}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{submission.post_id}.", dir=self.root))
        published_at = iso(utcnow())
        try:
            shutil.copyfile(submission.image_path, staging / "image.jpg")
            (staging / "caption.txt").write_text(submission.caption, encoding="utf-8")
            sent = {
                "post_id": submission.post_id,
                "attempt_id": submission.attempt_id,
                "media_id": f"outbox-{submission.post_id}",
                "published_at": published_at,
                "metadata": submission.metadata,
            }
            (staging / "sent.json").write_text(json.dumps(sent, indent=2), encoding="utf-8")
            for item in staging.iterdir():
                with open(item, "rb") as handle:
                    os.fsync(handle.fileno())
            fsync_dir(staging)
            os.rename(staging, self.root / submission.post_id)
            # the rename itself must survive a power loss, or the store could
            # say "published" with no outbox folder to show for it
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        found = self.find(submission)
        assert found is not None
        return found


register_publisher("outbox", OutboxPublisher)
