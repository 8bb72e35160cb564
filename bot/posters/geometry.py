"""Page sizes and the boxes of one poster page, in millimetres and points.

A printed poster has three nested rectangles (the PDF/X page boxes):

* the *trim* box: the finished size on the wall (A3 = 297 x 420 mm);
* the *bleed* box: the trim plus ``bleed_mm`` on every side; the artwork runs
  to here so that a slightly off cut leaves no white edge;
* the *media* box: the whole PDF page. It equals the bleed box, unless crop
  marks are asked for: those sit outside the bleed, on extra white paper.

Inside the trim, the *safe* box keeps the QR code away from the cut.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bot.errors import BadInput

MM_PER_INCH = 25.4
POINTS_PER_INCH = 72.0

# ISO 216 A series, portrait, width x height in mm.
PAGE_SIZES: dict[str, tuple[float, float]] = {
    "A1": (594.0, 841.0),
    "A2": (420.0, 594.0),
    "A3": (297.0, 420.0),
    "A4": (210.0, 297.0),
    "A5": (148.0, 210.0),
}

# Custom sizes "WxH" in mm, e.g. "500x700" or "500x700mm".
_CUSTOM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX×]\s*(\d+(?:\.\d+)?)\s*(?:mm)?\s*$")
# Smallest and largest custom side: below A7's short side (74 mm) a printable
# QR code (>= 20 mm) does not fit beside the artwork; above 1500 mm (larger
# than A0) the artwork at 300 dpi no longer fits in memory.
MIN_SIDE_MM = 74.0
MAX_SIDE_MM = 1500.0
# Crop marks: a 6 mm line that starts this far outside the trim (never less
# than the bleed, so that it stays off the artwork).
CROP_MARK_OFFSET_MM = 3.0
CROP_MARK_LENGTH_MM = 6.0


def mm_to_pt(mm: float) -> float:
    return mm / MM_PER_INCH * POINTS_PER_INCH


def allowed_sizes() -> str:
    return ", ".join(PAGE_SIZES) + ' or "WxH" in mm (e.g. "500x700")'


def parse_size(size: str, called: str = "size") -> tuple[str, float, float]:
    """``"A3"`` or ``"500x700"`` -> (name, width mm, height mm); BadInput
    otherwise, naming the value as the user gave it (``called``: ``--size``,
    ``posters.size``)."""
    text = str(size).strip()
    if text.upper() in PAGE_SIZES:
        name = text.upper()
        return (name, *PAGE_SIZES[name])
    match = _CUSTOM.match(text)
    if not match:
        raise BadInput(f"{called} {size!r} is not a known page size; allowed: {allowed_sizes()}")
    width, height = float(match.group(1)), float(match.group(2))
    for side in (width, height):
        if not MIN_SIDE_MM <= side <= MAX_SIDE_MM:
            raise BadInput(
                f"{called} {size!r}: each side must be between {MIN_SIDE_MM:g} and {MAX_SIDE_MM:g} mm"
            )
    return (f"{width:g}x{height:g}mm", width, height)


@dataclass(frozen=True)
class Page:
    """One poster page. Lengths in mm; ``*_pt`` helpers give PDF points with the
    origin at the bottom-left corner of the media box."""

    size_name: str
    trim_w_mm: float
    trim_h_mm: float
    bleed_mm: float
    crop_marks: bool = False

    @property
    def margin_mm(self) -> float:
        """Paper outside the trim on each side: the bleed, plus room for crop marks."""
        if not self.crop_marks:
            return self.bleed_mm
        return max(self.bleed_mm, self.crop_mark_offset_mm + CROP_MARK_LENGTH_MM + 1.0)

    @property
    def crop_mark_offset_mm(self) -> float:
        return max(self.bleed_mm, CROP_MARK_OFFSET_MM)

    @property
    def media_mm(self) -> tuple[float, float]:
        return (self.trim_w_mm + 2 * self.margin_mm, self.trim_h_mm + 2 * self.margin_mm)

    @property
    def bleed_size_mm(self) -> tuple[float, float]:
        return (self.trim_w_mm + 2 * self.bleed_mm, self.trim_h_mm + 2 * self.bleed_mm)

    @property
    def safe_margin_mm(self) -> float:
        """Distance from the trim the QR code keeps: 5 % of the short side, at
        least 10 mm, because posters taped to walls lose their edges first and
        print shops ask for >= 3-5 mm anyway."""
        return max(10.0, 0.05 * min(self.trim_w_mm, self.trim_h_mm))

    def box_pt(self, inset_mm: float) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in points of the rectangle ``inset_mm`` inside the
        media edge."""
        width, height = self.media_mm
        return (
            mm_to_pt(inset_mm),
            mm_to_pt(inset_mm),
            mm_to_pt(width - inset_mm),
            mm_to_pt(height - inset_mm),
        )

    @property
    def media_pt(self) -> tuple[float, float]:
        return (mm_to_pt(self.media_mm[0]), mm_to_pt(self.media_mm[1]))

    @property
    def bleed_box_pt(self) -> tuple[float, float, float, float]:
        return self.box_pt(self.margin_mm - self.bleed_mm)

    @property
    def trim_box_pt(self) -> tuple[float, float, float, float]:
        return self.box_pt(self.margin_mm)

    @property
    def safe_box_pt(self) -> tuple[float, float, float, float]:
        return self.box_pt(self.margin_mm + self.safe_margin_mm)

    def artwork_px(self, dpi: int) -> tuple[int, int]:
        """Pixels the artwork needs to cover the bleed box at ``dpi`` (rounded up,
        so the effective resolution is never below ``dpi``)."""
        width, height = self.bleed_size_mm
        return (math.ceil(width / MM_PER_INCH * dpi), math.ceil(height / MM_PER_INCH * dpi))
