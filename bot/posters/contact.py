"""A contact sheet: every page of a poster PDF as a labelled thumbnail, to look
at before paying for the print.

The thumbnails are rasterised from the finished PDF with pdfium (the PDF
engine of Chrome), so the sheet shows what will be printed, not a second
drawing of it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image, ImageDraw, ImageFont

from bot.errors import BadInput
from bot.store import atomic_write_bytes

THUMB_HEIGHT = 420  # pixels per page thumbnail
COLUMNS = 4
PAD = 16
LABEL_HEIGHT = 28


def contact_sheet_path(pdf_path: Path) -> Path:
    """Where the contact sheet of ``pdf_path`` goes: ``FILE.contact.png`` beside ``FILE.pdf``."""
    return Path(pdf_path).with_suffix(".contact.png")


def check_contact_sheet_path(path: Path) -> None:
    """The sheet can be written; checked before the PDF is drawn, because a
    sheet that fails afterwards leaves a PDF nobody has looked at behind."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"contact sheet {str(path)!r} is a folder; move it away or choose another --out name")
    if path.exists() and not os.access(path, os.W_OK):
        raise BadInput(f"contact sheet {str(path)!r} exists and is not writable by this user")


def write_contact_sheet(pdf_path: Path, out_path: Path, labels: list[str] | None = None) -> Path:
    """Write a PNG grid of the pages of ``pdf_path`` with ``labels`` under them
    (post ids; page numbers when missing)."""
    thumbs = _thumbnails(Path(pdf_path))
    labels = list(labels or [])
    cell_w = max(t.width for t in thumbs)
    columns = min(COLUMNS, len(thumbs))
    rows = -(-len(thumbs) // columns)
    sheet = Image.new(
        "RGB",
        (PAD + columns * (cell_w + PAD), PAD + rows * (THUMB_HEIGHT + LABEL_HEIGHT + PAD)),
        (40, 40, 40),
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for index, thumb in enumerate(thumbs):
        row, col = divmod(index, columns)
        x = PAD + col * (cell_w + PAD) + (cell_w - thumb.width) // 2
        y = PAD + row * (THUMB_HEIGHT + LABEL_HEIGHT + PAD)
        sheet.paste(thumb, (x, y))
        label = labels[index] if index < len(labels) and labels[index] else f"page {index + 1}"
        draw.text((x, y + THUMB_HEIGHT + 6), f"{index + 1}. {label}", fill=(230, 230, 230), font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG", optimize=False)
    out_path = Path(out_path)
    atomic_write_bytes(out_path, buffer.getvalue())
    out_path.chmod(0o644)  # the atomic writer's temp file is private (0600)
    return out_path


def _thumbnails(pdf_path: Path) -> list[Image.Image]:
    document = pdfium.PdfDocument(str(pdf_path))
    try:
        thumbs = []
        for page in document:
            _, height_pt = page.get_size()
            thumbs.append(page.render(scale=THUMB_HEIGHT / height_pt).to_pil().convert("RGB"))
            page.close()
        return thumbs
    finally:
        document.close()
