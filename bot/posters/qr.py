"""The poster's QR code: encoded by the ``qrcode`` library, drawn as vectors.

Only the module matrix comes from ``qrcode``; the modules are drawn as
rectangles of one filled PDF path, so the code stays sharp at any print size
(a bitmap QR code would be resampled by the RIP) and adjacent modules merge
into one shape without hairline seams.

How large? What limits scanning from a distance is the size of one module,
not of the whole code: the "10:1 rule" QR vendors publish (a code scans from
ten times its width) silently assumes a code of about 25 modules. We size by
the module instead, from the geometry of a phone camera:

- a phone's main camera has about 4,000 px across a ~70 degree field of view,
  so at ``d`` metres one pixel covers ``2 d tan(35 deg) / 4000`` = 0.35 mm per
  metre of distance;
- decoders such as ZXing need about 3 px per module once blur, tilt and street
  light are counted (about 2 in ideal conditions);
- so a module must be at least ~1.05 mm per metre of scanning distance.

The account URL (37 bytes) at level H is a version-5 code (37 modules): 2 m
needs 37 x 2.1 mm = 78 mm, which fits every page from A3 up without making
the QR code, rather than the artwork, the poster. The code is drawn that size
(``qr_distance_m``, default 2 m), capped to a fraction of the page's short side
(35 % by default); the report states the distance each page's code is good for.
"""

from __future__ import annotations

from dataclasses import dataclass

import qrcode
from qrcode.exceptions import DataOverflowError
from reportlab.pdfgen.canvas import Canvas

from bot.errors import BadInput

QUIET_ZONE_MODULES = 4  # ISO/IEC 18004 minimum
# The smallest printed QR code most guides accept (2 x 2 cm, close-up scanning).
MIN_CODE_MM = 20.0
# A module must be this many millimetres wide per metre of scanning distance
# (camera geometry above).
MODULE_MM_PER_METRE = 1.05
# The fewest modules a code has (version 1), for checks made before the URL is known.
MIN_MODULES = 21
# Long links make small modules; past version 10 (57 modules, 119 bytes at
# level H) the modules get too small to read from across a pavement.
MAX_VERSION = 10
MAX_URL_BYTES = 119


@dataclass(frozen=True)
class QRSymbol:
    """The encoded URL: ``modules`` is the code's side without quiet zone."""

    url: str
    version: int
    matrix: list[list[bool]]  # includes the quiet zone

    @property
    def modules(self) -> int:
        return len(self.matrix) - 2 * QUIET_ZONE_MODULES

    @property
    def side_with_quiet_zone(self) -> int:
        return len(self.matrix)


def encode(url: str) -> QRSymbol:
    """Encode ``url`` with error correction H (30 % of the code may be dirty or
    torn: street posters get both) and a 4-module quiet zone."""
    if not url or not url.strip():
        raise BadInput("url is empty; the QR code needs an address (account.url or posters.link_template)")
    check_scheme(url)
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_H, border=QUIET_ZONE_MODULES)
    code.add_data(url)
    try:
        code.make(fit=True)
        fits = code.version <= MAX_VERSION
    except (DataOverflowError, ValueError):  # qrcode raises ValueError past version 40
        fits = False
    if not fits:
        raise BadInput(
            f"url {url[:60]!r}... is {len(url)} characters, too long for a QR code that scans from a "
            f"distance (error correction H, at most version {MAX_VERSION}: {MAX_URL_BYTES} bytes); "
            "use a shorter link"
        )
    return QRSymbol(url=url, version=code.version, matrix=code.get_matrix())


def check_scheme(url: str, name: str = "url") -> None:
    """BadInput unless ``url`` starts with https:// or http://: without the
    scheme many phone cameras offer the code as plain text, not as a link."""
    if not url.strip().lower().startswith(("https://", "http://")):
        raise BadInput(
            f"{name} {url[:60]!r} does not start with https:// (or http://); a phone camera may read the "
            f"code as plain text instead of a link: write it in full, e.g. 'https://{url.strip()[:40]}'"
        )


def code_width_mm(short_side_mm: float, modules: int, *, distance_m: float, max_fraction: float) -> float:
    """Width of a code of ``modules`` modules (quiet zone excluded) that scans
    from ``distance_m``, on a page whose trim's short side is ``short_side_mm``:
    at most ``max_fraction`` of the short side, never below 20 mm (BadInput)."""
    wanted = max(distance_m * MODULE_MM_PER_METRE * modules, MIN_CODE_MM)
    width = min(wanted, max_fraction * short_side_mm)
    if width < MIN_CODE_MM:
        raise BadInput(
            f"the page's short side ({short_side_mm:g} mm) leaves only {width:.0f} mm for the QR code "
            f"(at most {max_fraction:g} of it); a printed code needs at least {MIN_CODE_MM:g} mm: "
            "choose a larger size"
        )
    return width


def scan_distance_m(code_mm: float, modules: int) -> float:
    """Distance from which a code ``code_mm`` wide with ``modules`` modules scans."""
    return code_mm / modules / MODULE_MM_PER_METRE


def draw(canvas: Canvas, symbol: QRSymbol, x: float, y: float, side: float) -> None:
    """Draw ``symbol`` with its quiet zone as a white plate of ``side`` points
    whose bottom-left corner is (x, y): the plate is one white rectangle, the
    dark modules one black path made of a rectangle per horizontal run."""
    n = symbol.side_with_quiet_zone
    module = side / n
    canvas.saveState()
    canvas.setFillColorRGB(1, 1, 1)
    canvas.rect(x, y, side, side, stroke=0, fill=1)
    canvas.setFillColorRGB(0, 0, 0)
    path = canvas.beginPath()
    for row, cells in enumerate(symbol.matrix):
        top = y + side - (row + 1) * module
        col = 0
        while col < n:
            if not cells[col]:
                col += 1
                continue
            start = col
            while col < n and cells[col]:
                col += 1
            path.rect(x + start * module, top, (col - start) * module, module)
    canvas.drawPath(path, stroke=0, fill=1)
    canvas.restoreState()
