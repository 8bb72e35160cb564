"""The pure parts of the daemon: when a slot is, what it is called, which topic fills it.

Nothing here touches the store, the clock or a thread, so every rule can be
tested with plain values.

Slots
-----
A *slot* is one nominal fire time of ``schedule.cron`` in ``schedule.timezone``
(without jitter). Its key is that time written in the configured zone, e.g.
``2026-11-23T18:00+01:00`` (seconds are added only for schedules that use a
seconds field). The daemon records the key in the store before a post starts,
so a restart, a clock jump or a misfire never makes two posts for one slot.

``schedule.cron`` takes the usual five crontab fields (minute hour day month
weekday, weekday 0 or 7 = Sunday as in crontab(5)) or six fields with a leading
seconds field (``*/5 * * * * *`` = every 5 seconds), for tests and demos.

Topic choice
------------
``least-recent`` (the default): the topic posted longest ago, never-posted
topics first, ties broken by slug.

``engagement``: Thompson sampling (Thompson 1933; Russo et al., "A Tutorial on
Thompson Sampling", 2018) over topics as a Bernoulli bandit. A published post
"did well" when its engagement a day after publication (likes + comments, see
:func:`engagement_score`) is above the median of all posts judged so far; topic ``t`` has a Beta(1 + wins_t, 1 + losses_t) posterior; each
choice draws one sample per topic and takes the largest. Topics with few posts
have wide posteriors and still get drawn, so the account keeps exploring. The
topic of the most recent post is left out when another is available, so the
feed never repeats itself twice in a row.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from bot.errors import ConfigError

STRATEGIES = ("least-recent", "engagement")

# crontab(5) numbers weekdays from Sunday (0 and 7); APScheduler 3 numbers them
# from Monday (its issue 286), so numbers are turned into names before parsing.
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def zone(name: str) -> tzinfo:
    """The time zone ``name`` (``schedule.timezone``), or a ConfigError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"schedule.timezone = {name!r} is not a known time zone; use an IANA name "
            "such as 'Europe/Berlin' or 'UTC'"
        ) from None


def _weekday_names(field_text: str) -> str:
    """Rewrite crontab weekday numbers (0 and 7 = Sunday) as the names APScheduler
    reads the same way crontab does; ranges become lists (``1-5`` -> ``mon,...,fri``)."""

    def one(token: str) -> str:
        parts = token.split("-")
        if not all(p.isdigit() for p in parts):
            return token  # names, '*', '*/2' or a step: APScheduler reads them as crontab does
        numbers = [int(p) for p in parts]
        if any(n > 7 for n in numbers) or len(numbers) > 2:
            raise ValueError(f"weekday {token!r} is not a number or range within 0-7")
        days = sorted({n % 7 for n in range(numbers[0], numbers[-1] + 1)})
        return ",".join(_CRON_WEEKDAYS[d] for d in days)

    return ",".join(one(token) for token in field_text.split(","))


def cron_trigger(expression: str, timezone_name: str, jitter_seconds: int = 0) -> CronTrigger:
    """An APScheduler trigger for ``schedule.cron`` (5 fields, or 6 with seconds first).

    Raises ConfigError naming the setting, its value and what is allowed.
    """
    fields = expression.split()
    names = ["minute", "hour", "day", "month", "day_of_week"]
    if len(fields) == 6:
        names = ["second"] + names
    elif len(fields) != 5:
        raise ConfigError(
            f"schedule.cron = {expression!r} has {len(fields)} fields; allowed: 5 "
            "(minute hour day month weekday, e.g. '0 18 * * *') or 6 with seconds first "
            "(e.g. '*/5 * * * * *')"
        )
    values = dict(zip(names, fields))
    if len(fields) == 5:
        values["second"] = "0"
    try:
        values["day_of_week"] = _weekday_names(values["day_of_week"])
        return CronTrigger(timezone=zone(timezone_name), jitter=jitter_seconds or None, **values)
    except ValueError as exc:
        raise ConfigError(f"schedule.cron = {expression!r} is not a valid cron expression: {exc}") from None


def slot_key(moment: datetime, tz: tzinfo) -> str:
    """The store key of the slot at ``moment``: ISO time in the configured zone,
    to the minute (to the second when the slot is not on a whole minute)."""
    local = moment.astimezone(tz)
    return local.isoformat(timespec="minutes" if local.second == 0 else "seconds")


def due_slot(
    trigger: CronTrigger, now: datetime, *, grace_seconds: float, jitter_seconds: float = 0
) -> datetime | None:
    """The latest nominal fire time ``t`` with ``t <= now <= t + grace + jitter``, or None.

    This is the slot a run at ``now`` belongs to: the fire itself (delayed by up
    to ``jitter`` seconds), a late one after a misfire or a restart within the
    grace period, never an older one. ``trigger`` must be built without jitter.
    """
    # APScheduler 3 triggers only look forward, so look back through growing
    # windows: a daily schedule needs a few steps, a 2-second one with hours of
    # grace does not walk thousands of fire times.
    limit = grace_seconds + jitter_seconds
    width = min(limit, 1.0)
    while True:
        latest = _latest_fire(trigger, now - timedelta(seconds=width), now)
        if latest is not None or width >= limit:
            return latest
        width = min(limit, width * 4)


def _latest_fire(trigger: CronTrigger, start: datetime, end: datetime) -> datetime | None:
    latest = None
    cursor = start
    while True:
        fire = trigger.get_next_fire_time(None, cursor)
        if fire is None or fire > end:
            return latest
        latest = fire
        # Step on in UTC: the trigger answers in the configured zone, and adding
        # a timedelta to the second occurrence of a repeated wall time (fold=1,
        # the night clocks go back) drops the fold and lands an hour earlier,
        # so the same fire time came back forever and the post job hung.
        cursor = fire.astimezone(timezone.utc) + timedelta(microseconds=1)


def previous_slot(trigger: CronTrigger, now: datetime, *, lookback: timedelta) -> datetime | None:
    """The latest nominal fire time at or before ``now`` within ``lookback`` (for
    reporting a slot missed beyond the grace period)."""
    return due_slot(trigger, now, grace_seconds=lookback.total_seconds())


@dataclass
class TopicChoice:
    """Topics in the order to try them (the first is the choice; the rest are
    fallbacks when a topic cannot be posted here), with the reasoning for the log."""

    order: list[str]
    strategy: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return self.order[0]


def _require(candidates: Iterable[str]) -> list[str]:
    slugs = list(dict.fromkeys(candidates))
    if not slugs:
        raise ConfigError("no topics to choose from; add topics to templates/topics.toml")
    return slugs


def choose_least_recent(candidates: Iterable[str], last_posted: Mapping[str, datetime]) -> TopicChoice:
    """Never-posted topics first (in the given order, i.e. file order), then the
    topic posted longest ago -- the same rule ``bot post`` uses without --topic."""
    slugs = _require(candidates)
    never = [s for s in slugs if s not in last_posted]
    posted = sorted((s for s in slugs if s in last_posted), key=lambda s: last_posted[s])
    order = never + posted
    chosen = order[0]
    when = last_posted.get(chosen)
    why = "never posted" if when is None else f"last posted {when.isoformat(timespec='minutes')}"
    return TopicChoice(
        order=order,
        strategy="least-recent",
        reason=f"least recently posted of {len(slugs)} topics ({why})",
        details={s: (last_posted[s].isoformat() if s in last_posted else None) for s in slugs},
    )


# Posts are compared at the same age: engagement keeps growing, so a week-old
# post would always beat a day-old one on its latest numbers.
JUDGE_AT_HOURS = 24.0


def engagement_score(post: Mapping[str, Any]) -> float | None:
    """One number for how well a published post did: likes + comments (+ saves
    and shares when recorded) in its first snapshot taken at least
    ``JUDGE_AT_HOURS`` after publication (``slot_hours`` of bot.engagement's
    snapshots; the latest snapshot when they carry no age). None when the post
    has no such snapshot yet: it is too young to judge."""
    snapshots = [s for s in post.get("engagement") or [] if isinstance(s, Mapping)]
    aged = [s for s in snapshots if isinstance(s.get("slot_hours"), (int, float))]
    if aged:
        ripe = [s for s in aged if s["slot_hours"] >= JUDGE_AT_HOURS]
        if not ripe:
            return None
        snapshot = min(ripe, key=lambda s: s["slot_hours"])
    elif snapshots:
        snapshot = snapshots[-1]
    else:
        return None
    counts = [snapshot.get(k) for k in ("likes", "comments", "saves", "shares")]
    numbers = [float(c) for c in counts if isinstance(c, (int, float)) and not isinstance(c, bool)]
    return sum(numbers) if numbers else None


def topic_outcomes(posts: Iterable[Mapping[str, Any]]) -> tuple[dict[str, tuple[int, int]], float | None]:
    """Per topic (wins, losses): a published post wins when its engagement score
    is above the median of all scored posts. Also returns that median. Posts
    deleted on Instagram (``media_gone_at``) are left out: their numbers stop
    at the deletion, and a person deleting a post says nothing about its topic."""
    scored = [
        (p["topic"], s)
        for p in posts
        if p.get("status") == "published" and not p.get("media_gone_at") and (s := engagement_score(p)) is not None
    ]
    if not scored:
        return {}, None
    median = statistics.median(s for _, s in scored)
    outcomes: dict[str, tuple[int, int]] = {}
    for topic, score in scored:
        wins, losses = outcomes.get(topic, (0, 0))
        outcomes[topic] = (wins + 1, losses) if score > median else (wins, losses + 1)
    return outcomes, median


def choose_thompson(
    candidates: Iterable[str],
    posts: Iterable[Mapping[str, Any]],
    rng: random.Random,
    last_topic: str | None = None,
) -> TopicChoice:
    """Thompson sampling over topics with a Beta(1 + wins, 1 + losses) posterior
    on "did well" (see the module docstring). Topics are ordered by their draw,
    largest first; the topic posted last goes to the end."""
    slugs = _require(candidates)
    outcomes, median = topic_outcomes(posts)
    draws = {}
    for slug in slugs:
        wins, losses = outcomes.get(slug, (0, 0))
        draws[slug] = rng.betavariate(1 + wins, 1 + losses)
    order = sorted(slugs, key=lambda s: (s == last_topic and len(slugs) > 1, -draws[s]))
    chosen = order[0]
    wins, losses = outcomes.get(chosen, (0, 0))
    skipped = f"; {last_topic} was posted last and goes last" if last_topic in slugs and len(slugs) > 1 else ""
    return TopicChoice(
        order=order,
        strategy="engagement",
        reason=(
            f"Thompson draw {draws[chosen]:.3f} from Beta(1+{wins}, 1+{losses}) was the highest of "
            f"{len(slugs)} topics (did well = engagement above the median {median}){skipped}"
        ),
        details={
            slug: {
                "wins": outcomes.get(slug, (0, 0))[0],
                "losses": outcomes.get(slug, (0, 0))[1],
                "draw": round(draws[slug], 4),
            }
            for slug in slugs
        },
    )


def choose_topic(
    strategy: str,
    candidates: Iterable[str],
    posts: list[Mapping[str, Any]],
    last_posted: Mapping[str, datetime],
    rng: random.Random,
) -> TopicChoice:
    """Pick the topic of the next post by ``schedule.strategy``."""
    if strategy == "least-recent":
        return choose_least_recent(candidates, last_posted)
    if strategy == "engagement":
        last_topic = max(last_posted, key=lambda s: last_posted[s]) if last_posted else None
        return choose_thompson(candidates, posts, rng, last_topic=last_topic)
    raise ConfigError(f"schedule.strategy = {strategy!r} is not known; allowed: {', '.join(STRATEGIES)}")


def retry_delay(attempt: int, backoff_seconds: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based):
    ``backoff * 2**(attempt - 1)`` — 30 s, 60 s, 120 s with the defaults."""
    return backoff_seconds * 2 ** (attempt - 1)
