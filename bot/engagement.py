"""Engagement over time: likes, comments and views of each published post,
read on a schedule that thins out with age, appended to the post's record.

A post published at ``t`` has collection slots at ``t + h`` for each ``h`` in
``instagram.engagement_schedule_hours`` (1 h, 6 h, 24 h, 3 d, 7 d, 30 d by
default): interest in a post is front-loaded, so early readings are dense and
later ones sparse, which keeps requests (and the risk of being throttled) low.
A snapshot is due when a slot has passed and no snapshot was taken for it or a
later slot; a bot that was down for a while takes one snapshot for the latest
slot that passed rather than a burst of stale ones.

Snapshots are appended with ``store.append_to_post(post_id, "engagement", ...)``
and never overwritten. A post whose media Instagram says does not exist (deleted
in the app) is asked about again on later runs for ``GONE_AFTER`` (first
``media_missing_since``); if Instagram still says so then, it gets
``media_gone_at`` and ``media_gone_reason`` and is never asked about again:
otherwise it would stay due forever and be requested on every run, for months.
One answer is not enough, because a live post's counts would then be lost for
good on a single wrong "not found". A network error or a 5xx is not "gone";
that post is simply tried on the next run. Counts come from the
private ``media/<pk>/info/``
endpoint (``media_info_v1``: never cached, and unlike ``media_info`` it does
not fall back to the public web API on an error); business and creator
accounts also get the raw ``insights_media`` answer.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from bot.config import Settings
from bot.errors import BotError, MediaGone, PublishCoolDown, PublishError, PublishPaused
from bot.store import Store, iso, parse_iso, utcnow

log = logging.getLogger("bot.engagement")

# How long Instagram must keep saying a post's media does not exist before the
# post counts as deleted (see the module docstring).
GONE_AFTER = timedelta(hours=24)


# -- which posts are due -------------------------------------------------------------


def due_slot(post: dict[str, Any], schedule_hours: list[float], now: datetime) -> float | None:
    """The slot (hours after publication) a snapshot is due for, or None (also
    for a post whose media is gone: asking again would only risk throttling)."""
    published = _published_at(post)
    if published is None or post.get("media_gone_at"):
        return None
    passed = [h for h in sorted(schedule_hours) if published + timedelta(hours=h) <= now]
    if not passed:
        return None
    latest = passed[-1]
    taken = [s.get("slot_hours") for s in post.get("engagement", []) if s.get("slot_hours") is not None]
    if taken and max(taken) >= latest:
        return None
    return latest


def _published_at(post: dict[str, Any]) -> datetime | None:
    publication = post.get("publication") or {}
    if post.get("status") != "published" or publication.get("publisher") != "instagram":
        return None
    if not publication.get("media_id") or not publication.get("published_at"):
        return None
    return parse_iso(publication["published_at"])


# -- collecting ----------------------------------------------------------------------


class Collection(list):
    """The snapshots a collection run took (each with its ``post_id``), and
    what kept the others from being taken: ``unread``, the ids of posts whose
    counts could not be read (a network error, a server error), and
    ``stopped``, Instagram's slow-down answer that ended the run. Both used to
    be log lines only, and `bot engagement collect` exited 0 after them."""

    def __init__(self, taken: list[dict[str, Any]] | None = None, *, due: int = 0):
        super().__init__(taken or [])
        self.due = due
        self.unread: list[str] = []
        self.stopped: str | None = None

    @property
    def complete(self) -> bool:
        return not self.unread and self.stopped is None


def collect_engagement(
    settings: Settings,
    store: Store,
    *,
    now: datetime | None = None,
    stop: Callable[[], bool] | None = None,
) -> Collection:
    """Take the snapshots that are due; returns them (each with its ``post_id``)
    as a :class:`Collection`, which also says what could not be read.

    Every snapshot is stored as soon as it is taken, so stopping early loses
    none. ``stop`` (the daemon's shutdown flag) is asked before each post: a
    daemon back after weeks may have dozens of posts due, a few seconds of
    requests each, longer than a container's stop timeout. When Instagram
    asks to slow down, it stops and returns what it took (the next run
    carries on). When the login is refused or a challenge needs a
    person, it raises :class:`PublishPaused` saying so and that `bot login`
    fixes it: a run that could read nothing must not look like a quiet success.
    A post whose media is gone is recorded as gone (see the module docstring).
    """
    # 1. which posts are due (no network when none is)
    moment = now or utcnow()
    due = [(post, slot) for post in store.posts(status="published")
           if (slot := due_slot(post, settings.instagram.engagement_schedule_hours, moment)) is not None]
    if not due:
        return Collection()
    # 2. one logged-in session for all of them
    from bot.publish.instagram import InstagramPublisher

    publisher = InstagramPublisher(settings)
    publisher.check()
    taken = Collection(due=len(due))
    try:
        client = publisher.session()
        business = bool(getattr(publisher.account, "is_business", False))
        # 3. one snapshot per due post, appended
        for post, slot in due:
            if stop is not None and stop():
                log.info("engagement: stopping for shutdown after %d snapshot(s); the rest are taken on the next run",
                         len(taken))
                break
            try:
                snapshot = _snapshot(publisher, client, post, slot, business, moment)
            except MediaGone as exc:
                _note_missing(store, post, exc, moment)
                continue
            if snapshot is None:
                taken.unread.append(post["id"])
                continue
            if post.get("media_missing_since"):  # it was there after all
                store.update_post(post["id"], media_missing_since=None)
            store.append_to_post(post["id"], "engagement", snapshot)
            taken.append({"post_id": post["id"], **snapshot})
    except PublishCoolDown as exc:
        log.warning("engagement: stopped after %d snapshot(s): %s", len(taken), exc)
        taken.stopped = str(exc)
    except PublishPaused as exc:
        raise PublishPaused(f"engagement collection stopped after {len(taken)} snapshot(s), which are kept: {exc}") from None
    log.info("engagement: %d snapshot(s) taken, %d post(s) were due", len(taken), len(due))
    return taken


def _note_missing(store: Store, post: dict[str, Any], exc: MediaGone, moment: datetime) -> None:
    """Record a "media does not exist" answer: the first one starts the
    ``GONE_AFTER`` wait, one after it marks the post gone for good."""
    since = post.get("media_missing_since")
    if since is None:
        store.update_post(post["id"], media_missing_since=iso(moment))
        log.warning("engagement: Instagram says post %s's media does not exist (%s); asking again on later runs, "
                    "it counts as deleted if that still holds after %s", post["id"], exc, GONE_AFTER)
    elif moment - parse_iso(since) >= GONE_AFTER:
        store.update_post(post["id"], media_gone_at=iso(moment), media_gone_reason=str(exc))
        log.warning("engagement: post %s is gone from Instagram (%s, since %s); not asked about again",
                    post["id"], exc, since)


def _snapshot(publisher: Any, client: Any, post: dict[str, Any], slot: float, business: bool,
              moment: datetime) -> dict[str, Any] | None:
    from instagrapi.exceptions import MediaError

    from bot.publish.instagram import classify

    media_id = post["publication"]["media_id"]
    pk = str(post["publication"].get("extra", {}).get("media_pk") or media_id.split("_")[0])
    try:
        media = publisher._call("reading media counts", lambda c: c.media_info_v1(pk))
    except PublishError as exc:
        if isinstance(exc, (PublishCoolDown, PublishPaused, MediaGone)):
            raise
        log.warning("engagement: post %s (media %s): %s; skipped", post["id"], media_id, exc)
        return None
    insights = None
    if business:
        try:
            insights = client.insights_media(pk)
        except MediaError as exc:
            log.info("engagement: post %s: no insights (%s)", post["id"], exc)
        except Exception as exc:
            error = classify(exc, publisher.ig, configure_sent=False, action="reading insights")
            if isinstance(error, (PublishCoolDown, PublishPaused)):
                raise error from None
            log.info("engagement: post %s: no insights (%s)", post["id"], error)
    return {
        "taken_at": iso(moment),
        "slot_hours": slot,
        "media_id": media_id,
        "likes": int(media.like_count or 0),
        "comments": int(media.comment_count or 0),
        # views exist for videos and reels only; a photo reports 0
        "views": int(media.view_count) if media.view_count else None,
        "plays": int(media.play_count) if media.play_count else None,
        "insights": insights,
    }


# -- summaries -----------------------------------------------------------------------


def _growth(snapshots: list[dict[str, Any]], key: str) -> int | None:
    """Latest minus first snapshot; None with fewer than two snapshots, where
    nothing was measured (a "+0" read as "this post gained nothing")."""
    if len(snapshots) < 2:
        return None
    first, last = snapshots[0], snapshots[-1]
    if first.get(key) is None or last.get(key) is None:
        return None
    return last[key] - first[key]


def engagement_summary(store: Store) -> dict[str, Any]:
    """Latest counts and growth (latest minus first snapshot) per post and per
    topic. Every post published on Instagram is listed, also one without a
    snapshot yet (just published, or its reads failed so far): leaving it out
    looked as if it had never been posted. A post found gone from Instagram is
    listed with its ``gone_at``, so a person sees why it has no (new) numbers.
    Topic totals count only posts with snapshots."""
    posts: list[dict[str, Any]] = []
    topics: dict[str, dict[str, Any]] = defaultdict(lambda: {"posts": 0, "likes": 0, "comments": 0, "views": 0,
                                                             "likes_growth": 0, "comments_growth": 0, "snapshots": 0})
    for post in store.posts(status="published"):
        snapshots = sorted(post.get("engagement") or [], key=lambda s: s["taken_at"])
        gone_at = post.get("media_gone_at")
        if not snapshots and not gone_at and _published_at(post) is None:
            continue  # a dry run to the outbox, or a post of another publisher
        last = snapshots[-1] if snapshots else {}
        row = {
            "post_id": post["id"],
            "topic": post["topic"],
            "media_id": last.get("media_id") or (post.get("publication") or {}).get("media_id"),
            "url": (post.get("publication") or {}).get("url"),
            "snapshots": len(snapshots),
            "last_taken_at": last.get("taken_at"),
            "likes": last.get("likes"),
            "comments": last.get("comments"),
            "views": last.get("views"),
            "likes_growth": _growth(snapshots, "likes"),
            "comments_growth": _growth(snapshots, "comments"),
            "gone_at": gone_at,
            "missing_since": post.get("media_missing_since"),
        }
        posts.append(row)
        if not snapshots:
            continue
        topic = topics[post["topic"]]
        topic["posts"] += 1
        topic["snapshots"] += len(snapshots)
        for key in ("likes", "comments", "views", "likes_growth", "comments_growth"):
            topic[key] += row[key] or 0
    return {"posts": posts, "topics": {slug: dict(values) for slug, values in sorted(topics.items())}}


# Posts drawn per topic panel: after a year a topic has 60+ posts, and one line
# and legend entry each made an unreadable chart that took most of a minute.
CHART_POSTS_PER_TOPIC = 8


def chart_series(store: Store, per_topic: int = CHART_POSTS_PER_TOPIC) -> dict[str, dict[str, Any]]:
    """Per topic: its ``per_topic`` most recently published posts with
    snapshots, as (post id, hours since publication, likes, comments), oldest
    first, and ``total``, how many posts with snapshots the topic has."""
    series: dict[str, dict[str, Any]] = defaultdict(lambda: {"total": 0, "posts": []})
    for post in store.posts(status="published"):  # oldest first
        published = _published_at(post)
        snapshots = sorted(post.get("engagement") or [], key=lambda s: s["taken_at"])
        if published is None or not snapshots:
            continue
        hours = [(parse_iso(s["taken_at"]) - published).total_seconds() / 3600 for s in snapshots]
        entry = series[post["topic"]]
        entry["total"] += 1
        entry["posts"].append((post["id"], hours, [s.get("likes") or 0 for s in snapshots],
                               [s.get("comments") or 0 for s in snapshots]))
        del entry["posts"][:-per_topic]
    return dict(series)


# Where the time axis gets a labelled tick (the default snapshot ages).
_AGE_TICKS = {1: "1 h", 6: "6 h", 24: "1 d", 72: "3 d", 168: "1 w", 720: "30 d"}


def plot_engagement(store: Store, out_path: Path) -> Path:
    """A PNG with a row per topic: likes (left) and comments (right) of its
    most recent posts (``CHART_POSTS_PER_TOPIC``) against the time since
    publication. ``bot engagement --json`` has every post's numbers.

    Comments get their own panel because they run at about a tenth of the
    likes and sat flat near zero on a shared axis; time is on a log scale
    because snapshots are taken at 1 h ... 30 d, and on a linear axis the
    first day, where most of a post's likes come, was squeezed into a sliver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = chart_series(store)
    topics = sorted(series) or ["(no engagement yet)"]
    fig, axes = plt.subplots(len(topics), 2, figsize=(13, 2.8 * len(topics)), squeeze=False)
    for (ax_likes, ax_comments), topic in zip(axes, topics):
        entry = series.get(topic, {"total": 0, "posts": []})
        for post_id, hours, likes, comments in entry["posts"]:
            line, = ax_likes.plot(hours, likes, marker="o")
            ax_comments.plot(hours, comments, marker="o", color=line.get_color(), label=post_id)  # one legend, at the right
        shown = len(entry["posts"])
        title = topic if shown == entry["total"] else f"{topic} (latest {shown} of {entry['total']} posts)"
        for ax, what in ((ax_likes, "likes"), (ax_comments, "comments")):
            ax.set_title(f"{title}: {what}", fontsize="medium")
            ax.set_ylabel(what)
            ax.set_xlabel("time since publication")
            ax.set_xscale("symlog", linthresh=1)  # linear below 1 h, so a snapshot at 0 h still shows
            ax.set_xticks(list(_AGE_TICKS), list(_AGE_TICKS.values()))
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        if entry["posts"]:
            ax_comments.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=100)
    except OSError as exc:
        # a folder in the way, a file another user owns, a full disk: a message, not a traceback
        raise BotError(f"cannot write the chart {out_path}: {exc.strerror or exc}; "
                       "give another file with --chart, or fix that path") from exc
    finally:
        plt.close(fig)
    return out_path
