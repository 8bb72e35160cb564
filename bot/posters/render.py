"""Render print-ready poster PDFs: one page per poster, exact size plus bleed.

Entry points: :func:`render_poster` (one page; the pipeline calls it for each
post) and :func:`render_posters` (many pages; ``bot posters``). Every input is
checked before anything is written, and the PDF appears only when complete:
it is written to a temp file in the same folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from PIL import Image, UnidentifiedImageError
from reportlab import rl_config
from reportlab.pdfgen.canvas import Canvas

from bot.errors import BadInput
from bot.posters import qr
from bot.posters.geometry import CROP_MARK_LENGTH_MM, Page, mm_to_pt, parse_size
from bot.posters.layouts import Layout, check_mark_text, get_layout  # importing it registers the built-in layouts
from bot.posters.model import CORNERS, PageReport, Placement, PosterItem, PosterOptions, PosterReport

# Print shops ask for 300 dpi; tests of things other than resolution may lower
# this module constant to keep big pages quick.
MIN_DPI = 300
MAX_DPI = 1200
# Largest artwork bitmap per page (pixels). A1 at 300 dpi is ~72 Mpx; above
# this the upscaled image alone needs more than ~450 MB of memory.
MAX_PIXELS = 150_000_000


def render_poster(
    image: Image.Image,
    out_path: Path,
    *,
    url: str,
    size: str = "A3",
    bleed_mm: float = 3.0,
    dpi: int = 300,
    layout: str = "artwork-qr",
    mark: bool = False,
    mark_text: str = PosterOptions.mark_text,
    crop_marks: bool = False,
) -> PosterReport:
    """Write a one-page poster of ``image`` with a QR code to ``url``."""
    options = PosterOptions(
        size=size, bleed_mm=bleed_mm, dpi=dpi, layout=layout, mark=mark, mark_text=mark_text, crop_marks=crop_marks
    )
    return render_posters([PosterItem(image=image, url=url)], Path(out_path), options)


def render_posters(items: list[PosterItem], out_path: Path, options: PosterOptions) -> PosterReport:
    """Write one PDF with a page per item; returns what each page got."""
    # 1. check inputs (nothing is written before all of them pass)
    out_path = Path(out_path)
    page, layout = check_options(options)
    check_out_path(out_path)
    check_items(items)
    # 2. draw the pages into a temp file, 3. move it into place
    with _atomic_pdf(out_path) as tmp_path:
        report = _draw_pages(tmp_path, items, page, layout, options)
    report.path = out_path
    return report


# -- 1. checks ---------------------------------------------------------------


def check_options(options: PosterOptions, called: Mapping[str, str] | None = None) -> tuple[Page, Layout]:
    """The page and layout the options describe, or BadInput naming the option
    as the user gave it: ``called`` maps a field (``size``, ``bleed_mm``,
    ``dpi``) to e.g. ``--size`` or ``posters.size``; the field name otherwise."""
    called = called or {}
    size_name, bleed_name, dpi_name = called.get("size", "size"), called.get("bleed_mm", "bleed"), called.get("dpi", "dpi")
    name, width, height = parse_size(options.size, size_name)
    bleed = options.bleed_mm
    if not isinstance(bleed, (int, float)) or math.isnan(bleed) or bleed < 0:
        raise BadInput(f"{bleed_name} {bleed!r} mm: must be a number >= 0 (print shops usually ask for 3 mm)")
    if bleed >= min(width, height) / 2:
        raise BadInput(
            f"{bleed_name} {bleed:g} mm is larger than the page allows ({name}: {width:g} x {height:g} mm); "
            f"it must be below {min(width, height) / 2:g} mm, usually 3 mm"
        )
    if not isinstance(options.dpi, int) or not MIN_DPI <= options.dpi <= MAX_DPI:
        raise BadInput(f"{dpi_name} {options.dpi!r}: must be a whole number from {MIN_DPI} to {MAX_DPI}")
    if options.qr_corner not in CORNERS:
        raise BadInput(f"qr_corner {options.qr_corner!r}: allowed: {', '.join(CORNERS)}")
    if not 0 < options.qr_max_fraction <= 0.9:
        raise BadInput(f"qr_max_fraction {options.qr_max_fraction!r}: must be in (0, 0.9]")
    if not options.qr_distance_m > 0:
        raise BadInput(f"qr_distance_m {options.qr_distance_m!r}: must be > 0")
    if options.mark and options.mark_text:
        check_mark_text(options.mark_text)
    page = Page(name, width, height, float(bleed), crop_marks=bool(options.crop_marks))
    need_w, need_h = page.artwork_px(options.dpi)
    if need_w * need_h > MAX_PIXELS:
        raise BadInput(
            f"{size_name} {options.size!r} at {dpi_name} {options.dpi} needs a {need_w} x {need_h} px artwork, more than "
            f"{MAX_PIXELS // 1_000_000} Mpx; choose a smaller size or dpi"
        )
    # The QR code must fit on this page size (a URL is checked per item).
    qr.code_width_mm(
        min(width, height), qr.MIN_MODULES, distance_m=options.qr_distance_m, max_fraction=options.qr_max_fraction
    )
    return page, get_layout(options.layout)


def check_out_path(out_path: Path) -> None:
    """The PDF can be written: a .pdf name in an existing, writable folder."""
    if out_path.suffix.lower() != ".pdf":
        raise BadInput(f"output {str(out_path)!r} must be a .pdf file")
    if out_path.is_dir():
        raise BadInput(f"output {str(out_path)!r} is a folder; give a file name ending in .pdf")
    folder = out_path.parent
    if not folder.is_dir():
        raise BadInput(f"output {str(out_path)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"output {str(out_path)!r}: folder {str(folder)!r} is not writable by this user")
    if out_path.exists() and not os.access(out_path, os.W_OK):
        raise BadInput(f"output {str(out_path)!r} exists and is not writable by this user")


def check_items(items: list[PosterItem]) -> None:
    """Every item has a readable image and a URL that fits in a QR code."""
    if not items:
        raise BadInput("no posters to render (the list of items is empty)")
    for number, item in enumerate(items, start=1):
        who = f"poster {number}" + (f" (post {item.post_id})" if item.post_id else "")
        if isinstance(item.image, Image.Image):
            if item.image.width < 1 or item.image.height < 1:
                raise BadInput(f"{who}: the image is empty ({item.image.width} x {item.image.height} px)")
        else:
            _check_image_file(Path(item.image), who)
        try:
            qr.encode(item.url)
        except BadInput as exc:
            raise BadInput(f"{who}: {exc}") from None


def _check_image_file(path: Path, who: str) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError:
        raise BadInput(f"{who}: artwork {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadInput(f"{who}: artwork {str(path)!r} is not a readable image ({exc})") from None


# -- 2. drawing ----------------------------------------------------------------


def _draw_pages(
    pdf_path: Path, items: list[PosterItem], page: Page, layout: Layout, options: PosterOptions
) -> PosterReport:
    canvas = Canvas(str(pdf_path), pagesize=page.media_pt, pageCompression=1)
    canvas.setTitle("DSTRTD posters")
    canvas.setCreator("DSTRTD bot")
    report = PosterReport(path=pdf_path, layout=options.layout)
    with _jpeg_passthrough():
        for number, item in enumerate(items, start=1):
            # PDF/X page boxes, so that print software knows where to cut.
            canvas.setTrimBox(page.trim_box_pt)
            canvas.setBleedBox(page.bleed_box_pt)
            image = _load(item.image)
            placement = layout(canvas, page, image, item.url, options)
            if options.crop_marks:
                _draw_crop_marks(canvas, page)
            canvas.showPage()
            report.pages.append(_page_report(number, item, page, placement))
    canvas.save()
    return report


def _load(image: Image.Image | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as opened:
        return opened.copy()


def _page_report(number: int, item: PosterItem, page: Page, placement: Placement) -> PageReport:
    def rounded(pair: tuple[float, float]) -> tuple[float, float]:
        return (round(pair[0], 2), round(pair[1], 2))

    return PageReport(
        page=number,
        post_id=item.post_id,
        url=item.url,
        size=page.size_name,
        page_mm=rounded(page.media_mm),
        bleed_box_mm=rounded(page.bleed_size_mm),
        trim_mm=(page.trim_w_mm, page.trim_h_mm),
        bleed_mm=page.bleed_mm,
        effective_dpi=placement.effective_dpi,
        upscale=placement.upscale,
        source_px=placement.source_px,
        qr_mm=placement.qr_mm,
        qr_plate_mm=placement.qr_plate_mm,
        qr_modules=placement.qr_modules,
        qr_version=placement.qr_version,
        qr_scan_distance_m=placement.qr_scan_distance_m,
    )


def _draw_crop_marks(canvas: Canvas, page: Page) -> None:
    """Thin registration-black lines on the extension of each trim edge,
    starting outside the bleed so they never touch the artwork."""
    x0, y0, x1, y1 = page.trim_box_pt
    gap, length = mm_to_pt(page.crop_mark_offset_mm), mm_to_pt(CROP_MARK_LENGTH_MM)
    canvas.saveState()
    canvas.setStrokeColorCMYK(1, 1, 1, 1)
    canvas.setLineWidth(0.25)
    for x in (x0, x1):
        for y, direction in ((y0, -1), (y1, 1)):
            canvas.line(x, y + direction * gap, x, y + direction * (gap + length))
    for y in (y0, y1):
        for x, direction in ((x0, -1), (x1, 1)):
            canvas.line(x + direction * gap, y, x + direction * (gap + length), y)
    canvas.restoreState()


@contextlib.contextmanager
def _jpeg_passthrough() -> Iterator[None]:
    """Embed JPEG artwork as raw DCT data: reportlab's default also
    ASCII85-encodes it, which makes a big page several times slower to write
    and 25 % larger."""
    saved = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = saved


# -- 3. the atomic file ----------------------------------------------------------


@contextlib.contextmanager
def _atomic_pdf(out_path: Path) -> Iterator[Path]:
    """A temp path beside ``out_path``; renamed onto it when the block succeeds,
    deleted when it fails, so no partial PDF is ever left behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".part", dir=out_path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        # mkstemp makes the file private (0600); a poster is an ordinary file.
        os.chmod(tmp_path, 0o644)
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
