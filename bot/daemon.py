"""``bot run``: the long-lived process that posts on a schedule and collects engagement.

Two APScheduler (3.x) jobs come from ``[schedule]``: the *post* job on a cron
trigger in the configured time zone (with optional jitter), and the
*engagement* job on an interval. Both call library code the CLI also uses
(:func:`bot.pipeline.run_post`, ``bot.engagement.collect_engagement``); the
daemon adds only the when, the which topic and the try-again.

Exactly one post per slot
-------------------------
The store, not the scheduler, knows whether a slot was posted. Before a post
starts, its slot key (see :mod:`bot.scheduling`) is claimed in the ``slots``
table inside a store transaction; a slot that already has a row is never
started again, whatever the clock or the scheduler says. So a restart, a clock
jump backwards or a misfire cannot post twice, and a second daemon is refused
by the ``daemon`` lock. The scheduler keeps its jobs in memory, so a machine
that was off at the slot time is handled at start-up: the latest slot within
``schedule.grace_seconds`` that has no row is posted once; older missed slots
are not (never one post per missed slot).

Slot rows move through ``started -> done``; on failure ``retrying`` (a one-off
retry job after ``publish.retry_backoff_seconds * 2**(n-1)``) until
``publish.max_attempts`` runs, then ``failed``; ``paused`` when a person must
act (an Instagram challenge); ``interrupted`` when a shutdown stopped a post
mid-way (not counted as an attempt); ``expired`` when the daemon came back too
late to finish it (the unfinished post is then finished by the next slot, as
``bot post`` would). A run killed mid-post (``kill -9``) leaves ``started``:
the next start resumes that post, and the pipeline finishes it exactly once.

Every job run is recorded in the ``runs`` table (job, outcome, duration, post
id, error) and in ``state/heartbeat.json``, which the container's health check
and ``bot status`` read, also when the store fails around a post (claiming the
slot, marking it done); when the store cannot take even the run's row, the log
says what it would have held. One failing job never stops the scheduler.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import random
import signal
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot import scheduling
from bot.config import Settings
from bot.errors import BadInput, ConfigError
from bot.store import Store, atomic_write_text, exclusive, iso, parse_iso, utcnow

log = logging.getLogger("bot.daemon")

HEARTBEAT_FILE = "heartbeat.json"
# The ``runs`` table is the daemon's job log (the full log is on stdout): keep
# its newest rows only. The hourly engagement job alone adds 8,760 rows a year,
# and every store write rewrites the whole file.
RUNS_KEPT = 2000
# A job running longer than this is stuck, whatever the grace period says.
MIN_BUSY_LIMIT_SECONDS = 3600.0
# Slot statuses after which the slot is never started again.
SLOT_FINAL = frozenset({"done", "failed", "paused", "expired"})
# Post statuses the daemon may mark failed after its last attempt: nothing was
# sent yet. A post in "publishing" may have landed and is left for `find`.
_NOT_SENT = frozenset({"planned", "generated", "rendered"})


class ShutdownRequested(BaseException):
    """Raised from the progress callback when SIGTERM/SIGINT arrived during
    generation. A BaseException (like KeyboardInterrupt) so the pipeline's
    error handling does not count it as a failure of the step: the post keeps
    its state and the next start resumes it."""


# -- heartbeat ----------------------------------------------------------------


def heartbeat_path(state_dir: Path) -> Path:
    return Path(state_dir) / HEARTBEAT_FILE


# What a heartbeat file that is there but damaged (cut short, hand-edited) reads as:
# a daemon in an unknown state, never a healthy one.
UNREADABLE_HEARTBEAT: dict[str, Any] = {"status": "unreadable", "last_tick": None}


def read_heartbeat(state_dir: Path) -> dict[str, Any] | None:
    """The daemon's last heartbeat; None when there is none, and
    ``UNREADABLE_HEARTBEAT`` when the file is not a JSON object (a list used
    to reach ``.get`` and end `bot healthcheck` in a traceback)."""
    try:
        data = json.loads(heartbeat_path(state_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return dict(UNREADABLE_HEARTBEAT)
    return data if isinstance(data, dict) else dict(UNREADABLE_HEARTBEAT)


def heartbeat_health(
    heartbeat: dict[str, Any] | None,
    *,
    max_age_seconds: float,
    max_busy_seconds: float | None = None,
    now: datetime | None = None,
) -> tuple[bool, str]:
    """(healthy, why): healthy when a running daemon ticked within
    ``max_age_seconds`` and none of its jobs has gone ``max_busy_seconds``
    without progress. The heartbeat is written by the main thread, so it keeps
    ticking while a job hangs (a network call that never returns, a deadlock):
    only ``busy`` shows that. A long job that reports progress (a CPU
    generation reports every step) is not stuck, however long it runs."""
    if heartbeat is None:
        return False, "no heartbeat file: the daemon has not started here"
    status = heartbeat.get("status")
    try:
        age = ((now or utcnow()) - parse_iso(heartbeat["last_tick"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return False, "the heartbeat file has no valid last_tick"
    if status != "running":
        return False, f"the daemon is {status} (pid {heartbeat.get('pid')}, {age:.0f} s ago)"
    if age > max_age_seconds:
        return False, f"the heartbeat is {age:.0f} s old (limit {max_age_seconds:.0f} s): the daemon is stuck or gone"
    if age < -max_age_seconds:
        # a running daemon rewrites last_tick with the current clock every
        # heartbeat_seconds, so a tick this far ahead means it has not ticked
        # since the clock was set back
        return False, (f"the heartbeat is dated {-age:.0f} s in the future (limit {max_age_seconds:.0f} s): "
                       "the clock was set back and the daemon has not ticked since; it is stuck or gone")
    busy = _busy_jobs(heartbeat, now or utcnow(), max(age, 0.0))
    if max_busy_seconds is not None:
        for job in busy:
            if job.quiet > max_busy_seconds:
                return False, (f"the {job.name} job has made no progress for {job.quiet:.0f} s (running for "
                               f"{job.running:.0f} s, since {job.since}; limit {max_busy_seconds:.0f} s): it is stuck; "
                               "restart the daemon (the post resumes where it stopped)")
    doing = "; ".join(f"{job.name} job running for {job.running:.0f} s" for job in busy) or "idle"
    return True, f"the daemon (pid {heartbeat.get('pid')}) ticked {age:.0f} s ago ({doing})"


class BusyJob(NamedTuple):
    name: str
    since: str
    running: float  # seconds since the job started
    quiet: float  # seconds since its last progress report (or its start)


def _busy_jobs(heartbeat: dict[str, Any], now: datetime, age: float) -> list[BusyJob]:
    """Each job the heartbeat says is running. ``running_s`` and ``quiet_s``
    come from the daemon's monotonic clock at its last tick, so the heartbeat's
    ``age`` is added; a heartbeat written before they existed gives only
    ``since``, and the wall-clock time since then serves for both."""
    found = []
    for job, about in sorted((heartbeat.get("busy") or {}).items()):
        try:
            since = about["since"]
            if isinstance(about.get("running_s"), (int, float)):
                running = float(about["running_s"]) + age
            else:
                running = (now - parse_iso(since)).total_seconds()
            quiet = float(about["quiet_s"]) + age if isinstance(about.get("quiet_s"), (int, float)) else running
            found.append(BusyJob(job, since, running, quiet))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def default_max_age(settings: Settings) -> float:
    return 3 * settings.schedule.heartbeat_seconds


def default_max_busy(settings: Settings) -> float:
    """How long one job may go without progress before the daemon counts as
    stuck: the grace period (a post silent that long has outlived its slot),
    at least an hour."""
    return max(float(settings.schedule.grace_seconds), MIN_BUSY_LIMIT_SECONDS)


# -- the daemon ---------------------------------------------------------------


class Daemon:
    """The scheduler, its jobs, the slot bookkeeping and the heartbeat.

    ``run()`` blocks until SIGTERM/SIGINT (or :meth:`stop`); ``run(once=True)``
    does what is due now (resume or retry a slot, post a due slot, collect
    engagement) and returns, for cron-style use.
    """

    def __init__(self, settings: Settings, store: Store, *, rng: random.Random | None = None):
        self.settings = settings
        self.store = store
        self.rng = rng or random.Random()
        self.state_dir = Path(settings.paths.state)
        self._stop = threading.Event()
        self._stop_reason = ""
        self._post_lock = threading.Lock()
        self._heartbeat_lock = threading.RLock()  # re-entrant: a signal handler may beat mid-beat
        self._scheduler: BackgroundScheduler | None = None
        self._heartbeat: dict[str, Any] = {}
        self._busy: dict[str, dict[str, Any]] = {}  # job -> since, slot: what runs now
        self._busy_started: dict[str, float] = {}  # job -> time.monotonic() at its start
        self._busy_progress: dict[str, float] = {}  # job -> time.monotonic() at its last progress report
        self._busy_lock = threading.Lock()
        self._last_failed = False
        # 1. check inputs before anything runs
        self._check_settings()

    # 1. check inputs ------------------------------------------------------------

    def _check_settings(self) -> None:
        sched = self.settings.schedule
        self.zone = scheduling.zone(sched.timezone)
        self.nominal = scheduling.cron_trigger(sched.cron, sched.timezone)
        self.trigger = scheduling.cron_trigger(sched.cron, sched.timezone, sched.jitter_seconds)
        checks = [
            (sched.strategy in scheduling.STRATEGIES, "strategy", sched.strategy, f"one of {', '.join(scheduling.STRATEGIES)}"),
            (sched.jitter_seconds >= 0, "jitter_seconds", sched.jitter_seconds, "0 or more"),
            (sched.grace_seconds >= 0, "grace_seconds", sched.grace_seconds, "0 or more"),
            (sched.heartbeat_seconds > 0, "heartbeat_seconds", sched.heartbeat_seconds, "more than 0"),
            (sched.engagement_interval_minutes >= 0, "engagement_interval_minutes", sched.engagement_interval_minutes, "0 (off) or more"),
            (self.settings.publish.max_attempts >= 1, "publish.max_attempts", self.settings.publish.max_attempts, "1 or more"),
            (self.settings.publish.retry_backoff_seconds >= 0, "publish.retry_backoff_seconds", self.settings.publish.retry_backoff_seconds, "0 or more"),
        ]
        for ok, name, value, allowed in checks:
            if not ok:
                name = name if "." in name else f"schedule.{name}"
                raise ConfigError(f"{name} = {value!r} is not allowed; allowed: {allowed}")

    # 2.-6. run ------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Run until stopped (exit status 0), or once (1 when a due post failed)."""
        # 2. one daemon per state folder (raises Busy, exit 1, naming the holder)
        with exclusive(self.state_dir, "daemon", "bot run --once" if once else "bot run"):
            self._beat(status="starting", started_at=iso(utcnow()), pid=os.getpid(), stop_reason=None, stopped_at=None)
            log.info(
                "daemon: started (pid %d, state %s, cron %r in %s, strategy %s%s)",
                os.getpid(), self.state_dir, self.settings.schedule.cron, self.settings.schedule.timezone,
                self.settings.schedule.strategy, ", once" if once else "",
            )
            if once:
                return self._run_once()
            return self._run_forever()

    def stop(self, reason: str) -> None:
        """Stop taking new work; the running step finishes or is left resumable."""
        if not self._stop.is_set():
            self._stop_reason = reason
            log.info("daemon: stopping (%s); the current step finishes or is left resumable", reason)
        self._stop.set()

    def _run_once(self) -> int:
        self._catch_up(include_future_retries=False)
        self._engagement_job()
        self._beat(status="stopped", stopped_at=iso(utcnow()), stop_reason="--once finished")
        return 1 if self._last_failed else 0

    def _run_forever(self) -> int:
        # 3. signals: stop taking work, finish or park the current step, exit 0
        self._install_signal_handlers()
        self._warm_up()
        # 4. the scheduler with its two jobs; the catch-up runs as a job so the
        #    heartbeat keeps ticking during a long post
        scheduler = BackgroundScheduler(
            timezone=self.zone,
            executors={"default": ThreadPoolExecutor(max_workers=3)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._scheduler = scheduler
        scheduler.add_listener(self._on_job_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        scheduler.add_job(
            self._post_job, self.trigger, id="post", name="post",
            misfire_grace_time=max(1, int(self.settings.schedule.grace_seconds)),
        )
        minutes = self.settings.schedule.engagement_interval_minutes
        if minutes > 0:
            scheduler.add_job(
                self._engagement_job, IntervalTrigger(seconds=minutes * 60, timezone=self.zone),
                id="engagement", name="engagement", misfire_grace_time=None,
            )
        scheduler.add_job(self._catch_up, DateTrigger(utcnow()), id="catch-up", name="catch-up", misfire_grace_time=None)
        scheduler.start()
        self._beat(status="running")
        # 5. the heartbeat, every heartbeat_seconds, until a signal arrives
        while not self._stop.wait(self.settings.schedule.heartbeat_seconds):
            self._beat()
        # 6. shut down in order: no new jobs, wait for the running one, record why
        self._beat(status="stopping", stop_reason=self._stop_reason)
        scheduler.shutdown(wait=True)
        self._beat(status="stopped", stopped_at=iso(utcnow()), stop_reason=self._stop_reason)
        log.info("daemon: stopped (%s)", self._stop_reason)
        return 0

    def _warm_up(self) -> None:
        """Import the pipeline and the generator plugins (torch) now, not inside
        the first slot, so that a post starts on time. A broken plugin is logged
        here and reported again by the post that needs it."""
        try:
            import bot.pipeline  # noqa: F401
            from generators import generator_names

            log.info("daemon: generators available: %s", ", ".join(generator_names()))
        except Exception as exc:  # reported again, and recorded, by the first post
            log.error("daemon: loading the pipeline or generators failed: %s: %s", type(exc).__name__, exc)

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._stop.is_set():
                # A second signal: the person means it. Every step is resumable.
                log.warning("daemon: second %s, exiting now; an unfinished post resumes on the next start", name)
                self._beat(status="stopped", stopped_at=iso(utcnow()), stop_reason=f"forced by a second {name}")
                os._exit(1)
            self.stop(f"received {name}")

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    @contextlib.contextmanager
    def _running(self, job: str, **about: Any) -> Iterator[None]:
        """Mark ``job`` as running in the heartbeat (``busy``) for the block, so
        that `bot healthcheck` tells a daemon stuck in a job from an idle one."""
        with self._busy_lock:
            self._busy[job] = {"since": iso(utcnow()), **about}
            self._busy_started[job] = self._busy_progress[job] = time.monotonic()
        self._beat()
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy.pop(job, None)
                self._busy_started.pop(job, None)
                self._busy_progress.pop(job, None)
            self._beat()

    # the post job -------------------------------------------------------------------

    def _post_job(self) -> None:
        """The cron job: post the slot this fire belongs to."""
        # At least a minute of window: this fire is itself the evidence that a
        # slot is due, even when a busy machine ran it a little late.
        slot_time = scheduling.due_slot(
            self.nominal, utcnow(),
            grace_seconds=max(60, self.settings.schedule.grace_seconds),
            jitter_seconds=self.settings.schedule.jitter_seconds,
        )
        if slot_time is None:  # a fire outside any slot window (should not happen)
            self._record_run("post", started=time.monotonic(), outcome="no-slot")
            return
        self._post_slot(scheduling.slot_key(slot_time, self.zone), reason="schedule")

    def _catch_up(self, include_future_retries: bool = True) -> None:
        """At start-up: resume a slot a crash or shutdown left, re-arm retries,
        and post the latest slot within the grace period if it has no row.
        A store failure here is recorded like any job's, not left to APScheduler."""
        started = time.monotonic()
        try:
            self._catch_up_slots(include_future_retries)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            self._last_failed = True
            log.error("daemon: catching up on slots failed: %s; the next start tries again", message)
            self._record_run("catch-up", started=started, outcome="failed", error=message)

    def _catch_up_slots(self, include_future_retries: bool) -> None:
        now = utcnow()
        grace = timedelta(seconds=self.settings.schedule.grace_seconds)
        for row in sorted(self.store.rows("slots"), key=lambda r: r["slot"]):
            if row["status"] in SLOT_FINAL:
                continue
            if row["status"] == "retrying":
                when = parse_iso(row["next_retry_at"])
                if now > when + grace:
                    self._expire(row, f"its retry was due at {row['next_retry_at']}, more than the grace period ago")
                elif when > now and include_future_retries:
                    self._schedule_retry(row["slot"], when)
                elif when <= now:
                    self._post_slot(row["slot"], reason="retry")
            elif now - parse_iso(row["slot"]) > grace + timedelta(seconds=self.settings.schedule.jitter_seconds):
                self._expire(row, "the daemon came back after the grace period")
            else:  # started (a crash) or interrupted (a shutdown): finish it
                self._post_slot(row["slot"], reason="resume")
        due = scheduling.due_slot(
            self.nominal, now,
            grace_seconds=self.settings.schedule.grace_seconds,
            jitter_seconds=self.settings.schedule.jitter_seconds,
        )
        if due is not None:
            self._post_slot(scheduling.slot_key(due, self.zone), reason="catch-up")

    def _post_slot(self, slot: str, *, reason: str) -> None:
        """Claim ``slot`` and make its post; contain and record every failure.

        The store itself can fail around the post (a full disk, its lock held
        for 30 s by another process): while claiming the slot, recording a
        failure, or marking the slot done. That too ends in a run record (best
        effort), never in an exception reaching APScheduler. Nothing is lost by
        it: a slot left ``started`` is resumed on the next start, and the
        pipeline never posts a post twice."""
        with self._post_lock, self._running("post", slot=slot):  # one post at a time in this process
            started = time.monotonic()
            if self._stop.is_set():
                self._record_run("post", started=started, slot=slot, outcome="not-started", error=self._stop_reason)
                return
            try:
                post = self._claim_and_post(slot, reason, started)
            except Exception as exc:  # the store failed while claiming the slot or recording a failure
                message = f"{type(exc).__name__}: {exc}"
                self._last_failed = True
                log.error("slot %s: the store failed around the post: %s; the slot resumes on the next start", slot, message)
                self._record_run("post", started=started, slot=slot, outcome="failed", error=f"store failure: {message}")
                return
            if post is None:
                return
            error = None
            try:
                self._update_slot(slot, status="done", post_id=post["id"], finished_at=iso(utcnow()), error=None)
            except Exception as exc:  # the post is out; the next start finds it and marks the slot done
                error = f"the slot could not be marked done ({type(exc).__name__}: {exc}); the next start does it"
                log.error("post %s: slot %s: %s", post["id"], slot, error)
            log.info("post %s: slot %s %s (topic %s)", post["id"], slot, post["status"], post["topic"])
            self._last_failed = False
            self._record_run("post", started=started, slot=slot, post_id=post["id"], outcome=post["status"], error=error)

    def _claim_and_post(self, slot: str, reason: str, started: float) -> dict[str, Any] | None:
        """Claim the slot and make its post. Returns the post, or None when the
        slot was not started or the post failed (recorded here)."""
        row = self._claim(slot, reason)
        if row is None:
            return None
        try:
            return self._make_post(slot, row)
        except ShutdownRequested:
            post_id = self._slot_post_id(slot, row)
            self._update_slot(slot, status="interrupted", attempts=row["attempts"] - 1, post_id=post_id)
            log.info("post %s: slot %s interrupted by shutdown; resumes on the next start", post_id, slot)
            self._record_run("post", started=started, slot=slot, post_id=post_id, outcome="interrupted")
        except Exception as exc:  # contained: logged, recorded, retried or given up
            self._after_failure(slot, row, exc, started)
        return None

    def _claim(self, slot: str, reason: str) -> dict[str, Any] | None:
        """Record the slot before any work (a transaction: check, then write).
        Returns the row to work on, or None when this slot must not be started."""
        with self.store.transaction():
            existing = next((r for r in self.store.rows("slots") if r["slot"] == slot), None)
            if existing is None:
                row = {"slot": slot, "status": "started", "attempts": 1, "reason": reason,
                       "claimed_at": iso(utcnow()), "post_id": None, "error": None}
                self.store.upsert("slots", row, key="slot")
                log.info("slot %s: claimed (%s)", slot, reason)
                return row
            resumable = existing["status"] in ("started", "interrupted", "retrying")
            if reason in ("retry", "resume") and resumable:
                row = {**existing, "status": "started", "attempts": existing["attempts"] + 1, "reason": reason}
                self.store.upsert("slots", row, key="slot")
                log.info("post %s: slot %s: attempt %d (%s)", existing.get("post_id"), slot, row["attempts"], reason)
                return row
        log.info("post %s: slot %s already %s; not started again (%s)", existing.get("post_id"), slot, existing["status"], reason)
        self._record_run("post", started=time.monotonic(), slot=slot, post_id=existing.get("post_id"),
                         outcome="skipped", error=f"slot already {existing['status']}")
        return None

    def _make_post(self, slot: str, row: dict[str, Any]) -> dict[str, Any]:
        """Finish the unfinished post, or make a new one for the chosen topic."""
        from bot.pipeline import run_post  # imported here: it pulls in generators and torch

        post_id = self._slot_post_id(slot, row)
        if post_id is not None:
            post = self.store.get_post(post_id)
            if post is not None and post["status"] == "published":  # finished elsewhere
                return post
        unfinished = self.store.unfinished_posts()
        if unfinished:
            post = unfinished[0]
            self._update_slot(slot, post_id=post["id"])
            log.info("post %s: resuming (status %s) for slot %s", post["id"], post["status"], slot)
            return run_post(self.settings, self.store, slot=slot, manual=False, progress=self._progress)
        choice = self._choose_topics()
        log.info("slot %s: topic %s (%s: %s)", slot, choice.topic, choice.strategy, choice.reason)
        self._update_slot(slot, topic_choice={"order": choice.order, "strategy": choice.strategy, "reason": choice.reason})
        skipped: list[str] = []
        for topic in choice.order:
            # Trying the next topic starts a new post: not after a shutdown was
            # asked for (SIGTERM while earlier topics were being passed over).
            if self._stop.is_set():
                raise ShutdownRequested(self._stop_reason)
            try:
                return run_post(self.settings, self.store, topic=topic, slot=slot, manual=False, progress=self._progress)
            except Exception as exc:
                # Bad input for one topic (its model is missing, its caption too long) changes
                # nothing: try the next one. Anything after the post exists is a real failure.
                if not _is_bad_input(exc) or self._slot_post_id(slot, row) is not None:
                    raise
                log.warning("slot %s: topic %s cannot be posted here (%s); trying the next", slot, topic, exc)
                skipped.append(f"{topic}: {exc}")
        raise BadInput("no topic can be posted here:\n  " + "\n  ".join(skipped))

    def _choose_topics(self) -> scheduling.TopicChoice:
        from bot.topics import load_topics

        topics = load_topics(self.settings.paths.templates)
        return scheduling.choose_topic(
            self.settings.schedule.strategy, list(topics), self.store.posts(), self.store.last_posted(), self.rng
        )

    def _progress(self, step: int, total: int, info: dict[str, Any]) -> None:
        """The generator's progress callback: the place a shutdown interrupts a
        long generation, and the sign for `bot healthcheck` that it is not stuck."""
        self._made_progress("post")
        if self._stop.is_set():
            raise ShutdownRequested(self._stop_reason)

    def _after_failure(self, slot: str, row: dict[str, Any], exc: Exception, started: float) -> None:
        """Record the error; retry with back-off until publish.max_attempts, then give up."""
        post_id = self._slot_post_id(slot, row)
        post = self.store.get_post(post_id) if post_id else None
        status = post["status"] if post else None
        message = f"{type(exc).__name__}: {exc}"
        attempts, limit = row["attempts"], self.settings.publish.max_attempts
        self._last_failed = True
        if status == "published":  # it landed after all (recorded by the pipeline)
            self._update_slot(slot, status="done", post_id=post_id, finished_at=iso(utcnow()), error=None)
            self._record_run("post", started=started, slot=slot, post_id=post_id, outcome="published")
            return
        if status in ("failed", "paused") or (post is None and _is_bad_input(exc)) or attempts >= limit:
            final = status if status in ("failed", "paused") else "failed"
            if final == "failed" and status in _NOT_SENT:
                self.store.update_post(post_id, status="failed", error={"step": "daemon", "message": f"gave up after {attempts} attempts: {message}", "at": iso(utcnow())})
            self._update_slot(slot, status=final, post_id=post_id, error=message, finished_at=iso(utcnow()))
            log.error("post %s: slot %s %s after %d attempt(s): %s", post_id, slot, final, attempts, message)
            self._record_run("post", started=started, slot=slot, post_id=post_id, outcome=final, error=message)
            return
        delay = scheduling.retry_delay(attempts, self.settings.publish.retry_backoff_seconds)
        if status == "cooling_down" and post.get("retry_after"):
            delay = max(delay, (parse_iso(post["retry_after"]) - utcnow()).total_seconds())
        when = utcnow() + timedelta(seconds=delay)
        self._update_slot(slot, status="retrying", post_id=post_id, error=message, next_retry_at=iso(when))
        log.warning("post %s: slot %s attempt %d of %d failed: %s; retry at %s", post_id, slot, attempts, limit, message, iso(when))
        self._record_run("post", started=started, slot=slot, post_id=post_id, outcome="retry-scheduled", error=message)
        self._schedule_retry(slot, when)

    def _schedule_retry(self, slot: str, when: datetime) -> None:
        if self._scheduler is None or self._stop.is_set():
            return  # --once, or stopping: the next start re-arms it from the slot row
        self._scheduler.add_job(
            self._post_slot, DateTrigger(when), args=[slot], kwargs={"reason": "retry"},
            id=f"retry {slot}", name=f"retry {slot}", replace_existing=True, misfire_grace_time=None,
        )

    def _expire(self, row: dict[str, Any], why: str) -> None:
        self._update_slot(row["slot"], status="expired", error=why, finished_at=iso(utcnow()))
        log.warning("post %s: slot %s expired: %s; an unfinished post is finished by the next slot", row.get("post_id"), row["slot"], why)

    def _slot_post_id(self, slot: str, row: dict[str, Any]) -> str | None:
        """The post made for this slot (recorded on the slot row, or the post's ``slot`` field)."""
        current = next((r for r in self.store.rows("slots") if r["slot"] == slot), row)
        if current.get("post_id"):
            return current["post_id"]
        mine = [p for p in self.store.posts() if p.get("slot") == slot]
        return mine[-1]["id"] if mine else None

    def _update_slot(self, slot: str, **changes: Any) -> None:
        with self.store.transaction():
            current = next((r for r in self.store.rows("slots") if r["slot"] == slot), {"slot": slot})
            self.store.upsert("slots", {**current, **changes, "updated_at": iso(utcnow())}, key="slot")

    # the engagement job -------------------------------------------------------------

    def _engagement_job(self) -> None:
        with self._running("engagement"):
            self._collect_engagement()

    def _collect_engagement(self) -> None:
        started = time.monotonic()
        try:
            engagement = importlib.import_module("bot.engagement")
        except ModuleNotFoundError as exc:
            if exc.name != "bot.engagement":
                raise
            log.info("engagement: bot.engagement is not installed in this version; nothing collected")
            self._record_run("engagement", started=started, outcome="unavailable", error="bot.engagement is missing")
            return
        try:
            # stop= lets SIGTERM end a long collection between two posts (each
            # snapshot is stored as taken), within the container's stop timeout
            result = engagement.collect_engagement(self.settings, self.store, stop=self._engagement_stop)
        except Exception as exc:  # contained: the scheduler keeps running
            log.error("engagement: failed: %s: %s", type(exc).__name__, exc)
            self._record_run("engagement", started=started, outcome="failed", error=f"{type(exc).__name__}: {exc}")
            return
        summary = _engagement_summary(result)
        log.info("engagement: collected (%s)", summary)
        self._record_run("engagement", started=started, outcome="collected", details=summary)

    def _engagement_stop(self) -> bool:
        """Asked by the collector before each post: whether to stop, and the
        sign that the collection is moving."""
        self._made_progress("engagement")
        return self._stop.is_set()

    # records and heartbeat -------------------------------------------------------------

    def _made_progress(self, job: str) -> None:
        with self._busy_lock:
            if job in self._busy_progress:
                self._busy_progress[job] = time.monotonic()

    def _record_run(
        self,
        job: str,
        *,
        started: float,
        outcome: str,
        slot: str | None = None,
        post_id: str | None = None,
        error: str | None = None,
        details: Any = None,
    ) -> None:
        """One row per job run in the ``runs`` table, mirrored into the heartbeat."""
        row = {
            "id": uuid.uuid4().hex[:12],
            "job": job,
            "slot": slot,
            "post_id": post_id,
            "outcome": outcome,
            "error": error,
            "details": details,
            "finished_at": iso(utcnow()),
            "duration_s": round(time.monotonic() - started, 3),
            "pid": os.getpid(),
        }
        try:
            self.store.insert("runs", row, keep_last=RUNS_KEPT)
        except Exception as exc:  # a broken store must not kill the job thread silently
            log.error("daemon: cannot record the %s run (outcome %s%s) in the store: %s: %s", job, outcome,
                      f", error {error}" if error else "", type(exc).__name__, exc)
        summary = {k: row[k] for k in ("job", "outcome", "slot", "post_id", "finished_at")}
        changes: dict[str, Any] = {}
        if outcome != "not-started":  # a job that only saw the shutdown tells nothing new
            changes["last_outcome"] = summary
        if error and outcome not in ("skipped", "unavailable", "not-started"):
            changes["last_error"] = {**summary, "error": error}
        self._beat(**changes)

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("daemon: job %s missed its run time %s (beyond the grace period)", event.job_id, event.scheduled_run_time)
        elif event.code == EVENT_JOB_ERROR:  # the jobs contain their errors; this is the last net
            log.error("daemon: job %s raised %s", event.job_id, event.exception)
            self._beat(last_error={"job": event.job_id, "error": repr(event.exception), "finished_at": iso(utcnow())})
            return
        self._beat()

    def _beat(self, **changes: Any) -> None:
        """Rewrite state/heartbeat.json atomically with the latest tick and next run times."""
        # Ask the scheduler first, outside our lock: a job finishing inside
        # APScheduler's own locks calls back into here, so holding ours while
        # waiting for theirs could deadlock.
        next_runs = self._next_runs()
        with self._heartbeat_lock:
            self._heartbeat.update(changes)
            with self._busy_lock:
                # running_s is measured on the monotonic clock: a wall clock that
                # steps (NTP, a suspended VM) cannot hide a stuck job
                now = time.monotonic()
                self._heartbeat["busy"] = {
                    job: {**about, "running_s": round(now - self._busy_started[job], 1),
                          "quiet_s": round(now - self._busy_progress[job], 1)}
                    for job, about in self._busy.items()
                }
            self._heartbeat.update(
                pid=os.getpid(),
                last_tick=iso(utcnow()),
                heartbeat_seconds=self.settings.schedule.heartbeat_seconds,
                next_runs=next_runs,
            )
            try:
                atomic_write_text(heartbeat_path(self.state_dir), json.dumps(self._heartbeat, indent=1, sort_keys=True))
            except OSError as exc:
                log.error("daemon: cannot write the heartbeat: %s", exc)

    def _next_runs(self) -> dict[str, str | None]:
        scheduler = self._scheduler
        if scheduler is None or not scheduler.running:
            return {}
        return {job.id: (iso(job.next_run_time) if job.next_run_time else None) for job in scheduler.get_jobs()}


def _is_bad_input(exc: BaseException) -> bool:
    """Errors that mean "this cannot run here as configured" (exit code 2 at the CLI)."""
    from generators.errors import InvalidRequest, ModelUnavailable

    return isinstance(exc, (BadInput, InvalidRequest, ModelUnavailable))


def _engagement_summary(result: Any) -> Any:
    """What a collection run is recorded with: how many snapshots, of which
    posts. The snapshots themselves (with Instagram's raw insights) are on the
    posts already; a copy in every run row only made the store grow."""
    if isinstance(result, list):
        summary = {"snapshots": len(result), "post_ids": [s.get("post_id") for s in result if isinstance(s, dict)]}
        for missed in ("unread", "stopped"):  # what a Collection says kept snapshots from being taken
            if getattr(result, missed, None):
                summary[missed] = getattr(result, missed)
        return summary
    if isinstance(result, (dict, str, int, float)) or result is None:
        return result
    return repr(result)


def slot_rows(store: Store) -> list[dict[str, Any]]:
    """The ``slots`` table, newest first (for ``bot status``)."""
    return sorted(store.rows("slots"), key=lambda r: r["slot"], reverse=True)


def recent_runs(store: Store, limit: int = 10) -> list[dict[str, Any]]:
    """The last ``limit`` rows of the ``runs`` table, newest last."""
    return sorted(store.rows("runs"), key=lambda r: r["finished_at"])[-limit:]

