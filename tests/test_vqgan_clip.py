"""The VQGAN+CLIP generator, with a tiny VQGAN and a tiny CLIP built in the test
(same code paths as the real models: official checkpoint format, model store,
open_clip)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from generators import GenerationRequest, InvalidRequest, ModelUnavailable, get_generator
from generators.vqgan_clip.optimise import RunSettings, StopRule, optimise
from generators.vqgan_clip.cutouts import CutoutSettings
from generators.vqgan_clip.prompts import parse_prompts
from support import vqgan_bot_config


def _request(prompts: str = "coral reef", seed: int = 1, size: int = 32, **options) -> GenerationRequest:
    base = {"iterations": 10, "cutouts": 8, "stop": "none"}
    return GenerationRequest(prompts=prompts, seed=seed, size=size, device="cpu", options={**base, **options})


def _loaded(generator, request):
    plan = generator.plan(request)
    vqgan, perceptor = generator._load(plan["models"], plan["device"])
    return plan, vqgan, perceptor


def test_parse_weighted_prompts():
    prompts = parse_prompts("coral reef:1 | blurry:-0.5 | photo: a reef")
    assert [(p.text, p.weight) for p in prompts] == [("coral reef", 1.0), ("blurry", -0.5), ("photo: a reef", 1.0)]


@pytest.mark.slow
def test_loss_falls_over_a_few_dozen_steps(generator):
    result = generator.generate(_request(iterations=40, learning_rate=0.2))
    curve = result.loss_curve
    assert len(curve) == 40
    assert result.loss_label == "spherical distance loss"
    assert np.mean(curve[-8:]) < np.mean(curve[:8]) - 0.01


def test_progress_reports_every_step_with_the_loss(generator):
    seen = []
    request = _request(iterations=4)
    request.progress = lambda step, total, info: seen.append((step, total, info["loss"]))
    result = generator.generate(request)
    assert [s[0] for s in seen] == [1, 2, 3, 4] and all(s[1] == 4 for s in seen)
    assert [s[2] for s in seen] == pytest.approx(result.loss_curve)


# 64 px: the tiny decoder's last level is 64x64, where the CPU fast path runs NNPACK
@pytest.mark.parametrize("size", [32, 64])
def test_same_seed_same_image_other_seed_other_image(generator, size):
    a = generator.generate(_request(seed=5, iterations=5, size=size))
    b = generator.generate(_request(seed=5, iterations=5, size=size))
    c = generator.generate(_request(seed=6, iterations=5, size=size))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.loss_curve == b.loss_curve
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_result_carries_what_is_needed_to_regenerate(generator):
    result = generator.generate(_request(iterations=6, snapshot_steps=[2, 4], width=48, height=32))
    assert result.image.size == (48, 32)
    assert sorted(result.snapshots) == [2, 4]
    assert result.parameters["seed"] == 1 and result.parameters["iterations"] == 6
    assert result.parameters["cutouts"]["count"] == 8
    assert len(result.models["vqgan"]["sha256"]) == 64 and len(result.models["clip"]["sha256"]) == 64
    assert result.extras["stop_step"] == 6 and result.extras["stopped_early"] is False
    assert result.timings["optimise_s"] > 0
    json.dumps(result.parameters)  # the manifest must be JSON


def test_stop_rule_waits_for_a_plateau():
    rule = StopRule(min_steps=20, window=10, min_delta=0.01)
    falling = [1.0 - 0.005 * i for i in range(100)]  # 0.05 per window: keeps going
    assert not any(rule.should_stop(falling[:t]) for t in range(1, 101))
    # Falls fast for 60 steps, then flat: must not stop before step 60, must stop by 60 + 2 windows.
    curve = [1.0 - 0.01 * i for i in range(60)] + [0.41] * 60
    stops = [t for t in range(1, 121) if rule.should_stop(curve[:t])]
    assert stops and 60 < stops[0] <= 80
    assert not rule.should_stop(curve[:19])  # never before min_steps


def test_plateau_stops_the_optimisation_and_reports_the_step(generator):
    # learning rate 0: the loss is flat from the start, so the rule stops as soon as it may.
    result = generator.generate(_request(iterations=50, stop="plateau", learning_rate=0.0,
                                         stop_min_steps=12, stop_window=6, stop_min_delta=0.05))
    assert result.extras["stop_step"] == 12 and result.extras["stopped_early"] is True
    assert result.extras["stop_reason"] == "plateau"
    assert len(result.loss_curve) == 12


def test_time_budget_stops_the_loop(generator):
    result = generator.generate(_request(iterations=50, time_budget_s=1e-9))
    assert result.extras["stop_step"] == 1 and result.extras["stop_reason"] == "time budget"
    assert len(result.loss_curve) == 1


def test_best_of_n_returns_the_best_scoring_candidate(generator):
    request = _request(iterations=3)
    plan, vqgan, perceptor = _loaded(generator, request)
    settings = RunSettings(**{**plan["settings"].__dict__, "candidates": 3})
    outcome = optimise(vqgan, perceptor, plan["prompts"], settings, seed=3, device=torch.device("cpu"))
    assert len(outcome.candidates) == 3 and len(outcome.scores) == 3
    assert outcome.best == int(np.argmin(outcome.scores))
    assert np.array_equal(np.asarray(outcome.image), np.asarray(outcome.candidates[outcome.best]))
    assert len(set(outcome.scores)) == 3  # distinct candidates really were optimised
    # And through the generator: the reported curve is the best candidate's.
    result = generator.generate(_request(iterations=3, candidates=3))
    best = result.extras["best_candidate"]
    assert result.extras["candidate_scores"][best] == min(result.extras["candidate_scores"])
    assert result.loss_curve == result.extras["candidate_curves"][best]


@pytest.mark.parametrize("side", [64, 480])  # 480: crops blend low-passed levels of the image
@pytest.mark.parametrize("augment", [False, True])
def test_batched_cutouts_cover_the_requested_crops(side, augment):
    from generators.vqgan_clip.cutouts import make_cutouts

    image = torch.zeros(2, 3, side, side)
    image[1] = 1.0
    gen = torch.Generator().manual_seed(0)
    cut = 16 if side == 64 else 224
    crops = make_cutouts(image, cut, CutoutSettings(count=4, augment=augment, noise=0.0), gen)
    assert crops.shape == (8, 3, cut, cut)
    # crops 0-3 come from candidate 0 (black), 4-7 from candidate 1 (white)
    assert crops[:4].abs().max() < 1e-5 and (crops[4:] - 1).abs().max() < 1e-5


def _checkerboard(side: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return ((xx + yy) % 2).float().expand(1, 3, side, side).clone()


def test_fast_cutouts_do_not_alias_a_one_pixel_checkerboard():
    from generators.vqgan_clip.cutouts import make_cutouts, make_cutouts_reference

    # power 0: every crop is the whole 480-px image, shrunk 2.14x to 224.
    settings = CutoutSettings(count=2, power=0.0, augment=False)
    image = _checkerboard(480)
    fast = make_cutouts(image, 224, settings, torch.Generator().manual_seed(0))
    reference = make_cutouts_reference(image, 224, settings, torch.Generator().manual_seed(0))
    # Plain bilinear sampling left std 0.17 (a moire); the reference's average pooling 0.056.
    assert float(fast.std()) < 0.01 and float(fast.std()) <= float(reference.std())
    assert abs(float(fast.mean()) - 0.5) < 1e-3


def test_fast_cutouts_keep_what_the_crop_can_show():
    from generators.vqgan_clip.cutouts import make_cutouts, make_cutouts_reference

    # 32-px stripes shrunk 2.14x are still ~15 px: the prefilter must not blur them away.
    stripes = ((torch.arange(480) // 16) % 2).float().expand(1, 3, 480, 480).clone()
    settings = CutoutSettings(count=2, power=0.0, augment=False)
    fast = make_cutouts(stripes, 224, settings, torch.Generator().manual_seed(0))
    reference = make_cutouts_reference(stripes, 224, settings, torch.Generator().manual_seed(0))
    assert float(fast.std()) > 0.9 * float(reference.std()) > 0.4


def test_fast_cutouts_give_every_pixel_a_gradient():
    from generators.vqgan_clip.cutouts import make_cutouts

    image = torch.rand(1, 3, 480, 480, requires_grad=True)
    crops = make_cutouts(image, 224, CutoutSettings(count=2, power=0.0, augment=False), torch.Generator())
    crops.sum().backward()
    assert bool((image.grad != 0).all())  # plain bilinear sampling missed 23 % of them


def test_crops_at_the_cut_size_are_exact_slices():
    from generators.vqgan_clip.cutouts import make_cutouts

    # Short side = cut size: every crop is 224 px, one of 17 horizontal offsets, no resampling.
    image = torch.rand(1, 3, 224, 240)
    crops = make_cutouts(image, 224, CutoutSettings(count=6, augment=False), torch.Generator().manual_seed(1))
    for crop in crops:
        errors = [float((crop - image[0, :, :, ox:ox + 224]).abs().max()) for ox in range(17)]
        assert min(errors) < 1e-4


def _backend_flags() -> tuple:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


def test_backend_flags_are_set_for_the_run_only_and_fp32_keeps_tf32_off():
    from generators.vqgan_clip.optimise import backend_flags

    cuda = torch.device("cuda")  # only the flags are touched: nothing runs on it
    saved = _backend_flags()
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        torch.backends.cudnn.benchmark = False
        before = _backend_flags()
        with backend_flags(RunSettings(precision="fp32"), cuda):
            assert _backend_flags() == (False, False, True)  # even though the process had TF32 on
        assert _backend_flags() == before
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
        before = _backend_flags()
        for precision in ("auto", "bf16"):
            with backend_flags(RunSettings(precision=precision), cuda):
                assert _backend_flags() == (True, True, True)
            assert _backend_flags() == before
        with pytest.raises(KeyboardInterrupt), backend_flags(RunSettings(), cuda):
            raise KeyboardInterrupt
        assert _backend_flags() == before
        with backend_flags(RunSettings(), torch.device("cpu")):
            assert _backend_flags() == before
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_a_run_goes_through_backend_flags_and_leaves_the_flags_as_they_were(generator, monkeypatch):
    import contextlib

    from generators.vqgan_clip import optimise as optimise_module

    entered = []
    real = optimise_module.backend_flags

    @contextlib.contextmanager
    def recording(settings, device):
        with real(settings, device):
            entered.append((settings.precision, device.type))
            yield

    monkeypatch.setattr(optimise_module, "backend_flags", recording)
    before = _backend_flags()
    generator.generate(_request(iterations=2, precision="fp32"))
    assert entered == [("fp32", "cpu")] and _backend_flags() == before


@pytest.mark.parametrize(
    "prompts, options, size, match",
    [
        ("", {}, 32, "prompt is empty"),
        ("   ", {}, 32, "prompt is empty"),
        ("reef | ", {}, 32, "empty prompt"),
        ("reef:0", {}, 32, "all weights are zero"),
        ("reef", {}, 40, "multiple of 16"),
        ("reef", {"width": 48, "height": 30}, 32, "multiple of 16"),
        ("reef", {"width": 16000, "height": 16000}, 32, "GiB"),
        ("reef", {"cutouts": 0}, 32, "cutouts"),
        ("reef", {"iterations": "many"}, 32, "iterations"),
        ("reef", {"stop": "sometimes"}, 32, "plateau or none"),
        ("reef", {"clip_model": "ViT-Q-99"}, 32, "not an open_clip architecture"),
        ("reef", {"bogus": 1}, 32, "not known"),
        ("reef", {"init_image": "/nonexistent.png"}, 32, "does not exist"),
    ],
)
def test_bad_input_is_refused_before_any_work(generator, prompts, options, size, match):
    request = GenerationRequest(prompts=prompts, seed=0, size=size, device="cpu",
                                options={"iterations": 5, "cutouts": 4, **options})
    request.progress = lambda *a: pytest.fail("work started")
    with pytest.raises(InvalidRequest, match=match):
        generator.check(request)
    with pytest.raises(InvalidRequest, match=match):
        generator.generate(request)


def test_missing_weights_name_the_fix(tmp_path):
    generator = get_generator("vqgan-clip", {"models_dir": str(tmp_path / "empty")})
    with pytest.raises(ModelUnavailable, match="bot models fetch vqgan_imagenet_f16_16384"):
        generator.check(GenerationRequest(prompts="coral reef", size=32, device="cpu"))
    assert not (tmp_path / "empty").exists()


def test_cpu_profile_shrinks_large_sizes(generator):
    plan = generator.plan(GenerationRequest(prompts="reef", size=480, device="cpu", options={"profile": "cpu"}))
    assert (plan["settings"].width, plan["settings"].height) == (256, 256)
    assert plan["settings"].cutouts.count == 16 and "reduced" in plan["notes"][0]
    assert plan["settings"].time_budget_s == 40 * 60


@pytest.mark.slow
def test_cli_generate_writes_image_curve_and_manifest(tiny_config, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bot.cli import cli

    monkeypatch.setenv("BOT_PATHS_MODELS", tiny_config["models_dir"])
    config = vqgan_bot_config(tiny_config, tmp_path)
    out = tmp_path / "out"
    args = ["--config", str(config), "generate", "--prompt", "coral reef:1 | blurry:-0.5", "--size", "32x48",
            "--iterations", "3", "--cutouts", "4", "--seed", "7", "--snapshot", "2", "--device", "cpu",
            "--out", str(out), "--json"]
    run = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 7 and len(manifest["loss_curve"]) == 3
    assert (out / "image.png").is_file() and (out / "loss_curve.png").is_file()
    assert (out / "snapshots" / "step-00002.png").is_file()
    topic = CliRunner().invoke(cli, ["--config", str(config), "generate", "--topic", "coral", "--size", "32",
                                     "--iterations", "2", "--cutouts", "2", "--device", "cpu",
                                     "--out", str(tmp_path / "coral"), "--json"], catch_exceptions=False)
    assert topic.exit_code == 0, topic.output
    assert "coral reef" in json.loads((tmp_path / "coral" / "manifest.json").read_text())["parameters"]["prompts"]
    bad = CliRunner().invoke(cli, ["--config", str(config), "generate", "--prompt", "", "--out", str(tmp_path / "no")])
    assert bad.exit_code != 0 and not (tmp_path / "no").exists()
