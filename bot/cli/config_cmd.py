"""``bot config show``: the effective settings, secrets masked."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from bot.cli.common import AppContext, emit_json, pass_app
from bot.config import SECRET_KEYS, check_generator_tables


@click.group("config")
def command() -> None:
    """Inspect the settings (defaults -> bot.toml -> BOT_* variables).

    \b
    Examples:
        bot config show
        bot --config other.toml config show --json
    """


@command.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show(app: AppContext, as_json: bool) -> None:
    """Print the effective settings with secrets masked, as TOML (a table can
    be copied into bot.toml) or JSON.

    \b
    Examples:
        bot config show
        BOT_SCHEDULE_CRON='0 9 * * *' bot config show --json
    """
    from generators import generator_names, get_generator

    check_generator_tables(app.settings, generator_names(), get_generator)
    data = app.settings.as_dict()
    if as_json:
        emit_json(data)
        return
    click.echo(f"# settings from: {data.pop('source')}")
    generators = data.pop("generators")
    tables = [(section, table) for section, table in data.items()]
    tables += [(f"generators.{_toml_key(name)}", table) for name, table in generators.items()]
    for header, table in tables:
        click.echo(f"[{header}]")
        for key, value in table.items():
            # secrets are read from the environment only: commented out, so a copied table still loads
            comment = "# " if (header, key) in SECRET_KEYS else ""
            click.echo(f"{comment}{_toml_key(key)} = {_toml_value(value)}")
        click.echo()


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    """``value`` written as TOML. Python's repr (``False``, ``'...'``) made a
    section copied into bot.toml "not valid TOML"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    # JSON's string escapes are TOML's (ensure_ascii=False: no surrogate pairs)
    return json.dumps(str(value), ensure_ascii=False)
