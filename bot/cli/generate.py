"""``bot generate``: make one image into a folder, without posting anything."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bot.cli.common import AppContext, OutputFolder, emit_json, pass_app, progress_bar
from bot.errors import BadInput, BotError


DEFAULT_SIZE = "480"

# The flag that sets each request option (and request field), for the
# generator's messages: `--snapshot 900` should not come back as snapshot_steps.
FLAG_NAMES = {
    "iterations": "--iterations", "cutouts": "--cutouts", "candidates": "--candidates", "stop": "--stop",
    "snapshot_steps": "--snapshot", "init_image": "--init-image", "image_prompts": "--image-prompt",
    "profile": "--profile", "time_budget_s": "--time-budget", "prompts": "--prompt", "seed": "--seed",
    "device": "--device", "size": "--size",
}


def _parse_size(value: str, name: str = "--size") -> tuple[int, int]:
    """``480`` or ``480x320`` as (width, height); ``name`` is where it came
    from (``--size`` or the topic's setting)."""
    text = value.lower().strip()
    try:
        if "x" in text:
            width, height = (int(part) for part in text.split("x", 1))
        else:
            width = height = int(text)
    except ValueError:
        raise BadInput(f"{name} {value!r} is not a size; use e.g. 480 or 480x320 (multiples of 16)") from None
    return width, height


@dataclass
class _Inputs:
    """What --prompt and/or --topic ask for, and the setting each value of the
    topic came from (``names``), so that an error names what to edit."""

    prompts: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    generator: str | None = None
    size: str = DEFAULT_SIZE
    names: dict[str, str] = field(default_factory=dict)


def _request_inputs(app: AppContext, prompt: str | None, topic: str | None) -> _Inputs:
    """Prompts, options, model, generator and size from --prompt and/or --topic
    (the flags win; the size is the topic's, as a post of it would use)."""
    if topic is None:
        return _Inputs(prompts=prompt or "")
    from bot.topics import load_topics  # written alongside; imported only when needed

    topics = load_topics(app.settings.paths.templates)
    if topic not in topics:
        raise BadInput(f"--topic {topic!r} is not a topic; known: {', '.join(topics)}")
    chosen = topics[topic]
    request = chosen.request()
    names = {key: f"topics.{topic}.options.{key}" for key in chosen.options}
    names.update({"prompts": f"topics.{topic}.prompts", "model": f"topics.{topic}.model"})
    return _Inputs(prompt or chosen.prompts, request.options, chosen.model, chosen.generator, str(request.size), names)


def _option_names(generator_name: str, config: dict[str, Any], inputs: _Inputs, given: set[str]) -> dict[str, str]:
    """What the generator's messages call each value: the flag when one of
    ``given`` set it, else the topic's setting, else the bot.toml setting of
    ``[generators.<name>]`` (the order in which they override each other)."""
    table = generator_name.replace("-", "_")
    names = {key: f"generators.{table}.{key}" for key in config}
    names.update(inputs.names)
    names.update({key: FLAG_NAMES[key] for key in given})
    return names


@click.command("generate")
@click.option("--prompt", help="Weighted prompts, e.g. 'coral reef:1 | blurry:-0.5'.")
@click.option("--topic", help="Take the prompts and options of this topic (see `bot topics`).")
@click.option("--size", help=f"Side, or WIDTHxHEIGHT; multiples of 16 for vqgan-clip (default: the topic's, else {DEFAULT_SIZE}).")
@click.option("--iterations", type=int, help="Hard cap on optimisation steps (the plateau rule may stop earlier).")
@click.option("--cutouts", type=int, help="Crops CLIP scores per step.")
@click.option("--candidates", type=int, help="Optimise N candidates in one batch, keep the best CLIP score.")
@click.option("--stop", type=click.Choice(["plateau", "none"]), help="Stopping rule (default plateau).")
@click.option("--snapshot", "snapshots", multiple=True, type=int, help="Also save the image at this step (repeatable).")
@click.option("--init-image", type=click.Path(dir_okay=False), help="Start from this image instead of noise.")
@click.option("--image-prompt", help="Image prompts, 'path:weight | path2:weight'.")
@click.option("--profile", type=click.Choice(["auto", "cpu", "full"]), help="auto: 'cpu' on a CPU (smaller, faster).")
@click.option("--time-budget", type=float, metavar="SECONDS",
              help="Stop the optimisation after this many seconds; 0 = no budget (default: the profile's, "
                   "40 min on a CPU). Use 0 to remake an image exactly: a budget makes the stop step depend "
                   "on how busy the machine is.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--generator", "generator_name", help="Registered generator (default: the topic's, else vqgan-clip).")
@click.option("--seed", type=int, help="Random seed (default: random, recorded in manifest.json).")
@click.option("--out", "out_dir", required=True, type=OutputFolder(),
              help="Folder for image.png etc.: a new one, or one without an earlier image (never overwritten).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@pass_app
def command(app: AppContext, prompt: str | None, topic: str | None, size: str | None, iterations: int | None,
            cutouts: int | None, candidates: int | None, stop: str | None, snapshots: tuple[int, ...],
            init_image: str | None, image_prompt: str | None, profile: str | None, time_budget: float | None,
            device: str, generator_name: str | None, seed: int | None, out_dir: str, as_json: bool) -> None:
    """Generate one image (VQGAN+CLIP by default) into --out: image.png,
    loss_curve.png, snapshots/, manifest.json (everything needed to make it again).

    \b
    Examples:
        bot generate --prompt "coral reef" --size 480 --iterations 500 --seed 7 --out out/reef
        bot generate --topic coral --out out/coral --json
        bot generate --prompt "glacier:1 | text:-0.5" --size 480x320 --candidates 3 --snapshot 100 --out out/g
        bot generate --prompt "coral reef" --iterations 187 --time-budget 0 --seed 7 --out out/again
    """
    from generators import GenerationRequest, get_generator

    # 1. check inputs (nothing is written before the generator's check passes)
    _check_no_earlier_image(Path(out_dir))
    inputs = _request_inputs(app, prompt, topic)
    options = inputs.options
    generator_name = generator_name or inputs.generator or "vqgan-clip"
    size_name = "--size" if size is not None else inputs.names.get("size", "size")
    width, height = _parse_size(size or inputs.size, size_name)
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget >= 0):
        raise BadInput(f"--time-budget {time_budget!r} is not allowed; use seconds >= 0 (0 = no budget)")
    flags = {"iterations": iterations, "cutouts": cutouts, "candidates": candidates, "stop": stop,
             "init_image": init_image, "image_prompts": image_prompt, "profile": profile,
             "time_budget_s": time_budget}
    options.update({k: v for k, v in flags.items() if v is not None})
    if width != height:  # non-square sizes are a VQGAN+CLIP option; request.size is the side
        options.update({"width": width, "height": height})
    if snapshots:
        options["snapshot_steps"] = list(snapshots)
    given = {key for key, value in {**flags, "size": size, "prompts": prompt, "snapshot_steps": snapshots or None,
                                    "seed": seed, "device": device}.items() if value is not None}
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    config = app.settings.generator_config(generator_name)
    config["option_names"] = _option_names(generator_name, config, inputs, given)
    if width != height:  # the width and height options came from that size
        config["option_names"].update({"width": f"{size_name} width", "height": f"{size_name} height"})
    generator = get_generator(generator_name, config)
    with progress_bar("generating") as progress:
        request = GenerationRequest(prompts=inputs.prompts, seed=seed, size=width, model=inputs.model,
                                    options=options, device=device, progress=progress)
        generator.check(request)
        # 2. generate
        result = generator.generate(request)
    # 3. write the outputs
    manifest = _write_outputs(Path(out_dir), result)
    _note_missing_snapshots(snapshots, result)
    if as_json:
        emit_json(manifest)
    else:
        click.echo(f"wrote {manifest['files']['image']} (seed {seed}, "
                   f"{len(result.loss_curve or [])} steps, {result.timings.get('total_s', 0):.0f} s)")


OUTPUT_NAMES = ("image.png", "loss_curve.png", "manifest.json", "snapshots")


def _note_missing_snapshots(asked: tuple[int, ...], result: Any) -> None:
    """Say on stderr which --snapshot steps have no image because the run
    stopped before them (the plateau rule, the time budget): the folder simply
    lacked them, and nothing said why."""
    missing = sorted(set(asked) - set(result.snapshots))
    if missing:
        stopped = result.extras.get("stop_step") or len(result.loss_curve or [])
        why = result.extras.get("stop_reason") or "the run ended"
        click.echo(f"note: no snapshot at step {', '.join(map(str, missing))}: the run stopped at step "
                   f"{stopped} ({why})", err=True)


def _check_no_earlier_image(out: Path) -> None:
    """Refuse an --out folder that holds the outputs of an earlier run, before
    any work: the new image would replace the old one and its manifest (the
    only record of how to make it again), and the old snapshots would stay
    beside the new image as if they were its own."""
    found = [name for name in OUTPUT_NAMES if (out / name).exists()]
    if found:
        raise BadInput(
            f"--out {str(out)!r} already holds {', '.join(found)} from an earlier run; allowed: a new folder, "
            f"or one without {', '.join(OUTPUT_NAMES)} (move them away to keep them)"
        )


def _write_outputs(out: Path, result: Any) -> dict[str, Any]:
    """Write the outputs into a temp folder inside ``out``, then rename each
    into place. A write that fails (a full disk) leaves no half-set behind,
    which would look like a complete run of its own, and is a message naming
    --out rather than a traceback."""
    created = not out.exists()
    staging: Path | None = None
    moved: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".generate-", dir=out))
        manifest = _write_files(staging, out, result)
        for name in OUTPUT_NAMES:  # renames in one folder: they need no space
            if (staging / name).exists():
                os.rename(staging / name, out / name)
                moved.append(out / name)
    except BaseException as exc:
        for path in moved:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BotError(f"--out {str(out)!r}: the outputs could not be written ({exc}); none of them were "
                           "kept. Free disk space or fix the folder's permissions, then run the command again"
                           ) from None
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    return manifest


def _write_files(folder: Path, out: Path, result: Any) -> dict[str, Any]:
    """Write the outputs into ``folder``; the manifest names them as they will
    be once moved to ``out``."""
    from bot.archive import plot_loss_curve, png_bytes
    from bot.store import atomic_write_bytes, atomic_write_text

    files = {"image": str(out / "image.png")}
    atomic_write_bytes(folder / "image.png", png_bytes(result.image))
    if result.loss_curve:
        plot_loss_curve(result.loss_curve, result.loss_label, result.parameters.get("prompts", ""),
                        folder / "loss_curve.png")
        files["loss_curve"] = str(out / "loss_curve.png")
    for step, image in sorted(result.snapshots.items()):
        (folder / "snapshots").mkdir(exist_ok=True)
        name = f"step-{step:05d}.png"
        atomic_write_bytes(folder / "snapshots" / name, png_bytes(image))
        files[f"snapshot_{step}"] = str(out / "snapshots" / name)
    manifest = {
        "generator": result.generator, "seed": result.seed, "parameters": result.parameters,
        "models": result.models, "timings": result.timings, "loss_label": result.loss_label,
        "loss_curve": result.loss_curve, "extras": result.extras, "files": files,
    }
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str))
    files["manifest"] = str(out / "manifest.json")
    return manifest
