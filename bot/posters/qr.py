"""The poster's QR code: encoded by the ``qrcode`` library, drawn as vectors.

Only the module matrix comes from ``qrcode``; the modules are drawn as
rectangles of one filled PDF path, so the code stays sharp at any print size
(a bitmap QR code would be resampled by the RIP) and adjacent modules merge
into one shape without hairline seams.

How large? The sizing rule QR vendors commonly publish is the "10:1 rule": a
phone scans a code from about ten times its width (it assumes a short URL, a
few dozen modules across; longer URLs mean smaller modules, so keep links
short). Scanning from 2 m therefore wants a
20 cm code, which would cover most of an A4 page and make the QR code, not the
artwork, the poster. So the code is ``distance / 10`` capped to a fraction of
the page's short side (35 % by default; with its quiet zone the white plate
is then about 43 %): it reaches the 2 m target from A1 upwards and scales
down with the page below that (A3: ~1 m, A2: ~1.5 m). The report states the
distance each page's code is good for, so nobody is surprised on the street.
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
# Scanning distance = SCAN_RATIO x code width (the 10:1 rule above).
SCAN_RATIO = 10.0
# The rule holds for short codes; past version 10 (57 modules, 119 bytes at
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


def code_width_mm(short_side_mm: float, *, distance_m: float, max_fraction: float) -> float:
    """Width of the code itself (quiet zone excluded) on a page whose trim's
    short side is ``short_side_mm``: ``distance / 10``, at most
    ``max_fraction`` of the short side, never below 20 mm (BadInput)."""
    width = min(distance_m * 1000.0 / SCAN_RATIO, max_fraction * short_side_mm)
    if width < MIN_CODE_MM:
        raise BadInput(
            f"the page's short side ({short_side_mm:g} mm) leaves only {width:.0f} mm for the QR code "
            f"(at most {max_fraction:g} of it); a printed code needs at least {MIN_CODE_MM:g} mm: "
            "choose a larger size"
        )
    return width


def scan_distance_m(code_mm: float) -> float:
    """Distance from which a code ``code_mm`` wide scans, by the 10:1 rule."""
    return code_mm * SCAN_RATIO / 1000.0


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
