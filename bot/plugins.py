"""Plugin modules named in ``BOT_PLUGINS`` (comma-separated), imported at start-up.

A plugin registers generators or publishers on import, through the same
``register_generator`` / ``register_publisher`` calls the built-ins use. Entry
points (groups ``dstrtd.generators``, ``dstrtd.publishers``) need the plugin to
be installed; this variable also works for a module that is only on
``PYTHONPATH``: a local experiment, or the test doubles the daemon's tests load
into a real ``bot run`` subprocess.
"""

from __future__ import annotations

import importlib
import os
from typing import Mapping

from bot.errors import ConfigError

ENV_VAR = "BOT_PLUGINS"


def plugin_modules(environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [name.strip() for name in env.get(ENV_VAR, "").split(",") if name.strip()]


def load_plugins(environ: Mapping[str, str] | None = None) -> list[str]:
    """Import every module named in ``$BOT_PLUGINS``; returns their names.

    Raises ConfigError naming the module when one cannot be imported.
    """
    names = plugin_modules(environ)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"${ENV_VAR} names module {name!r}, which cannot be imported ({exc}); "
                "install it or add its folder to PYTHONPATH"
            ) from exc
    return names
