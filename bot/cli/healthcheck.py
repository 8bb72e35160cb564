"""``bot healthcheck``: exit 0 when the daemon's heartbeat is fresh, 1 otherwise (the container's HEALTHCHECK)."""

from __future__ import annotations

import click

from bot.cli.common import AppContext, pass_app


@click.command("healthcheck")
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds after which the heartbeat is stale (default: 3 x schedule.heartbeat_seconds).",
)
@pass_app
def command(app: AppContext, max_age: float | None) -> int:
    """Say whether `bot run` is alive: its heartbeat is recent and it is running.

    Reads only state/heartbeat.json (never the store), so it is cheap and
    works while a post is being made. Exit 0 healthy, 1 not.

    \b
    Examples:
        bot healthcheck
        bot healthcheck --max-age 300
    """
    from bot.daemon import default_max_age, heartbeat_health, read_heartbeat

    limit = max_age if max_age is not None else default_max_age(app.settings)
    healthy, why = heartbeat_health(read_heartbeat(app.settings.paths.state), max_age_seconds=limit)
    click.echo(("healthy: " if healthy else "unhealthy: ") + why, err=not healthy)
    return 0 if healthy else 1
