"""VQGAN+CLIP request checking: every bad option, file or model combination is
refused by ``plan`` with a message naming it, before any model loads; a CUDA
out-of-memory becomes such a message too. Tiny models built in the test, as in
tests/test_vqgan_clip.py; nothing from a hub."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile

from generators import GenerationRequest, InvalidRequest, get_generator
from generators.vqgan_clip import plugin
from generators.vqgan_clip.cutouts import CutoutSettings
from generators.vqgan_clip.optimise import RunSettings
from generators.vqgan_clip.tiny import TINY_CLIP_CONFIG, TINY_CLIP_NAME
from support import vqgan_bot_config

TINY_GELU_NAME = "dstrtd-tiny-clip-gelu"


def _request(prompts: str = "coral reef", **options) -> GenerationRequest:
    base = {"iterations": 5, "cutouts": 4, "stop": "none"}
    request = GenerationRequest(prompts=prompts, seed=0, size=32, device="cpu", options={**base, **options})
    request.progress = lambda *a: pytest.fail("work started")
    return request


def _refused(generator, request: GenerationRequest, match: str) -> None:
    """Refused by check and by generate, before any work, and the request is left as it was."""
    options = json.dumps(request.options, sort_keys=True, default=repr)
    with pytest.raises(InvalidRequest, match=match):
        generator.check(request)
    with pytest.raises(InvalidRequest, match=match):
        generator.generate(request)
    assert json.dumps(request.options, sort_keys=True, default=repr) == options


def _register_tiny_gelu_clip() -> str:
    """The tiny CLIP with GELU instead of QuickGELU: the same state-dict keys,
    as ViT-B-32 and ViT-B-32-quickgelu have."""
    import tempfile

    import open_clip

    if TINY_GELU_NAME not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="dstrtd-tiny-gelu-"))
        (folder / f"{TINY_GELU_NAME}.json").write_text(json.dumps({**TINY_CLIP_CONFIG, "quick_gelu": False}))
        open_clip.add_model_config(folder)
    return TINY_GELU_NAME


# A. the CLIP architecture comes from the store entry ---------------------------

def test_clip_architecture_defaults_to_the_one_the_store_recorded(tiny_config):
    config = {k: v for k, v in tiny_config.items() if k != "clip_model"}
    plan = get_generator("vqgan-clip", config).plan(_request())
    assert plan["models"]["clip"]["architecture"] == TINY_CLIP_NAME


def test_a_clip_model_other_than_the_stores_is_refused_before_loading(tiny_config):
    from generators.vqgan_clip.clip_model import create_architecture

    gelu = _register_tiny_gelu_clip()
    # Strict loading could not catch it: the keys are the same.
    assert set(create_architecture(gelu).state_dict()) == set(create_architecture(TINY_CLIP_NAME).state_dict())
    match = f"clip_model '{gelu}' does not match clip_weights 'tiny_clip'.*'{TINY_CLIP_NAME}'"
    from_config = get_generator("vqgan-clip", {**tiny_config, "clip_model": gelu})
    _refused(from_config, _request(), match)
    assert not from_config._cache
    config = {k: v for k, v in tiny_config.items() if k != "clip_model"}
    _refused(get_generator("vqgan-clip", config), _request(clip_model=gelu), match)


def test_weights_given_as_a_file_use_clip_model_or_the_fallback(tiny_config):
    weights = str(Path(tiny_config["models_dir"]) / "tiny_clip" / "model.safetensors")
    config = {k: v for k, v in tiny_config.items() if k != "clip_model"}
    plan = get_generator("vqgan-clip", {**config, "clip_weights": weights}).plan(_request())
    assert plan["models"]["clip"]["architecture"] == plugin.FALLBACK_CLIP_MODEL
    plan = get_generator("vqgan-clip", {**config, "clip_weights": weights}).plan(_request(clip_model=TINY_CLIP_NAME))
    assert plan["models"]["clip"]["architecture"] == TINY_CLIP_NAME


# C. numbers ------------------------------------------------------------------

@pytest.mark.parametrize(
    "options, match",
    [
        ({"cut_power": "nan"}, r"cut_power 'nan' is not a finite number; allowed: >= 0"),
        ({"learning_rate": math.inf}, r"learning_rate inf is not a finite number"),
        ({"stop": "plateau", "stop_min_delta": math.nan}, r"stop_min_delta nan is not a finite number"),
        ({"init_weight": "-inf"}, r"init_weight '-inf' is not a finite number"),
        ({"time_budget_s": math.inf}, r"time_budget_s inf is not a finite number"),
        ({"iterations": math.inf}, r"iterations inf is not an integer; allowed: between 1 and 100000"),
        ({"cutouts": 2.5}, r"cutouts 2.5 is not an integer"),
        ({"candidates": True}, r"candidates True is not an integer"),
        ({"max_side": "abc"}, r"max_side 'abc' is not an integer"),
        ({"max_side": 8}, r"max_side 8 is out of range; allowed: 0 \(no cap\) or 16"),
        ({"snapshot_steps": [-3, 10**9]}, r"snapshot_steps \[-3, 1000000000\]: \[-3, 1000000000\] not allowed; "
                                          r"allowed: whole step numbers from 1 to iterations \(5\)"),
        ({"snapshot_steps": [2, 6]}, r"\[6\] not allowed.*1 to iterations \(5\)"),
        ({"snapshot_steps": "2, x"}, r"\['x'\] not allowed"),
        ({"snapshot_steps": [2.5]}, r"\[2.5\] not allowed"),
        ({"snapshot_steps": {"a": 1}}, r"is not a list of steps"),
        ({"width": "abc", "height": 32}, r"size width 'abc' is not a whole number; use a whole number of pixels "
                                         r"that is a multiple of 16"),
        ({"width": 64.5, "height": 32}, r"size width 64.5 is not a whole number"),
        ({"width": 32, "height": None}, r"size height None is not a whole number"),
        ({"width": 8, "height": 32}, r"size width 8 is not allowed; .*multiple of 16, at least 16"),
    ],
)
def test_bad_numbers_are_refused_naming_option_value_and_range(generator, options, match):
    _refused(generator, _request(**options), match)


def test_numbers_in_strings_and_whole_floats_are_accepted(generator):
    plan = generator.plan(_request(width="64", height=48.0, snapshot_steps="5, 1,3", max_side="0", cut_power="2"))
    settings = plan["settings"]
    assert (settings.width, settings.height) == (64, 48)
    assert settings.snapshot_steps == (1, 3, 5)
    assert settings.cutouts.power == 2.0 and not plan["notes"]


# D. image files ----------------------------------------------------------------

def _png(path: Path, size: int = 32) -> Path:
    Image.new("RGB", (size, size), (40, 120, 200)).save(path)
    return path


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_files_are_refused_before_the_models_load(tiny_config, tmp_path, damage):
    bad = tmp_path / "bad.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not an image" * 10)
    else:
        data = _png(tmp_path / "good.png", 64).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    for key, value in (("init_image", str(bad)), ("image_prompts", f"{_png(tmp_path / 'ok.png')}:1 | {bad}:0.5")):
        fresh = get_generator("vqgan-clip", tiny_config)
        _refused(fresh, _request(**{key: value}), f"{key}: '{bad}' is not an image file that can be read")
        assert not fresh._cache  # no model was loaded


@pytest.mark.slow
def test_readable_init_and_prompt_images_run(generator, tmp_path):
    image = _png(tmp_path / "start.png", 40)  # resized to the run's size
    request = _request(init_image=str(image), image_prompts=f"{image}:0.5", iterations=2)
    request.progress = None
    result = generator.generate(request)
    assert result.image.size == (32, 32) and len(result.loss_curve) == 2


def _count_decodes(monkeypatch) -> Counter:
    """Pixel decodes from now on, by image size. ``ImageFile.load`` decodes
    while ``tile`` lists undecoded data and empties it; a later call on the
    same image only returns the pixels, so it is not counted."""
    decodes: Counter = Counter()
    real = ImageFile.ImageFile.load

    def counting(self):
        if self.tile:
            decodes[self.size] += 1
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return decodes


def test_each_image_file_is_decoded_once_per_generate(generator, tmp_path, monkeypatch):
    # plan decodes the images to check them, and generate uses those: a large
    # image is not decoded a second time.
    init, prompt = _png(tmp_path / "start.png", 24), _png(tmp_path / "prompt.png", 40)
    request = _request(init_image=str(init), image_prompts=f"{prompt}:0.5", iterations=2)
    request.progress = None
    decodes = _count_decodes(monkeypatch)
    result = generator.generate(request)
    assert decodes == {(24, 24): 1, (40, 40): 1}
    assert result.image.size == (32, 32)
    assert result.parameters["image_prompts"] == [f"{prompt}:0.5"] and result.parameters["init_image"] == str(init)


# F. out of memory ----------------------------------------------------------------

def test_cuda_out_of_memory_becomes_a_message_naming_what_to_lower(tiny_config, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.\nsecond line")

    monkeypatch.setattr(plugin, "optimise", out_of_memory)
    request = _request(candidates=2)
    request.progress = None
    with pytest.raises(InvalidRequest) as raised:
        get_generator("vqgan-clip", tiny_config).generate(request)
    message = str(raised.value)
    assert "size 32x32 with 4 cutouts and 2 candidate(s) ran out of memory on cpu" in message
    assert "Tried to allocate 20.00 GiB" in message and "second line" not in message
    assert "smaller size, fewer cutouts or fewer candidates" in message
    assert raised.value.__cause__ is None  # the failed run's tensors are not kept alive by the error


@pytest.mark.parametrize("cutouts, measured_gib", [(32, 4.56), (64, 5.05)])
def test_memory_estimate_covers_the_h100_measurements(cutouts, measured_gib):
    # bench/results/vqgan_clip-h100.json: fast mode, no compile, bf16 autocast, 480x480.
    settings = RunSettings(width=480, height=480, cutouts=CutoutSettings(count=cutouts))
    estimate = plugin.estimate_memory(settings, torch.device("cuda")) / 2**30
    assert measured_gib < estimate < measured_gib * 1.4


# G. --time-budget ------------------------------------------------------------------

def test_cli_time_budget_reaches_the_run_settings(tiny_config, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bot.cli import cli
    from bot.errors import BadInput

    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    config = vqgan_bot_config(tiny_config, tmp_path, with_clip_model=False)
    base = ["--config", str(config), "generate", "--prompt", "coral reef", "--size", "32", "--iterations", "2",
            "--cutouts", "2", "--seed", "3", "--device", "cpu", "--profile", "cpu"]
    out = tmp_path / "out"
    run = CliRunner().invoke(cli, [*base, "--time-budget", "0", "--out", str(out), "--json"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["time_budget_s"] == 0.0  # the cpu profile's 40 minutes are off
    assert manifest["models"]["clip"]["name"].startswith(TINY_CLIP_NAME)  # architecture from the store
    for bad in ("-1", "nan", "inf"):
        refused = CliRunner().invoke(cli, [*base, "--time-budget", bad, "--out", str(tmp_path / "no")])
        assert isinstance(refused.exception, BadInput), refused.output  # exit code 2 through bot.cli.main
        assert f"--time-budget {float(bad)!r} is not allowed; use seconds >= 0" in str(refused.exception)
        assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), ("false", False), ("Off", False), ("yes", True), ("1", True)])
def test_boolean_options_read_quoted_values(value: object, expected: bool) -> None:
    from generators.vqgan_clip.plugin import _flag

    assert _flag({"fast": value}, "fast", True) is expected


@pytest.mark.parametrize("value", ["maybe", 2, None, 1.5])
def test_a_boolean_option_that_is_no_boolean_is_refused(value: object) -> None:
    from generators.vqgan_clip.plugin import _flag

    with pytest.raises(InvalidRequest, match=r"augment .* is not a boolean; allowed: true or false"):
        _flag({"augment": value}, "augment", True)
