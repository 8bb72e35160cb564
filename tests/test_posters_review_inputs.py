"""``bot posters`` inputs found in review: link templates with a stray brace or
without {city}, a contact sheet that cannot be written, an empty or wrong
``--out``, and the account-name mark (characters its font lacks, long names).
Each is refused before anything is written, or drawn where it belongs."""

from __future__ import annotations

import os
from pathlib import Path

import pypdfium2 as pdfium
import pytest
import zxingcpp
from PIL import Image

import bot.posters.render as render_module
from bot.errors import BadInput
from bot.posters import PosterItem, PosterOptions, render_posters
from bot.posters.geometry import Page, mm_to_pt
from test_cli_posters import ACCOUNT_URL, archive, run  # noqa: F401  (archive is a fixture)


# -- posters.link_template and --city ---------------------------------------------


@pytest.mark.parametrize(
    "template, words",
    [
        ("https://example.org/p/{city/{post_id}", ["posters.link_template", "{city/{post_id}", "{{"]),
        ("https://example.org/p/}{post_id}", ["posters.link_template", "Single '}'"]),
        ("https://example.org/p/{}", ["posters.link_template", "'{}'", "{post_id}"]),
    ],
)
def test_link_template_with_a_stray_brace_is_a_message_not_a_traceback(
    archive, tmp_path, capsys, monkeypatch, template, words
):
    monkeypatch.setenv("BOT_POSTERS_LINK_TEMPLATE", template)
    code, stdout, stderr = run(capsys, "posters", "--city", "berlin", "--out", str(tmp_path / "x.pdf"))
    assert code == 2, stderr
    assert "Traceback" not in stderr and stdout == ""
    for word in words:
        assert word in stderr
    assert not list(tmp_path.glob("x*"))


def test_city_with_a_template_that_cannot_carry_it_is_refused(archive, tmp_path, capsys, monkeypatch):
    """Before, the city was silently dropped: every code led to the same link,
    and the scans could not tell Berlin from Seoul."""
    monkeypatch.setenv("BOT_POSTERS_LINK_TEMPLATE", "https://example.org/p/{post_id}")
    code, _, stderr = run(capsys, "posters", "--city", "berlin", "--out", str(tmp_path / "x.pdf"))
    assert code == 2
    assert "--city berlin" in stderr and "no {city} placeholder" in stderr
    assert not list(tmp_path.glob("x*"))
    # without --city the same template is fine
    code, _, stderr = run(capsys, "posters", "--dpi", "40", "--size", "A5", "--out", str(tmp_path / "x.pdf"))
    assert code == 0, stderr


# -- --out and the contact sheet --------------------------------------------------


def test_contact_sheet_that_cannot_be_written_is_refused_before_the_pdf(archive, tmp_path, capsys):
    """Before, the PDF was written, then the sheet failed with a traceback
    (exit 1), leaving a PDF that nobody had looked at."""
    (tmp_path / "wall.contact.png").mkdir()
    code, _, stderr = run(capsys, "posters", "--dpi", "40", "--size", "A5", "--out", str(tmp_path / "wall.pdf"))
    assert code == 2
    assert "Traceback" not in stderr
    assert "wall.contact.png" in stderr and "is a folder" in stderr
    assert not (tmp_path / "wall.pdf").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".wall")]


@pytest.mark.parametrize(
    "value, words",
    [
        ("", ["--out", "empty", ".pdf"]),  # e.g. an unset shell variable; was reported as '.'
        ("posters.png", ["--out", "'posters.png'", ".pdf"]),
    ],
)
def test_bad_out_names_the_option_and_its_value(archive, tmp_path, capsys, value, words):
    code, stdout, stderr = run(capsys, "posters", "--out", value, "--json")
    assert code == 2 and stdout == ""
    for word in words:
        assert word in stderr
    assert sorted(os.listdir(tmp_path)) == ["state"]  # the working folder: no PDF, no sheet


# -- the account-name mark --------------------------------------------------------


def test_mark_in_a_script_the_font_lacks_is_refused(tmp_path, monkeypatch):
    """Helvetica draws Latin-1 only: a Hangul account name came out as empty boxes."""
    monkeypatch.setattr(render_module, "MIN_DPI", 30)
    options = PosterOptions(size="A5", dpi=30, mark=True, mark_text="DSTRTD 서울")
    with pytest.raises(BadInput) as caught:
        render_posters([PosterItem(Image.new("RGB", (60, 80)), ACCOUNT_URL)], tmp_path / "p.pdf", options)
    message = str(caught.value)
    assert "account.name" in message and "서" in message and "--no-mark" in message
    assert os.listdir(tmp_path) == []
    # accented Latin letters and typographic punctuation are fine
    options = PosterOptions(size="A5", dpi=30, mark=True, mark_text="Dístørtéd – “DSTRTD”")
    render_posters([PosterItem(Image.new("RGB", (60, 80)), ACCOUNT_URL)], tmp_path / "p.pdf", options)


def test_cli_mark_with_a_non_latin_account_name_exits_2(archive, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOT_ACCOUNT_NAME", "Искажённый")
    code, _, stderr = run(capsys, "posters", "--mark", "--dpi", "40", "--size", "A5", "--out", str(tmp_path / "m.pdf"))
    assert code == 2 and "account.name" in stderr
    assert not list(tmp_path.glob("m*"))


def test_long_mark_ends_before_the_qr_plate_and_the_code_still_scans(tmp_path, monkeypatch):
    """Before, a long account name ran under the QR code's white plate and on
    past the edge of the page."""
    monkeypatch.setattr(render_module, "MIN_DPI", 30)
    name = "Distorted Realism: computer-generated snapshots of nature, by DSTRTD"
    options = PosterOptions(size="A5", dpi=30, mark=True, mark_text=name)
    out = tmp_path / "p.pdf"
    report = render_posters([PosterItem(Image.new("RGB", (60, 80), (20, 60, 120)), ACCOUNT_URL)], out, options)
    page = Page("A5", 148.0, 210.0, 3.0)
    plate_left = page.safe_box_pt[2] - mm_to_pt(report.pages[0].qr_plate_mm)
    pdf_page = pdfium.PdfDocument(str(out))[0]
    text = pdf_page.get_textpage()
    assert text.get_text_range() == name
    left, _, right, _ = text.get_charbox(len(name) - 1)
    assert right <= plate_left - mm_to_pt(4.9)
    first_left = text.get_charbox(0)[0]
    assert first_left >= page.safe_box_pt[0] - 1
    decoded = zxingcpp.read_barcodes(pdf_page.render(scale=2).to_pil())
    assert [b.text for b in decoded] == [ACCOUNT_URL]


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("BOT_POSTERS_LINK_TEMPLATE", "example.org/p/{post_id}", "posters.link_template"),
    ("BOT_ACCOUNT_URL", "instagram.com/dstrtd.art", "account.url"),
])
def test_a_link_without_its_scheme_is_refused_naming_the_setting(archive, tmp_path, capsys, monkeypatch, variable, value, named):
    """A code of 'example.org/...' is offered by many phone cameras as text, not as a link."""
    monkeypatch.setenv(variable, value)
    out = tmp_path / "p.pdf"
    code, _, stderr = run(capsys, "posters", "--out", str(out))
    assert code == 2, stderr
    assert named in stderr and "https://" in stderr
    assert not out.exists()
