"""What every command shares: the settings (read once), the store, JSON output
and a progress bar."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from bot.config import Settings, load_settings
from bot.store import Store


class AppContext:
    """Carried in ``click.Context.obj``: settings and store, built on first use
    so that ``bot --help`` works even with a broken bot.toml."""

    def __init__(self, config_path: str | None = None):
        self.config_path = config_path
        self._settings: Settings | None = None
        self._store: Store | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings.paths.state)
        return self._store


pass_app = click.make_pass_decorator(AppContext)


def emit_json(data: Any) -> None:
    """Print one JSON document on stdout (for ``--json``)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@contextmanager
def progress_bar(label: str, *, enabled: bool | None = None) -> Iterator[Callable[[int, int, dict], None]]:
    """A progress callback ``(step, total, info)`` drawing a tqdm bar on stderr
    when it is a terminal (or when ``enabled``), showing e.g. the current loss."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    bar = tqdm(total=None, desc=label, disable=not show, file=sys.stderr, dynamic_ncols=True)

    def update(step: int, total: int, info: dict) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = step
        if info:
            bar.set_postfix({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in info.items()})
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
