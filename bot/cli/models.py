"""``bot models``: the model store under ``models/`` (list, fetch, import, verify)."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import click

from bot.cli.common import AppContext, emit_json, pass_app, progress_bar
from bot.errors import BadInput, BotError
from generators.errors import CorruptModel


def _store(app: AppContext):
    from generators.models import ModelStore

    return ModelStore(app.settings.paths.models)


@click.group("models")
def command() -> None:
    """Install and check the weights the generators need (sha256 manifest in models/).

    \b
    Examples:
        bot models list
        bot models fetch --trust vqgan_imagenet_f16_16384 clip_vit_b_32_openai
        bot models verify
    """


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def list_models(app: AppContext, as_json: bool) -> None:
    """List known and installed models.

    \b
    Examples:
        bot models list
        bot models list --json
    """
    rows = _store(app).list()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        mark = "installed" if row["installed"] else "-"
        click.echo(f"{row['name']:<28} {row['kind']:<6} {mark:<10} {row['description']}")


@command.command("fetch")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True,
              help="Download and convert again even when installed; discards earlier downloads.")
@click.option("--trust", is_flag=True,
              help="Allow a full (stubbed) unpickle of a checkpoint whose source publishes no sha256 "
                   "(the heibox VQGANs).")
@pass_app
def fetch(app: AppContext, names: tuple[str, ...], force: bool, trust: bool) -> None:
    """Download models from their official URLs, check sums, convert to safetensors.

    An interrupted download resumes where it stopped on the next fetch. A model
    whose installed files are missing or changed is installed again.

    \b
    Examples:
        bot models fetch clip_vit_b_32_openai
        bot models fetch vqgan_imagenet_f16_16384 --trust
    """
    store = _store(app)
    for name in names:
        store.spec(name)  # unknown names fail before any download
    for name in names:
        with _progress_on_first_byte(f"fetching {name}") as progress, _disk_errors(name, store.root):
            result = store.fetch(name, progress=progress, force=force, trust=trust)
        click.echo(f"{name}: {result.outcome.value} "
                   f"({', '.join(f['path'] for f in result.entry['files'].values())})")


@contextmanager
def _progress_on_first_byte(label: str) -> Iterator[Callable[[int, int, dict], None]]:
    """A progress bar that appears with the first report: ``fetch`` decides
    itself whether there is anything to check or download (hashing an
    installed model of gigabytes, then the download, its check and the
    conversion each report), and a fetch that fails before any work
    should print no empty bar."""
    with ExitStack() as stack:
        bar: Callable[[int, int, dict], None] | None = None

        def update(done: int, total: int, info: dict) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(progress_bar(label, enabled=None, in_bytes=True))
            bar(done, total, info)

        yield update


@contextmanager
def _disk_errors(name: str, root: Path) -> Iterator[None]:
    """A full disk or a folder this user cannot write is a message, not a
    traceback. The store stays usable: a model is renamed into place only
    when complete, and a partial download is kept to resume."""
    try:
        yield
    except OSError as exc:
        raise BotError(
            f"model {name!r} was not installed: {exc}. Free disk space or fix the permissions under {root}, "
            "then run the command again"
        ) from None


@command.command("import")
@click.argument("name")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), help="VQGAN .ckpt (or .safetensors).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="VQGAN YAML config.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="CLIP weights (.safetensors/.bin/.pt).")
@click.option("--clip-model", help="open_clip architecture of --weights (default: the known model's).")
@click.option("--trust", is_flag=True, help="Allow a full (stubbed) unpickle of a checkpoint that is not a known official file.")
@pass_app
def import_(app: AppContext, name: str, checkpoint: str | None, config_file: str | None, weights: str | None,
            clip_model: str | None, trust: bool) -> None:
    """Install local files into the store under NAME.

    \b
    Examples:
        bot models import vqgan_imagenet_f16_16384 --checkpoint last.ckpt --config model.yaml --trust
        bot models import clip_vit_b_32_openai --weights open_clip_model.safetensors
        bot models import my_clip --weights w.safetensors --clip-model ViT-B-16
    """
    if weights and (checkpoint or config_file):
        raise BadInput("give either --weights (CLIP) or --checkpoint and --config (VQGAN), not both")
    if clip_model and not weights:
        # It would be ignored: a VQGAN's architecture comes from its --config.
        raise BadInput(f"--clip-model {clip_model!r} is only allowed with --weights (CLIP); "
                       "a VQGAN takes --checkpoint and --config")
    if weights:
        files, kind = {"weights": weights}, "clip"
    elif checkpoint and config_file:
        files, kind = {"checkpoint": checkpoint, "config": config_file}, "vqgan"
    else:
        raise BadInput("give --checkpoint and --config for a VQGAN, or --weights for CLIP")
    store = _store(app)
    try:
        # Hashing and converting a checkpoint of about 1 GB takes minutes: a bar on stderr.
        with progress_bar(f"importing {name}", in_bytes=True) as progress, _disk_errors(name, store.root):
            entry = store.import_files(name, files, kind=kind, open_clip_name=clip_model, trust=trust,
                                       progress=progress)
    except CorruptModel as exc:  # the files the person named: bad input (exit 2), the store unchanged
        raise BadInput(str(exc)) from None
    click.echo(f"{name}: installed ({', '.join(f['path'] for f in entry['files'].values())})")


@command.command("verify")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def verify(app: AppContext, name: str | None, as_json: bool) -> int:
    """Re-check installed files against the manifest's sha256 (exit 1 on a mismatch).

    \b
    Examples:
        bot models verify
        bot models verify vqgan_imagenet_f16_16384 --json
    """
    store = _store(app)
    with progress_bar("verifying", in_bytes=True) as progress:  # on stderr: --json's stdout stays one document
        results = store.verify(name, progress=progress)
    if as_json:
        emit_json(results)
    else:
        if not results:
            click.echo("no models installed; see `bot models list`")
        for result in results:
            if result["ok"]:
                click.echo(f"{result['name']}: ok")
            else:
                click.echo(f"{result['name']}: {'; '.join(result['problems'])}; "
                           f"reinstall: {store.reinstall_command(result['name'])}")
    return 0 if all(r["ok"] for r in results) else 1
