"""``bot dataset crops``: a training set cut out of one large image."""

from __future__ import annotations

from pathlib import Path

import click

from bot.cli.common import OutputFolder, emit_json, progress_bar


@click.group("dataset")
def command() -> None:
    """Prepare training images for `bot train`.

    \b
    Examples:
        bot dataset crops --from hubble_deep_field.jpg --size 128 --count 2000 --out data/hubble
    """


@command.command("crops")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path), help="A large image.")
@click.option("--size", type=int, default=64, show_default=True, help="Crop size in pixels.")
@click.option("--count", type=int, default=500, show_default=True, help="Number of crops (1 to 100000).")
@click.option("--seed", type=int, default=0, show_default=True, help="Crops are the same for the same seed.")
@click.option("--out", required=True, type=OutputFolder(), help="Empty or new folder for crop-NNNNN.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def crops(source: Path, size: int, count: int, seed: int, out: Path, as_json: bool) -> None:
    """Cut COUNT random SIZE x SIZE crops out of one image.

    \b
    Examples:
        bot dataset crops --from hubble_deep_field.jpg --size 128 --count 2000 --out data/hubble
        bot dataset crops --from reef.jpg --size 64 --count 300 --seed 3 --out data/reef --json
    """
    from generators.gan import make_crops

    with progress_bar("crops") as progress:
        summary = make_crops(source, out, size, count, seed, progress=progress)
    if as_json:
        emit_json(summary)
        return
    click.echo(f"{count} crops of {size}x{size} written to {out}")
