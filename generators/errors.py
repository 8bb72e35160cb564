"""Errors raised by the generators package.

The CLI in ``bot`` turns these into messages and exit codes: ``InvalidRequest``
and ``UnknownGenerator`` are the caller's mistake (exit 2), ``ModelUnavailable``
is fixed by a command its message names, anything else is a runtime failure.
"""


class GeneratorError(Exception):
    """Base class of every error the generators package raises on purpose."""


class InvalidRequest(GeneratorError, ValueError):
    """A request argument is out of range. The message names the argument,
    its value and what is allowed."""


class UnknownGenerator(InvalidRequest):
    """No generator is registered under that name."""


class ModelUnavailable(GeneratorError):
    """The weights or trained model a request needs are not installed here.
    The message names the command that installs them."""


class CorruptModel(GeneratorError):
    """A model file exists but cannot be read, fails its checksum, or does
    not match its configuration."""


class DownloadFailed(GeneratorError):
    """A download broke off or the server refused it: a failure of the run
    (exit 1, retry later), not bad input and not a missing model."""
