"""Topics: what the bot posts about, read from ``templates/topics.toml``.

Science communicators edit that file by hand, so every mistake in it is
reported as a :class:`bot.errors.TemplateError` naming the file, the line of
the offending topic table, the field and what is allowed, before anything is
posted. The schema is explained at the top of the shipped ``topics.toml``.

    topics = load_topics(settings.paths.templates)
    coral = get_topic(topics, "coral")
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bot.errors import BadInput, TemplateError
from generators import GenerationRequest
from generators.registry import ProgressCallback

TOPICS_FILE = "topics.toml"
MIN_FACTS, MAX_FACTS = 2, 4

SLUG_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
GENERATOR_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Instagram hashtags are letters (any script), digits and underscores.
HASHTAG_PATTERN = re.compile(r"^\w+$")

TOPIC_FIELDS = ("name", "subject", "prompts", "facts", "hashtags", "generator", "model", "options")
REQUIRED_TOPIC_FIELDS = ("name", "subject", "prompts", "facts", "hashtags", "generator")
FACT_FIELDS = ("text", "source", "url")


@dataclass(frozen=True)
class Fact:
    """One short claim, the organisation or paper that makes it, and where to check it."""

    text: str
    source: str
    url: str


@dataclass(frozen=True)
class Topic:
    """A subject the bot can post about; see the schema in ``templates/topics.toml``.

    ``hashtags`` are stored without the leading ``#``; ``options`` are passed to
    the generator untouched (it validates them), except ``size``, which is the
    request's own field (see :meth:`request`).
    """

    slug: str
    name: str
    subject: str
    prompts: str
    facts: tuple[Fact, ...]
    hashtags: tuple[str, ...]
    generator: str
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def request(self, seed: int = 0, progress: ProgressCallback | None = None) -> GenerationRequest:
        """What a post of this topic asks its generator for. ``options.size``
        becomes the request's size (the side every generator reads); the other
        options go to the generator as they are. One place, so that checking a
        topic (``bot topics``) and posting it ask the same question."""
        options = dict(self.options)
        size = options.pop("size", None)
        request = GenerationRequest(prompts=self.prompts, seed=seed, model=self.model, options=options,
                                    progress=progress)
        if size is not None:
            request.size = size
        return request


def load_topics(templates_dir: Path) -> dict[str, Topic]:
    """Read ``<templates_dir>/topics.toml`` into slug -> :class:`Topic`, in file order.

    Raises :class:`TemplateError` for a missing file, invalid TOML (with the
    line tomllib reports) and any schema error (with the line of the topic).
    """
    # 1. read the file
    path = Path(templates_dir) / TOPICS_FILE
    text = _read(path)
    # 2. parse it
    data = _parse(path, text)
    # 3. check the schema, topic by topic
    raw_topics = _topics_table(path, text, data)
    lines = _TableLines(text)
    return {
        slug: _build_topic(path, lines, slug, table) for slug, table in raw_topics.items()
    }


def get_topic(topics: dict[str, Topic], slug: str) -> Topic:
    """The topic called ``slug``; :class:`BadInput` listing the valid slugs otherwise."""
    if slug not in topics:
        valid = ", ".join(topics) or "(none: templates/topics.toml defines no topics)"
        raise BadInput(f"unknown topic {slug!r}; valid topics: {valid}")
    return topics[slug]


# -- reading and parsing ------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(
            f"{path}: topics file is missing; create it (see the schema comment in the "
            f"shipped templates/{TOPICS_FILE}) or point paths.templates at a folder that has one"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read the topics file: {exc}") from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)"; lead with the line
        # in the same "file, line N:" form as the schema errors.
        found = re.search(r"at line (\d+)", str(exc))
        where = f"{path}, line {found.group(1)}" if found else str(path)
        raise TemplateError(f"{where}: invalid TOML: {exc}") from None


def _topics_table(path: Path, text: str, data: dict[str, Any]) -> dict[str, Any]:
    unknown = [key for key in data if key != "topics"]
    if unknown:
        line = _TableLines(text).top_level_key(unknown[0])
        raise TemplateError(
            f"{path}, line {line}: unexpected top-level key {unknown[0]!r}; "
            "allowed: only [topics.<slug>] tables"
        )
    topics = data.get("topics")
    if not isinstance(topics, dict) or not topics:
        raise TemplateError(f"{path}, line 1: no topics; add at least one [topics.<slug>] table")
    return topics


class _TableLines:
    """Line numbers of table headers in a TOML text.

    tomllib returns plain dicts without positions, so schema errors find the
    line of ``[topics.<slug>]`` (or of the n-th ``[[topics.<slug>.facts]]``)
    by scanning the headers themselves.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []  # (line number, dotted key parts joined by ".")
        for number, line in enumerate(self.lines, start=1):
            match = self._HEADER.match(line)
            if match:
                parts = [part.strip().strip("\"'") for part in match.group(2).split(".")]
                self.headers.append((number, ".".join(parts)))

    def topic(self, slug: str) -> int:
        """Line of ``[topics.<slug>]``, else of the first header inside it, else 1."""
        for number, key in self.headers:
            if key == f"topics.{slug}":
                return number
        for number, key in self.headers:
            if key.startswith(f"topics.{slug}."):
                return number
        return 1

    def fact(self, slug: str, index: int) -> int:
        """Line of the ``index``-th ``[[topics.<slug>.facts]]`` (0-based), else the topic's."""
        found = [number for number, key in self.headers if key == f"topics.{slug}.facts"]
        return found[index] if index < len(found) else self.topic(slug)

    def top_level_key(self, key: str) -> int:
        pattern = re.compile(rf"^\s*\[?\s*[\"']?{re.escape(key)}[\"']?\s*[\].=]")
        for number, line in enumerate(self.lines, start=1):
            if pattern.match(line):
                return number
        return 1


# -- schema -------------------------------------------------------------------


def _build_topic(path: Path, lines: _TableLines, slug: str, table: Any) -> Topic:
    line = lines.topic(slug)

    def fail(field_name: str, problem: str) -> TemplateError:
        return TemplateError(f"{path}, line {line}: topic {slug!r}: {field_name} {problem}")

    if not SLUG_PATTERN.match(slug):
        raise fail("slug", "is not allowed; use lower-case letters and digits joined by '-', e.g. 'dead-zones'")
    if not isinstance(table, dict):
        raise fail("", f"must be a table [topics.{slug}], not {type(table).__name__}")
    unknown = [key for key in table if key not in TOPIC_FIELDS]
    if unknown:
        raise fail(f"field {unknown[0]!r}", f"is unknown; allowed: {', '.join(TOPIC_FIELDS)}")
    for name in REQUIRED_TOPIC_FIELDS:
        if name not in table:
            raise fail(f"field {name!r}", "is missing; every topic needs " + ", ".join(REQUIRED_TOPIC_FIELDS))

    name = _text(table["name"], fail, "name")
    subject = _text(table["subject"], fail, "subject")
    prompts = _prompts(table["prompts"], fail)
    hashtags = _hashtags(table["hashtags"], fail)
    generator = _text(table["generator"], fail, "generator")
    if not GENERATOR_PATTERN.match(generator):
        raise fail("generator", f"{generator!r} is not a generator name, e.g. 'vqgan-clip' or 'gan'")
    model = table.get("model")
    if model is not None:
        model = _text(model, fail, "model")
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise fail("options", f"must be a table [topics.{slug}.options], not {type(options).__name__}")
    facts = _facts(path, lines, slug, table["facts"], fail)
    return Topic(
        slug=slug,
        name=name,
        subject=subject,
        prompts=prompts,
        facts=facts,
        hashtags=hashtags,
        generator=generator,
        model=model,
        options=dict(options),
    )


def _text(value: Any, fail, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(field_name, f"must be a non-empty string, not {value!r}")
    return value.strip()


def _prompts(value: Any, fail) -> str:
    """Check the ``"text:weight | text:weight"`` convention of VQGAN+CLIP
    (nerdyrodent/VQGAN-CLIP); the generator parses it again, this catches
    mistakes while the communicator still has the file open."""
    prompts = _text(value, fail, "prompts")
    positive = False
    for part in prompts.split("|"):
        text, weight = part.strip(), 1.0
        if ":" in text:
            head, tail = text.rsplit(":", 1)
            try:
                text, weight = head.strip(), float(tail)
            except ValueError:
                pass  # a colon inside the text, not a weight
        if not text:
            raise fail("prompts", f"has an empty prompt in {prompts!r}; write 'text:weight | text:weight'")
        positive = positive or weight > 0
    if not positive:
        raise fail("prompts", f"{prompts!r} has no prompt with a positive weight; allowed: at least one, e.g. 'a coral reef:1'")
    return prompts


def _hashtags(value: Any, fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise fail("hashtags", f"must be a non-empty list of words, e.g. [\"coralreef\"], not {value!r}")
    tags = []
    for tag in value:
        word = tag.strip().removeprefix("#") if isinstance(tag, str) else tag
        if not isinstance(word, str) or not HASHTAG_PATTERN.match(word):
            raise fail("hashtags", f"has {tag!r}; allowed: letters, digits and '_' only (no spaces), e.g. \"coralreef\"")
        tags.append(word)
    return tuple(tags)


def _facts(path: Path, lines: _TableLines, slug: str, value: Any, fail) -> tuple[Fact, ...]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise fail("facts", f"must be [[topics.{slug}.facts]] tables with text, source and url")
    if not MIN_FACTS <= len(value) <= MAX_FACTS:
        raise fail("facts", f"has {len(value)} fact(s); allowed: {MIN_FACTS} to {MAX_FACTS}")
    facts = []
    for index, item in enumerate(value):
        line = lines.fact(slug, index)

        def fact_fail(field_name: str, problem: str) -> TemplateError:
            return TemplateError(
                f"{path}, line {line}: topic {slug!r}: fact {index + 1} {field_name} {problem}"
            )

        unknown = [key for key in item if key not in FACT_FIELDS]
        if unknown:
            raise fact_fail(f"field {unknown[0]!r}", f"is unknown; allowed: {', '.join(FACT_FIELDS)}")
        for name in FACT_FIELDS:
            if name not in item:
                raise fact_fail(f"field {name!r}", "is missing; every fact needs text, source and url")
        text = _text(item["text"], fact_fail, "text")
        source = _text(item["source"], fact_fail, "source")
        url = _text(item["url"], fact_fail, "url")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or " " in url:
            raise fact_fail("url", f"{url!r} is not a web address; allowed: an http(s) URL a reader can open")
        facts.append(Fact(text=text, source=source, url=url))
    return tuple(facts)
