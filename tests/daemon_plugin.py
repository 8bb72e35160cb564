"""Test doubles loaded into a real ``bot run`` subprocess through ``BOT_PLUGINS=daemon_plugin``
(with ``tests/`` on ``PYTHONPATH``).

- generator ``daemon-test``: a 64x64 image that depends only on the seed, made
  in ``$DAEMON_TEST_SLEEP`` seconds (default 0) with a progress call every
  0.05 s, so a test can kill the daemon mid-post or stop it mid-generation.
  Every generation appends a line to ``$BOT_PATHS_STATE/generations.log``.
- publisher ``daemon-flaky``: the outbox publisher, but its first ``$DAEMON_TEST_FAILS``
  publish calls (counted in ``$BOT_PATHS_STATE/flaky-calls``, so the count
  survives restarts) raise a retryable PublishError before anything is sent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bot.errors import PublishError
from bot.publish import register_publisher
from bot.publish.outbox import OutboxPublisher
from generators import GenerationRequest, GenerationResult, ModelUnavailable, register_generator


def _state() -> Path:
    return Path(os.environ["BOT_PATHS_STATE"])


class SleepyGenerator:
    name = "daemon-test"

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def check(self, request: GenerationRequest) -> None:
        """No weights needed, unless a topic's options pretend they are missing."""
        if request.options.get("missing_weights"):
            raise ModelUnavailable("daemon-test weights are missing; run `bot models fetch daemon-test`")

    def generate(self, request: GenerationRequest) -> GenerationResult:
        with open(_state() / "generations.log", "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {request.seed}\n")
        seconds = float(os.environ.get("DAEMON_TEST_SLEEP", "0"))
        steps = max(1, int(seconds / 0.05))
        for step in range(steps):
            if seconds:
                time.sleep(0.05)
            if request.progress:
                request.progress(step + 1, steps, {})
        pixels = np.random.default_rng(request.seed).integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
        return GenerationResult(
            image=Image.fromarray(pixels),
            seed=request.seed,
            generator=self.name,
            parameters={"sleep": seconds},
            timings={"generate": seconds},
        )


class FlakyPublisher(OutboxPublisher):
    name = "daemon-flaky"

    def publish(self, submission):  # type: ignore[override]
        counter = _state() / "flaky-calls"
        calls = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(calls + 1))
        if calls < int(os.environ.get("DAEMON_TEST_FAILS", "0")):
            raise PublishError(f"injected failure {calls + 1}", retryable=True)
        return super().publish(submission)


register_generator("daemon-test", SleepyGenerator, "a sleepy test generator")
register_publisher("daemon-flaky", FlakyPublisher)
