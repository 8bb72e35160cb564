"""Which archived posts become posters, and where each poster's QR code leads.

Used by ``bot posters``: published posts only (a QR code should lead to
something that is online), filtered by topic, id and date, optionally the N
with the most engagement. When nothing is left, the error says which filter
emptied the list.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bot.config import Settings
from bot.errors import BadInput, ConfigError
from bot.posters import qr
from bot.posters.model import PosterItem
from bot.store import Store, parse_iso

CITY = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
TEMPLATE_FIELDS = ("city", "post_id", "topic")


@dataclass(frozen=True)
class Selection:
    topic: str | None = None
    post_ids: tuple[str, ...] = ()
    since: str | None = None
    top: int | None = None


def select_posts(store: Store, selection: Selection) -> list[dict[str, Any]]:
    """Published posts matching every filter; ranked by engagement with ``top``,
    otherwise oldest first. Posts deleted on Instagram (``media_gone_at``) are
    left out unless named with ``--post``. BadInput says which filter matched nothing."""
    since = parse_since(selection.since) if selection.since else None
    posts = store.posts(status="published")
    trail = [f"{len(posts)} published post(s) in {store.path}"]
    gone = [p for p in posts if p.get("media_gone_at")]
    if gone and not selection.post_ids:
        # Deleted on Instagram by the person: not for a wall unless named with --post.
        posts = [p for p in posts if not p.get("media_gone_at")]
        trail.append(f"{len(posts)} still on Instagram ({len(gone)} deleted there; name one with --post to use it)")
    if posts and selection.topic is not None:
        topics = sorted({p.get("topic") for p in posts})
        posts = [p for p in posts if p.get("topic") == selection.topic]
        trail.append(
            f"{len(posts)} with --topic {selection.topic}"
            + ("" if posts else f" (published topics: {', '.join(map(str, topics))})")
        )
    if posts and selection.post_ids:
        _check_ids(store, selection.post_ids)
        posts = [p for p in posts if p["id"] in selection.post_ids]
        trail.append(f"{len(posts)} of those with --post {' '.join(selection.post_ids)}")
    if posts and since is not None:
        posts = [p for p in posts if published_at(p) >= since]
        trail.append(f"{len(posts)} of those published since {selection.since} (--since)")
    if not posts:
        raise BadInput("no posts match: " + "; ".join(trail))
    if selection.top is not None:
        if selection.top < 1:
            raise BadInput(f"--top {selection.top}: must be 1 or more")
        posts = sorted(posts, key=lambda p: (-engagement_score(p), p["created_at"]))[: selection.top]
    return posts


def _check_ids(store: Store, post_ids: tuple[str, ...]) -> None:
    for post_id in post_ids:
        post = store.get_post(post_id)
        if post is None:
            raise BadInput(f"--post {post_id}: no post with that id in {store.path}")
        if post["status"] != "published":
            raise BadInput(
                f"--post {post_id}: the post is {post['status']!r}, not published; "
                "posters are made of published posts only"
            )


def parse_since(text: str) -> datetime:
    """``2026-03-01`` or an ISO timestamp; a date or naive time is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"--since {text!r} is not a date; use YYYY-MM-DD or an ISO timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def published_at(post: dict[str, Any]) -> datetime:
    return parse_iso((post.get("publication") or {}).get("published_at") or post["created_at"])


def engagement_score(post: dict[str, Any]) -> int:
    """Likes + comments of the latest engagement snapshot (0 without one)."""
    snapshots = post.get("engagement") or []
    if not snapshots:
        return 0
    latest = max(enumerate(snapshots), key=lambda pair: (str(pair[1].get("taken_at") or ""), pair[0]))[1]
    return int(latest.get("likes") or 0) + int(latest.get("comments") or 0)


def artwork_path(state_dir: Path, post: dict[str, Any]) -> Path:
    """The post's original PNG, or BadInput naming the post."""
    relative = (post.get("artefacts") or {}).get("original")
    if not relative:
        raise BadInput(f"post {post['id']} has no original artwork recorded (artefacts.original)")
    path = Path(state_dir) / relative
    if not path.is_file():
        raise BadInput(f"post {post['id']}: its artwork {str(path)!r} is missing from the archive")
    return path


def check_link(settings: Settings, city: str | None) -> None:
    """The link template and --city fit together (checked before any work)."""
    template = settings.posters.link_template
    if city is not None and not CITY.match(city):
        raise BadInput(f"--city {city!r}: use lower-case letters, digits and dashes, e.g. 'berlin' or 'san-francisco'")
    if not template:
        if city is not None:
            raise BadInput(
                f"--city {city}: posters.link_template is empty, so the QR codes lead to account.url and "
                "cannot carry a city; set it (BOT_POSTERS_LINK_TEMPLATE), e.g. "
                "'https://example.org/p/{city}/{post_id}'"
            )
        qr.check_scheme(settings.account.url, "account.url")
        return
    qr.check_scheme(template, "posters.link_template")
    fields = template_fields(template)
    if "city" in fields and city is None:
        raise BadInput(f"posters.link_template {template!r} needs a city: add --city (e.g. --city berlin)")
    if "city" not in fields and city is not None:
        raise BadInput(
            f"--city {city}: posters.link_template {template!r} has no {{city}} placeholder, so the QR codes "
            "cannot carry a city; add {city} to it (e.g. 'https://example.org/p/{city}/{post_id}') or leave out --city"
        )


def template_fields(template: str) -> set[str]:
    """The placeholders of ``posters.link_template``; ConfigError for a stray
    brace or a placeholder other than {city}, {post_id} and {topic}, found here
    rather than as a traceback from ``str.format`` halfway through the pages."""
    allowed = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(
            f"posters.link_template {template!r}: {exc} (write a literal brace as {{{{ or }}}}); "
            f"allowed placeholders: {allowed}"
        ) from None
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        names = ", ".join(repr("{" + name + "}") for name in sorted(unknown))
        raise ConfigError(f"posters.link_template {template!r}: unknown placeholder(s) {names}; allowed: {allowed}")
    return fields


def poster_url(settings: Settings, post: dict[str, Any], city: str | None) -> str:
    """Where the poster's QR code leads: the per-poster link when
    ``posters.link_template`` is set, otherwise the account."""
    template = settings.posters.link_template
    if not template:
        return settings.account.url
    return template.format(
        city=quote(city or "", safe=""),
        post_id=quote(post["id"], safe=""),
        topic=quote(str(post.get("topic")), safe=""),
    )


def poster_items(settings: Settings, posts: list[dict[str, Any]], city: str | None) -> list[PosterItem]:
    """One page per post: its archived original and its QR link."""
    return [
        PosterItem(
            image=artwork_path(settings.paths.state, post), url=poster_url(settings, post, city), post_id=post["id"]
        )
        for post in posts
    ]
