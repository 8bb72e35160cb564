"""A review of `bot post`, `bot config` and the archive as someone running the
bot for months would meet them: settings that were silently ignored or
accepted, a dry run that published for real, and manifests that could not
make the same image again."""

from __future__ import annotations

import hashlib
import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import bot.posters as posters_module
from bot.config import load_settings
from bot.errors import ConfigError
from generators import GenerationRequest, GenerationResult, register_generator

# The fake generator and publisher of the pipeline tests, and their fixtures
# (`_reset_fakes` is autouse, so it must be imported into this module).
from test_pipeline import (  # noqa: F401
    FlakyPublisher,
    PatternGenerator,
    _reset_fakes,
    assert_nothing_changed,
    outbox_entries,
    records,
    run_bot,
    templates,
)
from support import write_test_templates


class BudgetGenerator:
    """Stands in for VQGAN+CLIP on a busy CPU: without ``time_budget_s = 0`` it
    stops after however many steps the machine managed (``busy_steps``), and
    the image depends on the prompts, the seed and the steps run."""

    name = "test-budget"
    busy_steps = 37

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def check(self, request: GenerationRequest) -> None:
        pass

    def generate(self, request: GenerationRequest) -> GenerationResult:
        iterations = int(request.options.get("iterations", 100))
        budget = float(request.options.get("time_budget_s", 2400))
        steps = iterations if budget == 0 else min(iterations, BudgetGenerator.busy_steps)
        digest = hashlib.sha256(f"{request.prompts}|{request.seed}|{steps}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        pixels = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
        return GenerationResult(
            image=Image.fromarray(pixels),
            seed=request.seed,
            generator=self.name,
            parameters={"prompts": request.prompts, "iterations": iterations, "profile": "cpu"},
            loss_curve=[1.0 - 0.01 * s for s in range(steps)],
            extras={"stop_step": steps, "stop_reason": "time budget" if steps < iterations else "iterations"},
        )


register_generator("test-budget", BudgetGenerator, "a generator stopped by a time budget")


@pytest.fixture(autouse=True)
def _reset_budget() -> None:
    BudgetGenerator.busy_steps = 37


def write_config(folder: Path, text: str) -> Path:
    path = folder / "bot.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- resuming a post: flags that would be silently ignored -------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--dry-run",), "--dry-run"),
        (("--publisher", "outbox"), "--publisher"),
        (("--seed", "8"), "--seed"),
        (("--generator", "test-budget"), "--generator"),
    ],
)
def test_flags_that_do_not_apply_to_the_unfinished_post_are_refused(
    state_dir: Path, templates: Path, capsys, flags: tuple[str, ...], named: str
) -> None:
    """`bot post --dry-run` while a real post was unfinished used to resume that
    post and publish it for real (here through 'flaky', in life to Instagram);
    --publisher, --seed and --generator were dropped just as silently."""
    FlakyPublisher.fail_before = 1
    code, _, _ = run_bot(capsys, "post", "--topic", "reef", "--publisher", "flaky", "--seed", "7")
    assert code == 1
    [post] = records(state_dir)
    assert post["status"] == "rendered"

    code, _, err = run_bot(capsys, "post", *flags)
    assert code == 1 and named in err and post["id"] in err, err
    [after] = records(state_dir)
    assert after["status"] == "rendered" and len(after["attempts"]) == 1
    assert outbox_entries(state_dir) == []

    # flags that agree with the post resume it as before
    code, _, err = run_bot(capsys, "post", "--publisher", "flaky", "--seed", "7")
    assert code == 0, err
    assert records(state_dir)[0]["status"] == "published"


# -- settings ------------------------------------------------------------------------


def test_a_generator_table_named_like_the_generator_is_read(tmp_path: Path) -> None:
    """[generators.vqgan-clip] (the generator's name as `bot topics` shows it)
    used to be kept and never read: the generator asks for vqgan_clip."""
    config = write_config(tmp_path, '[generators.vqgan-clip]\nprofile = "cpu"\n')
    settings = load_settings(config, environ={})
    assert settings.generator_config("vqgan-clip")["profile"] == "cpu"


def test_the_same_generator_table_twice_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[generators.vqgan-clip]\nprofile = "cpu"\n[generators.vqgan_clip]\nprofile = "full"\n')
    with pytest.raises(ConfigError, match=r"generators\.vqgan-clip.*generators\.vqgan_clip"):
        load_settings(config, environ={})


def test_a_misspelt_generator_table_is_refused_before_posting(
    state_dir: Path, templates: Path, tmp_path: Path, capsys
) -> None:
    """A typo in a [generators.*] name used to be accepted and ignored: the
    post was made with the defaults the person meant to change."""
    config = write_config(tmp_path, '[generators.test_patern]\niterations = 5\n')
    code, _, err = run_bot(capsys, "--config", str(config), "post", "--topic", "reef")
    assert code == 2 and "generators.test_patern" in err and "test_pattern" in err, err
    assert PatternGenerator.calls == []
    assert_nothing_changed(state_dir)

    code, _, err = run_bot(capsys, "--config", str(config), "config", "show")
    assert code == 2 and "generators.test_patern" in err, err


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("BOT_SCHEDULE_CRONN", r"BOT_SCHEDULE_CRONN.*BOT_SCHEDULE_CRON\b"),
        ("BOT_INSTAGRAM_USERNAME_FILE", "BOT_INSTAGRAM_USERNAME_FILE"),
        ("BOT_GENERATORS_GAN_SIZE", r"BOT_GENERATORS_GAN_SIZE.*\[generators\.gan\]"),
    ],
)
def test_a_bot_variable_that_names_no_setting_is_refused(name: str, message: str) -> None:
    """A misspelt BOT_* variable used to be ignored without a word, so the
    daemon ran on the default the person meant to override."""
    with pytest.raises(ConfigError, match=message):
        load_settings(None, environ={name: "1"})


def test_a_secret_set_twice_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    with pytest.raises(ConfigError, match="BOT_INSTAGRAM_PASSWORD.*BOT_INSTAGRAM_PASSWORD_FILE"):
        load_settings(None, environ={"BOT_INSTAGRAM_PASSWORD": "inline", "BOT_INSTAGRAM_PASSWORD_FILE": str(secret)})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[publish]\nmax_attempts = 0\n", "publish.max_attempts = 0 is not allowed; allowed: 1 or more"),
        ("[publish]\nmax_attempts = -1\n", "publish.max_attempts = -1 is not allowed"),
        ("[publish]\nretry_backoff_seconds = -5\n", "publish.retry_backoff_seconds = -5.0 is not allowed"),
        ("[schedule]\nheartbeat_seconds = 0\n", "schedule.heartbeat_seconds = 0.0 is not allowed"),
        ("[schedule]\njitter_seconds = -60\n", "schedule.jitter_seconds = -60 is not allowed"),
        ("[instagram]\ncooldown_seconds = -1\n", "instagram.cooldown_seconds = -1.0 is not allowed"),
        ("[instagram]\nengagement_schedule_hours = [1, -6]\n", "instagram.engagement_schedule_hours"),
        # inf and nan inside a list used to pass: only single numbers were checked
        ("[instagram]\nengagement_schedule_hours = [1, inf]\n", "instagram.engagement_schedule_hours"),
        ("[instagram]\ndelay_range = [nan, nan]\n", "instagram.delay_range"),
        # a number or a time for a text setting used to become its string
        ("[account]\nurl = 5\n", "account.url = 5 is not a valid"),
        ("[schedule]\ncron = 18:00:00\n", "schedule.cron"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_setting(tmp_path: Path, text: str, message: str) -> None:
    """`bot post` used to accept publish.max_attempts = 0 or -1 (only the daemon
    checked it), and `bot config show` printed such values as if they were fine."""
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(config, environ={})
    assert str(config) in str(info.value)


def test_out_of_range_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"\$BOT_PUBLISH_MAX_ATTEMPTS: publish.max_attempts = 0 is not allowed"):
        load_settings(None, environ={"BOT_PUBLISH_MAX_ATTEMPTS": "0"})
    with pytest.raises(ConfigError, match="instagram.engagement_schedule_hours"):
        load_settings(None, environ={"BOT_INSTAGRAM_ENGAGEMENT_SCHEDULE_HOURS": "1,nan"})


def test_a_misspelt_publisher_setting_is_refused_even_on_a_dry_run(
    state_dir: Path, templates: Path, capsys, monkeypatch
) -> None:
    """publish.publisher = "instagramm" passed every dry run (which uses the
    outbox), and the first real run then failed with a message that did not
    say which setting was wrong."""
    monkeypatch.setenv("BOT_PUBLISH_PUBLISHER", "instagramm")
    for flags in (("--dry-run",), ()):
        code, _, err = run_bot(capsys, "post", "--topic", "reef", *flags)
        assert code == 2 and "publish.publisher" in err and "instagramm" in err and "auto" in err, err
    assert_nothing_changed(state_dir)


def test_config_show_prints_toml_that_reads_back(tmp_path: Path, capsys, monkeypatch) -> None:
    """The text output printed Python values (False, '...'), so a section copied
    into bot.toml was 'not valid TOML'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOT_PATHS_STATE", str(tmp_path / "state"))
    config = write_config(tmp_path, '[posters]\nmark = true\n[generators.gan]\nweights = "last"\n')
    code, out, err = run_bot(capsys, "--config", str(config), "config", "show")
    assert code == 0, err
    shown = tomllib.loads(out)
    assert shown["posters"]["mark"] is True and shown["publish"]["max_attempts"] == 3
    assert shown["instagram"]["delay_range"] == [1.0, 3.0]
    assert shown["generators"]["gan"]["weights"] == "last"


# -- topics.toml -----------------------------------------------------------------------


def test_an_unknown_generator_in_topics_toml_is_named_with_its_topic_and_file(
    state_dir: Path, tmp_path: Path, capsys, monkeypatch, caplog
) -> None:
    """A misspelt generator stopped `bot post` (no --topic) whenever its topic
    came first, with "unknown generator 'test-patern'" and neither the topic
    nor the file; a missing model, by contrast, skips to the next topic."""
    folder = write_test_templates(tmp_path / "typo", "test-pattern")
    path = folder / "topics.toml"
    path.write_text(path.read_text().replace('generator = "test-pattern"', 'generator = "test-patern"', 1))
    monkeypatch.setenv("BOT_PATHS_TEMPLATES", str(folder))

    code, _, err = run_bot(capsys, "post", "--topic", "reef")
    assert code == 2, err
    assert str(path) in err and "'reef'" in err and "test-patern" in err and "test-pattern" in err
    assert_nothing_changed(state_dir)

    code, out, err = run_bot(capsys, "post", "--json")
    assert code == 0, err
    assert json.loads(out)["topic"] == "ice"
    assert "reef" in caplog.text and "test-patern" in caplog.text and str(path) in caplog.text


# -- the archive -------------------------------------------------------------------------


def test_manifest_keeps_the_sources_and_the_request(state_dir: Path, templates: Path, capsys) -> None:
    """topics.toml promises each fact's url is "kept in every post's
    manifest.json"; the manifest had neither facts nor the topic's options."""
    code, out, err = run_bot(capsys, "post", "--topic", "reef", "--seed", "4", "--json")
    assert code == 0, err
    manifest = json.loads(Path(json.loads(out)["artefacts"]["manifest"]).read_text())
    assert [f["url"] for f in manifest["facts"]] == ["https://www.noaa.gov/", "https://www.nasa.gov/"]
    assert manifest["facts"][0]["source"] == "NOAA" and manifest["hashtags"] == ["dstrtdtest"]
    assert manifest["request"] == {"prompts": "a reef:1 | text:-0.5", "size": 480, "model": None, "options": {}}


def test_regenerate_command_remakes_an_image_stopped_by_the_time_budget(
    state_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """On a CPU the 40-minute budget decides where VQGAN+CLIP stops; the
    manifest's command left the budget on (and read the prompts from a
    topics.toml that may have changed since), so it made another image."""
    folder = write_test_templates(tmp_path / "templates", "test-budget")
    monkeypatch.setenv("BOT_PATHS_TEMPLATES", str(folder))
    monkeypatch.setenv("BOT_POSTERS_SIZE", "A5")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_bot(capsys, "post", "--topic", "reef", "--json")
    assert code == 0, err
    archive = state_dir / "archive" / json.loads(out)["post_id"]
    command = json.loads((archive / "manifest.json").read_text())["regenerate"]

    BudgetGenerator.busy_steps = 80  # a quieter machine gets further in the same time
    topics = folder / "topics.toml"
    topics.write_text(topics.read_text().replace("a reef:1", "a reef at dusk:1"))
    argv = shlex.split(command)
    code, _, err = run_bot(capsys, *argv[1:])
    assert code == 0, err
    remade = tmp_path / argv[argv.index("--out") + 1] / "image.png"
    assert remade.read_bytes() == (archive / "original.png").read_bytes()


def test_manifest_records_the_prompts_the_image_was_made_with(
    state_dir: Path, templates: Path, capsys, monkeypatch
) -> None:
    """Resuming after a render failure wrote the manifest from topics.toml as
    it was then: edited prompts were recorded for an image made with the old ones."""
    real = posters_module.render_poster

    def broken(*args, **kwargs):
        raise OSError("injected disk error while writing the poster")

    monkeypatch.setattr(posters_module, "render_poster", broken)
    assert run_bot(capsys, "post", "--topic", "reef")[0] == 1
    path = templates / "topics.toml"
    path.write_text(path.read_text().replace("a reef:1", "a reef at night:1"))
    monkeypatch.setattr(posters_module, "render_poster", real)
    code, out, err = run_bot(capsys, "post", "--json")
    assert code == 0, err
    manifest = json.loads(Path(json.loads(out)["artefacts"]["manifest"]).read_text())
    assert manifest["prompts"] == "a reef:1 | text:-0.5"
    assert "a reef at night" not in manifest["regenerate"]
