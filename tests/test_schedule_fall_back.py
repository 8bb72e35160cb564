"""The schedule across a daylight-saving change.

On the night clocks go back, a wall time happens twice (02:00-03:00 in
Europe/Berlin); the second occurrence carries ``fold=1``. Adding a timedelta to
such a datetime drops the fold, which moves it an hour *back*: looking for the
slot from there must still end.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

from bot.scheduling import cron_trigger, due_slot, slot_key, zone


def _due_within(seconds: float, *args, **kwargs):
    """Run ``due_slot`` in a thread; fail instead of hanging the suite."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(due_slot(*args, **kwargs)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "due_slot never returned (endless loop in the repeated DST hour)"
    return result[0]


def test_due_slot_in_the_repeated_hour_of_a_fall_back_night_returns() -> None:
    berlin = zone("Europe/Berlin")
    hourly = cron_trigger("0 * * * *", "Europe/Berlin")
    # 2026-10-25 01:05 UTC is 02:05 CET, the second 02:05 of that night.
    now = datetime(2026, 10, 25, 1, 5, tzinfo=timezone.utc)
    slot = _due_within(10, hourly, now, grace_seconds=600)
    assert slot is not None
    assert slot.astimezone(timezone.utc) == datetime(2026, 10, 25, 1, 0, tzinfo=timezone.utc)
    assert slot_key(slot, berlin) == "2026-10-25T02:00+01:00"
    # the first 02:00 (CEST) is a different slot: each real hour is posted once
    first = _due_within(10, hourly, datetime(2026, 10, 25, 0, 5, tzinfo=timezone.utc), grace_seconds=600)
    assert slot_key(first, berlin) == "2026-10-25T02:00+02:00"


def test_daily_slot_in_the_repeated_hour_with_a_long_grace_returns() -> None:
    daily = cron_trigger("30 2 * * *", "Europe/Berlin")
    now = datetime(2026, 10, 25, 3, 0, tzinfo=timezone.utc)  # 04:00 CET, both 02:30s passed
    slot = _due_within(10, daily, now, grace_seconds=6 * 3600)
    assert slot is not None and slot.astimezone(timezone.utc) == datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc)
