"""Publishers: where a rendered post goes (Instagram, or the local outbox)."""

from bot.publish.base import (
    Publication,
    Publisher,
    Submission,
    get_publisher,
    publisher_names,
    register_publisher,
    resolve_publisher_name,
)

__all__ = [
    "Publication",
    "Publisher",
    "Submission",
    "get_publisher",
    "publisher_names",
    "register_publisher",
    "resolve_publisher_name",
]
