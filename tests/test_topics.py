"""templates/topics.toml: the shipped topics, and every way an edited file can
be wrong (each error names the file and the line to fix)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bot.errors import BadInput, TemplateError
from bot.topics import Fact, Topic, get_topic, load_topics

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"

REQUIRED_SLUGS = {
    "coral", "forest", "glacier", "permafrost", "mangroves", "dead-zones",
    "wildfires", "pollinators", "sea-level", "night-sky",
}


# -- the shipped file -----------------------------------------------------------


def test_shipped_topics_load_with_the_required_slugs():
    topics = load_topics(TEMPLATES)
    assert len(topics) >= 10
    assert REQUIRED_SLUGS <= set(topics)
    assert all(isinstance(t, Topic) and t.slug == slug for slug, t in topics.items())


def test_shipped_topics_keep_file_order():
    text = (TEMPLATES / "topics.toml").read_text(encoding="utf-8")
    in_file = re.findall(r"^\[topics\.([a-z0-9-]+)\]\s*$", text, flags=re.MULTILINE)
    assert list(load_topics(TEMPLATES)) == in_file


@pytest.mark.parametrize("slug", sorted(load_topics(TEMPLATES)))
def test_each_shipped_topic_is_complete_and_sourced(slug):
    topic = load_topics(TEMPLATES)[slug]
    assert topic.name and topic.subject and topic.prompts and topic.hashtags
    assert 2 <= len(topic.facts) <= 4
    for fact in topic.facts:
        assert isinstance(fact, Fact)
        parsed = urlparse(fact.url)
        assert parsed.scheme == "https" and parsed.netloc, fact.url
        assert fact.source and len(fact.text) <= 300
    assert all(not tag.startswith("#") for tag in topic.hashtags)


def test_shipped_generators():
    topics = load_topics(TEMPLATES)
    assert topics["night-sky"].generator == "gan"
    assert topics["night-sky"].model == "hubble-128"
    others = {t.generator for slug, t in topics.items() if slug != "night-sky"}
    assert others == {"vqgan-clip"}
    assert topics["coral"].subject == "a coral reef"


def test_get_topic_unknown_lists_valid_slugs():
    topics = load_topics(TEMPLATES)
    assert get_topic(topics, "coral") is topics["coral"]
    with pytest.raises(BadInput) as info:
        get_topic(topics, "corals")
    message = str(info.value)
    assert "'corals'" in message
    for slug in topics:
        assert slug in message


# -- edited files ----------------------------------------------------------------

GOOD = """\
# comment line
[topics.first]
name = "First"
subject = "a first thing"
prompts = "a first thing:1 | text:-0.5"
hashtags = ["first", "#second"]
generator = "vqgan-clip"

[[topics.first.facts]]
text = "Fact one."
source = "NOAA"
url = "https://www.noaa.gov/"

[[topics.first.facts]]
text = "Fact two."
source = "NASA"
url = "https://www.nasa.gov/"

[topics.second]
name = "Second"
subject = "a second thing"
prompts = "a second thing"
hashtags = ["second"]
generator = "gan"
model = "hubble-128"

[topics.second.options]
steps = 5

[[topics.second.facts]]
text = "Fact three."
source = "IPCC"
url = "https://www.ipcc.ch/"

[[topics.second.facts]]
text = "Fact four."
source = "UNEP"
url = "http://www.unep.org/"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "topics.toml").write_text(text, encoding="utf-8")
    return tmp_path


def line_of(text: str, needle: str, occurrence: int = 0) -> int:
    numbers = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip() == needle]
    return numbers[occurrence]


def test_valid_file_parses_every_field(tmp_path):
    topics = load_topics(write(tmp_path, GOOD))
    assert list(topics) == ["first", "second"]
    first, second = topics["first"], topics["second"]
    assert first.hashtags == ("first", "second")  # a leading "#" is dropped
    assert first.model is None and first.options == {}
    assert second.model == "hubble-128" and second.options == {"steps": 5}
    assert second.facts[1] == Fact("Fact four.", "UNEP", "http://www.unep.org/")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(TemplateError) as info:
        load_topics(tmp_path)
    assert str(tmp_path / "topics.toml") in str(info.value)
    assert "missing" in str(info.value)


@pytest.mark.parametrize(
    "broken, bad_line",
    [
        ('name = "First"', 'name = "First'),  # unterminated string
        ('generator = "gan"', 'generator = gan'),  # bare word
        ("[topics.second]", "[topics.second"),  # unclosed header
        ("[topics.second]", "[topics.first]"),  # same table twice
    ],
)
def test_malformed_toml_names_file_and_line(tmp_path, broken, bad_line):
    text = GOOD.replace(broken, bad_line, 1)
    expected_line = line_of(text, bad_line, occurrence=-1)
    with pytest.raises(TemplateError) as info:
        load_topics(write(tmp_path, text))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'topics.toml'}, line {expected_line}: invalid TOML")


def _fact_header(index: int) -> tuple[str, int]:
    return "[[topics.second.facts]]", index


# (description, replace this, with this, field named in the message, line: header and occurrence)
SCHEMA_CASES = [
    ("fact without url", 'url = "http://www.unep.org/"\n', "", "'url'", _fact_header(1)),
    ("url not http", "http://www.unep.org/", "ftp://www.unep.org/", "url", _fact_header(1)),
    ("url without host", "http://www.unep.org/", "https://", "url", _fact_header(1)),
    ("fact without source", 'source = "IPCC"\n', "", "'source'", _fact_header(0)),
    ("empty fact text", 'text = "Fact three."', 'text = " "', "text", _fact_header(0)),
    ("unknown fact field", 'source = "IPCC"', 'source = "IPCC"\nlink = "x"', "'link'", _fact_header(0)),
    (
        "one fact",
        '[[topics.second.facts]]\ntext = "Fact four."\nsource = "UNEP"\nurl = "http://www.unep.org/"\n',
        "",
        "1 fact(s); allowed: 2 to 4",
        ("[topics.second]", 0),
    ),
    (
        "five facts",
        '[[topics.second.facts]]\ntext = "Fact four."',
        '[[topics.second.facts]]\ntext = "x"\nsource = "s"\nurl = "https://a.org/"\n' * 3
        + '[[topics.second.facts]]\ntext = "Fact four."',
        "5 fact(s); allowed: 2 to 4",
        ("[topics.second]", 0),
    ),
    ("missing prompts", 'prompts = "a second thing"\n', "", "'prompts'", ("[topics.second]", 0)),
    ("empty prompts", 'prompts = "a second thing"', 'prompts = ""', "prompts", ("[topics.second]", 0)),
    ("empty prompt part", 'prompts = "a second thing"', 'prompts = "a second thing | "', "prompts", ("[topics.second]", 0)),
    ("only negative prompts", 'prompts = "a second thing"', 'prompts = "a second thing:-1"', "positive weight", ("[topics.second]", 0)),
    ("empty hashtag list", 'hashtags = ["second"]', "hashtags = []", "hashtags", ("[topics.second]", 0)),
    ("hashtag with a space", 'hashtags = ["second"]', 'hashtags = ["sea level"]', "hashtags", ("[topics.second]", 0)),
    ("hashtags not a list", 'hashtags = ["second"]', 'hashtags = "second"', "hashtags", ("[topics.second]", 0)),
    ("missing generator", 'generator = "gan"\n', "", "'generator'", ("[topics.second]", 0)),
    ("model not a string", 'model = "hubble-128"', "model = 3", "model", ("[topics.second]", 0)),
    ("options not a table", "[topics.second.options]\nsteps = 5\n", "", None, None),
    ("unknown topic field", 'name = "Second"', 'name = "Second"\nhashtag = ["x"]', "'hashtag'", ("[topics.second]", 0)),
    ("bad slug", "[topics.second]", "[topics.Second_Topic]", "slug", ("[topics.Second_Topic]", 0)),
]


@pytest.mark.parametrize(
    "replace, with_, field, where",
    [case[1:] for case in SCHEMA_CASES if case[3] is not None],
    ids=[case[0] for case in SCHEMA_CASES if case[3] is not None],
)
def test_schema_errors_name_file_line_and_field(tmp_path, replace, with_, field, where):
    assert replace in GOOD
    text = GOOD.replace(replace, with_, 1)
    if where[0] == "[topics.Second_Topic]":
        text = text.replace("topics.second.", "topics.Second_Topic.")
    header, occurrence = where
    expected_line = line_of(text, header, occurrence)
    with pytest.raises(TemplateError) as info:
        load_topics(write(tmp_path, text))
    message = str(info.value)
    assert str(tmp_path / "topics.toml") in message
    assert f"line {expected_line}:" in message
    assert field in message
    assert "second" in message.lower()  # names the topic


def test_options_must_be_a_table(tmp_path):
    text = GOOD.replace("[topics.second.options]\nsteps = 5\n", "").replace(
        'model = "hubble-128"', 'model = "hubble-128"\noptions = 5'
    )
    with pytest.raises(TemplateError) as info:
        load_topics(write(tmp_path, text))
    assert f"line {line_of(text, '[topics.second]')}:" in str(info.value)
    assert "options" in str(info.value)


def test_empty_file_and_stray_top_level_key(tmp_path):
    with pytest.raises(TemplateError, match="no topics"):
        load_topics(write(tmp_path, "# nothing here\n"))
    text = 'version = 2\n' + GOOD
    with pytest.raises(TemplateError) as info:
        load_topics(write(tmp_path, text))
    assert "line 1:" in str(info.value) and "'version'" in str(info.value)
