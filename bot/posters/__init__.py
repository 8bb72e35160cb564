"""Street posters: print-ready PDFs with only the artwork and a QR code.

The first seed plans posters in London, Berlin, San Francisco and Seoul that
"only present the artwork and a QR-code leading to the Instagram account ...
to create a sense of mystery". See docs/posters.md for printing.

Public API::

    render_poster(image, out_path, *, url, size="A3", bleed_mm=3.0, dpi=300,
                  layout="artwork-qr", mark=False, crop_marks=False) -> PosterReport
    render_posters(items: list[PosterItem], out_path, options: PosterOptions) -> PosterReport
    register_layout(name, layout, description)
    write_contact_sheet(pdf_path, out_path, labels) -> Path
"""

from bot.posters.contact import write_contact_sheet
from bot.posters.geometry import PAGE_SIZES, parse_size
from bot.posters.layouts import available_layouts, get_layout, register_layout
from bot.posters.model import PageReport, Placement, PosterItem, PosterOptions, PosterReport
from bot.posters.render import render_poster, render_posters

__all__ = [
    "PAGE_SIZES",
    "PageReport",
    "Placement",
    "PosterItem",
    "PosterOptions",
    "PosterReport",
    "available_layouts",
    "get_layout",
    "parse_size",
    "register_layout",
    "render_poster",
    "render_posters",
    "write_contact_sheet",
]
