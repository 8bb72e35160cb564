"""Helpers several test modules share: running the CLI in this process, a
small templates folder whose topics use a test generator, a second process
holding a state-folder lock, and a bot.toml for the tiny VQGAN+CLIP models."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent


def run_bot(capsys, *args: str) -> tuple[int, str, str]:
    """``bot ARGS`` through :func:`bot.cli.main` in this process, with its real
    error mapping; returns (exit code, stdout, stderr)."""
    import pytest

    from bot.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err

_TOPIC = """
[topics.{slug}]
name = "{name}"
subject = "a {lower}"
prompts = "a {lower}:1 | text:-0.5"
hashtags = ["dstrtdtest"]
generator = "{generator}"

[[topics.{slug}.facts]]
text = "A first fact about {lower}."
source = "NOAA"
url = "https://www.noaa.gov/"

[[topics.{slug}.facts]]
text = "A second fact about {lower}."
source = "NASA"
url = "https://www.nasa.gov/"
"""


def write_test_templates(folder: Path, generator: str, topics: tuple[tuple[str, str], ...] = (("reef", "Reef"), ("ice", "Ice"))) -> Path:
    """A templates folder with the shipped caption template and topics (slug,
    name) that all use ``generator``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "templates" / "caption.j2", folder / "caption.j2")
    text = "".join(_TOPIC.format(slug=s, name=n, lower=n.lower(), generator=generator) for s, n in topics)
    (folder / "topics.toml").write_text(text, encoding="utf-8")
    return folder


@contextlib.contextmanager
def lock_held_elsewhere(state_dir: Path, name: str, purpose: str) -> Iterator[int]:
    """Another process holds ``state_dir/<name>.lock`` for the block; yields its pid."""
    holder = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from bot.store import exclusive
        with exclusive(Path({str(state_dir)!r}), {name!r}, {purpose!r}):
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        yield process.pid
    finally:
        process.communicate("\n", timeout=30)


def vqgan_bot_config(tiny: dict, folder: Path, *, with_clip_model: bool = True) -> Path:
    """A bot.toml in ``folder`` pointing the vqgan-clip generator at the tiny
    models of ``generators.vqgan_clip.tiny.install_tiny_models``."""
    lines = ["[generators.vqgan_clip]", f'vqgan = "{tiny["vqgan"]}"', f'clip_weights = "{tiny["clip_weights"]}"']
    if with_clip_model:
        lines.append(f'clip_model = "{tiny["clip_model"]}"')
    path = folder / "bot.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
