"""Poster layouts: what goes on a page, by name.

A layout is a callable ``layout(canvas, page, image, url, options) ->
Placement`` that draws one page on a reportlab canvas (points, origin at the
bottom-left of the media box) and reports what it did. The renderer handles
everything around it: input checks, page boxes, crop marks, the atomic file.

The built-in ``artwork-qr`` is the seed's poster: "only the artwork and a
QR code leading to the Instagram account ... to create a sense of mystery";
it registers through :func:`register_layout` like any other.
"""

from __future__ import annotations

from typing import Callable

from PIL import Image
from reportlab.pdfgen.canvas import Canvas

from bot.errors import BadInput
from bot.posters import artwork, qr
from bot.posters.geometry import Page, mm_to_pt
from bot.posters.model import Placement, PosterOptions

Layout = Callable[[Canvas, Page, Image.Image, str, PosterOptions], Placement]

# The mark's font: one of the PDF standard fonts, so nothing is embedded; it
# draws only the Latin-1/cp1252 characters (see check_mark_text).
MARK_FONT = "Helvetica-Bold"
MARK_FONT_ENCODING = "cp1252"
# Least space between the mark and the QR code's white plate.
MARK_GAP_MM = 5.0

_LAYOUTS: dict[str, tuple[Layout, str]] = {}


def register_layout(name: str, layout: Layout, description: str = "") -> None:
    """Make ``layout`` available as ``posters.layout = name``."""
    _LAYOUTS[name] = (layout, description)


def get_layout(name: str) -> Layout:
    try:
        return _LAYOUTS[name][0]
    except KeyError:
        raise BadInput(f"layout {name!r} is not registered; allowed: {', '.join(sorted(_LAYOUTS))}") from None


def check_mark_text(text: str) -> None:
    """BadInput when the mark has characters the mark's font cannot draw: the
    printer would get empty boxes (e.g. for Hangul or Cyrillic) on every poster."""
    missing = sorted({char for char in text if not _drawable(char)})
    if missing:
        raise BadInput(
            f"mark_text (account.name) {text!r} has characters the poster font ({MARK_FONT}) cannot draw: "
            f"{' '.join(missing)}; allowed: Latin letters, digits and punctuation (Windows-1252), "
            "or leave the mark off (posters.mark = false, --no-mark)"
        )


def _drawable(char: str) -> bool:
    try:
        char.encode(MARK_FONT_ENCODING)
    except UnicodeEncodeError:
        return False
    return char.isprintable()


def available_layouts() -> dict[str, str]:
    """Layout name -> description."""
    return {name: description for name, (_, description) in sorted(_LAYOUTS.items())}


def qr_corner_position(page: Page, plate_pt: float, corner: str) -> tuple[float, float]:
    """Bottom-left point of a square plate of ``plate_pt`` in ``corner`` of the safe box."""
    x0, y0, x1, y1 = page.safe_box_pt
    x = x1 - plate_pt if corner.endswith("right") else x0
    y = y1 - plate_pt if corner.startswith("top") else y0
    return x, y


def artwork_qr(canvas: Canvas, page: Page, image: Image.Image, url: str, options: PosterOptions) -> Placement:
    """The artwork over the whole bleed box, a vector QR code on a white plate
    in one corner of the safe area, and optionally a small mark opposite it."""
    # 1. artwork, cover-fit at the print resolution
    prepared = artwork.prepare(image, page, options.dpi)
    artwork.draw(canvas, prepared, page, icc_profile=image.info.get("icc_profile"))
    # 2. QR code, its modules large enough to scan from qr_distance_m, within the page's share
    symbol = qr.encode(url)
    code_mm = qr.code_width_mm(
        min(page.trim_w_mm, page.trim_h_mm),
        symbol.modules,
        distance_m=options.qr_distance_m,
        max_fraction=options.qr_max_fraction,
    )
    plate_mm = code_mm * symbol.side_with_quiet_zone / symbol.modules
    plate_pt = mm_to_pt(plate_mm)
    x, y = qr_corner_position(page, plate_pt, options.qr_corner)
    qr.draw(canvas, symbol, x, y, plate_pt)
    # 3. the optional mark, small, in the other corner of the same edge
    if options.mark and options.mark_text:
        _draw_mark(canvas, page, options, plate_pt)
    return Placement(
        effective_dpi=round(prepared.effective_dpi(page), 2),
        upscale=round(prepared.upscale, 3),
        source_px=prepared.source_px,
        qr_mm=round(code_mm, 2),
        qr_plate_mm=round(plate_mm, 2),
        qr_modules=symbol.modules,
        qr_version=symbol.version,
        qr_scan_distance_m=round(qr.scan_distance_m(code_mm, symbol.modules), 2),
    )


def _draw_mark(canvas: Canvas, page: Page, options: PosterOptions, plate_pt: float) -> None:
    """The mark: white text, 2 % of the short side tall, mostly opaque; smaller
    when a long account name would otherwise run under the QR code's plate
    (and off the page), so it always ends a gap of MARK_GAP_MM before it."""
    x0, y0, x1, y1 = page.safe_box_pt
    size_pt = mm_to_pt(0.02 * min(page.trim_w_mm, page.trim_h_mm))
    room_pt = (x1 - x0) - plate_pt - mm_to_pt(MARK_GAP_MM)
    width_pt = canvas.stringWidth(options.mark_text, MARK_FONT, size_pt)
    if width_pt > room_pt > 0:
        size_pt *= room_pt / width_pt
    canvas.saveState()
    canvas.setFont(MARK_FONT, size_pt)
    canvas.setFillColorRGB(1, 1, 1, alpha=0.85)
    on_right = options.qr_corner.endswith("left")
    on_top = options.qr_corner.startswith("top")
    y = y1 - size_pt if on_top else y0
    if on_right:
        canvas.drawRightString(x1, y, options.mark_text)
    else:
        canvas.drawString(x0, y, options.mark_text)
    canvas.restoreState()


register_layout(
    "artwork-qr",
    artwork_qr,
    "artwork over the whole page incl. bleed, a vector QR code in a corner, optional small mark",
)
