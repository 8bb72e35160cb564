"""``bot healthcheck``: exit 0 when the daemon's heartbeat is fresh and no job is
stuck, 1 otherwise (the container's HEALTHCHECK)."""

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
@click.option(
    "--max-busy",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds one job (a post, an engagement run) may go without progress before the daemon "
    "counts as stuck (default: schedule.grace_seconds, at least 3600).",
)
@pass_app
def command(app: AppContext, max_age: float | None, max_busy: float | None) -> int:
    """Say whether `bot run` is alive: it is running, its heartbeat is recent,
    and no job has gone without progress for longer than --max-busy (a post
    hanging on a network call keeps the heartbeat fresh, but posts nothing;
    a long generation reports every step, so it is not counted as stuck).

    Reads only state/heartbeat.json (never the store), so it is cheap and
    works while a post is being made. Exit 0 healthy, 1 not.

    \b
    Examples:
        bot healthcheck
        bot healthcheck --max-age 300
        bot healthcheck --max-busy 7200
    """
    from bot.daemon import default_max_age, default_max_busy, heartbeat_health, read_heartbeat

    settings = app.settings
    healthy, why = heartbeat_health(
        read_heartbeat(settings.paths.state),
        max_age_seconds=max_age if max_age is not None else default_max_age(settings),
        max_busy_seconds=max_busy if max_busy is not None else default_max_busy(settings),
    )
    click.echo(("healthy: " if healthy else "unhealthy: ") + why, err=not healthy)
    return 0 if healthy else 1
