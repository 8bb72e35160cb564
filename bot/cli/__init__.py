"""The ``bot`` command line.

Each command lives in its own module of this package and exposes ``command``
(a click command or group); the root below adds them in the order of
``COMMAND_MODULES``. Command bodies stay short: they parse flags, call the
library, and print. The library raises its own errors (``bot.errors``,
``generators.errors``); :func:`main` turns them into a message and an exit code:
0 done, 1 runtime failure, 2 bad input.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from bot.cli.common import AppContext
from bot.errors import BotError
from bot.plugins import load_plugins
from generators.errors import GeneratorError, InvalidRequest, ModelUnavailable

COMMAND_MODULES = [
    "post",
    "config_cmd",
    "run",
    "status",
    "healthcheck",
    "topics",
    "posters",
    "login",
    "engagement",
    "train",
    "sample",
    "dataset",
    "generate",
    "models",
]

ROOT_HELP = """DSTRTD: distorted-realism images of nature, posted with a sourced caption
and printed as street posters.

\b
First command to try (no credentials needed, writes to state/outbox/):
    bot post --topic night-sky --dry-run
"""


@click.group(help=ROOT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="BOT_CONFIG",
    help="Settings file (default: ./bot.toml when present).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details to stderr.")
@click.version_option(package_name="dstrtd-bot", prog_name="bot")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    load_plugins()  # modules named in $BOT_PLUGINS register generators/publishers
    ctx.obj = AppContext(config_path=config_path)


for _module in COMMAND_MODULES:
    cli.add_command(importlib.import_module(f"bot.cli.{_module}").command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map errors to exit codes."""
    try:
        result = cli.main(args=argv, prog_name="bot", standalone_mode=False)
    except click.ClickException as exc:  # usage errors: exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except BotError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except (InvalidRequest, ModelUnavailable) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except GeneratorError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
