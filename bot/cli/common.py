"""What every command shares: the settings (read once), the store, JSON output
and a progress bar."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
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


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder this user creates or writes into, or None."""
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {str(existing)!r} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {str(existing)!r} is not writable by this user"
    return None


class OutputFolder(click.ParamType):
    """An output folder, checked before any work: not empty (an unset shell
    variable would otherwise mean the current folder), not a file, and
    creatable and writable by this user."""

    name = "folder"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        if not str(value).strip():
            self.fail("empty; give a folder path", param, ctx)
        path = Path(value).expanduser()
        problem = folder_problem(path)
        if problem:
            self.fail(f"{str(value)!r} {problem}", param, ctx)
        return path


class OutputFile(click.ParamType):
    """An output file with a fixed suffix whose folder can be created and written."""

    name = "file"

    def __init__(self, suffix: str):
        self.suffix = suffix

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        if not str(value).strip():
            self.fail(f"empty; give a file name ending in {self.suffix}", param, ctx)
        path = Path(value).expanduser()
        if path.suffix.lower() != self.suffix:
            self.fail(f"{str(value)!r} must be a file name ending in {self.suffix}", param, ctx)
        if path.is_dir():
            self.fail(f"{str(value)!r} is a folder; give a file name ending in {self.suffix}", param, ctx)
        problem = folder_problem(path.parent)
        if problem:
            self.fail(f"{str(value)!r}: folder {str(path.parent)!r} {problem}", param, ctx)
        return path


def emit_json(data: Any) -> None:
    """Print one JSON document on stdout (for ``--json``)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@contextmanager
def progress_bar(label: str, *, enabled: bool | None = None, in_bytes: bool = False) -> Iterator[Callable[[int, int, dict], None]]:
    """A progress callback ``(step, total, info)`` drawing a tqdm bar on stderr
    when it is a terminal (or when ``enabled``), showing e.g. the current loss.
    ``in_bytes``: the steps are bytes (downloads, hashing), shown as MB and MB/s
    (decimal, as the sizes in the docs)."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    units = {"unit": "B", "unit_scale": True} if in_bytes else {}
    bar = tqdm(total=None, desc=label, disable=not show, file=sys.stderr, dynamic_ncols=True, **units)

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
