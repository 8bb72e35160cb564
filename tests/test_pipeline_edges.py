"""The pipeline's promises at the edges -- a bad setting changes
nothing, a full disk is explained, a crash right after the image was saved
does not throw the image away."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import bot.store as store_module
from bot.cli import main
from bot.store import Store

from support import write_test_templates

# The fake generator and publisher of the pipeline tests, and their fixtures
# (`_reset_fakes` is autouse, so it must be imported into this module).
from test_pipeline import (  # noqa: F401
    FlakyPublisher,
    PatternGenerator,
    _reset_fakes,
    assert_nothing_changed,
    outbox_entries,
    records,
    run_bot,
    templates,
)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("BOT_POSTERS_SIZE", "A33", "A33"),
        ("BOT_POSTERS_LAYOUT", "artwork-qrr", "artwork-qrr"),
        ("BOT_POSTERS_BLEED_MM", "-3", "bleed"),
        ("BOT_ACCOUNT_URL", "", "url"),
    ],
)
def test_bad_poster_setting_is_refused_before_generating(
    state_dir: Path, templates: Path, capsys, monkeypatch, variable: str, value: str, named: str
) -> None:
    """A typo in [posters] used to surface only at the render step, after the
    image was generated (up to 40 minutes on a CPU) and a post record created,
    while the exit code 2 said 'nothing was changed'."""
    monkeypatch.setenv(variable, value)
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2 and named in err, err
    assert PatternGenerator.calls == []
    assert_nothing_changed(state_dir)


def test_full_disk_while_writing_the_store_is_explained(state_dir: Path, templates: Path, capsys, monkeypatch) -> None:
    """ENOSPC on state/bot.json used to escape as a Python traceback."""
    real = store_module.atomic_write_text

    def full_disk(path: Path, text: str) -> None:
        if Path(path).name == "bot.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(store_module, "atomic_write_text", full_disk)
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 1
    assert "bot.json" in err and "No space left on device" in err and "Traceback" not in err
    assert records(state_dir) == []


def test_crash_right_after_the_image_was_saved_reuses_it(state_dir: Path, templates: Path, capsys, monkeypatch) -> None:
    """kill -9 between writing original.png and recording 'generated' used to
    make the next run generate again, overwriting the first image."""
    real = Store.update_post

    def crash_once(self, post_id, **changes):
        if changes.get("status") == "generated" and not crash_once.done:
            crash_once.done = True
            raise SystemExit("injected crash after the image was saved")
        return real(self, post_id, **changes)

    crash_once.done = False
    monkeypatch.setattr(Store, "update_post", crash_once)
    with pytest.raises(SystemExit, match="injected crash"):
        main(["post", "--topic", "reef", "--seed", "11"])
    capsys.readouterr()
    [post] = records(state_dir)
    assert post["status"] == "planned"
    original = state_dir / "archive" / post["id"] / "original.png"
    first_image = original.read_bytes()

    code, out, err = run_bot(capsys, "post", "--json")
    assert code == 0, err
    assert json.loads(out)["post_id"] == post["id"]
    assert PatternGenerator.calls == [11]  # generated once, not twice
    assert original.read_bytes() == first_image
    [post] = records(state_dir)
    assert post["status"] == "published" and post["seed"] == 11
    assert [h["status"] for h in post["history"]][:2] == ["planned", "generated"]
    assert len(outbox_entries(state_dir)) == 1


def test_posters_of_posts_carry_the_account_name_as_their_mark(state_dir: Path, templates: Path, capsys, monkeypatch) -> None:
    """With posters.mark on, a post's poster used to say "DSTRTD" whatever
    account.name was: the pipeline never passed the name on."""
    import pypdfium2 as pdfium

    monkeypatch.setenv("BOT_POSTERS_MARK", "true")
    monkeypatch.setenv("BOT_ACCOUNT_NAME", "Reef Watch Kiel")
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 0, err
    (post,) = records(state_dir)
    pdf = pdfium.PdfDocument(str(state_dir / "archive" / post["id"] / "poster.pdf"))
    assert "Reef Watch Kiel" in pdf[0].get_textpage().get_text_range()


def test_a_mark_the_poster_font_cannot_draw_is_refused_before_generating(
    state_dir: Path, templates: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("BOT_POSTERS_MARK", "true")
    monkeypatch.setenv("BOT_ACCOUNT_NAME", "산호초 지킴이")
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2 and "account.name" in err, err
    assert PatternGenerator.calls == []
    assert_nothing_changed(state_dir)


@pytest.mark.parametrize("url", ["www.instagram.com/dstrtd.art/", "instagram.com/dstrtd.art"])
def test_an_account_url_without_its_scheme_is_refused_before_generating(
    state_dir: Path, templates: Path, capsys, monkeypatch, url: str
) -> None:
    """A QR code of 'instagram.com/...' is offered by many phone cameras as
    text, not as a link: every poster of the run would lead nowhere."""
    monkeypatch.setenv("BOT_ACCOUNT_URL", url)
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2 and "account.url" in err and "https://" in err, err
    assert PatternGenerator.calls == []
    assert_nothing_changed(state_dir)


def test_a_disk_too_full_for_the_archive_is_said_before_generating(state_dir: Path, templates: Path, capsys, monkeypatch) -> None:
    """A full disk was found only when the image was written, after the whole
    generation (up to 40 minutes on a CPU), and the image was lost."""
    import shutil as shutil_module

    import bot.pipeline as pipeline

    real = shutil_module.disk_usage
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: real(path)._replace(free=50 * 2**20))
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 1 and "50 MB free" in err and "nothing was generated" in err, err
    assert PatternGenerator.calls == []
    [post] = records(state_dir)
    assert post["status"] == "planned"  # the next run, with space, makes it


def test_an_image_that_cannot_be_archived_is_kept_elsewhere(state_dir: Path, templates: Path, capsys, monkeypatch, tmp_path: Path) -> None:
    import bot.archive as archive_module
    import bot.pipeline as pipeline

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_module, "save_generation", disk_full)
    monkeypatch.setattr(pipeline.tempfile, "gettempdir", lambda: str(tmp_path))
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 1 and "No space left on device" in err
    [post] = records(state_dir)
    rescued = tmp_path / f"dstrtd-{post['id']}.png"
    assert f"saved to {rescued}" in err and rescued.stat().st_size > 0
    assert PatternGenerator.calls and post["status"] == "planned"


def test_a_caption_file_deleted_before_publishing_is_explained(state_dir: Path, templates: Path, capsys, monkeypatch) -> None:
    """The caption is sent as its file holds it; a file deleted by hand
    between rendering and publishing gave a FileNotFoundError traceback."""
    import bot.pipeline as pipeline

    real_publish = pipeline._publish

    def delete_caption_first(settings, store, post, plan):
        (settings.paths.state / post["artefacts"]["caption"]).unlink()
        return real_publish(settings, store, post, plan)

    monkeypatch.setattr(pipeline, "_publish", delete_caption_first)
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 1 and "cannot read its caption" in err and "Traceback" not in err, err
    assert outbox_entries(state_dir) == []
    [post] = records(state_dir)
    assert post["status"] == "rendered"


def test_a_post_whose_topic_is_gone_can_be_given_up(state_dir: Path, templates: Path, capsys, monkeypatch) -> None:
    """A post whose topic was removed from topics.toml (or whose model was
    deleted) could never be finished and blocked every `bot post` and the
    daemon for good; `bot post --abandon` gives it up and keeps its archive."""
    FlakyPublisher.fail_before = 1
    code, _, _ = run_bot(capsys, "post", "--topic", "reef", "--publisher", "flaky")
    assert code == 1
    [post] = records(state_dir)
    assert post["status"] == "rendered"
    write_test_templates(templates, "test-pattern", topics=(("ice", "Ice"),))  # the reef topic is removed
    code, _, err = run_bot(capsys, "post")
    assert code == 2 and "no longer in" in err and "bot post --abandon" in err

    code, _, err = run_bot(capsys, "post", "--abandon", "--dry-run")
    assert code == 2 and "takes no --dry-run" in err
    code, out, err = run_bot(capsys, "post", "--abandon", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "failed"
    [post] = records(state_dir)
    assert post["status"] == "failed" and post["error"]["step"] == "abandon"
    assert (state_dir / "archive" / post["id"] / "original.png").is_file()  # nothing deleted
    code, _, err = run_bot(capsys, "post", "--abandon")
    assert code == 2 and "no post is unfinished" in err


def test_a_post_that_may_have_landed_cannot_be_given_up(state_dir: Path, templates: Path, capsys) -> None:
    store = Store(state_dir)
    store.create_post({"id": "p1", "topic": "reef", "generator": "test-pattern", "seed": 1, "publisher": "outbox"})
    store.update_post("p1", status="publishing")
    code, _, err = run_bot(capsys, "post", "--abandon")
    assert code == 2 and "may have been published" in err
    assert records(state_dir)[0]["status"] == "publishing"
