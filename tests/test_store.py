"""The store keeps every record, writes atomically, and never touches a corrupt file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.errors import BadInput, Busy, StoreCorrupt
from bot.store import Store, exclusive
from support import lock_held_elsewhere


def test_post_moves_through_states_with_history(state_dir: Path) -> None:
    store = Store(state_dir)
    store.create_post({"id": "p1", "topic": "coral"})
    store.update_post("p1", status="generated")
    post = store.update_post("p1", status="rendered", artefacts={"caption": "archive/p1/caption.txt"})
    assert [h["status"] for h in post["history"]] == ["planned", "generated", "rendered"]
    assert post["artefacts"] == {"caption": "archive/p1/caption.txt"}
    # A second Store (another process, in effect) reads the same records from disk.
    assert Store(state_dir).get_post("p1")["status"] == "rendered"


def test_snapshots_are_appended_never_overwritten(state_dir: Path) -> None:
    store = Store(state_dir)
    store.create_post({"id": "p1", "topic": "coral"})
    store.append_to_post("p1", "engagement", {"likes": 1})
    store.append_to_post("p1", "engagement", {"likes": 5})
    assert [s["likes"] for s in store.get_post("p1")["engagement"]] == [1, 5]


def test_duplicate_post_id_is_refused(state_dir: Path) -> None:
    store = Store(state_dir)
    store.create_post({"id": "p1", "topic": "coral"})
    with pytest.raises(Exception, match="already exists"):
        store.create_post({"id": "p1", "topic": "coral"})
    assert len(store.posts()) == 1


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]"])
def test_corrupt_store_is_reported_and_kept(state_dir: Path, content: str) -> None:
    path = state_dir / "bot.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StoreCorrupt, match="kept as it is"):
        Store(state_dir)
    assert path.read_text(encoding="utf-8") == content


def test_writes_leave_no_temp_files_and_valid_json(state_dir: Path) -> None:
    store = Store(state_dir)
    for i in range(5):
        store.create_post({"id": f"p{i}", "topic": "coral"})
    assert json.loads((state_dir / "bot.json").read_text())["posts"]
    assert not list(state_dir.glob(".bot.json.*.tmp"))


def test_unwritable_state_dir_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BadInput, match="cannot be created"):
        Store(blocker / "state")


def test_last_posted_uses_publication_time(state_dir: Path) -> None:
    store = Store(state_dir)
    store.create_post({"id": "a", "topic": "coral"})
    store.update_post("a", status="published", publication={"published_at": "2026-01-02T00:00:00+00:00"})
    store.create_post({"id": "b", "topic": "coral"})
    store.update_post("b", status="published", publication={"published_at": "2026-03-02T00:00:00+00:00"})
    store.create_post({"id": "c", "topic": "glacier"})  # never published
    last = store.last_posted()
    assert set(last) == {"coral"}
    assert last["coral"].month == 3


def test_exclusive_lock_refuses_a_second_process_and_names_the_holder(state_dir: Path) -> None:
    with lock_held_elsewhere(state_dir, "post", "holder test") as pid:
        with pytest.raises(Busy, match=f"process {pid} \\(holder test"):
            with exclusive(state_dir, "post", "second"):
                pass
    with exclusive(state_dir, "post", "after release"):
        pass


def test_atomic_writes_get_the_usual_file_mode(tmp_path: Path) -> None:
    import os

    from bot.store import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.png", b"x")
        atomic_write_bytes(tmp_path / "session.json", b"{}", mode=0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "session.json").stat().st_mode & 0o777 == 0o600


def test_a_record_edited_without_its_dates_does_not_stop_listing(state_dir: Path) -> None:
    """Posts are listed oldest first; a record a person edited by hand and
    left without created_at gave a KeyError in every command that lists posts."""
    store = Store(state_dir)
    store.create_post({"id": "p1", "topic": "coral"})
    with store.transaction():
        store._table("posts").insert({"id": "p0", "topic": "forest", "status": "failed"})
    assert [p["id"] for p in store.posts()] == ["p0", "p1"]
