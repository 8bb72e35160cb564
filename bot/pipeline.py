"""One post, end to end: topic -> generator -> archive -> caption, poster -> publisher -> store.

``bot post`` and the daemon both call :func:`run_post`; neither has its own copy
of these steps. Each step writes its result durably before the next starts and
reuses what it finds on disk, so re-running after a crash resumes the
unfinished post instead of starting another. Publishing records an attempt
before calling the publisher and asks the publisher whether an earlier attempt
landed before trying again: no crash point leads to two publications of one post.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot import archive
from bot.captions import check_caption, render_caption
from bot.config import Settings, check_generator_tables
from bot.errors import BadInput, BotError, PublishCoolDown, PublishError, PublishPaused, UnfinishedPost
from bot.publish import Publisher, Submission, get_publisher, publisher_names, resolve_publisher_name
from bot.scheduling import choose_least_recent
from bot.store import Store, check_state_dir, exclusive, iso, jsonable, parse_iso, utcnow
from bot.topics import TOPICS_FILE, Topic, get_topic, load_topics
from generators import (
    GenerationRequest,
    GeneratorError,
    UnknownGenerator,
    generator_label,
    generator_names,
    get_generator,
)
from generators.registry import Generator, ProgressCallback

log = logging.getLogger("bot.pipeline")


@dataclass
class Plan:
    """What a post will be made of, settled before any work starts."""

    topic: Topic
    generator_name: str
    generator: Generator
    request: GenerationRequest
    publisher_name: str
    publisher: Publisher


def run_post(
    settings: Settings,
    store: Store,
    *,
    topic: str | None = None,
    generator: str | None = None,
    publisher: str | None = None,
    dry_run: bool = False,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    slot: str | None = None,
    manual: bool = True,
) -> dict[str, Any]:
    """Make one post (or finish the unfinished one) and return its final record.

    ``manual`` is True for a person at ``bot post``: a post paused by an
    Instagram challenge is then tried again (they may just have run
    ``bot login``); the daemon leaves paused posts alone. ``slot`` is the
    daemon's schedule slot, recorded on a new post.

    Raises :class:`BadInput` (nothing changed) or :class:`BotError` (the post
    keeps its state and error; run again to resume).
    """
    # 1. check inputs that need no lock: state folder, settings, topics, store readable
    check_state_dir(settings.paths.state)
    check_generator_tables(settings, generator_names(), get_generator)
    _check_publisher_setting(settings)
    topics = load_topics(settings.paths.templates)

    # 2. one post at a time per state folder (manual run or daemon)
    with exclusive(settings.paths.state, "post", "bot run" if not manual else "bot post"):
        # 3. resume the unfinished post, or plan a new one
        post = _unfinished_post(store, topic, manual=manual)
        if post is not None:
            _check_resume_flags(post, generator=generator, publisher=publisher, dry_run=dry_run, seed=seed)
            plan = _plan_for(settings, topics, post, progress)
            log.info("post %s: resuming from status %s", post["id"], post["status"])
        else:
            plan = _plan_new(settings, store, topics, topic, generator, publisher, dry_run, seed, progress)
            post = _create_post(settings, store, plan, slot)

        # 4. generate, 5. render caption and poster, 6. publish exactly once
        post = _step(settings, store, post, "generate", lambda: _generate(settings, store, post, plan))
        post = _step(settings, store, post, "render", lambda: _render(settings, store, post, plan))
        return _publish(settings, store, post, plan)


def abandon_unfinished(settings: Settings, store: Store) -> dict[str, Any]:
    """Give up the unfinished post: mark it ``failed`` (kept in the store and
    the archive, never resumed), so that the next run starts a new one.

    For a post that cannot be finished any more: its topic was removed from
    topics.toml, its model deleted, or it is not wanted. Until now such a post
    blocked every `bot post` and the daemon for good. A post whose last attempt
    may have landed (``publishing``) is refused: giving it up could leave a
    published post recorded as failed; `bot post` checks and finishes it.
    """
    check_state_dir(settings.paths.state)
    with exclusive(settings.paths.state, "post", "bot post"):
        unfinished = store.unfinished_posts()
        if not unfinished:
            raise BadInput("--abandon: no post is unfinished; nothing to give up")
        post = unfinished[0]
        if post["status"] == "publishing":
            raise BadInput(
                f"--abandon: post {post['id']} may have been published (its last attempt's outcome is "
                "unknown); run `bot post` to check and finish it instead"
            )
        error = {"step": "abandon", "message": f"given up by a person while {post['status']}", "at": iso(utcnow())}
        log.info("post %s: abandoned while %s", post["id"], post["status"])
        return store.update_post(post["id"], status="failed", error=error)


# -- 3. planning ------------------------------------------------------------


def _unfinished_post(store: Store, topic: str | None, *, manual: bool) -> dict[str, Any] | None:
    """The post a run must finish before starting another, if any."""
    unfinished = store.unfinished_posts()
    if not unfinished:
        return None
    post = unfinished[0]
    if topic is not None and post["topic"] != topic:
        raise UnfinishedPost(
            f"post {post['id']} (topic {post['topic']!r}, status {post['status']}) is unfinished; "
            f"run `bot post` without --topic to finish it before starting a {topic!r} post"
        )
    if post["status"] == "cooling_down":
        until = parse_iso(post["retry_after"])
        if until > utcnow():
            raise BotError(
                f"post {post['id']} is cooling down until {iso(until)} because Instagram asked the "
                f"bot to slow down ({post.get('error', {}).get('message', 'rate limit')}); run again after that"
            )
    if post["status"] == "paused" and not manual:
        raise BotError(
            f"post {post['id']} is paused: {post.get('error', {}).get('message', '')}. "
            "A person must run `bot login`, then `bot post`"
        )
    return post


def _check_resume_flags(
    post: dict[str, Any], *, generator: str | None, publisher: str | None, dry_run: bool, seed: int | None
) -> None:
    """Refuse flags that cannot apply to the unfinished post a run resumes.

    They used to be dropped without a word: `bot post --dry-run` resumed a post
    planned for Instagram and published it for real; --seed, --generator and
    --publisher were ignored the same way.
    """
    conflicts = []
    if dry_run and post["publisher"] != "outbox":
        conflicts.append(f"--dry-run (it goes to publisher {post['publisher']!r}, for real)")
    if publisher is not None and publisher != post["publisher"]:
        conflicts.append(f"--publisher {publisher} (it goes to publisher {post['publisher']!r})")
    if seed is not None and seed != post["seed"]:
        conflicts.append(f"--seed {seed} (it has seed {post['seed']})")
    if generator is not None and generator != post["generator"]:
        conflicts.append(f"--generator {generator} (it is made by {post['generator']!r})")
    if conflicts:
        raise UnfinishedPost(
            f"post {post['id']} (topic {post['topic']!r}, status {post['status']}) is unfinished and "
            f"`bot post` finishes it first; {'; '.join(conflicts)} cannot apply to it. Run `bot post` "
            "without these flags to finish it, then run again with them"
        )


def _check_publisher_setting(settings: Settings) -> None:
    """Refuse a ``publish.publisher`` that names no publisher. A dry run (which
    uses the outbox) never looked at it, so a typo passed every test run and the
    first real run failed with a message that did not name the setting."""
    configured = settings.publish.publisher
    allowed = ["auto", *publisher_names()]
    if configured not in allowed:
        raise BadInput(f"publish.publisher = {configured!r} is not a publisher; allowed: {', '.join(allowed)}")


def _plan_new(
    settings: Settings,
    store: Store,
    topics: dict[str, Topic],
    topic_slug: str | None,
    generator_name: str | None,
    publisher_name: str | None,
    dry_run: bool,
    seed: int | None,
    progress: ProgressCallback | None,
) -> Plan:
    """Settle topic, generator and publisher, checking each before any work.

    Without a topic: the least recently posted topic whose model is available
    (never-posted topics first, in file order). A topic whose generator cannot
    run here is an error naming the fixing command; there is no silent fallback
    to another generator.
    """
    publisher_name = resolve_publisher_name(settings, dry_run=dry_run, name=publisher_name)
    chosen_publisher = get_publisher(publisher_name, settings)
    chosen_publisher.check()
    check_poster_settings(settings)
    seed = secrets.randbelow(2**31) if seed is None else seed
    if seed < 0 or seed >= 2**63:
        raise BadInput(f"--seed {seed} is out of range; allowed: 0 <= seed < 2**63")

    if topic_slug is not None:
        candidates = [get_topic(topics, topic_slug)]
    else:
        order = choose_least_recent(topics, store.last_posted()).order
        candidates = [topics[slug] for slug in order]
    reasons = []
    for candidate in candidates:
        name = generator_name or candidate.generator
        try:
            chosen = get_generator(name, settings.generator_config(name))
            request = candidate.request(seed, progress)
            chosen.check(request)
        except GeneratorError as exc:
            if isinstance(exc, UnknownGenerator):
                if generator_name is not None:  # --generator names no generator, whatever the topic
                    raise
                # a typo in topics.toml, or a generator not installed here: say where it is set
                exc.args = (f"{settings.paths.templates / TOPICS_FILE}: topic {candidate.slug!r} asks for {exc}",)
                if topic_slug is not None:
                    raise
            elif topic_slug is not None:
                # say which topic and generator the refused values come from (the person may
                # have named only the topic, or forced a generator its options do not suit)
                exc.args = (f"topic {candidate.slug} with generator {name}: {exc}", *exc.args[1:])
                raise
            reasons.append(f"{candidate.slug}: {exc}")
            log.warning("topic %s cannot be posted here, trying the next: %s", candidate.slug, exc)
            continue
        _check_caption(settings, candidate, name)
        return Plan(candidate, name, chosen, request, publisher_name, chosen_publisher)
    raise BadInput("no topic can be posted here, because:\n  " + "\n  ".join(reasons))


def topic_caption(settings: Settings, topic: Topic, generator_name: str) -> str:
    """The caption a post of ``topic`` made by ``generator_name`` gets; also
    what ``bot topics show`` previews."""
    return render_caption(
        topic,
        templates_dir=settings.paths.templates,
        generator_label=generator_label(generator_name),
        account_name=settings.account.name,
        account_url=settings.account.url,
    )


def _check_caption(settings: Settings, topic: Topic, generator_name: str) -> str:
    caption = topic_caption(settings, topic, generator_name)
    check_caption(caption)
    return caption


def check_poster_settings(settings: Settings) -> None:
    """Raise :class:`BadInput` for a ``[posters]`` setting or ``account.url``
    the render step would refuse. Checked while planning: found only at the
    render step, a typo cost a whole generation (up to 40 minutes on a CPU)
    and left a post behind, although bad input must change nothing."""
    from bot.posters import PosterOptions  # reportlab is imported only by the commands that draw
    from bot.posters import qr
    from bot.posters.render import check_options

    try:
        check_options(PosterOptions(**_poster_settings(settings)))
    except BadInput as exc:
        raise BadInput(f"[posters] setting: {exc}") from None
    try:
        qr.encode(settings.account.url)
    except BadInput as exc:
        raise BadInput(f"account.url: {exc}") from None


def _poster_settings(settings: Settings) -> dict[str, Any]:
    """The ``[posters]`` settings a post's poster is drawn with: one list, so
    that the planning check tests exactly what the render step uses."""
    posters = settings.posters
    return {"size": posters.size, "bleed_mm": posters.bleed_mm, "dpi": posters.dpi, "layout": posters.layout,
            "mark": posters.mark, "mark_text": settings.account.name}


def _plan_for(settings: Settings, topics: dict[str, Topic], post: dict[str, Any], progress: ProgressCallback | None) -> Plan:
    """Rebuild the plan of a post being resumed from its record."""
    if post["topic"] not in topics:
        raise BadInput(
            f"post {post['id']} is for topic {post['topic']!r}, which is no longer in "
            f"{settings.paths.templates / 'topics.toml'}; put it back to finish the post, or give the post "
            "up with `bot post --abandon`"
        )
    topic = topics[post["topic"]]
    chosen = get_generator(post["generator"], settings.generator_config(post["generator"]))
    request = topic.request(post["seed"], progress)
    request.model = post.get("model", request.model)
    if post["status"] == "planned":  # the image is still to be made
        try:
            chosen.check(request)
        except GeneratorError as exc:  # e.g. its model was removed since the post was planned
            exc.args = (f"{exc.args[0] if exc.args else exc} (post {post['id']} is being resumed; to give it up "
                        "instead, run `bot post --abandon`)", *exc.args[1:])
            raise
    if post["status"] in ("planned", "generated"):  # the poster is still to be drawn
        check_poster_settings(settings)
    chosen_publisher = get_publisher(post["publisher"], settings)
    chosen_publisher.check()
    return Plan(topic, post["generator"], chosen, request, post["publisher"], chosen_publisher)


def _create_post(settings: Settings, store: Store, plan: Plan, slot: str | None) -> dict[str, Any]:
    post_id = store.new_post_id(plan.topic.slug)
    folder = archive.archive_dir(settings.paths.state, post_id)
    post = store.create_post(
        {
            "id": post_id,
            "topic": plan.topic.slug,
            "generator": plan.generator_name,
            "model": plan.request.model,
            "seed": plan.request.seed,
            "publisher": plan.publisher_name,
            "slot": slot,
            "archive": archive.relative(settings.paths.state, folder),
            "failures": 0,
        }
    )
    log.info("post %s: planned (topic %s, generator %s, publisher %s)", post_id, plan.topic.slug, plan.generator_name, plan.publisher_name)
    return post


# -- 4.-5. making the artefacts ------------------------------------------------


def _step(settings: Settings, store: Store, post: dict[str, Any], name: str, work) -> dict[str, Any]:
    """Run one step; on failure record the error on the post, mark the post
    failed once ``publish.max_attempts`` failures have been seen, and raise."""
    try:
        return work()
    except BadInput:
        raise
    except Exception as exc:  # contain anything the step raised, record it, explain it
        failures = int(store.require_post(post["id"]).get("failures", 0)) + 1
        error = {"step": name, "message": f"{type(exc).__name__}: {exc}", "at": iso(utcnow())}
        log.error("post %s: %s failed: %s", post["id"], name, error["message"])
        if failures >= settings.publish.max_attempts:
            store.update_post(post["id"], error=error, failures=failures, status="failed")
            raise BotError(
                f"post {post['id']}: {name} failed ({failures} times, giving up; the post is marked failed): {exc}"
            ) from exc
        store.update_post(post["id"], error=error, failures=failures)
        raise BotError(f"post {post['id']}: {name} failed: {exc}. Run `bot post` again to resume.") from exc


def _generate(settings: Settings, store: Store, post: dict[str, Any], plan: Plan) -> dict[str, Any]:
    folder = archive.archive_dir(settings.paths.state, post["id"])
    original = folder / archive.FILES["original"]
    if post["status"] != "planned" and original.is_file():
        return post
    if original.is_file():
        # A crash (kill -9, power loss) between saving the image and recording
        # "generated": original.png is written last and atomically, so it is
        # the finished image. Generating again would cost the whole generation
        # and overwrite the image (not always identical on a GPU).
        try:
            _, report = archive.load_generation(folder)
        except (OSError, ValueError) as exc:  # unreadable after all: make it again
            log.warning("post %s: cannot reuse the saved image (%s); generating again", post["id"], exc)
        else:
            log.info("post %s: reusing the image a crashed run saved in %s", post["id"], folder)
            artefacts = {"original": archive.relative(settings.paths.state, original)}
            return store.update_post(post["id"], status="generated", artefacts=artefacts, seed=report["seed"], error=None)
    _check_free_space(settings.paths.state)
    started = time.perf_counter()
    result = plan.generator.generate(plan.request)
    try:
        report = archive.save_generation(folder, result, request=request_record(plan.request))
    except OSError as exc:
        raise BotError(f"cannot save the image in {folder} ({exc}); {_rescue(result.image, post['id'])}") from exc
    log.info("post %s: generated in %.1f s", post["id"], time.perf_counter() - started)
    artefacts = {"original": archive.relative(settings.paths.state, folder / archive.FILES["original"])}
    return store.update_post(post["id"], status="generated", artefacts=artefacts, seed=report["seed"], error=None)


# A post's archive (image, JPEG, poster PDF, snapshots) takes a few tens of MB;
# the margin is for the store and the daemon's other writes.
MIN_FREE_BYTES = 200 * 1024 * 1024


def _check_free_space(state_dir: Path) -> None:
    """Refuse to start a generation (up to 40 minutes on a CPU) that could not
    be saved: a full disk was found only when the image was written, and the
    image was lost."""
    free = shutil.disk_usage(state_dir).free
    if free < MIN_FREE_BYTES:
        raise BotError(
            f"only {free / 2**20:.0f} MB free where the archive is ({state_dir}); a post needs at least "
            f"{MIN_FREE_BYTES / 2**20:.0f} MB. Free some space, then run `bot post` again (nothing was generated)"
        )


def _rescue(image: Any, post_id: str) -> str:
    """Save a generated image that could not go into the archive in the
    system's temporary folder, so the work is not lost; say where."""
    path = Path(tempfile.gettempdir()) / f"dstrtd-{post_id}.png"
    try:
        image.save(path)
    except OSError as exc:
        return f"it could not be saved elsewhere either ({exc}); free some space, then run `bot post` again"
    return f"the image was saved to {path} instead; free some space, then run `bot post` again"


def _render(settings: Settings, store: Store, post: dict[str, Any], plan: Plan) -> dict[str, Any]:
    if post["status"] not in ("generated",):
        return post
    from bot.posters import render_poster  # imported here: reportlab is only needed for this step

    folder = archive.archive_dir(settings.paths.state, post["id"])
    image, report = archive.load_generation(folder)
    files = {key: folder / name for key, name in archive.FILES.items()}

    caption = _check_caption(settings, plan.topic, post["generator"])
    archive.atomic_write_text(files["caption"], caption)
    if not files["instagram"].is_file():
        archive.render_instagram_jpeg(image, files["instagram"])
    if not files["poster"].is_file():
        render_poster(image, files["poster"], url=settings.account.url, **_poster_settings(settings))
    if report.get("loss_curve"):
        archive.plot_loss_curve(
            report["loss_curve"], report["loss_label"], f"{plan.topic.name}: {post['generator']}", files["loss_curve"]
        )
    archive.write_manifest(folder, _manifest(post, plan, report))
    artefacts = {key: archive.relative(settings.paths.state, path) for key, path in files.items() if path.is_file()}
    log.info("post %s: rendered caption, Instagram image and poster", post["id"])
    return store.update_post(post["id"], status="rendered", artefacts=artefacts, error=None)


def request_record(request: GenerationRequest) -> dict[str, Any]:
    """What a generator was asked for, as JSON: kept beside the image in
    generation.json, because topics.toml may change before the manifest is
    written (a resumed post) or the image is made again."""
    return {"prompts": request.prompts, "size": request.size, "model": request.model,
            "options": jsonable(request.options)}


def _manifest(post: dict[str, Any], plan: Plan, report: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to make the same image again, and the sources of
    the caption's facts (topics.toml promises every fact's url is kept here)."""
    # an image saved before generation.json kept the request: the topic as it is now
    request = report.get("request") or request_record(plan.topic.request(report["seed"]))
    return {
        "post_id": post["id"],
        "created_at": post["created_at"],
        "topic": {"slug": plan.topic.slug, "name": plan.topic.name},
        "prompts": request["prompts"],
        "request": request,
        "facts": [{"text": f.text, "source": f.source, "url": f.url} for f in plan.topic.facts],
        "hashtags": list(plan.topic.hashtags),
        "generator": post["generator"],
        "model": post.get("model"),
        "seed": report["seed"],
        "size": report["size"],
        "parameters": report["parameters"],
        "models": report["models"],
        "timings": report["timings"],
        # what the generator noted: where it stopped and why, profile changes, diagnostics
        "generator_notes": report["extras"],
        "loss": {
            "label": report["loss_label"],
            "steps": len(report["loss_curve"] or []),
            "first": (report["loss_curve"] or [None])[0],
            "last": (report["loss_curve"] or [None])[-1],
        },
        "packages": archive.package_versions(),
        "regenerate": _regenerate_command(post, plan.topic.slug, report, request),
    }


def _regenerate_command(post: dict[str, Any], slug: str, report: dict[str, Any], request: dict[str, Any]) -> str:
    """The `bot generate` command that makes the same image again. The prompts
    are written out (topics.toml may have changed since); when the generator
    reports the step it stopped at, the command runs exactly that many steps
    with no time budget, because on a CPU the budget decides where VQGAN+CLIP
    stops and a busier or quieter machine stops elsewhere."""
    args = ["bot", "generate", "--generator", post["generator"], "--topic", slug, "--prompt", request["prompts"],
            "--seed", str(report["seed"]), "--size", str(request["size"])]
    profile = report["parameters"].get("profile")
    if profile in ("cpu", "full"):  # "auto" picks by device: the same settings on another machine
        args += ["--profile", profile]
    stop_step = report["extras"].get("stop_step")
    if isinstance(stop_step, int) and not isinstance(stop_step, bool) and stop_step > 0:
        args += ["--iterations", str(stop_step), "--time-budget", "0"]
    return shlex.join([*args, "--out", f"regenerated-{post['id']}"])


# -- 6. publishing exactly once ---------------------------------------------------


def _submission(settings: Settings, post: dict[str, Any], attempt_id: str) -> Submission:
    state = settings.paths.state
    caption_path = state / post["artefacts"]["caption"]
    try:
        caption = caption_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # deleted or damaged by hand since it was rendered
        raise BotError(
            f"post {post['id']}: cannot read its caption {caption_path} ({exc}); put the caption back in that "
            "file (UTF-8 text), then run `bot post` again. Nothing was sent."
        ) from None
    return Submission(
        post_id=post["id"],
        attempt_id=attempt_id,
        image_path=state / post["artefacts"]["instagram"],
        caption=caption,
        metadata={"topic": post["topic"], "generator": post["generator"], "seed": post["seed"], "created_at": post["created_at"]},
        previous_attempt_ids=[a["id"] for a in post.get("attempts", [])],
    )


def _publish(settings: Settings, store: Store, post: dict[str, Any], plan: Plan) -> dict[str, Any]:
    publisher = plan.publisher
    # a. an earlier attempt may have landed (crash, timeout, dropped connection)
    if post.get("attempts"):
        try:
            found = publisher.find(_submission(settings, post, post["attempts"][-1]["id"]))
        except PublishError as exc:
            error = {"step": "publish", "message": str(exc), "at": iso(utcnow())}
            # Slow-down and challenge answers to this check get the same status
            # as on a send: otherwise the post stayed "publishing" and the next
            # run (the daemon's, seconds later) asked Instagram again at once.
            # Both statuses keep the post unfinished, and resuming it always
            # checks again before anything is sent.
            hold = _hold(exc)
            if hold:
                kind, status, changes = hold
                store.update_post(post["id"], status=status, error={**error, "kind": kind}, **changes)
            else:
                store.update_post(post["id"], error=error)
            raise BotError(
                f"post {post['id']}: cannot tell whether an earlier attempt was published ({exc}); "
                "nothing was sent again. Run `bot post` later to check and finish."
            ) from exc
        if found is not None:
            log.info("post %s: an earlier attempt had landed; recording it", post["id"])
            return _record_published(store, post, post["attempts"][-1]["id"], found)

    # b. record the attempt before the call, then call
    attempt = {"id": uuid.uuid4().hex, "publisher": plan.publisher_name, "started_at": iso(utcnow()), "outcome": "pending"}
    # read what is sent (the caption file) before the attempt is recorded: a
    # file that cannot be read then leaves the post rendered, not "publishing"
    submission = _submission(settings, {**post, "attempts": [*post.get("attempts", []), attempt]}, attempt["id"])
    post = store.append_to_post(post["id"], "attempts", attempt)
    post = store.update_post(post["id"], status="publishing")
    try:
        publication = publisher.publish(submission)
    except PublishError as exc:
        hold = _hold(exc)
        if hold:
            kind, status, changes = hold
            return _attempt_failed(store, post, attempt, kind, exc, status=status, **changes)
        if exc.outcome_unknown:
            return _attempt_failed(store, post, attempt, "unknown", exc, status="publishing")
        failed = sum(1 for a in post["attempts"] if a.get("outcome") == "failed") + 1
        final = not exc.retryable or failed >= settings.publish.max_attempts
        return _attempt_failed(store, post, attempt, "failed", exc, status="failed" if final else "rendered")
    except Exception as exc:  # an unexpected error mid-call: it may have landed
        _attempt_failed(store, post, attempt, "unknown", exc, status="publishing", reraise=False)
        raise BotError(f"post {post['id']}: publishing failed unexpectedly: {exc}. Run `bot post` to check and finish.") from exc
    return _record_published(store, post, attempt["id"], publication)


def _hold(exc: PublishError) -> tuple[str, str, dict[str, Any]] | None:
    """Kind, post status and changes for an answer that means "wait" (slow
    down: retried after the cool-down) or "a person must act" (a challenge:
    paused until `bot login`); None for any other failure. The same whether
    Instagram said it to a send or to the check that looks before one."""
    if isinstance(exc, PublishCoolDown):
        return "cooldown", "cooling_down", {"retry_after": iso(utcnow() + timedelta(seconds=exc.seconds))}
    if isinstance(exc, PublishPaused):
        return "paused", "paused", {}
    return None


def _attempt_failed(
    store: Store,
    post: dict[str, Any],
    attempt: dict[str, Any],
    outcome: str,
    exc: Exception,
    *,
    status: str,
    reraise: bool = True,
    **changes: Any,
) -> dict[str, Any]:
    error = {"step": "publish", "message": str(exc), "kind": outcome, "at": iso(utcnow())}
    store.replace_in_list(post["id"], "attempts", "id", {**attempt, "outcome": outcome, "finished_at": error["at"], "error": str(exc)})
    post = store.update_post(post["id"], status=status, error=error, **changes)
    log.warning("post %s: publish attempt %s: %s (%s) -> %s", post["id"], attempt["id"], outcome, exc, status)
    if reraise:
        raise BotError(f"post {post['id']}: not published ({outcome}): {exc}; {_what_next(status)}") from exc
    return post


# What a person can do about a post left in each status after a failed attempt.
_NEXT_STEP = {
    "rendered": "nothing was published; run `bot post` to try again (the daemon retries on its own)",
    "failed": "the post is marked failed and will not be tried again",
    "publishing": "it may have landed; run `bot post` to check and finish (it is never sent twice)",
    "cooling_down": "Instagram asked the bot to slow down; it tries again after the cool-down",
    "paused": "Instagram wants a person to act; run `bot login`, then `bot post`",
}


def _what_next(status: str) -> str:
    return f"status is now {status}: {_NEXT_STEP.get(status, 'run `bot status` for details')}"


def _record_published(store: Store, post: dict[str, Any], attempt_id: str, publication: Any) -> dict[str, Any]:
    attempt = next(a for a in post["attempts"] if a["id"] == attempt_id)
    store.replace_in_list(post["id"], "attempts", "id", {**attempt, "outcome": "published", "finished_at": iso(utcnow())})
    post = store.update_post(post["id"], status="published", publication=asdict(publication), error=None)
    log.info("post %s: published via %s (%s)", post["id"], publication.publisher, publication.url or publication.media_id)
    return post


def artefact_paths(settings: Settings, post: dict[str, Any]) -> dict[str, str]:
    """Absolute paths of a post's artefacts, for ``--json`` output."""
    return {key: str(Path(settings.paths.state) / rel) for key, rel in post.get("artefacts", {}).items()}
