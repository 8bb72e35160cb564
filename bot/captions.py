"""Captions: render ``templates/caption.j2`` for a topic and check Instagram's limits.

Instagram rejects a caption over 2,200 characters, 5 hashtags (since
December 2025; it was 30) or 20 @mentions, so :func:`check_caption` runs before anything is published and says
which limit is broken and by how much.

    text = render_caption(topic, templates_dir=..., generator_label="VQGAN+CLIP",
                          account_name="DSTRTD", account_url="https://...")
    check_caption(text)
"""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType

import jinja2

from bot.errors import CaptionTooLong, TemplateError
from bot.topics import Topic

CAPTION_TEMPLATE = "caption.j2"

MAX_CHARACTERS = 2200
MAX_HASHTAGS = 5
MAX_MENTIONS = 20

# Links and e-mail addresses are removed before counting, so that
# "https://example.org/#top" or "me@example.org" count as neither a hashtag nor a
# mention; Instagram does not link tags inside them either.
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# A hashtag is "#" followed by letters/digits/underscores (any script), not glued
# to a preceding word ("C#", "abc#1" are not tags) nor doubled ("##").
_HASHTAG = re.compile(r"(?<![\w#&])#(\w+)")
# A mention is "@" followed by a username: letters, digits, "_" and "." (not at the end).
_MENTION = re.compile(r"(?<![\w@.])@([A-Za-z0-9_](?:[A-Za-z0-9_.]*[A-Za-z0-9_])?)")


def render_caption(
    topic: Topic,
    *,
    templates_dir: Path,
    generator_label: str,
    account_name: str,
    account_url: str,
) -> str:
    """Render the caption for ``topic`` from ``<templates_dir>/caption.j2``.

    ``generator_label`` describes what made the image (the generator's
    description). Undefined variables are errors (StrictUndefined), so a typo in
    the template never reaches Instagram as a blank. Raises :class:`TemplateError`
    naming the file and line for a missing or broken template.
    """
    path = Path(templates_dir) / CAPTION_TEMPLATE
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain text for Instagram, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    try:
        template = environment.get_template(CAPTION_TEMPLATE)
        text = template.render(
            topic=topic,
            subject=topic.subject,
            facts=topic.facts,
            hashtags=topic.hashtags,
            generator_label=generator_label,
            account_name=account_name,
            account_url=account_url,
        )
    except jinja2.TemplateNotFound as exc:
        if exc.name == CAPTION_TEMPLATE:
            raise TemplateError(f"{path}: caption template is missing") from None
        # {% include %}, {% extends %} or {% import %} of a file that is not there
        where = _where(exc.__traceback__, path)
        raise TemplateError(
            f"{where}: caption template uses {exc.name!r}, which is not in {templates_dir}"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or path}, line {exc.lineno}: broken caption template: {exc.message}") from None
    except Exception as exc:  # undefined variable, bad filter, error raised inside the template
        where = _where(exc.__traceback__, path)
        raise TemplateError(f"{where}: caption template failed: {type(exc).__name__}: {exc}") from None
    return _tidy(text)


def _where(tb: TracebackType | None, path: Path) -> str:
    """``FILE, line N`` of the template line an exception was raised on, or
    just ``path`` when no template frame is found. Jinja rewrites its
    tracebacks so that frames inside a template carry the template's file name
    and line number; the innermost such frame is the line to fix, which may be
    in a file the caption template includes rather than in the caption
    template itself."""
    folder = path.parent.resolve()
    found: tuple[str, int] | None = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        try:
            if filename and Path(filename).resolve().is_relative_to(folder) and Path(filename).is_file():
                found = (filename, tb.tb_lineno)
        except (OSError, ValueError):
            pass
        tb = tb.tb_next
    return f"{found[0]}, line {found[1]}" if found else str(path)


def _tidy(text: str) -> str:
    """Strip trailing spaces and collapse runs of blank lines left by template
    blocks, so paragraphs are separated by exactly one empty line."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def caption_stats(text: str) -> dict[str, int]:
    """Counts Instagram limits apply to: characters, hashtags and @mentions."""
    stripped = _EMAIL.sub(" ", _URL.sub(" ", text))
    return {
        "characters": _character_count(text),
        "hashtags": len(_HASHTAG.findall(stripped)),
        "mentions": len(_MENTION.findall(stripped)),
    }


def _character_count(text: str) -> int:
    """Characters as Instagram counts them, erring on the long side: UTF-16 code
    units (an emoji outside the Basic Multilingual Plane counts twice), which is
    never less than the number of code points. A caption we pass is then never
    rejected for length."""
    return len(text.encode("utf-16-le")) // 2


def check_caption(text: str) -> None:
    """Raise :class:`CaptionTooLong` when ``text`` breaks one of Instagram's
    limits, naming every broken limit and by how much."""
    stats = caption_stats(text)
    limits = (
        ("characters", MAX_CHARACTERS),
        ("hashtags", MAX_HASHTAGS),
        ("mentions", MAX_MENTIONS),
    )
    problems = [
        f"caption has {stats[name]:,} {name}, {stats[name] - limit:,} over Instagram's limit of {limit:,}"
        for name, limit in limits
        if stats[name] > limit
    ]
    if problems:
        raise CaptionTooLong("; ".join(problems) + "; shorten templates/caption.j2 or the topic's facts/hashtags")
