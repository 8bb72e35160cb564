"""How the state store behaves after months of running: its size, and the time
of one write and of the commands people run on it, on a store filled with the
posts, engagement snapshots, slots and run rows a daemon leaves behind.

Every write rewrites state/bot.json (TinyDB's JSON storage, made atomic here),
so the cost of a write grows with the store; docs/daemon.md ("How big the store
grows") quotes these figures and says when to archive.

    python bench/store_growth.py                       # 2 years, 2 posts a day
    python bench/store_growth.py --days 365 730 3650 --out bench/results/store_growth-cpu.json

Prints one JSON document (also written with --out).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_name, median_seconds, write_report  # noqa: E402
from bot.daemon import RUNS_KEPT  # noqa: E402
from bot.store import Store, iso  # noqa: E402

TOPICS = ["coral", "forest", "glacier", "permafrost", "mangroves", "dead-zones", "wildfires",
          "pollinators", "sea-level", "sea-ice", "night-sky"]
SNAPSHOT_HOURS = (1, 6, 24, 72, 168, 720)  # the engagement schedule's default ages
# What Instagram's insights answer looks like in a snapshot: its size matters, not its values.
INSIGHTS = {"reach_count": 100, "impression_count": 150, "save_count": 2, "share_count": 1,
            "impressions": {"from_feed": 90, "from_profile": 30, "from_hashtags": 10, "from_explore": 5}}


def published_post(store: Store, topic: str, moment: datetime, end: datetime, rng: random.Random) -> dict:
    """One published post as the pipeline and the engagement job leave it."""
    post_id, at = store.new_post_id(topic, moment), iso(moment)
    snapshots, likes = [], 0
    for hours in SNAPSHOT_HOURS:
        taken = moment + timedelta(hours=hours)
        if taken > end:
            break
        likes += rng.randint(0, 40)
        snapshots.append({"taken_at": iso(taken), "slot_hours": hours, "media_id": f"{post_id}_1",
                          "likes": likes, "comments": likes // 10, "insights": INSIGHTS})
    return {
        "id": post_id, "topic": topic, "status": "published", "created_at": at, "updated_at": at, "slot": at,
        "history": [{"status": s, "at": at} for s in ("planned", "generated", "rendered", "publishing", "published")],
        "attempts": [{"id": f"a{rng.getrandbits(64):x}", "outcome": "published", "started_at": at, "finished_at": at}],
        "engagement": snapshots, "generator": "gan", "model": "hubble-128", "seed": rng.randint(0, 2**31),
        "publisher": "instagram", "archive": f"archive/{post_id}",
        "artefacts": {name: f"archive/{post_id}/{name}" for name in ("caption.txt", "manifest.json", "original.png", "poster.pdf")},
        # as asdict(Publication) leaves it: without "publisher" the engagement
        # table and chart skipped every post and measured an empty chart
        "publication": {"publisher": "instagram", "media_id": f"{post_id}_1", "code": "C0de", "published_at": at,
                        "url": f"https://www.instagram.com/p/{post_id}/", "extra": {"media_pk": post_id}},
    }


def engagement_run(finished: datetime) -> dict:
    """A row of the daemon's run log, as an hourly engagement run leaves it."""
    return {"id": f"{finished:%Y%m%d%H}", "job": "engagement", "slot": None, "post_id": None, "outcome": "collected",
            "error": None, "details": {"snapshots": 2}, "finished_at": iso(finished), "duration_s": 0.5, "pid": 7}


def fill(store: Store, days: int, per_day: int) -> dict[str, int]:
    """Write ``days`` of a daemon's records in one transaction; the run log is
    as long as the daemon keeps it (RUNS_KEPT newest rows)."""
    rng = random.Random(1)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    end = start + timedelta(days=days)
    posts, slots = [], []
    for day in range(days):
        for k in range(per_day):
            moment = start + timedelta(days=day, hours=9 + 9 * k)
            post = published_post(store, TOPICS[(day * per_day + k) % len(TOPICS)], moment, end, rng)
            posts.append(post)
            slots.append({"slot": post["slot"], "status": "done", "attempts": 1, "post_id": post["id"],
                          "claimed_at": post["slot"], "finished_at": post["slot"]})
    runs = [engagement_run(end - timedelta(hours=h)) for h in range(RUNS_KEPT, 0, -1)]
    with store.transaction():
        store._table("posts").insert_multiple(posts)
        store._table("slots").insert_multiple(slots)
        store._table("runs").insert_multiple(runs)
    return {"posts": len(posts), "snapshots": sum(len(p["engagement"]) for p in posts),
            "slots": len(slots), "runs": len(runs)}


def command_seconds(state: Path, *args: str) -> float:
    """Wall time of one ``bot`` command on the filled state folder (a new process, as a person runs it)."""
    env = {"BOT_PATHS_STATE": str(state), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bot", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(days: int, per_day: int, repeats: int) -> dict:
    """Fill a fresh state folder with ``days`` of records and time what people run on it."""
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "state"
        store = Store(state)
        counts = fill(store, days, per_day)
        last = store.posts()[-1]["id"]
        return {
            "days": days,
            "posts_per_day": per_day,
            **counts,
            "store_mb": round(store.path.stat().st_size / 1e6, 2),
            "update_post_s": round(median_seconds(lambda: store.update_post(last, error=None), repeats), 3),
            "insert_run_s": round(median_seconds(lambda: store.insert("runs", engagement_run(datetime.now(timezone.utc)),
                                                             keep_last=RUNS_KEPT), repeats), 3),
            "read_all_posts_s": round(median_seconds(store.posts, repeats), 3),
            "bot_status_s": round(median_seconds(lambda: command_seconds(state, "status"), repeats), 2),
            "bot_engagement_json_s": round(median_seconds(lambda: command_seconds(state, "engagement", "--json"), repeats), 2),
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[730], help="one store per value (default: 730)")
    parser.add_argument("--posts-per-day", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many timings")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = {
        "benchmark": "state store after months of running (one write rewrites the whole file)",
        "device_name": cpu_name(),
        "repeats": args.repeats,
        "results": [measure(days, args.posts_per_day, args.repeats) for days in args.days],
    }
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
