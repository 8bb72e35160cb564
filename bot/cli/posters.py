"""``bot posters``: street posters from the archive, one PDF page per post."""

from __future__ import annotations

from pathlib import Path

import click

from bot.cli.common import AppContext, OutputFile, emit_json, pass_app


@click.command("posters")
@click.option("--topic", help="Only posts of this topic (slug).")
@click.option("--post", "post_ids", multiple=True, metavar="ID", help="Only these posts (repeatable).")
@click.option("--since", metavar="DATE", help="Only posts published on or after DATE (YYYY-MM-DD).")
@click.option("--top", type=int, metavar="N", help="The N posts with the most likes + comments.")
@click.option("--size", help="A1, A2, A3, A4, A5 or WxH in mm (default: posters.size).")
@click.option("--bleed", "bleed_mm", type=float, help="Bleed in mm on every side (default: posters.bleed_mm).")
@click.option("--dpi", type=int, help="Artwork resolution, >= 300 (default: posters.dpi).")
@click.option("--crop-marks", is_flag=True, help="Add crop marks outside the bleed.")
@click.option("--mark/--no-mark", default=None, help="Small account-name mark (default: posters.mark).")
@click.option("--city", help="City for the per-poster link (posters.link_template's {city}).")
@click.option(
    "--out", "out_path", required=True, type=OutputFile(".pdf"), help="The PDF to write (FILE.pdf)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def command(
    app: AppContext,
    topic: str | None,
    post_ids: tuple[str, ...],
    since: str | None,
    top: int | None,
    size: str | None,
    bleed_mm: float | None,
    dpi: int | None,
    crop_marks: bool,
    mark: bool | None,
    city: str | None,
    out_path: Path,
    as_json: bool,
) -> None:
    """Make a print-ready PDF of published posts: artwork and a QR code only,
    a page per poster at the exact size plus bleed, and a contact sheet
    (FILE.contact.png) beside it to check before printing.

    \b
    Examples:
        bot posters --topic coral --size A3 --out coral.pdf
        bot posters --top 5 --size A2 --crop-marks --out top5.pdf
        BOT_POSTERS_LINK_TEMPLATE='https://example.org/p/{city}/{post_id}' bot posters --top 5 --size A2 --city berlin --out berlin.pdf
        bot posters --post 20260301-180000-glacier-ab12 --size 500x700 --out one.pdf --json
    """
    from bot.posters import PosterOptions, render_posters, write_contact_sheet
    from bot.posters.contact import check_contact_sheet_path, contact_sheet_path
    from bot.posters.render import check_options, check_out_path
    from bot.posters.select import Selection, check_link, poster_items, select_posts

    settings = app.settings
    defaults = settings.posters
    options = PosterOptions(
        size=defaults.size if size is None else size,
        bleed_mm=defaults.bleed_mm if bleed_mm is None else bleed_mm,
        dpi=defaults.dpi if dpi is None else dpi,
        layout=defaults.layout,
        mark=defaults.mark if mark is None else mark,
        mark_text=settings.account.name,
        crop_marks=crop_marks,
    )
    # 1. check the options and the link before reading the archive; an error
    #    names the flag, or the setting the value came from
    given = {"size": size, "bleed_mm": bleed_mm, "dpi": dpi}
    flags = {"size": "--size", "bleed_mm": "--bleed", "dpi": "--dpi"}
    check_options(options, {f: flags[f] if value is not None else f"posters.{f}" for f, value in given.items()})
    check_out_path(out_path)
    sheet_path = contact_sheet_path(out_path)
    check_contact_sheet_path(sheet_path)
    check_link(settings, city)
    # 2. select posts, 3. render the PDF and the contact sheet
    posts = select_posts(app.store, Selection(topic, post_ids, since, top))
    report = render_posters(poster_items(settings, posts, city), out_path, options)
    sheet = write_contact_sheet(out_path, sheet_path, [p.post_id or "" for p in report.pages])
    _print(report, sheet, as_json)


def _print(report, sheet: Path, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict() | {"contact_sheet": str(sheet)})
        return
    first = report.pages[0]
    click.echo(
        f"wrote {report.path}: {len(report.pages)} page(s), {first.size} "
        f"{first.trim_mm[0]:g} x {first.trim_mm[1]:g} mm + {first.bleed_mm:g} mm bleed "
        f"(PDF page {first.page_mm[0]:g} x {first.page_mm[1]:g} mm)"
    )
    for page in report.pages:
        scaled = (
            f"upscaled x{page.upscale:.2f} from {page.source_px[0]}x{page.source_px[1]} px"
            if page.upscaled
            else "not resampled"
        )
        click.echo(
            f"  {page.page}. {page.post_id}: {page.effective_dpi:.0f} dpi, {scaled}; "
            f"QR {page.qr_mm:.0f} mm (scans from ~{page.qr_scan_distance_m:.1f} m) -> {page.url}"
        )
    click.echo(f"contact sheet: {sheet}")
