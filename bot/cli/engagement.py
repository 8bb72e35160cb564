"""``bot engagement``: counts per post and per topic and a chart;
``bot engagement collect`` takes the snapshots that are due."""

from __future__ import annotations

from pathlib import Path

import click

from bot.cli.common import AppContext, OutputFile, emit_json, pass_app
from bot.errors import BotError
from bot.engagement import collect_engagement, engagement_summary, plot_engagement


@click.group("engagement", invoke_without_command=True)
@click.option("--chart", type=OutputFile(".png"),
              help="Where to write the PNG chart (default: state/engagement.png).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
@click.pass_context
def command(ctx: click.Context, app: AppContext, chart: Path | None, as_json: bool) -> None:
    """Latest likes, comments and views per post and per topic, with growth
    since the first snapshot, and a PNG chart of engagement over time per topic.
    Posts deleted on Instagram are marked (and no longer read); growth is "-"
    until a post has two snapshots.

    \b
    Examples:
        bot engagement
        bot engagement --json
        bot engagement --chart /tmp/engagement.png
        bot engagement collect
    """
    if ctx.invoked_subcommand is not None:
        return
    summary = engagement_summary(app.store)
    summary["chart"] = str(plot_engagement(app.store, chart or Path(app.settings.paths.state) / "engagement.png"))
    if as_json:
        emit_json(summary)
        return
    click.echo(f"{'post':<34} {'topic':<14} {'likes':>6} {'+':>5} {'comments':>8} {'+':>5} {'views':>6} {'snaps':>5}")
    for row in summary["posts"]:
        click.echo(f"{row['post_id']:<34} {row['topic']:<14} {_n(row['likes']):>6} {_n(row['likes_growth']):>5} "
                   f"{_n(row['comments']):>8} {_n(row['comments_growth']):>5} {_n(row['views']):>6} "
                   f"{row['snapshots']:>5}{_note(row)}")
    if not summary["posts"]:
        click.echo("(no post published on Instagram yet; `bot engagement collect` reads the counts of those that are)")
    click.echo("")
    click.echo(f"{'topic':<14} {'posts':>5} {'likes':>6} {'+':>5} {'comments':>8} {'+':>5}")
    for slug, row in summary["topics"].items():
        click.echo(f"{slug:<14} {row['posts']:>5} {row['likes']:>6} {row['likes_growth']:>5} "
                   f"{row['comments']:>8} {row['comments_growth']:>5}")
    click.echo(f"\nChart: {summary['chart']}")


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _note(row: dict) -> str:
    """Why a row has no (new) numbers, so a blank is not taken for zero."""
    if row["gone_at"]:
        return f"  deleted on Instagram (found {row['gone_at']})"
    if row.get("missing_since"):
        return f"  Instagram says not found since {row['missing_since']}; asked again on the next runs"
    if not row["snapshots"]:
        return "  no snapshot yet (taken once the first instagram.engagement_schedule_hours slot has passed)"
    return ""


@command.command("collect")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshots taken as JSON.")
@pass_app
def collect(app: AppContext, as_json: bool) -> None:
    """Read the counts of every published post whose next slot has passed
    (instagram.engagement_schedule_hours after publication) and append them.
    Exits 1, keeping the snapshots taken, when Instagram refuses the login or
    wants a challenge solved (run `bot login`, then collect again), asks the
    bot to slow down, or some posts' counts could not be read (the next run
    tries them again).

    \b
    Examples:
        bot engagement collect
        bot engagement collect --json
    """
    taken = collect_engagement(app.settings, app.store)
    if as_json:
        emit_json(list(taken))
    else:
        for snap in taken:
            click.echo(f"{snap['post_id']}: {snap['likes']} likes, {snap['comments']} comments "
                       f"(slot {snap['slot_hours']:g} h)")
        click.echo(f"{len(taken)} snapshot(s) taken.")
    if not taken.complete:  # the snapshots taken are kept; the rest are due again on the next run
        why = [f"Instagram asked to slow down ({taken.stopped})"] if taken.stopped else []
        if taken.unread:
            why.append(f"the counts of {len(taken.unread)} post(s) could not be read ({', '.join(taken.unread)}; "
                       "the log says why)")
        raise BotError(f"{len(taken)} of {taken.due} due snapshot(s) taken: {'; '.join(why)}. The snapshots taken "
                       "are kept; the others are tried again on the next run")
