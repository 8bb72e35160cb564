"""``bot train``: train a GAN on a folder of images (calls :func:`generators.gan.train`)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from bot.cli.common import OutputFolder, emit_json, progress_bar


@click.command("train")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Folder of jpg/png/webp images (searched recursively).")
@click.option("--out", required=True, type=OutputFolder(), help="Model folder to create (e.g. models/gan/NAME).")
@click.option("--arch", type=click.Choice(["gan", "dcgan", "wgan", "wgan-gp", "diffaug"]), default=None, help="Architecture [default: diffaug, the small-data recipe].")
@click.option("--img-size", type=int, default=None, help="Training size, a power of two from 32 to 512 [default: 64].")
@click.option("--epochs", type=int, default=50, show_default=True, help="Total epochs (with --resume: the new total).")
@click.option("--batch-size", type=int, default=None, help="[default: 64]")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 2e-4; wgan 5e-5; wgan-gp 1e-4].")
@click.option("--lr-d", type=float, default=None, help="Discriminator learning rate, if different (two time-scale rule, Heusel et al. 2017) [default: --lr].")
@click.option("--b1", type=float, default=None, help="Adam beta1 [default: 0.5; wgan-gp 0.0].")
@click.option("--b2", type=float, default=None, help="Adam beta2 [default: 0.999; wgan-gp 0.9].")
@click.option("--n-critic", type=int, default=None, help="Discriminator steps per generator step [default: 5 for wgan/wgan-gp, else 1].")
@click.option("--clip-value", type=float, default=None, help="WGAN weight clipping [default: 0.01].")
@click.option("--gp-lambda", type=float, default=None, help="WGAN-GP gradient penalty weight [default: 10].")
@click.option("--width", type=int, default=None, help="Channels at full resolution; doubles per halving [default: 32].")
@click.option("--max-width", type=int, default=None, help="Channel cap [default: 256].")
@click.option("--z-dim", type=int, default=None, help="Latent size [default: 128].")
@click.option("--latent-res", type=int, default=None, help="diffaug: spatial latent of this resolution, z read as (z-dim/res², res, res) [default: 1, a vector].")
@click.option("--ema-kimg", type=float, default=None, help="Half-life of the generator's moving average, in thousands of images [default: 10].")
@click.option("--g-norm", type=click.Choice(["batch", "none"]), default=None, help="diffaug: generator normalisation; 'none' suits sparse images such as star fields [default: batch].")
@click.option("--patch-res", type=int, default=None, help="diffaug: the discriminator scores each patch of an R×R grid instead of the whole image [default: 1, whole image].")
@click.option("--g-padding", type=click.Choice(["reflect", "circular"]), default=None, help="diffaug: padding of the generator's convolutions; 'circular' gives it no cue where the border is (no border artefacts; the images tile) [default: reflect].")
@click.option("--augment", default=None, help="diffaug policy, comma-separated from color,translation,cutout [default: all three].")
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option("--sample-every", type=int, default=5, show_default=True, help="Sample grid every N epochs.")
@click.option("--eval-every", type=int, default=5, show_default=True, help="Diagnostics (and best checkpoint) every N epochs.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch [default: torch's choice].")
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when torch sees one), cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out exactly where it stopped.")
@click.option("--new-data", is_flag=True, help="With --resume: go on training on a --data folder that has changed since the checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(as_json: bool, **options) -> None:
    """Train a GAN and write its model folder (weights, metrics.jsonl, sample
    grids, loss curve, diagnostics report.json/report.png).

    \b
    Examples:
        bot dataset crops --from sky.jpg --size 64 --count 1000 --out data/sky
        bot train --data data/sky --out models/gan/sky --epochs 40
        bot train --data data/sky --out models/gan/sky --epochs 80 --resume
        bot train --data photos/ --arch dcgan --img-size 64 --out models/gan/oaks
        bot train --data data/sky --out models/gan/sky-gpu --device cuda   # on an NVIDIA GPU
    """
    from generators.gan import TrainConfig, train

    config = TrainConfig(**options)
    with progress_bar("train") as progress, sigterm_as_interrupt():
        summary = train(config, progress=progress)
    if as_json:
        emit_json(summary)
        return
    click.echo(f"model: {summary['out']} (best epoch {summary['best']['epoch'] if summary['best'] else '-'})")
    for warning in summary["warnings"]:
        click.echo(f"warning: {warning}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """`kill`, `docker stop` and systemd stop a run with SIGTERM, which would end
    the process without a word: treat it as Ctrl-C, so that the run says which
    epoch its checkpoint holds and how to resume."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread only
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
