"""Captions: the shipped template renders every shipped topic within Instagram's
limits; limits are counted the way Instagram counts them; a missing or broken
template names its file and line."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bot.captions import caption_stats, check_caption, render_caption
from bot.errors import CaptionTooLong, TemplateError
from bot.topics import Fact, load_topics

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
TOPICS = load_topics(TEMPLATES)


def render(topic, templates_dir: Path = TEMPLATES, label: str = "VQGAN+CLIP") -> str:
    return render_caption(
        topic,
        templates_dir=templates_dir,
        generator_label=label,
        account_name="DSTRTD",
        account_url="https://www.instagram.com/dstrtd.art/",
    )


# -- the shipped template --------------------------------------------------------


@pytest.mark.parametrize("slug", list(TOPICS))
def test_every_shipped_caption_renders_within_limits(slug):
    topic = TOPICS[slug]
    caption = render(topic, label="a test generator description")
    check_caption(caption)  # raises when over a limit
    stats = caption_stats(caption)
    assert stats["characters"] <= 2200 and stats["hashtags"] <= 5 and stats["mentions"] <= 20
    assert stats["hashtags"] >= len(topic.hashtags)
    for tag in topic.hashtags:
        assert f"#{tag}" in caption


def test_caption_follows_the_seed_structure():
    """The order of the seed's coral caption: what made it, how a computer sees
    it, the facts, what DSTRTD is, the question, the hashtags."""
    topic = TOPICS["coral"]
    caption = render(topic, label="VQGAN+CLIP, a neural network steered by text")
    parts = [
        "VQGAN+CLIP, a neural network steered by text",
        "Have you ever wondered how computers see the world? This is what a coral reef looks like for a computer.",
        *[f"{fact.text} (Source: {fact.source})" for fact in topic.facts],
        "This image is part of DSTRTD",
        "Is your perception DSTRTD (distorted)?",
        "#coralreef",
    ]
    positions = [caption.index(part) for part in parts]
    assert positions == sorted(positions)
    assert "\n\n\n" not in caption and caption == caption.strip()
    for fact in topic.facts:  # links are not clickable on Instagram; kept out
        assert fact.url not in caption


def test_caption_uses_each_topic_subject():
    caption = render(TOPICS["night-sky"])
    assert "This is what the night sky looks like for a computer." in caption
    assert "coral" not in caption


# -- limits ----------------------------------------------------------------------


def test_character_limit_says_by_how_much():
    check_caption("x" * 2200)
    with pytest.raises(CaptionTooLong) as info:
        check_caption("x" * 2315)
    assert "caption has 2,315 characters, 115 over Instagram's limit of 2,200" in str(info.value)


def test_characters_outside_the_bmp_count_twice():
    """Counted in UTF-16 units, the conservative reading of Instagram's limit."""
    emoji = "\N{EARTH GLOBE EUROPE-AFRICA}"
    assert caption_stats(emoji * 3)["characters"] == 6
    check_caption(emoji * 1100)
    with pytest.raises(CaptionTooLong, match="2,202 characters, 2 over"):
        check_caption(emoji * 1101)


def test_hashtag_limit_says_by_how_much():
    check_caption(" ".join(f"#tag{i}" for i in range(5)))
    with pytest.raises(CaptionTooLong) as info:
        check_caption(" ".join(f"#tag{i}" for i in range(8)))
    assert "caption has 8 hashtags, 3 over Instagram's limit of 5" in str(info.value)


def test_mention_limit_says_by_how_much():
    check_caption(" ".join(f"@user_{i}" for i in range(20)))
    with pytest.raises(CaptionTooLong) as info:
        check_caption(" ".join(f"@user.{i}" for i in range(21)))
    assert "caption has 21 mentions, 1 over Instagram's limit of 20" in str(info.value)


def test_every_broken_limit_is_named():
    text = " ".join(f"#t{i} @u{i}" for i in range(31)) + " " + "x" * 2200
    with pytest.raises(CaptionTooLong) as info:
        check_caption(text)
    message = str(info.value)
    assert "characters" in message and "31 hashtags, 26 over" in message and "31 mentions, 11 over" in message


@pytest.mark.parametrize(
    "text, hashtags, mentions",
    [
        ("#one #two, #three.", 3, 0),
        ("see https://example.org/page#section and www.example.org/#top", 0, 0),
        ("C# and abc#def and ##", 0, 0),
        ("#über #海洋 #sea_level #2024", 4, 0),
        ("write to dstrtd@example.org or @dstrtd.art, @nasa.", 0, 2),
        ("@", 0, 0),
        ("(#tag) [@user]", 1, 1),
    ],
)
def test_what_counts_as_a_hashtag_or_mention(text, hashtags, mentions):
    stats = caption_stats(text)
    assert (stats["hashtags"], stats["mentions"]) == (hashtags, mentions)
    assert stats["characters"] == len(text)


def test_long_facts_make_the_shipped_caption_too_long():
    long_facts = tuple(Fact("word " * 120, "IPCC", "https://www.ipcc.ch/") for _ in range(4))
    topic = replace(TOPICS["coral"], facts=long_facts)
    with pytest.raises(CaptionTooLong, match=r"characters, [\d,]+ over Instagram's limit of 2,200"):
        check_caption(render(topic))


# -- missing and broken templates -------------------------------------------------


def test_missing_template_names_the_file(tmp_path):
    with pytest.raises(TemplateError) as info:
        render(TOPICS["coral"], templates_dir=tmp_path)
    assert str(tmp_path / "caption.j2") in str(info.value)
    assert "missing" in str(info.value)


def _template_with(tmp_path: Path, bad_line: str) -> int:
    """Copy the shipped template with one line replaced near its end; return
    that line's number."""
    shutil.copy(TEMPLATES / "topics.toml", tmp_path / "topics.toml")
    lines = (TEMPLATES / "caption.j2").read_text(encoding="utf-8").splitlines()
    number = len(lines) - 2
    lines[number - 1] = bad_line
    (tmp_path / "caption.j2").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return number


@pytest.mark.parametrize(
    "bad_line, reported_at",
    [
        ("{{ subject | nosuchfilter }}", "bad line"),
        ("{{ subject }", "bad line"),
        # an unclosed block is only noticed where the file ends
        ("{% for fact in facts %}unclosed", "end of file"),
    ],
)
def test_syntax_error_names_file_and_line(tmp_path, bad_line, reported_at):
    number = _template_with(tmp_path, bad_line)
    if reported_at == "end of file":
        number = len((tmp_path / "caption.j2").read_text(encoding="utf-8").splitlines())
    with pytest.raises(TemplateError) as info:
        render(TOPICS["coral"], templates_dir=tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'caption.j2'}, line {number}: broken caption template")


def test_undefined_variable_names_file_and_line(tmp_path):
    number = _template_with(tmp_path, "Follow {{ acount_name }}")
    with pytest.raises(TemplateError) as info:
        render(TOPICS["coral"], templates_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'caption.j2'}, line {number}:")
    assert "acount_name" in message


def test_error_raised_inside_template_names_line(tmp_path):
    number = _template_with(tmp_path, "{{ facts[7].text }}")
    with pytest.raises(TemplateError) as info:
        render(TOPICS["coral"], templates_dir=tmp_path)
    assert f"line {number}:" in str(info.value)


def test_generator_label_ending_in_a_full_stop_is_not_doubled():
    caption = render(TOPICS["coral"], label="VQGAN+CLIP, steered by text.")
    assert caption.splitlines()[0].endswith("VQGAN+CLIP, steered by text.")
    assert ".." not in caption
