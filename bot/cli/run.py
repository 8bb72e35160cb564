"""``bot run``: the daemon that posts on schedule (see bot/daemon.py and docs/daemon.md)."""

from __future__ import annotations

import logging
import sys

import click

from bot.cli.common import AppContext, pass_app


@click.command("run")
@click.option("--once", is_flag=True, help="Do what is due now (resume, retry, post a due slot, collect engagement), then exit.")
@pass_app
def command(app: AppContext, once: bool) -> int:
    """Post on the schedule of [schedule] and collect engagement, until SIGTERM/SIGINT.

    One daemon per state folder: a second `bot run` on the same state exits
    with status 1 naming the process that holds it. SIGTERM or Ctrl-C stops
    taking work, lets the current step finish (or leaves it resumable) and
    exits 0. Logs go to stdout, one line per event; the heartbeat is
    state/heartbeat.json (read by `bot status` and `bot healthcheck`).

    \b
    Examples:
        bot run
        BOT_SCHEDULE_CRON='0 9,18 * * *' BOT_SCHEDULE_TIMEZONE=UTC bot run
        BOT_SCHEDULE_CRON='*/10 * * * * *' bot run   # every 10 s (6 fields: seconds first), for a demo
        bot run --once                               # from cron or a systemd timer
    """
    from bot.daemon import Daemon

    # The daemon's events go to stdout, one line each, for `docker logs`.
    logging.basicConfig(
        level=logging.getLogger().level or logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    daemon = Daemon(app.settings, app.store)
    return daemon.run(once=once)
