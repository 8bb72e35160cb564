"""Street posters: page sizes with bleed, artwork resolution, a vector QR code
that a real decoder (zxing-cpp) reads from the rasterised page, and bad input
that leaves no PDF behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
import zxingcpp
from PIL import Image

import bot.posters.render as render_module
from bot.errors import BadInput
from bot.posters import (
    PAGE_SIZES,
    Placement,
    PosterItem,
    PosterOptions,
    available_layouts,
    register_layout,
    render_poster,
    render_posters,
    write_contact_sheet,
)

URL = "https://www.instagram.com/dstrtd.art/"
MM_PER_PT = 25.4 / 72


def artwork(width: int = 256, height: int = 320, seed: int = 0) -> Image.Image:
    """A smooth, busy test image (gradients and waves, like a generated one)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    phase = rng.uniform(0, 6, size=3)
    channels = [
        127 + 120 * np.sin(xx / (9 + 4 * i) + phase[i]) * np.cos(yy / (13 + 3 * i))
        for i in range(3)
    ]
    return Image.fromarray(np.stack(channels, axis=-1).clip(0, 255).astype("uint8"))


class PdfPage:
    """What a print shop's software sees on one page."""

    def __init__(self, page: pdfium.PdfPage):
        self.page = page

    @property
    def size_mm(self) -> tuple[float, float]:
        width, height = self.page.get_size()
        return (width * MM_PER_PT, height * MM_PER_PT)

    @property
    def trim_mm(self) -> tuple[float, float]:
        left, bottom, right, top = self.page.get_trimbox(fallback_ok=False)
        return ((right - left) * MM_PER_PT, (top - bottom) * MM_PER_PT)

    def images(self) -> list[tuple[tuple[int, int], tuple[float, float, float, float]]]:
        """(pixel size, bounds in points) of every image object."""
        found = []
        for obj in self.page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]):
            found.append((tuple(obj.get_px_size()), tuple(obj.get_bounds())))
        return found

    def count(self, kind: int) -> int:
        return sum(1 for _ in self.page.get_objects(filter=[kind]))

    def raster(self, scale: float = 1.0) -> Image.Image:
        return self.page.render(scale=scale).to_pil().convert("RGB")


def open_pages(path: Path) -> list[PdfPage]:
    document = pdfium.PdfDocument(str(path))
    return [PdfPage(document[i]) for i in range(len(document))]


def decode(image: Image.Image) -> list[zxingcpp.Barcode]:
    return [b for b in zxingcpp.read_barcodes(image) if b.format == zxingcpp.BarcodeFormat.QRCode]


@pytest.fixture
def low_dpi_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """For checks that are not about resolution: big pages at 300 dpi are slow."""
    monkeypatch.setattr(render_module, "MIN_DPI", 30)


# -- sizes, bleed, resolution, QR ----------------------------------------------


@pytest.mark.parametrize("size", ["A4", "A3", "A2"])
def test_each_size_has_exact_page_size_300_dpi_artwork_and_a_decodable_vector_qr(tmp_path: Path, size: str):
    out = tmp_path / "poster.pdf"
    report = render_poster(artwork(), out, url=URL, size=size, bleed_mm=3.0)

    width, height = PAGE_SIZES[size]
    (page,) = open_pages(out)
    # page size = trim + 3 mm bleed on every side; the trim box is the ISO size
    assert page.size_mm == pytest.approx((width + 6, height + 6), abs=0.02)
    assert page.trim_mm == pytest.approx((width, height), abs=0.02)
    # exactly one image (the artwork: the QR code is vector paths) covering the page
    images = page.images()
    assert len(images) == 1
    assert page.count(pdfium_c.FPDF_PAGEOBJ_PATH) >= 1
    (px_w, px_h), (left, bottom, right, top) = images[0]
    assert (left * MM_PER_PT, bottom * MM_PER_PT) == pytest.approx((0, 0), abs=0.02)
    assert ((right - left) * MM_PER_PT, (top - bottom) * MM_PER_PT) == pytest.approx((width + 6, height + 6), abs=0.02)
    dpi_x = px_w / ((right - left) / 72)
    dpi_y = px_h / ((top - bottom) / 72)
    assert min(dpi_x, dpi_y) >= 300
    assert min(dpi_x, dpi_y) == pytest.approx(report.pages[0].effective_dpi, abs=0.05)
    # a 256 px artwork cannot cover a page at 300 dpi without enlarging it
    assert report.pages[0].upscaled and report.pages[0].upscale == pytest.approx(px_h / 320, rel=0.01)
    assert report.pages[0].page_mm == pytest.approx((width + 6, height + 6))
    # the QR decodes from the rasterised page to the URL
    (code,) = decode(page.raster(scale=1.0))
    assert code.text == URL


def test_qr_code_sits_in_a_corner_of_the_safe_area_at_the_reported_size(tmp_path: Path):
    out = tmp_path / "a3.pdf"
    report = render_poster(artwork(), out, url=URL, size="A3", bleed_mm=3.0)
    (page,) = open_pages(out)
    scale = 2.0
    raster = page.raster(scale=scale)
    (code,) = decode(raster)
    px_per_mm = scale / MM_PER_PT
    xs = [p.x / px_per_mm for p in (code.position.top_left, code.position.bottom_right)]
    ys = [p.y / px_per_mm for p in (code.position.top_left, code.position.bottom_right)]
    # measured in mm from the trim's top-left corner (the bleed is 3 mm)
    right_gap = 297 - (max(xs) - 3)
    bottom_gap = 420 - (max(ys) - 3)
    safe_margin = max(10.0, 0.05 * 297)
    assert right_gap >= safe_margin and bottom_gap >= safe_margin  # away from the cut
    assert right_gap < 297 / 2 and bottom_gap < 420 / 2  # bottom-right corner
    # zxing reports module centres' corners; the code width matches the report within a module
    measured = max(xs) - min(xs)
    module_mm = report.pages[0].qr_mm / report.pages[0].qr_modules
    assert measured == pytest.approx(report.pages[0].qr_mm, abs=1.5 * module_mm)


def test_qr_modules_are_large_enough_to_scan_from_two_metres(tmp_path: Path, low_dpi_allowed: None):
    sizes = {}
    for size in ["A4", "A3", "A2", "A1"]:
        report = render_poster(artwork(), tmp_path / f"{size}.pdf", url=URL, size=size, dpi=30)
        sizes[size] = report.pages[0]
    # the default A3 poster reaches the 2 m target
    assert sizes["A3"].qr_scan_distance_m == pytest.approx(2.0, abs=0.01)
    for name, page in sizes.items():
        # 1.05 mm per module per metre (phone-camera geometry, bot/posters/qr.py), for 2 m,
        # unless that would take more than 35 % of the page's short side
        capped = 0.35 * min(PAGE_SIZES[name])
        if page.qr_mm < capped - 0.01:
            assert page.qr_mm / page.qr_modules == pytest.approx(2.1, abs=0.01)
            assert page.qr_scan_distance_m == pytest.approx(2.0, abs=0.01)
        else:
            assert page.qr_mm == pytest.approx(capped, abs=0.01) and page.qr_scan_distance_m < 2.0
        # the white plate holds 4 modules of quiet zone on each side
        assert page.qr_plate_mm == pytest.approx(page.qr_mm * (page.qr_modules + 8) / page.qr_modules, abs=0.02)


def test_qr_is_capped_by_the_page_and_says_how_far_it_scans(tmp_path: Path, low_dpi_allowed: None):
    options = PosterOptions(size="A2", dpi=30, qr_distance_m=5.0)
    report = render_posters([PosterItem(image=artwork(), url=URL, post_id="p")], tmp_path / "far.pdf", options)
    page = report.pages[0]
    assert page.qr_mm == pytest.approx(0.35 * min(PAGE_SIZES["A2"]), abs=0.01)
    assert 2.0 < page.qr_scan_distance_m < 5.0


def test_custom_size_and_bleed_and_crop_marks_outside_the_trim(tmp_path: Path, low_dpi_allowed: None):
    out = tmp_path / "custom.pdf"
    report = render_poster(artwork(), out, url=URL, size="500x700", bleed_mm=5, dpi=60, crop_marks=True)
    (page,) = open_pages(out)
    assert page.trim_mm == pytest.approx((500, 700), abs=0.02)
    # crop marks need paper beyond the bleed: the page is larger than trim + bleed
    margin = (page.size_mm[0] - 500) / 2
    assert margin > 5
    assert report.pages[0].bleed_box_mm == pytest.approx((510, 710))
    ((_, bounds),) = page.images()
    artwork_mm = ((bounds[2] - bounds[0]) * MM_PER_PT, (bounds[3] - bounds[1]) * MM_PER_PT)
    assert artwork_mm == pytest.approx((510, 710), abs=0.02)  # artwork stops at the bleed
    # the top-left corner of the page, magnified: the crop mark above the trim's
    # left edge is dark, and it stays outside the bleed box
    width_pt, height_pt = page.page.get_size()
    corner_pt = (margin + 2) / MM_PER_PT
    scale = 8.0
    corner = np.asarray(
        page.page.render(scale=scale, crop=(0, height_pt - corner_pt, width_pt - corner_pt, 0)).to_pil().convert("L")
    )
    px_per_mm = scale / MM_PER_PT
    slug = corner[: int((margin - 5) * px_per_mm) - 2, :]
    assert slug.min() < 128
    dark_columns = np.where(slug.min(axis=0) < 128)[0] / px_per_mm
    assert dark_columns.mean() == pytest.approx(margin, abs=0.3)  # on the extension of the trim edge
    without = tmp_path / "plain.pdf"
    render_poster(artwork(), without, url=URL, size="500x700", bleed_mm=5, dpi=60)
    assert open_pages(without)[0].size_mm == pytest.approx((510, 710), abs=0.02)


def test_wide_artwork_is_cropped_around_its_centre_not_stretched(tmp_path: Path, low_dpi_allowed: None):
    # left third red, middle third green, right third blue: a portrait page shows the green middle
    wide = Image.new("RGB", (900, 300))
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        wide.paste(colour, (i * 300, 0, (i + 1) * 300, 300))
    out = tmp_path / "wide.pdf"
    render_poster(wide, out, url=URL, size="A4", dpi=60)
    raster = np.asarray(open_pages(out)[0].raster(scale=0.5))
    top_middle = raster[20, raster.shape[1] // 2]
    top_left = raster[20, 5]
    assert top_middle[1] > 200 and top_middle[0] < 60
    assert top_left[1] > 150  # still green at the edge: the red third is cropped away


def test_large_artwork_is_not_resampled(tmp_path: Path):
    big = artwork(2600, 3700)
    report = render_poster(big, tmp_path / "a4.pdf", url=URL, size="A4")
    page = report.pages[0]
    assert page.upscale == 1.0 and not page.upscaled
    assert page.effective_dpi >= 300


def test_many_pages_report_each_post_and_city_links_decode(tmp_path: Path, low_dpi_allowed: None):
    items = [
        PosterItem(image=artwork(seed=i), url=f"https://example.org/p/berlin/post-{i}", post_id=f"post-{i}")
        for i in range(3)
    ]
    out = tmp_path / "many.pdf"
    report = render_posters(items, out, PosterOptions(size="A4", dpi=60, mark=True))
    assert [p.post_id for p in report.pages] == ["post-0", "post-1", "post-2"]
    pages = open_pages(out)
    assert len(pages) == 3
    for item, page in zip(items, pages):
        (code,) = decode(page.raster(scale=1.0))
        assert code.text == item.url
    sheet = write_contact_sheet(out, tmp_path / "many.contact.png", [p.post_id for p in report.pages])
    with Image.open(sheet) as image:
        assert image.width > 3 * 200  # three thumbnails side by side


def test_image_given_as_a_path_is_read(tmp_path: Path, low_dpi_allowed: None):
    path = tmp_path / "original.png"
    artwork().save(path)
    report = render_posters([PosterItem(image=path, url=URL)], tmp_path / "p.pdf", PosterOptions(size="A5", dpi=60))
    assert report.pages[0].source_px == (256, 320)


def test_mark_is_off_by_default_and_drawn_when_asked(tmp_path: Path, low_dpi_allowed: None):
    plain, marked = tmp_path / "plain.pdf", tmp_path / "marked.pdf"
    render_poster(artwork(), plain, url=URL, size="A4", dpi=60)
    render_poster(artwork(), marked, url=URL, size="A4", dpi=60, mark=True)
    assert open_pages(plain)[0].count(pdfium_c.FPDF_PAGEOBJ_TEXT) == 0
    assert open_pages(marked)[0].count(pdfium_c.FPDF_PAGEOBJ_TEXT) == 1


def test_layouts_register_through_one_function(tmp_path: Path, low_dpi_allowed: None):
    assert "artwork-qr" in available_layouts()
    calls = []

    def blank(canvas, page, image, url, options) -> Placement:
        calls.append(url)
        return Placement(options.dpi, 1.0, image.size, 0.0, 0.0, 0, 0, 0.0)

    register_layout("test-blank", blank, "nothing but a page")
    report = render_poster(artwork(), tmp_path / "blank.pdf", url=URL, size="A4", dpi=60, layout="test-blank")
    assert calls == [URL] and report.layout == "test-blank"
    assert open_pages(tmp_path / "blank.pdf")[0].images() == []


# -- bad input: clear error, nothing written -------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"size": "B7"}, ["size 'B7'", "A3", "WxH"]),
        ({"size": "20x30"}, ["between"]),
        ({"bleed_mm": -1}, ["bleed", ">= 0"]),
        ({"bleed_mm": 300}, ["bleed 300", "larger than the page"]),
        ({"dpi": 150}, ["dpi 150", "300"]),
        ({"layout": "fancy"}, ["layout 'fancy'", "artwork-qr"]),
        ({"url": ""}, ["url"]),
        ({"url": "https://example.org/" + "x" * 2000}, ["too long"]),
    ],
)
def test_bad_input_raises_before_writing(tmp_path: Path, kwargs: dict, words: list[str]):
    out = tmp_path / "poster.pdf"
    arguments = {"url": URL} | kwargs
    with pytest.raises(BadInput) as caught:
        render_poster(artwork(), out, **arguments)
    for word in words:
        assert word in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_unwritable_output_paths(tmp_path: Path):
    with pytest.raises(BadInput, match="does not exist"):
        render_poster(artwork(), tmp_path / "missing" / "p.pdf", url=URL)
    with pytest.raises(BadInput, match="is a folder"):
        (tmp_path / "dir.pdf").mkdir()
        render_poster(artwork(), tmp_path / "dir.pdf", url=URL)
    with pytest.raises(BadInput, match=".pdf"):
        render_poster(artwork(), tmp_path / "poster.png", url=URL)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(BadInput, match="not writable"):
            render_poster(artwork(), locked / "p.pdf", url=URL)
    finally:
        locked.chmod(0o700)
    assert sorted(os.listdir(tmp_path)) == ["dir.pdf", "locked"]


def test_failure_while_drawing_leaves_no_partial_pdf(tmp_path: Path, low_dpi_allowed: None):
    def broken(canvas, page, image, url, options):
        canvas.rect(0, 0, 10, 10)
        raise RuntimeError("ink ran out")

    register_layout("test-broken", broken)
    out = tmp_path / "poster.pdf"
    out.write_bytes(b"the previous poster")
    with pytest.raises(RuntimeError, match="ink ran out"):
        render_poster(artwork(), out, url=URL, size="A4", dpi=60, layout="test-broken")
    assert os.listdir(tmp_path) == ["poster.pdf"]
    assert out.read_bytes() == b"the previous poster"


def test_missing_or_broken_image_file_is_bad_input(tmp_path: Path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    for path, words in [(tmp_path / "none.png", "does not exist"), (broken, "not a readable image")]:
        with pytest.raises(BadInput, match=words):
            render_posters([PosterItem(image=path, url=URL, post_id="p1")], tmp_path / "p.pdf", PosterOptions())
    assert not (tmp_path / "p.pdf").exists()
    with pytest.raises(BadInput, match="no posters"):
        render_posters([], tmp_path / "p.pdf", PosterOptions())
