"""``bot sample``: images from a trained GAN (calls :func:`generators.gan.sample_to_dir`)."""

from __future__ import annotations

from pathlib import Path

import click

from bot.cli.common import AppContext, OutputFolder, emit_json, pass_app, progress_bar


@click.command("sample")
@click.option("--model", required=True, help="Model folder, or a name under <models>/gan/ (e.g. hubble-128).")
@click.option("--n", "n", type=int, default=16, show_default=True, help="Number of images (1 to 10000).")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed SEED+i: same seed, same image.")
@click.option("--size", type=int, default=None, help="Output SIZE x SIZE: models with a spatial latent draw up to 4x their training size, then Lanczos does the rest [default: training size].")
@click.option("--weights", type=click.Choice(["best", "last"]), default="best", show_default=True, help="The generator with the best KID (generator.safetensors) or the last epoch's.")
@click.option("--out", required=True, type=OutputFolder(), help="Folder for sample-<seed>.png files (existing ones are never overwritten).")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
@pass_app
def command(app: AppContext, model: str, n: int, seed: int, size: int | None, weights: str, out: Path, as_json: bool) -> None:
    """Sample images from a trained GAN, deterministically per seed.

    \b
    Examples:
        bot sample --model hubble-128 --n 16 --seed 7 --out samples/
        bot sample --model models/gan/sky --n 4 --size 1080 --out posts/
        bot sample --model models/gan/sky --weights last --n 16 --out last-epoch/
    """
    from generators.gan.sample import resolve_model_dir, sample_to_dir

    models_dir = None if Path(model).is_dir() else app.settings.paths.models
    with progress_bar("sample") as progress:
        paths = sample_to_dir(resolve_model_dir(model, models_dir), out, n, seed, size, weights, progress=progress)
    if as_json:
        emit_json([str(p) for p in paths])
        return
    for path in paths:
        click.echo(path)
