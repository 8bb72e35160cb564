"""Errors the bot raises on purpose. The CLI maps them to messages and exit codes.

``BadInput`` (exit 2) is a mistake the user can fix in their command, files or
configuration; it is raised before anything is changed. ``BotError`` (exit 1)
is a runtime failure.
"""


class BotError(Exception):
    """A runtime failure with a message meant for a person (exit code 1)."""

    exit_code = 1


class BadInput(BotError):
    """Bad input: an argument, a file or a setting the user can correct (exit code 2).
    Raised before any state changes."""

    exit_code = 2


class ConfigError(BadInput):
    """bot.toml or a BOT_* variable is malformed or out of range."""


class TemplateError(BadInput):
    """A topic, caption or poster template is missing or broken."""


class CaptionTooLong(BadInput):
    """A rendered caption breaks one of Instagram's limits."""


class StoreError(BotError):
    """The store (state/bot.json) cannot be read or written."""


class StoreCorrupt(StoreError):
    """state/bot.json is not valid; it is kept as it is and never overwritten."""


class Busy(BotError):
    """Another process holds the lock this work needs."""


class UnfinishedPost(BotError):
    """A post for another topic is unfinished and must be finished first.

    Not bad input: the state changed under the caller (a manual ``bot post``
    beside the daemon, say), so trying again later is right (exit code 1)."""


class PublishError(BotError):
    """A publisher failed. ``retryable`` says whether trying again later may help."""

    def __init__(self, message: str, *, retryable: bool = True, outcome_unknown: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.outcome_unknown = outcome_unknown


class PublishCoolDown(PublishError):
    """The platform asked us to slow down; keep the post queued and wait ``seconds``."""

    def __init__(self, message: str, *, seconds: float):
        super().__init__(message, retryable=True)
        self.seconds = seconds


class PublishPaused(PublishError):
    """Publishing must stop until a person acts (a challenge, a suspended account)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


class MediaGone(PublishError):
    """Instagram says a post's media does not exist (deleted in the app or
    removed): asking again cannot help, unlike a network error or a 5xx."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)
