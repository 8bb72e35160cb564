"""One post end to end through ``bot post``: artefacts, resumption after a failure
at each step without a duplicate publication, and every bad input refused
before anything changes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms

import bot.posters as posters_module
from bot.cli import main
from bot.errors import PublishError
from bot.publish import Publication, register_publisher
from bot.publish.outbox import OutboxPublisher
from generators import GenerationRequest, GenerationResult, ModelUnavailable, register_generator
from support import lock_held_elsewhere, run_bot, write_test_templates



class PatternGenerator:
    """A fast generator for pipeline tests: an image that depends only on the seed."""

    name = "test-pattern"
    calls: list[int] = []
    fail_next: int = 0
    weights_present: bool = True

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def check(self, request: GenerationRequest) -> None:
        if not PatternGenerator.weights_present:
            raise ModelUnavailable("test-pattern weights are missing; run `bot models fetch test-pattern`")

    def generate(self, request: GenerationRequest) -> GenerationResult:
        PatternGenerator.calls.append(request.seed)
        if PatternGenerator.fail_next:
            PatternGenerator.fail_next -= 1
            raise RuntimeError("injected generator failure")
        rng = np.random.default_rng(request.seed)
        pixels = rng.integers(0, 255, size=(48, 48, 3), dtype=np.uint8)
        curve = [0.9 - 0.002 * step for step in range(50)]
        if request.progress:
            request.progress(50, 50, {"loss": curve[-1]})
        return GenerationResult(
            image=Image.fromarray(pixels).resize((256, 256), Image.Resampling.NEAREST),
            seed=request.seed,
            generator=self.name,
            parameters={"iterations": 50, "size": 256},
            models={"pattern": {"name": "none", "sha256": "0" * 64}},
            timings={"generate": 0.01},
            loss_curve=curve,
            loss_label="spherical distance loss",
        )


register_generator("test-pattern", PatternGenerator, "a test pattern made by the test suite")


class FlakyPublisher(OutboxPublisher):
    """Outbox publisher whose next publish calls fail, before or after landing."""

    name = "flaky"
    fail_before: int = 0  # raise before anything is written
    crash_after: int = 0  # write the outbox entry, then die as if the process crashed

    def publish(self, submission):  # type: ignore[override]
        if FlakyPublisher.fail_before:
            FlakyPublisher.fail_before -= 1
            raise PublishError("injected network failure", retryable=True)
        publication = super().publish(submission)
        if FlakyPublisher.crash_after:
            FlakyPublisher.crash_after -= 1
            raise SystemExit("injected crash after the publication landed")
        return publication


register_publisher("flaky", FlakyPublisher)


@pytest.fixture(autouse=True)
def _reset_fakes() -> None:
    PatternGenerator.calls = []
    PatternGenerator.fail_next = 0
    PatternGenerator.weights_present = True
    FlakyPublisher.fail_before = 0
    FlakyPublisher.crash_after = 0


@pytest.fixture
def templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = write_test_templates(tmp_path / "templates", "test-pattern")
    monkeypatch.setenv("BOT_PATHS_TEMPLATES", str(folder))
    monkeypatch.setenv("BOT_POSTERS_DPI", "300")
    monkeypatch.setenv("BOT_POSTERS_SIZE", "A5")  # the smallest page keeps the tests quick
    return folder



def records(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "bot.json"
    return list(json.loads(path.read_text())["posts"].values()) if path.exists() else []


def outbox_entries(state_dir: Path) -> list[Path]:
    return sorted(p for p in (state_dir / "outbox").glob("*") if not p.name.startswith("."))


def test_full_post_to_outbox(state_dir: Path, templates: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_bot(capsys, "post", "--topic", "reef", "--seed", "7", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "published" and result["publisher"] == "outbox"
    folder = state_dir / "archive" / result["post_id"]
    for name in ("original.png", "instagram.jpg", "caption.txt", "poster.pdf", "loss_curve.png", "manifest.json"):
        assert (folder / name).is_file(), name
    with Image.open(folder / "instagram.jpg") as jpeg:
        assert jpeg.size == (1080, 1350) and jpeg.format == "JPEG"
        profile = ImageCms.ImageCmsProfile(io.BytesIO(jpeg.info["icc_profile"]))
        assert "sRGB" in ImageCms.getProfileDescription(profile)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["generator"] == "test-pattern"
    assert manifest["topic"]["slug"] == "reef" and manifest["prompts"].startswith("a reef")
    assert manifest["models"]["pattern"]["sha256"] == "0" * 64
    assert "torch" in manifest["packages"] and manifest["loss"]["steps"] == 50
    caption = (folder / "caption.txt").read_text()
    assert "This is what a reef looks like for a computer" in caption
    sent = outbox_entries(state_dir)
    assert len(sent) == 1 and (sent[0] / "caption.txt").read_text() == caption
    assert records(state_dir)[0]["publication"]["media_id"] == f"outbox-{result['post_id']}"


def test_same_seed_regenerates_the_same_image(state_dir: Path, templates: Path, capsys) -> None:
    first = json.loads(run_bot(capsys, "post", "--topic", "reef", "--seed", "3", "--json")[1])
    second = json.loads(run_bot(capsys, "post", "--topic", "reef", "--seed", "3", "--json")[1])
    a = Image.open(first["artefacts"]["original"])
    b = Image.open(second["artefacts"]["original"])
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert first["post_id"] != second["post_id"]


def test_poster_qr_code_decodes_to_the_account_url(state_dir: Path, templates: Path, capsys) -> None:
    import pypdfium2
    import zxingcpp

    result = json.loads(run_bot(capsys, "post", "--topic", "reef", "--json")[1])
    page = pypdfium2.PdfDocument(result["artefacts"]["poster"])[0]
    width_mm = page.get_width() / 72 * 25.4
    assert abs(width_mm - (148 + 2 * 3)) < 0.5  # A5 plus 3 mm bleed on each side
    image = page.render(scale=100 / 72).to_pil()
    decoded = [r.text for r in zxingcpp.read_barcodes(image)]
    assert decoded == ["https://www.instagram.com/dstrtd.art/"]


def test_without_topic_the_least_recently_posted_available_topic_is_chosen(state_dir: Path, templates: Path, capsys) -> None:
    chosen = [json.loads(run_bot(capsys, "post", "--json")[1])["topic"] for _ in range(3)]
    assert chosen == ["reef", "ice", "reef"]


def test_generation_failure_is_recorded_and_resumed(state_dir: Path, templates: Path, capsys) -> None:
    PatternGenerator.fail_next = 1
    code, _, err = run_bot(capsys, "post", "--topic", "reef", "--seed", "5")
    assert code == 1 and "injected generator failure" in err and "bot post" in err
    [post] = records(state_dir)
    assert post["status"] == "planned" and post["error"]["step"] == "generate"
    code, out, err = run_bot(capsys, "post", "--json")
    assert code == 0, err
    assert json.loads(out)["post_id"] == post["id"]
    assert PatternGenerator.calls == [5, 5]  # the same seed was used again
    assert len(records(state_dir)) == 1 and len(outbox_entries(state_dir)) == 1


def test_render_failure_resumes_without_generating_again(
    state_dir: Path, templates: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = posters_module.render_poster

    def broken(*args, **kwargs):
        raise OSError("injected disk error while writing the poster")

    monkeypatch.setattr(posters_module, "render_poster", broken)
    assert run_bot(capsys, "post", "--topic", "reef")[0] == 1
    assert records(state_dir)[0]["status"] == "generated"
    monkeypatch.setattr(posters_module, "render_poster", real)
    code, out, err = run_bot(capsys, "post", "--json")
    assert code == 0, err
    assert len(PatternGenerator.calls) == 1
    assert len(outbox_entries(state_dir)) == 1


def test_publish_failure_then_success_publishes_once(state_dir: Path, templates: Path, capsys) -> None:
    FlakyPublisher.fail_before = 2
    code, _, err = run_bot(capsys, "post", "--topic", "reef", "--publisher", "flaky")
    assert code == 1 and records(state_dir)[0]["status"] == "rendered"
    # a retryable failure says so; "failed ... status is now rendered" read as final
    assert "nothing was published; run `bot post` to try again" in err
    assert run_bot(capsys, "post", "--publisher", "flaky")[0] == 1
    code, out, err = run_bot(capsys, "post", "--json")
    assert code == 0, err
    [post] = records(state_dir)
    assert post["status"] == "published"
    assert [a["outcome"] for a in post["attempts"]] == ["failed", "failed", "published"]
    assert len(outbox_entries(state_dir)) == 1


def test_publish_gives_up_after_max_attempts(state_dir: Path, templates: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("BOT_PUBLISH_MAX_ATTEMPTS", "2")
    FlakyPublisher.fail_before = 5
    run_bot(capsys, "post", "--topic", "reef", "--publisher", "flaky")
    code, _, err = run_bot(capsys, "post")
    assert code == 1 and "marked failed and will not be tried again" in err
    assert records(state_dir)[0]["status"] == "failed"
    # a finished (failed) post is not resumed: the next run starts a new post
    assert run_bot(capsys, "post", "--topic", "reef")[0] == 0
    assert len(records(state_dir)) == 2


def test_crash_after_publication_landed_is_recorded_not_repeated(state_dir: Path, templates: Path, capsys) -> None:
    FlakyPublisher.crash_after = 1
    with pytest.raises(SystemExit, match="injected crash"):
        main(["post", "--topic", "reef", "--publisher", "flaky"])
    capsys.readouterr()
    [post] = records(state_dir)
    assert post["status"] == "publishing" and post["attempts"][0]["outcome"] == "pending"
    code, out, err = run_bot(capsys, "post", "--json")
    assert code == 0, err
    [post] = records(state_dir)
    assert post["status"] == "published" and len(post["attempts"]) == 1
    assert len(outbox_entries(state_dir)) == 1


def test_a_post_in_progress_elsewhere_blocks_a_second_process(state_dir: Path, templates: Path) -> None:
    with lock_held_elsewhere(state_dir, "post", "bot run") as pid:
        run = subprocess.run(
            [sys.executable, "-m", "bot", "post", "--topic", "reef"], capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 1
    assert f"process {pid} (bot run" in run.stderr
    assert records(state_dir) == []


# -- bad input: a clear error, exit 2, nothing changed ------------------------------


def assert_nothing_changed(state_dir: Path) -> None:
    assert records(state_dir) == []
    assert not (state_dir / "archive").exists() or not any((state_dir / "archive").iterdir())
    assert not (state_dir / "outbox").exists() or not outbox_entries(state_dir)


def test_unknown_topic_lists_the_valid_ones(state_dir: Path, templates: Path, capsys) -> None:
    code, _, err = run_bot(capsys, "post", "--topic", "volcano")
    assert code == 2 and "volcano" in err and "reef" in err and "ice" in err
    assert_nothing_changed(state_dir)


def test_missing_weights_stop_before_any_work_and_name_the_fix(state_dir: Path, templates: Path, capsys) -> None:
    PatternGenerator.weights_present = False
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2 and "bot models fetch test-pattern" in err
    assert PatternGenerator.calls == []
    assert_nothing_changed(state_dir)


def test_no_silent_fallback_when_no_topic_has_a_model(state_dir: Path, templates: Path, capsys) -> None:
    PatternGenerator.weights_present = False
    code, _, err = run_bot(capsys, "post")
    assert code == 2 and "no topic can be posted" in err and "reef:" in err and "ice:" in err
    assert_nothing_changed(state_dir)


def test_malformed_topics_file_names_file_and_line(state_dir: Path, templates: Path, capsys) -> None:
    path = templates / "topics.toml"
    path.write_text(path.read_text() + "\n[topics.broken\n", encoding="utf-8")
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2 and "topics.toml" in err and "line" in err
    assert_nothing_changed(state_dir)


@pytest.mark.parametrize("damage", ["missing", "broken"])
def test_missing_or_broken_caption_template(state_dir: Path, templates: Path, capsys, damage: str) -> None:
    path = templates / "caption.j2"
    if damage == "missing":
        path.unlink()
    else:
        path.write_text("{% for fact in topic.facts %}unclosed", encoding="utf-8")
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2 and "caption.j2" in err
    assert_nothing_changed(state_dir)


def test_caption_over_the_limit_is_refused_before_generating(state_dir: Path, templates: Path, capsys) -> None:
    path = templates / "topics.toml"
    long_fact = "A very long fact. " * 70
    text = path.read_text().replace("A first fact about reef.", long_fact).replace("A second fact about reef.", long_fact)
    path.write_text(text, encoding="utf-8")
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2 and "2,200" in err
    assert PatternGenerator.calls == []
    assert_nothing_changed(state_dir)


def test_unwritable_state_directory(tmp_path: Path, templates: Path, capsys, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("BOT_PATHS_STATE", str(blocker / "state"))
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2 and "state directory" in err


def test_corrupt_store_is_reported_and_kept(state_dir: Path, templates: Path, capsys) -> None:
    (state_dir / "bot.json").write_text('{"posts": {"1": ', encoding="utf-8")
    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 1 and "not valid JSON" in err and "kept as it is" in err
    assert (state_dir / "bot.json").read_text() == '{"posts": {"1": '
    assert PatternGenerator.calls == []


@pytest.mark.parametrize(("flag", "value"), [("--generator", "nope"), ("--publisher", "carrier-pigeon")])
def test_unknown_generator_or_publisher(state_dir: Path, templates: Path, capsys, flag: str, value: str) -> None:
    code, _, err = run_bot(capsys, "post", "--topic", "reef", flag, value)
    assert code == 2 and value in err and "available" in err
    assert_nothing_changed(state_dir)


def test_other_topic_while_one_is_unfinished_is_refused(state_dir: Path, templates: Path, capsys) -> None:
    PatternGenerator.fail_next = 1
    run_bot(capsys, "post", "--topic", "reef")
    code, _, err = run_bot(capsys, "post", "--topic", "ice")
    assert code == 1 and "unfinished" in err and "reef" in err
    assert len(records(state_dir)) == 1
