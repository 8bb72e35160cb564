"""``bot topics``: the topics, when each was last posted and whether its model is
here; ``bot topics show SLUG`` previews a topic's caption with its counts."""

from __future__ import annotations

from typing import Any

import click

from bot.captions import (
    MAX_CHARACTERS,
    MAX_HASHTAGS,
    MAX_MENTIONS,
    caption_stats,
    check_caption,
)
from bot.cli.common import AppContext, emit_json, pass_app
from bot.config import Settings
from bot.errors import CaptionTooLong
from bot.pipeline import topic_caption
from bot.store import iso
from bot.topics import Topic, get_topic, load_topics
from generators import GeneratorError, ModelUnavailable, UnknownGenerator
from generators import get_generator


@click.group("topics", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
@click.pass_context
def command(ctx: click.Context, app: AppContext, as_json: bool) -> None:
    """List the topics of templates/topics.toml: when each was last posted,
    its generator and model, and whether that model is installed here.

    \b
    Examples:
        bot topics
        bot topics --json
        bot topics show coral
    """
    if ctx.invoked_subcommand is not None:
        return
    topics = load_topics(app.settings.paths.templates)
    last = app.store.last_posted()
    rows = [_topic_row(app.settings, topic, last.get(topic.slug)) for topic in topics.values()]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        model = f"{row['generator']}/{row['model']}" if row["model"] else row["generator"]
        posted = row["last_posted"] or "never posted"
        click.echo(f"{row['slug']:<14} {row['name']:<34} {posted:<26} {model:<22} {row['availability']}")


@command.command("show")
@click.argument("slug")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show(app: AppContext, slug: str, as_json: bool) -> None:
    """Preview the caption of topic SLUG with its character, hashtag and
    mention counts against Instagram's limits (exit 2 when one is broken).

    \b
    Examples:
        bot topics show coral
        bot topics show night-sky --json
    """
    settings = app.settings
    topic = get_topic(load_topics(settings.paths.templates), slug)
    caption = topic_caption(settings, topic, topic.generator)
    stats = caption_stats(caption)
    problem = _limit_problem(caption)
    if as_json:
        emit_json({
            "slug": topic.slug,
            "caption": caption,
            "stats": stats,
            "limits": {"characters": MAX_CHARACTERS, "hashtags": MAX_HASHTAGS, "mentions": MAX_MENTIONS},
            "within_limits": problem is None,
            "problem": problem,
            "sources": [{"text": f.text, "source": f.source, "url": f.url} for f in topic.facts],
        })
    else:
        click.echo(caption)
        click.echo("\n---")
        click.echo(
            f"{stats['characters']:,}/{MAX_CHARACTERS:,} characters, "
            f"{stats['hashtags']}/{MAX_HASHTAGS} hashtags, {stats['mentions']}/{MAX_MENTIONS} mentions"
        )
        for fact in topic.facts:
            click.echo(f"source: {fact.source}: {fact.url}")
    if problem is not None:
        check_caption(caption)  # raises CaptionTooLong: exit 2 with the message


def _limit_problem(caption: str) -> str | None:
    try:
        check_caption(caption)
    except CaptionTooLong as exc:
        return str(exc)
    return None


def _topic_row(settings: Settings, topic: Topic, last_posted: Any) -> dict[str, Any]:
    available, availability = _availability(settings, topic)
    return {
        "slug": topic.slug,
        "name": topic.name,
        "generator": topic.generator,
        "model": topic.model,
        "last_posted": iso(last_posted) if last_posted else None,
        "available": available,
        "availability": availability,
    }


def _availability(settings: Settings, topic: Topic) -> tuple[bool, str]:
    """Ask the topic's generator whether it could run here (its ``check``
    raises before any work), and say what fixes it when not."""
    try:
        get_generator(topic.generator, settings.generator_config(topic.generator)).check(topic.request())
    except UnknownGenerator:
        return False, f"unknown generator {topic.generator!r}"
    except ModelUnavailable as exc:
        return False, f"missing: {exc}"
    except GeneratorError as exc:
        return False, f"error: {exc}"
    except ImportError as exc:  # a built-in generator module not installed (yet)
        return False, f"unknown generator {topic.generator!r} ({exc})"
    return True, "ready"
