"""Captions, found in review: a caption template that includes another file
names the file and line to fix, and the shipped caption keeps to Instagram's
hashtag limit of five per caption (announced December 2025)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.captions import caption_stats, render_caption
from bot.errors import TemplateError
from bot.topics import load_topics

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TOPICS = load_topics(TEMPLATES)
# Instagram: "the number of hashtags that you can include in a caption for a
# reel or post" is five (rolled out from December 2025; it was 30).
INSTAGRAM_HASHTAGS_PER_CAPTION = 5


def render(templates_dir: Path, slug: str = "coral") -> str:
    return render_caption(
        TOPICS[slug],
        templates_dir=templates_dir,
        generator_label="VQGAN+CLIP",
        account_name="DSTRTD",
        account_url="https://www.instagram.com/dstrtd.art/",
    )


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    shutil.copy(TEMPLATES / "topics.toml", tmp_path / "topics.toml")
    return tmp_path


def test_include_of_a_missing_file_names_that_file_not_the_caption_template(templates):
    """Before: '.../caption.j2: caption template is missing', though it was there."""
    (templates / "caption.j2").write_text("{{ subject }}\n{% include 'footer.j2' %}\n", encoding="utf-8")
    with pytest.raises(TemplateError) as caught:
        render(templates)
    message = str(caught.value)
    assert message.startswith(f"{templates / 'caption.j2'}, line 2:")
    assert "'footer.j2'" in message and "is missing" not in message


def test_error_inside_an_included_file_names_that_file_and_its_line(templates):
    """Before: the include line of caption.j2 was named, not the line to fix."""
    (templates / "caption.j2").write_text("{{ subject }}\n{% include 'footer.j2' %}\n", encoding="utf-8")
    (templates / "footer.j2").write_text("Follow us\n\nat {{ acount_name }}\n", encoding="utf-8")
    with pytest.raises(TemplateError) as caught:
        render(templates)
    message = str(caught.value)
    assert message.startswith(f"{templates / 'footer.j2'}, line 3:")
    assert "acount_name" in message


@pytest.mark.parametrize("slug", list(TOPICS))
def test_shipped_caption_has_at_most_five_hashtags_and_keeps_the_topic_tags(slug):
    caption = render(TEMPLATES, slug)
    assert caption_stats(caption)["hashtags"] <= INSTAGRAM_HASHTAGS_PER_CAPTION
    last_line = caption.splitlines()[-1]
    assert last_line.split() == [f"#{tag}" for tag in TOPICS[slug].hashtags] + ["#DSTRTD"]
