"""Running the real ``bot run`` as a subprocess for the daemon tests.

The subprocess loads ``tests/daemon_plugin.py`` through ``BOT_PLUGINS`` (a fast
generator that can sleep, a publisher that can fail) and reads its topics from
a temporary templates folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

from support import write_test_templates  # noqa: E402  (tests/ is on sys.path)

def make_environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """Environment for a daemon on a fresh state folder under ``tmp_path``;
    ``settings`` are extra variables (``BOT_SCHEDULE_CRON=...``)."""
    templates = tmp_path / "templates"
    if not templates.exists():
        write_test_templates(templates, "daemon-test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env.update(
        BOT_PATHS_STATE=str(tmp_path / "state"),
        BOT_PATHS_TEMPLATES=str(templates),
        BOT_PLUGINS="daemon_plugin",
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH", "")])),
        BOT_POSTERS_SIZE="A5",  # the smallest page keeps rendering quick
        BOT_SCHEDULE_TIMEZONE="UTC",
        BOT_SCHEDULE_GRACE_SECONDS="120",
        BOT_SCHEDULE_HEARTBEAT_SECONDS="0.5",
        BOT_SCHEDULE_ENGAGEMENT_INTERVAL_MINUTES="0",
        BOT_PUBLISH_RETRY_BACKOFF_SECONDS="0.5",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


def cron_at(moment: datetime) -> str:
    """A six-field cron expression (seconds first) that fires once, at ``moment`` (UTC)."""
    moment = moment.astimezone(timezone.utc)
    return f"{moment.second} {moment.minute} {moment.hour} {moment.day} {moment.month} *"


def soon(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


class DaemonProcess:
    """``python -m bot run`` in the background, its output in a log file."""

    count = 0
    started: list["DaemonProcess"] = []

    def __init__(self, env: dict[str, str], *args: str):
        DaemonProcess.count += 1
        DaemonProcess.started.append(self)
        self.state = Path(env["BOT_PATHS_STATE"])
        self.log_path = self.state.parent / f"daemon-{DaemonProcess.count}.log"
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", "run", *args],
            env=env,
            cwd=self.state.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        """Poll ``condition`` until it is true; fail with the daemon's output otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.process.returncode}) before {what}:\n{self.output}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.output}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``signum`` and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no handler, no clean-up
        self.process.wait(timeout=30)
        self._log.close()


def heartbeat(state: Path) -> dict[str, Any]:
    path = state / "heartbeat.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def table(state: Path, name: str) -> list[dict[str, Any]]:
    """Rows of one table of the store (read directly, as another process would)."""
    path = state / "bot.json"
    if not path.exists():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get(name, {}).values())


def published(state: Path) -> list[dict[str, Any]]:
    return [p for p in table(state, "posts") if p["status"] == "published"]


def outbox(state: Path) -> list[str]:
    folder = state / "outbox"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def generations(state: Path) -> int:
    path = state / "generations.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_leftovers() -> None:
    """Kill every daemon a failed test left running."""
    while DaemonProcess.started:
        daemon = DaemonProcess.started.pop()
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)
        daemon._log.close()
