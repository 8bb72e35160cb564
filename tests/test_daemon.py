"""The real daemon (``python -m bot run``) as a subprocess, on schedules of a few
seconds, against the outbox publisher: posts per slot, SIGTERM, kill -9 mid-post,
a second daemon, a flaky publisher, and what the heartbeat says about each."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime

import pytest

from daemon_helpers import (
    REPO,
    DaemonProcess,
    cron_at,
    generations,
    heartbeat,
    kill_leftovers,
    make_environment,
    outbox,
    published,
    soon,
    table,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test():
    yield
    kill_leftovers()


def test_posts_each_slot_once_and_sigterm_stops_cleanly(tmp_path) -> None:
    env = make_environment(
        tmp_path, BOT_SCHEDULE_CRON="*/3 * * * * *", BOT_SCHEDULE_ENGAGEMENT_INTERVAL_MINUTES="0.02"
    )
    state = tmp_path / "state"
    daemon = DaemonProcess(env)
    daemon.wait_for(lambda: len(published(state)) >= 3, "three posts", timeout=120)
    running = heartbeat(state)
    assert running["status"] == "running" and running["pid"] == daemon.process.pid
    assert set(running["next_runs"]) >= {"post", "engagement"}

    assert daemon.stop(signal.SIGTERM) == 0, daemon.output
    stopped = heartbeat(state)
    assert stopped["status"] == "stopped" and stopped["stop_reason"] == "received SIGTERM"
    assert "daemon: stopped (received SIGTERM)" in daemon.output

    posts = published(state)
    slots = [p["slot"] for p in posts]
    # every post belongs to a distinct slot of the schedule, and each was sent once
    assert len(set(slots)) == len(slots)
    assert all(datetime.fromisoformat(s).second % 3 == 0 for s in slots)
    assert outbox(state) == sorted(p["id"] for p in posts)
    assert generations(state) == len(table(state, "posts")) == len(posts)
    done = {r["slot"]: r["post_id"] for r in table(state, "slots") if r["status"] == "done"}
    assert sorted(done.values()) == sorted(p["id"] for p in posts)
    # topics alternate: least recently posted first
    topics = [p["topic"] for p in sorted(posts, key=lambda p: p["slot"])]
    assert topics[:2] in (["reef", "ice"], ["ice", "reef"]) and topics[0] != topics[1]
    # the runs table and stdout name each post
    runs = Counter(r["outcome"] for r in table(state, "runs") if r["job"] == "post")
    assert runs["published"] == len(posts)
    # the engagement job ran on its own interval beside the posts (nothing on Instagram to read)
    assert Counter(r["outcome"] for r in table(state, "runs") if r["job"] == "engagement")["collected"] >= 2
    for post in posts:
        assert f"post {post['id']}: slot {post['slot']} published" in daemon.output
    # the heartbeat keeps the last job's outcome; the engagement job runs every 1.2 s,
    # so it may be the one that finished just before SIGTERM
    last = stopped["last_outcome"]
    assert (last["job"], last["outcome"]) in {("post", "published"), ("engagement", "collected")}, last


def test_a_second_daemon_on_the_same_state_is_refused(tmp_path) -> None:
    env = make_environment(tmp_path, BOT_SCHEDULE_CRON="0 0 1 1 *")  # no slot during the test
    state = tmp_path / "state"
    first = DaemonProcess(env)
    first.wait_for(lambda: heartbeat(state).get("status") == "running", "the first daemon to run")

    second = subprocess.run(
        [sys.executable, "-m", "bot", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 1, second.stderr
    assert f"process {first.process.pid} (bot run" in second.stderr and "daemon.lock" in second.stderr
    # the first one is untouched and still owns the heartbeat
    assert heartbeat(state)["pid"] == first.process.pid and heartbeat(state)["status"] == "running"
    assert first.stop() == 0
    assert table(state, "posts") == [] and table(state, "slots") == []


def test_kill_9_mid_post_then_restart_finishes_that_post_exactly_once(tmp_path) -> None:
    env = make_environment(tmp_path, BOT_SCHEDULE_CRON=cron_at(soon(4)), DAEMON_TEST_SLEEP="30")
    state = tmp_path / "state"
    first = DaemonProcess(env)
    first.wait_for(lambda: generations(state) == 1, "the generation to start", timeout=90)
    first.kill()
    [post] = table(state, "posts")
    assert post["status"] == "planned" and outbox(state) == []
    [slot] = table(state, "slots")
    assert slot["status"] == "started"
    assert heartbeat(state)["status"] == "running"  # a killed daemon cannot say otherwise...
    # ...which the health check notices once the heartbeat goes stale (tested in test_docker_files)

    env["DAEMON_TEST_SLEEP"] = "0"
    second = DaemonProcess(env)
    second.wait_for(lambda: published(state), "the post to be finished", timeout=90)
    assert second.stop() == 0, second.output
    [finished] = table(state, "posts")
    assert finished["id"] == post["id"] and finished["status"] == "published"
    assert outbox(state) == [post["id"]]
    [slot] = table(state, "slots")
    assert slot["status"] == "done" and slot["attempts"] == 2 and slot["post_id"] == post["id"]
    assert f"post {post['id']}: resuming" in second.output
    assert heartbeat(state)["last_outcome"]["post_id"] == post["id"]


def test_sigterm_mid_generation_leaves_the_post_resumable(tmp_path) -> None:
    env = make_environment(tmp_path, BOT_SCHEDULE_CRON=cron_at(soon(4)), DAEMON_TEST_SLEEP="60")
    state = tmp_path / "state"
    first = DaemonProcess(env)
    first.wait_for(lambda: generations(state) == 1, "the generation to start", timeout=90)
    assert first.stop(signal.SIGTERM, timeout=30) == 0, first.output  # well before the 60 s generation ends
    [post] = table(state, "posts")
    assert post["status"] == "planned" and post.get("failures", 0) == 0  # not counted as a failure
    [slot] = table(state, "slots")
    assert slot["status"] == "interrupted" and slot["attempts"] == 0
    assert heartbeat(state)["status"] == "stopped"

    env["DAEMON_TEST_SLEEP"] = "0"
    second = DaemonProcess(env)
    second.wait_for(lambda: published(state), "the post to be finished", timeout=90)
    assert second.stop() == 0
    assert [p["id"] for p in published(state)] == [post["id"]] and outbox(state) == [post["id"]]


def test_a_publisher_failing_twice_then_succeeding_makes_one_post(tmp_path) -> None:
    env = make_environment(
        tmp_path, BOT_SCHEDULE_CRON=cron_at(soon(4)), BOT_PUBLISH_PUBLISHER="daemon-flaky", DAEMON_TEST_FAILS="2"
    )
    state = tmp_path / "state"
    daemon = DaemonProcess(env)
    daemon.wait_for(lambda: published(state), "the post to be published", timeout=120)
    assert daemon.stop() == 0
    [post] = table(state, "posts")
    assert [a["outcome"] for a in post["attempts"]] == ["failed", "failed", "published"]
    assert outbox(state) == [post["id"]] and generations(state) == 1
    [slot] = table(state, "slots")
    assert slot["status"] == "done" and slot["attempts"] == 3
    outcomes = [r["outcome"] for r in sorted(table(state, "runs"), key=lambda r: r["finished_at"]) if r["job"] == "post"]
    assert outcomes == ["retry-scheduled", "retry-scheduled", "published"]
    beat = heartbeat(state)
    assert "injected failure 2" in beat["last_error"]["error"] and beat["last_error"]["post_id"] == post["id"]
    assert beat["last_outcome"]["outcome"] == "published"


def test_a_post_failing_every_attempt_stays_failed_and_shows_in_status(tmp_path) -> None:
    env = make_environment(
        tmp_path,
        BOT_SCHEDULE_CRON=cron_at(soon(4)),
        BOT_PUBLISH_PUBLISHER="daemon-flaky",
        DAEMON_TEST_FAILS="99",
        BOT_PUBLISH_MAX_ATTEMPTS="2",
    )
    state = tmp_path / "state"
    daemon = DaemonProcess(env)
    daemon.wait_for(lambda: [s for s in table(state, "slots") if s["status"] == "failed"], "the slot to fail", timeout=120)
    assert daemon.process.poll() is None  # a failed job does not stop the scheduler
    assert daemon.stop() == 0
    [post] = table(state, "posts")
    assert post["status"] == "failed" and outbox(state) == []
    assert (state / "flaky-calls").read_text() == "2"  # bounded: publish.max_attempts calls, no more

    status = subprocess.run(
        [sys.executable, "-m", "bot", "status", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert [(p["id"], p["status"]) for p in report["attention"]] == [(post["id"], "failed")]
    assert "injected failure 2" in report["daemon"]["heartbeat"]["last_error"]["error"]
    assert report["daemon"]["healthy"] is False and "stopped" in report["daemon"]["summary"]
    assert any(post["id"] in alert and "failed" in alert for alert in report["alerts"])


def test_the_daemon_posts_to_fake_instagram_and_collects_engagement(tmp_path) -> None:
    """The real instagrapi client against tests/fake_instagram: one media per slot,
    and the engagement job snapshots them on its interval."""
    sys.path.insert(0, str(REPO / "tests"))
    from fake_instagram import FakeInstagram

    with FakeInstagram(tmp_path / "tls") as fake:
        env = make_environment(
            tmp_path,
            BOT_SCHEDULE_CRON="*/3 * * * * *",
            BOT_SCHEDULE_ENGAGEMENT_INTERVAL_MINUTES="0.02",
            BOT_INSTAGRAM_ENGAGEMENT_SCHEDULE_HOURS="0.0005",  # a snapshot ~2 s after publication
            BOT_INSTAGRAM_COOLDOWN_SECONDS="3600",
            **fake.env(),
        )
        state = tmp_path / "state"
        daemon = DaemonProcess(env)
        daemon.wait_for(
            lambda: len(published(state)) >= 2 and all(p["engagement"] for p in published(state)[:2]),
            "two posts on Instagram with engagement snapshots",
            timeout=150,
        )
        assert daemon.stop() == 0, daemon.output
        posts = published(state)
        media_ids = [p["publication"]["media_id"] for p in posts]
        assert all(p["publication"]["publisher"] == "instagram" for p in posts)
        assert sorted(media_ids) == sorted(m["id"] for m in fake.medias)  # one media per post, none twice
        assert len({p["slot"] for p in posts}) == len(posts)
        assert len(fake.calls("/api/v1/media/configure/", "POST")) == len(posts)
        assert all(isinstance(p["engagement"][0]["likes"], int) for p in posts[:2])
