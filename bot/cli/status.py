"""``bot status``: the daemon's heartbeat, the posts that need attention, and alerts."""

from __future__ import annotations

from typing import Any

import click

from bot.cli.common import AppContext, emit_json, pass_app

ATTENTION = ("planned", "generated", "rendered", "publishing", "cooling_down", "paused", "failed")


def collect_status(app: AppContext) -> dict[str, Any]:
    """Everything `bot status` shows, as plain data."""
    from bot.daemon import default_max_age, default_max_busy, heartbeat_health, read_heartbeat, recent_runs, slot_rows
    from bot.store import parse_iso, utcnow

    settings, store = app.settings, app.store
    heartbeat = read_heartbeat(settings.paths.state)
    healthy, why = heartbeat_health(heartbeat, max_age_seconds=default_max_age(settings),
                                    max_busy_seconds=default_max_busy(settings))
    age = None
    if heartbeat and heartbeat.get("last_tick"):
        try:
            age = round((utcnow() - parse_iso(heartbeat["last_tick"])).total_seconds(), 1)
        except (TypeError, ValueError):  # not a time, or one without a zone: heartbeat_health says so
            age = None
    everything = store.posts()  # one read of the store: it is the slow part after years of posts
    posts = [p for p in everything if p["status"] in ATTENTION]
    return {
        "daemon": {
            "healthy": healthy,
            "summary": why,
            "heartbeat_age_s": age,
            "heartbeat": heartbeat,
        },
        "schedule": {"cron": settings.schedule.cron, "timezone": settings.schedule.timezone, "strategy": settings.schedule.strategy},
        "attention": [
            {
                "id": p["id"],
                "topic": p.get("topic"),
                "status": p["status"],
                "updated_at": p.get("updated_at"),
                "retry_after": p.get("retry_after"),
                "error": (p.get("error") or {}).get("message") if isinstance(p.get("error"), dict) else p.get("error"),
            }
            for p in posts
        ],
        "published": sum(1 for p in everything if p["status"] == "published"),
        "slots": slot_rows(store)[:5],
        "runs": recent_runs(store, 5),
        "alerts": _alerts(heartbeat, healthy, why, posts),
    }


def _alerts(heartbeat: dict[str, Any] | None, healthy: bool, why: str, posts: list[dict[str, Any]]) -> list[str]:
    """What a person should act on, one sentence each."""
    alerts = []
    if heartbeat and heartbeat.get("status") == "running" and not healthy:
        alerts.append(f"the daemon looks dead or stuck: {why}")
    for post in posts:
        message = (post.get("error") or {}).get("message", "") if isinstance(post.get("error"), dict) else ""
        if post["status"] == "paused":
            alerts.append(f"post {post['id']} is paused ({message}); run `bot login`, then `bot post`")
        elif post["status"] == "failed":
            alerts.append(f"post {post['id']} failed and will not be retried ({message})")
    return alerts


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def command(app: AppContext, as_json: bool) -> None:
    """Show whether the daemon is alive, its next runs and last error, and the
    posts that are unfinished, cooling down, paused or failed.

    \b
    Examples:
        bot status
        bot status --json
    """
    data = collect_status(app)
    if as_json:
        emit_json(data)
        return
    daemon, heartbeat = data["daemon"], data["daemon"]["heartbeat"] or {}
    click.echo(f"daemon: {'healthy' if daemon['healthy'] else 'NOT HEALTHY'} ({daemon['summary']})")
    if heartbeat:
        click.echo(f"  status {heartbeat.get('status')}, pid {heartbeat.get('pid')}, last tick {heartbeat.get('last_tick')}")
        if heartbeat.get("stop_reason"):
            click.echo(f"  stop reason: {heartbeat['stop_reason']}")
        next_runs = heartbeat.get("next_runs")
        for job, when in (next_runs.items() if isinstance(next_runs, dict) else []):
            click.echo(f"  next {job}: {when}")
        for label in ("last_outcome", "last_error"):
            if heartbeat.get(label):
                item = heartbeat[label]
                if not isinstance(item, dict):  # a damaged heartbeat: show it as it is
                    click.echo(f"  {label.replace('_', ' ')}: {item}")
                    continue
                click.echo(
                    f"  {label.replace('_', ' ')}: {item.get('job')} {item.get('outcome', '')} "
                    f"post {item.get('post_id')} at {item.get('finished_at')}" + (f": {item['error']}" if item.get("error") else "")
                )
    schedule = data["schedule"]
    click.echo(f"schedule: {schedule['cron']!r} in {schedule['timezone']} ({schedule['strategy']})")
    click.echo(f"published posts: {data['published']}")
    if data["attention"]:
        click.echo("posts needing attention:")
        for post in data["attention"]:
            extra = f" until {post['retry_after']}" if post["status"] == "cooling_down" and post["retry_after"] else ""
            click.echo(f"  {post['id']}  {post['status']}{extra}" + (f"  {post['error']}" if post["error"] else ""))
    else:
        click.echo("posts needing attention: none")
    for slot in data["slots"]:
        click.echo(f"slot {slot['slot']}: {slot['status']} (attempts {slot.get('attempts')}, post {slot.get('post_id')})")
    for run in data["runs"]:  # newest last, as in the log
        post = f" post {run['post_id']}" if run.get("post_id") else ""
        error = f": {run['error']}" if run.get("error") else ""
        click.echo(f"run {run.get('finished_at')} {run.get('job')}: {run.get('outcome')}{post}{error}")
    for alert in data["alerts"]:
        click.echo(f"alert: {alert}")
