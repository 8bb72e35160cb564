"""``bot posters`` end to end through ``bot.cli.main``: store records built by
hand (no pipeline), selection filters, per-city links read back from the PDF
by zxing-cpp, and bad input that exits 2 without writing a PDF."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pypdfium2 as pdfium
import pytest
import zxingcpp
from PIL import Image

import bot.posters.render as render_module
from bot.cli import main
from bot.config import AccountSettings
from bot.store import Store, iso

ACCOUNT_URL = AccountSettings().url


def when(day: int) -> datetime:
    return datetime(2026, 3, day, 18, 0, tzinfo=timezone.utc)


def add_post(
    state_dir: Path,
    post_id: str,
    topic: str,
    day: int,
    *,
    status: str = "published",
    snapshots: list[tuple[int, int, int]] = (),
    colour: tuple[int, int, int] = (30, 120, 90),
) -> str:
    """A post record with its original.png in the archive, and engagement
    snapshots given as (day taken, likes, comments)."""
    store = Store(state_dir)
    store.create_post({"id": post_id, "topic": topic, "created_at": iso(when(day))})
    folder = state_dir / "archive" / post_id
    folder.mkdir(parents=True)
    image = Image.new("RGB", (160, 200), colour)
    image.paste((240, 220, 40), (40, 50, 120, 150))
    image.save(folder / "original.png")
    store.update_post(
        post_id,
        status=status,
        artefacts={"original": f"archive/{post_id}/original.png"},
        publication={"published_at": iso(when(day))} if status == "published" else {},
    )
    for taken, likes, comments in snapshots:
        store.append_to_post(
            post_id, "engagement", {"taken_at": iso(when(taken)), "likes": likes, "comments": comments}
        )
    return post_id


@pytest.fixture
def archive(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four published posts and one that is not; the working folder has no bot.toml.
    Resolution is lowered (the dpi itself is tested in test_posters.py)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(render_module, "MIN_DPI", 30)
    add_post(state_dir, "p1-coral", "coral", 1, snapshots=[(2, 500, 50), (5, 10, 1)])
    add_post(state_dir, "p2-coral", "coral", 3, snapshots=[(4, 40, 5)])
    add_post(state_dir, "p3-forest", "forest", 6, snapshots=[(7, 20, 2)])
    add_post(state_dir, "p4-glacier", "glacier", 8)
    add_post(state_dir, "p5-coral", "coral", 9, status="rendered")
    return state_dir


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def posters(capsys, out: Path, *args: str) -> dict:
    code, stdout, stderr = run(capsys, "posters", "--dpi", "40", "--size", "A4", "--out", str(out), "--json", *args)
    assert code == 0, stderr
    return json.loads(stdout)


def decoded_urls(pdf: Path) -> list[str]:
    document = pdfium.PdfDocument(str(pdf))
    urls = []
    for page in document:
        found = zxingcpp.read_barcodes(page.render(scale=1.0).to_pil())
        urls.extend(b.text for b in found if b.format == zxingcpp.BarcodeFormat.QRCode)
    return urls


def test_topic_selects_published_posts_and_qr_leads_to_the_account(archive, tmp_path, capsys):
    out = tmp_path / "coral.pdf"
    report = posters(capsys, out, "--topic", "coral")
    assert [p["post_id"] for p in report["pages"]] == ["p1-coral", "p2-coral"]  # p5 is not published
    assert decoded_urls(out) == [ACCOUNT_URL, ACCOUNT_URL]
    assert report["pages"][0]["page_mm"] == pytest.approx([216, 303])
    sheet = tmp_path / "coral.contact.png"
    assert report["contact_sheet"] == str(sheet)
    with Image.open(sheet) as image:
        assert image.width > image.height  # two thumbnails side by side


def test_post_ids_and_since(archive, tmp_path, capsys):
    report = posters(capsys, tmp_path / "ids.pdf", "--post", "p3-forest", "--post", "p1-coral")
    assert [p["post_id"] for p in report["pages"]] == ["p1-coral", "p3-forest"]
    report = posters(capsys, tmp_path / "since.pdf", "--since", "2026-03-06")
    assert [p["post_id"] for p in report["pages"]] == ["p3-forest", "p4-glacier"]


def test_top_ranks_by_the_latest_snapshot(archive, tmp_path, capsys):
    # p1's first snapshot was large, but its latest (11) is below p2 (45) and p3 (22)
    report = posters(capsys, tmp_path / "top.pdf", "--top", "2")
    assert [p["post_id"] for p in report["pages"]] == ["p2-coral", "p3-forest"]
    report = posters(capsys, tmp_path / "top-coral.pdf", "--top", "1", "--topic", "coral")
    assert [p["post_id"] for p in report["pages"]] == ["p2-coral"]


def test_posts_deleted_on_instagram_only_when_named(archive, tmp_path, capsys):
    Store(archive).update_post("p2-coral", media_gone_at=iso(when(10)))
    report = posters(capsys, tmp_path / "top.pdf", "--top", "2")
    assert [p["post_id"] for p in report["pages"]] == ["p3-forest", "p1-coral"]  # p2 ranked first before
    report = posters(capsys, tmp_path / "named.pdf", "--post", "p2-coral")
    assert [p["post_id"] for p in report["pages"]] == ["p2-coral"]
    Store(archive).update_post("p1-coral", media_gone_at=iso(when(10)))
    code, _, err = run(capsys, "posters", "--topic", "coral", "--out", str(tmp_path / "none.pdf"))
    assert code == 2 and "2 deleted there" in err and not (tmp_path / "none.pdf").exists()


def test_city_links_from_the_template(archive, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOT_POSTERS_LINK_TEMPLATE", "https://example.org/p/{city}/{post_id}")
    out = tmp_path / "berlin.pdf"
    report = posters(capsys, out, "--topic", "coral", "--city", "berlin")
    expected = ["https://example.org/p/berlin/p1-coral", "https://example.org/p/berlin/p2-coral"]
    assert [p["url"] for p in report["pages"]] == expected
    assert decoded_urls(out) == expected


def test_text_output_says_which_posters_were_upscaled(archive, tmp_path, capsys):
    out = tmp_path / "a.pdf"
    code, stdout, stderr = run(capsys, "posters", "--post", "p4-glacier", "--size", "A4", "--out", str(out))
    assert code == 0, stderr
    assert "p4-glacier: 300 dpi, upscaled x" in stdout and "from 160x200 px" in stdout
    assert "contact sheet:" in stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--topic", "wildfire"], ["no posts match", "4 published", "0 with --topic wildfire", "coral"]),
        (["--topic", "forest", "--since", "2026-03-07"], ["1 with --topic forest", "0 of those published since"]),
        (["--post", "nope"], ["--post nope", "no post with that id"]),
        (["--post", "p5-coral"], ["--post p5-coral", "'rendered'", "not published"]),
        (["--since", "last week"], ["--since 'last week'", "YYYY-MM-DD"]),
        (["--size", "B1"], ["--size 'B1'", "A3"]),
        (["--size", ""], ["--size ''", "A3"]),  # e.g. an unset shell variable: not the default size
        (["--bleed", "200"], ["--bleed 200", "larger than the page"]),
        (["--bleed", "-2"], ["--bleed -2", ">= 0"]),
        (["--dpi", "100", "--post", "p1-coral"], ["--dpi 100"]),
        (["--city", "berlin"], ["--city berlin", "link_template is empty"]),
        (["--city", "Berlin!"], ["--city 'Berlin!'"]),
        (["--top", "0"], ["--top 0"]),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(archive, tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.setattr(render_module, "MIN_DPI", 300)
    out = tmp_path / "out" / "posters.pdf"
    out.parent.mkdir()
    code, _, stderr = run(capsys, "posters", "--out", str(out), *args)
    assert code == 2
    for word in words:
        assert word in stderr
    assert os.listdir(out.parent) == []


def test_a_bad_value_from_the_settings_is_named_as_the_setting(archive, tmp_path, capsys, monkeypatch):
    """The same check names `--size` for a flag and `posters.size` for a value
    from bot.toml or BOT_POSTERS_SIZE, so the user knows which to change."""
    monkeypatch.setenv("BOT_POSTERS_SIZE", "B1")
    code, _, stderr = run(capsys, "posters", "--out", str(tmp_path / "x.pdf"))
    assert code == 2 and "posters.size 'B1'" in stderr and "--size" not in stderr
    monkeypatch.setenv("BOT_POSTERS_DPI", "5")
    code, _, stderr = run(capsys, "posters", "--out", str(tmp_path / "x.pdf"), "--size", "A3")
    assert code == 2 and "posters.dpi 5" in stderr
    assert not (tmp_path / "x.pdf").exists()


def test_template_needing_a_city_and_unwritable_output(archive, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOT_POSTERS_LINK_TEMPLATE", "https://example.org/p/{city}/{post_id}")
    code, _, stderr = run(capsys, "posters", "--out", str(tmp_path / "x.pdf"))
    assert code == 2 and "needs a city" in stderr
    monkeypatch.setenv("BOT_POSTERS_LINK_TEMPLATE", "https://example.org/{town}/{post_id}")
    code, _, stderr = run(capsys, "posters", "--city", "seoul", "--out", str(tmp_path / "x.pdf"))
    assert code == 2 and "unknown placeholder" in stderr and "town" in stderr
    monkeypatch.delenv("BOT_POSTERS_LINK_TEMPLATE")
    code, _, stderr = run(capsys, "posters", "--out", str(tmp_path / "missing" / "x.pdf"))
    assert code == 2 and "does not exist" in stderr
    assert not list(tmp_path.glob("*.pdf"))


def test_missing_artwork_is_named(archive, tmp_path, capsys):
    (archive / "archive" / "p3-forest" / "original.png").unlink()
    code, _, stderr = run(capsys, "posters", "--topic", "forest", "--out", str(tmp_path / "f.pdf"))
    assert code == 2 and "p3-forest" in stderr and "missing" in stderr
    assert not (tmp_path / "f.pdf").exists()
