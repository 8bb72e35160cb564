"""Helpers shared by the Instagram tests: a tiny generator, a topics folder,
and running the real ``bot`` CLI (in this process or as a child process)
against a :class:`FakeInstagram`, configured through BOT_* variables only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from generators import GenerationRequest, GenerationResult, register_generator
from support import write_test_templates

REPO = Path(__file__).resolve().parents[2]


class SolidGenerator:
    """A fast stand-in for the real generators: a two-colour image from the seed."""

    name = "test-solid"

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def check(self, request: GenerationRequest) -> None:
        pass

    def generate(self, request: GenerationRequest) -> GenerationResult:
        image = Image.new("RGB", (64, 80), ((request.seed * 37) % 256, 90, 160))
        image.paste((20, 200, 120), (0, 0, 32, 40))
        return GenerationResult(image=image, seed=request.seed, generator=self.name,
                                parameters={"size": 64}, timings={"generate": 0.0})


register_generator("test-solid", SolidGenerator, "a solid test image made by the Instagram tests")

def write_templates(folder: Path) -> Path:
    return write_test_templates(folder, "test-solid")


def bot_env(fake: Any, state: Path, templates: Path) -> dict[str, str]:
    """Everything the bot needs to post to ``fake``: settings only, no patching."""
    return {
        **fake.env(),
        "BOT_PATHS_STATE": str(state),
        "BOT_PATHS_TEMPLATES": str(templates),
        "BOT_POSTERS_SIZE": "A5",
        "BOT_INSTAGRAM_COOLDOWN_SECONDS": "3600",
    }


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``bot ARGS`` in this process (environment already set); returns
    (exit code, stdout, stderr) via click's runner so output is captured."""
    from click.testing import CliRunner

    from bot.cli import main

    runner = CliRunner()
    result = runner.invoke(_as_click(main), list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def publish_two_posts() -> tuple[Any, Any, dict, dict]:
    """Post a reef and an ice image to the fake (environment already set);
    returns the settings, the store and the two post records, oldest first."""
    from bot.config import load_settings
    from bot.store import Store

    assert run_cli("post", "--topic", "reef")[0] == 0
    assert run_cli("post", "--topic", "ice")[0] == 0
    settings = load_settings()
    store = Store(settings.paths.state)
    first, second = store.posts()
    return settings, store, first, second


def _as_click(main: Any):
    """Wrap :func:`bot.cli.main` (which maps errors to exit codes) as a click
    command so CliRunner can capture its output and exit code."""
    import click

    @click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.pass_context
    def wrapper(ctx: click.Context) -> None:
        main(list(ctx.args))

    return wrapper


def spawn_cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    """Start ``bot ARGS`` as a child process (with the test generator registered)."""
    code = (
        "import sys; sys.path.insert(0, %r); import fake_instagram.harness as h; "
        "from bot.cli import main; main(sys.argv[1:])"
    ) % str(REPO / "tests")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")} | env
    return subprocess.Popen([sys.executable, "-c", code, *args], env=full_env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
