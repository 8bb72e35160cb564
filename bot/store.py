"""The store: every post record in one TinyDB file, ``state/bot.json``.

Nothing else opens that file. Every write is atomic (temp file, fsync, rename),
guarded by a lock file for the state directory (another process) and a thread
lock (APScheduler runs jobs in threads). A file that does not parse is reported
as :class:`StoreCorrupt` and left exactly as it is.

A post moves through::

    planned -> generated -> rendered -> publishing -> published
                                            `-> cooling_down | paused | failed

Each transition is written before the next step starts, so a restart knows
where to pick up.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout
from tinydb import Query, TinyDB
from tinydb.storages import Storage

from bot.errors import BadInput, Busy, StoreCorrupt, StoreError

STATUSES = (
    "planned",
    "generated",
    "rendered",
    "publishing",
    "published",
    "cooling_down",
    "paused",
    "failed",
)
# A post in one of these states is finished: `bot post` starts a new one.
FINISHED = frozenset({"published", "failed"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


class AtomicJSONStorage(Storage):
    """TinyDB storage that never leaves a half-written file.

    TinyDB's own JSONStorage rewrites the file in place, so a crash mid-write
    loses the database; this one writes a temp file beside it, fsyncs it and
    renames it over the old one.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read the store {self.path}: {exc.strerror}") from exc
        if not text.strip():
            raise StoreCorrupt(
                f"the store {self.path} is empty; it was kept as it is. Restore it from a backup "
                "or move it away to start a new one."
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreCorrupt(
                f"the store {self.path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}); it was kept as it is. Restore it from a backup or move it away "
                "to start a new one."
            ) from exc
        if not isinstance(data, dict):
            raise StoreCorrupt(f"the store {self.path} does not hold a JSON object; it was kept as it is")
        return data

    def write(self, data: dict[str, Any]) -> None:
        # A full disk or a permission change must reach a person as a message
        # (StoreError, exit 1), not as a traceback; the write is atomic, so the
        # file on disk still holds the last complete state.
        try:
            atomic_write_text(self.path, dumps_compact(data))
        except OSError as exc:
            raise StoreError(
                f"cannot write the store {self.path}: {exc.strerror or exc}; it still holds the last "
                "complete state. Free some space (or fix the folder's permissions) and run again."
            ) from exc

    def close(self) -> None:  # nothing is held open between calls
        pass


def dumps_compact(data: Any) -> str:
    """The store's JSON text: no indentation. Every write rewrites the whole
    file, and after two years of posts and snapshots an indented file was a
    third larger and took four times as long to write (indentation turns off
    the json module's C encoder)."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete the temp files a process killed mid-write (``kill -9``, a power
    cut) left beside ``path``; returns them. Call it only while holding the
    lock that writers of ``path`` hold, so no write in progress loses its file.
    Each is as large as the store, and a crash-looping daemon would otherwise
    fill the disk with them over the months."""
    removed = []
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def jsonable(value: Any) -> Any:
    """``value`` with only what JSON can hold: paths and other objects become
    strings, numpy scalars plain numbers (generator extras carry both)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def atomic_write_bytes(path: Path, payload: bytes, *, mode: int | None = None) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new
    one, never a part: temp file in the same folder, fsync, rename, fsync folder.

    The file gets ``mode``, or the usual mode of a new file (0666 less the
    umask) rather than the owner-only mode ``mkstemp`` starts from.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable: without it, a power
    loss can bring back the folder as it was before, whatever was fsynced inside."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_state_dir(state_dir: Path) -> None:
    """Make sure the state folder exists and is writable, or say why not (BadInput)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"state directory {str(state_dir)!r} cannot be created: {exc.strerror}") from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise BadInput(
            f"state directory {str(state_dir)!r} is not writable by this user; "
            "fix its permissions or set paths.state (BOT_PATHS_STATE) to another folder"
        )


class Store:
    """Post records and other small tables, behind one lock.

    Use one ``Store`` per state directory per process; it is safe to share
    between threads.
    """

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        check_state_dir(self.state_dir)
        self.path = self.state_dir / "bot.json"
        self._thread_lock = threading.RLock()
        self._file_lock = FileLock(str(self.state_dir / ".bot.json.lock"), timeout=30)
        self._db = TinyDB(self.path, storage=AtomicJSONStorage)
        # Fail early and clearly on a corrupt file, before anything else is done.
        with self._locked():
            self._db.storage.read()
            remove_stale_temp_files(self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            try:
                with self._file_lock:
                    yield
            except Timeout as exc:
                raise Busy(f"the store {self.path} stayed locked by another process for 30 s") from exc

    def _table(self, name: str):
        # cache_size=0: another process may have written since our last read.
        return self._db.table(name, cache_size=0)

    # -- posts ---------------------------------------------------------------

    def new_post_id(self, topic: str, now: datetime | None = None) -> str:
        moment = (now or utcnow()).astimezone(timezone.utc)
        return f"{moment:%Y%m%d-%H%M%S}-{topic}-{secrets.token_hex(2)}"

    def create_post(self, record: dict[str, Any]) -> dict[str, Any]:
        """Insert a new post record in state ``planned``; returns it."""
        now = iso(utcnow())
        record = {
            "status": "planned",
            "created_at": now,
            "updated_at": now,
            "history": [{"status": "planned", "at": now}],
            "attempts": [],
            "engagement": [],
            "artefacts": {},
            "error": None,
            **record,
        }
        with self._locked():
            if self._table("posts").contains(Query().id == record["id"]):
                raise StoreError(f"a post with id {record['id']!r} already exists")
            self._table("posts").insert(record)
        return record

    def get_post(self, post_id: str) -> dict[str, Any] | None:
        with self._locked():
            found = self._table("posts").get(Query().id == post_id)
        return dict(found) if found else None

    def require_post(self, post_id: str) -> dict[str, Any]:
        post = self.get_post(post_id)
        if post is None:
            raise BadInput(f"no post with id {post_id!r} in {self.path}")
        return post

    def update_post(self, post_id: str, **changes: Any) -> dict[str, Any]:
        """Change fields of a post (and ``status`` with its history); returns the new record."""
        with self._locked():
            table = self._table("posts")
            current = table.get(Query().id == post_id)
            if current is None:
                raise StoreError(f"no post with id {post_id!r}")
            now = iso(utcnow())
            changes["updated_at"] = now
            if "status" in changes:
                if changes["status"] not in STATUSES:
                    raise StoreError(f"unknown post status {changes['status']!r}")
                if changes["status"] != current["status"]:
                    changes["history"] = list(current.get("history", [])) + [
                        {"status": changes["status"], "at": now}
                    ]
            table.update(changes, doc_ids=[current.doc_id])
            # what TinyDB just wrote; reading the whole file again costs as much as the write
            return {**current, **changes}

    def append_to_post(self, post_id: str, field: str, item: dict[str, Any]) -> dict[str, Any]:
        """Append ``item`` to the list ``field`` of a post (attempts, engagement):
        snapshots are added, never overwritten."""
        with self._locked():
            table = self._table("posts")
            current = table.get(Query().id == post_id)
            if current is None:
                raise StoreError(f"no post with id {post_id!r}")
            changes = {field: list(current.get(field, [])) + [item]}
            table.update(changes, doc_ids=[current.doc_id])
            return {**current, **changes}

    def replace_in_list(self, post_id: str, field: str, key: str, item: dict[str, Any]) -> dict[str, Any]:
        """Replace the element of list ``field`` whose ``key`` equals ``item[key]``."""
        with self._locked():
            table = self._table("posts")
            current = table.get(Query().id == post_id)
            if current is None:
                raise StoreError(f"no post with id {post_id!r}")
            items = [item if entry.get(key) == item[key] else entry for entry in current.get(field, [])]
            table.update({field: items}, doc_ids=[current.doc_id])
            return {**current, field: items}

    def posts(self, *, topic: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """All posts (optionally of one topic or status), oldest first."""
        with self._locked():
            rows = [dict(r) for r in self._table("posts").all()]
        if topic is not None:
            rows = [r for r in rows if r.get("topic") == topic]
        if status is not None:
            rows = [r for r in rows if r.get("status") == status]
        # .get: a record edited by hand without these keys must not stop every command
        return sorted(rows, key=lambda r: (str(r.get("created_at", "")), str(r.get("id", ""))))

    def unfinished_posts(self) -> list[dict[str, Any]]:
        return [p for p in self.posts() if p["status"] not in FINISHED]

    def last_posted(self) -> dict[str, datetime]:
        """Topic slug -> when its latest published post went out."""
        latest: dict[str, datetime] = {}
        for post in self.posts(status="published"):
            when = parse_iso(post.get("publication", {}).get("published_at") or post["updated_at"])
            if post["topic"] not in latest or when > latest[post["topic"]]:
                latest[post["topic"]] = when
        return latest

    # -- other tables (daemon runs, slots) ------------------------------------

    def insert(self, table: str, row: dict[str, Any], *, keep_last: int | None = None) -> None:
        """Add ``row`` to ``table``; with ``keep_last``, a log-like table (the
        daemon's ``runs``) keeps only its newest ``keep_last`` rows. Pruning runs
        when the table holds a tenth more than that, so it costs one extra write
        per ``keep_last / 10`` rows, not one per row."""
        with self._locked():
            rows = self._table(table)
            rows.insert(row)
            if keep_last is not None and len(rows) > keep_last + max(1, keep_last // 10):
                ids = sorted(doc.doc_id for doc in rows.all())  # ids grow with each insert
                rows.remove(doc_ids=ids[: len(ids) - keep_last])

    def rows(self, table: str) -> list[dict[str, Any]]:
        with self._locked():
            return [dict(r) for r in self._table(table).all()]

    def upsert(self, table: str, row: dict[str, Any], key: str) -> None:
        with self._locked():
            self._table(table).upsert(row, Query()[key] == row[key])

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Store"]:
        """Hold the store's lock across several calls (check-then-write)."""
        with self._locked():
            yield self


@contextlib.contextmanager
def exclusive(state_dir: Path, name: str, purpose: str) -> Iterator[None]:
    """Hold ``state/<name>.lock`` for the whole block, or raise :class:`Busy` at once.

    Used so that a manual ``bot post`` and the daemon never work on posts at the
    same time, and so that only one daemon runs per state directory. The owner
    (pid, purpose, since) is written beside the lock so the error can name it.
    """
    lock = FileLock(str(state_dir / f"{name}.lock"), timeout=0)
    owner_file = state_dir / f"{name}.owner"
    try:
        lock.acquire()
    except Timeout:
        try:
            owner = json.loads(owner_file.read_text(encoding="utf-8"))
            who = f"process {owner.get('pid')} ({owner.get('purpose')}, since {owner.get('since')})"
        except (OSError, ValueError):
            who = "another process"
        raise Busy(f"{who} holds {state_dir / (name + '.lock')}; wait for it to finish") from None
    try:
        atomic_write_text(
            owner_file, json.dumps({"pid": os.getpid(), "purpose": purpose, "since": iso(utcnow())})
        )
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            owner_file.unlink()
        lock.release()
