"""The data the poster renderer takes and gives back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


@dataclass(frozen=True)
class PosterItem:
    """One page: the artwork (an image or the path of one), where its QR code
    leads, and the post it comes from (for the report)."""

    image: Image.Image | Path
    url: str
    post_id: str | None = None


@dataclass(frozen=True)
class PosterOptions:
    """How every page of one PDF is printed."""

    size: str = "A3"
    bleed_mm: float = 3.0
    dpi: int = 300
    layout: str = "artwork-qr"
    mark: bool = False  # a small DSTRTD mark in the corner opposite the QR code
    mark_text: str = "DSTRTD"
    crop_marks: bool = False
    # QR code sizing (see bot/posters/qr.py): the distance it should scan
    # from, and the largest share of the page's short side it may take.
    qr_distance_m: float = 2.0
    qr_max_fraction: float = 0.35
    qr_corner: str = "bottom-right"


@dataclass(frozen=True)
class Placement:
    """What a layout reports about the page it drew."""

    effective_dpi: float
    upscale: float  # 1.0: the artwork was not resampled
    source_px: tuple[int, int]
    qr_mm: float  # the code's width, quiet zone excluded
    qr_plate_mm: float  # the white plate: code plus quiet zone
    qr_modules: int
    qr_version: int
    qr_scan_distance_m: float


@dataclass(frozen=True)
class PageReport:
    page: int
    post_id: str | None
    url: str
    size: str
    page_mm: tuple[float, float]  # the whole PDF page (incl. bleed and crop-mark margin)
    bleed_box_mm: tuple[float, float]  # trim plus bleed
    trim_mm: tuple[float, float]
    bleed_mm: float
    effective_dpi: float
    upscale: float
    source_px: tuple[int, int]
    qr_mm: float
    qr_plate_mm: float
    qr_modules: int
    qr_version: int
    qr_scan_distance_m: float

    @property
    def upscaled(self) -> bool:
        return self.upscale > 1.0


@dataclass
class PosterReport:
    path: Path
    layout: str
    pages: list[PageReport] = field(default_factory=list)

    @property
    def upscaled(self) -> list[PageReport]:
        return [p for p in self.pages if p.upscaled]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "layout": self.layout,
            "pages": [asdict(p) | {"upscaled": p.upscaled} for p in self.pages],
        }
