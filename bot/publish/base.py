"""The publisher interface and its registry.

A publisher sends one rendered post somewhere (Instagram, the local outbox)
and can later tell whether an earlier attempt for that post landed, which is
what makes publishing exactly-once across crashes: the pipeline records an
attempt before calling ``publish`` and calls ``find`` before any retry.
Built-ins register through :func:`register_publisher`, the path a plugin takes
(entry-point group ``dstrtd.publishers``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from bot.errors import BadInput

if TYPE_CHECKING:
    from bot.config import Settings


@dataclass
class Submission:
    """Everything a publisher needs for one attempt at one post."""

    post_id: str
    attempt_id: str
    image_path: Path  # the 1080x1350 sRGB JPEG the bot rendered itself
    caption: str
    metadata: dict[str, Any]
    # Ids of this post's earlier attempts, newest last: any of them may have landed.
    previous_attempt_ids: list[str] = field(default_factory=list)


@dataclass
class Publication:
    """Where a post landed."""

    publisher: str
    published_at: str
    media_id: str | None = None
    code: str | None = None
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Publisher(Protocol):
    name: str

    def check(self) -> None:
        """Raise :class:`bot.errors.BadInput` when configuration or credentials are
        missing or malformed, before any work is done. Never waits on stdin."""

    def find(self, submission: Submission) -> Publication | None:
        """Did any attempt for ``submission.post_id`` land? ``None`` means
        certainly not; raise ``PublishError(outcome_unknown=True)`` when it cannot tell."""

    def publish(self, submission: Submission) -> Publication:
        """Send the post. Raise ``PublishError`` (or ``PublishCoolDown``,
        ``PublishPaused``) on failure; ``outcome_unknown=True`` when it may have landed."""


PublisherFactory = Callable[["Settings"], Publisher]

_REGISTRY: dict[str, PublisherFactory] = {}
_BUILTIN_MODULES = ["bot.publish.outbox", "bot.publish.instagram"]
_loaded = False


def register_publisher(name: str, factory: PublisherFactory) -> None:
    _REGISTRY[name] = factory


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a built-in not written yet
            if exc.name != module:
                raise
    for entry_point in importlib.metadata.entry_points(group="dstrtd.publishers"):
        entry_point.load()
    _loaded = True


def publisher_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def resolve_publisher_name(settings: "Settings", *, dry_run: bool = False, name: str | None = None) -> str:
    """Which publisher a post goes to: an explicit name, else ``outbox`` for a
    dry run or when no Instagram credentials are configured, else ``instagram``."""
    chosen = name or settings.publish.publisher
    if name is not None and name not in publisher_names():  # a typo is refused even on a dry run
        raise BadInput(f"--publisher {name!r} is not a publisher; available: {', '.join(publisher_names())}")
    if dry_run:
        return "outbox"
    if chosen == "auto":
        return "instagram" if settings.has_instagram_credentials else "outbox"
    return chosen


def get_publisher(name: str, settings: "Settings") -> Publisher:
    _load_builtins()
    if name not in _REGISTRY:
        raise BadInput(f"unknown publisher {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](settings)
