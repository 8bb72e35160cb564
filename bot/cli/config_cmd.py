"""``bot config show``: the effective settings, secrets masked."""

from __future__ import annotations

import click

from bot.cli.common import AppContext, emit_json, pass_app


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
    """Print the effective settings with secrets masked.

    \b
    Examples:
        bot config show
        BOT_SCHEDULE_CRON='0 9 * * *' bot config show --json
    """
    data = app.settings.as_dict()
    if as_json:
        emit_json(data)
        return
    click.echo(f"# settings from: {data.pop('source')}")
    generators = data.pop("generators")
    for section, table in data.items():
        click.echo(f"[{section}]")
        for key, value in table.items():
            click.echo(f"{key} = {value!r}")
        click.echo()
    for name, table in generators.items():
        click.echo(f"[generators.{name}]")
        for key, value in table.items():
            click.echo(f"{key} = {value!r}")
        click.echo()
