"""The artwork on a poster page: cover the bleed box, centred, at >= the print dpi.

Generated images are small (a few hundred pixels) next to an A3 page at
300 dpi (3579 x 5031 px incl. bleed), so most posters are upscaled. Pillow's
LANCZOS filter (a windowed sinc, the usual quality choice for enlargement) is
used; re-generating at print resolution is left to the generator.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen.canvas import Canvas

from bot.posters.geometry import MM_PER_INCH, Page

# JPEG quality for the embedded artwork: 95 with no chroma subsampling is
# visually lossless in print and keeps an A2 page at a few MB instead of the
# ~100 MB of a Flate-compressed bitmap.
JPEG_QUALITY = 95


@dataclass(frozen=True)
class PreparedArtwork:
    image: Image.Image  # exactly what goes into the PDF
    source_px: tuple[int, int]  # the artwork as given
    crop_px: tuple[int, int]  # the centred part of it that covers the page
    upscale: float  # linear factor applied to the crop; 1.0 = not resampled

    def effective_dpi(self, page: Page) -> float:
        """Pixels per inch of the artwork as placed on the bleed box."""
        width_mm, height_mm = page.bleed_size_mm
        return min(
            self.image.width / (width_mm / MM_PER_INCH),
            self.image.height / (height_mm / MM_PER_INCH),
        )


def prepare(image: Image.Image, page: Page, dpi: int) -> PreparedArtwork:
    """Crop ``image`` to the page's proportions around its centre ("cover"
    fit, nothing letterboxed) and enlarge it with LANCZOS when it has fewer
    pixels than ``dpi`` needs. Larger images are kept as they are: dropping
    pixels would not improve the print."""
    rgb = image.convert("RGB")
    need_w, need_h = page.artwork_px(dpi)
    src_w, src_h = rgb.size
    # 1. centred crop to the page's aspect ratio
    if src_w * need_h > src_h * need_w:  # source wider than the page
        crop_w, crop_h = max(1, round(src_h * need_w / need_h)), src_h
    else:
        crop_w, crop_h = src_w, max(1, round(src_w * need_h / need_w))
    left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    cropped = rgb.crop((left, top, left + crop_w, top + crop_h))
    # 2. enlarge to the print resolution when needed
    scale = max(need_w / crop_w, need_h / crop_h)
    if scale > 1.0:
        cropped = cropped.resize((need_w, need_h), Image.Resampling.LANCZOS)
        upscale = scale
    else:
        upscale = 1.0
    return PreparedArtwork(cropped, (src_w, src_h), (crop_w, crop_h), upscale)


def draw(canvas: Canvas, artwork: PreparedArtwork, page: Page, icc_profile: bytes | None = None) -> None:
    """Place the artwork over the whole bleed box, embedded as a JPEG."""
    buffer = io.BytesIO()
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    artwork.image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0, **extra)
    buffer.seek(0)
    x0, y0, x1, y1 = page.bleed_box_pt
    canvas.drawImage(ImageReader(buffer), x0, y0, x1 - x0, y1 - y0)
