"""GAN training: every architecture on real (Hubble crops) and synthetic data,
metrics, checkpoints, exact resume, and bad input that changes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from generators.errors import CorruptModel, InvalidRequest
from generators.gan import ARCHS, TrainConfig, load_model, make_crops, train
from generators.gan.data import load_images

HUBBLE = Path(__import__("skimage").__file__).parent / "data" / "hubble_deep_field.jpg"
TINY = dict(img_size=32, width=4, max_width=16, z_dim=8, batch_size=8, sample_every=1, eval_every=1)


@pytest.fixture(scope="module")
def hubble_crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hubble") / "crops"
    make_crops(HUBBLE, folder, size=32, count=24, seed=3)
    return folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Coloured discs on black, in nested folders, as jpg/png/webp of several sizes."""
    folder = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    for i in range(20):
        size = int(rng.integers(40, 70))
        yy, xx = np.mgrid[:size, :size]
        cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(3, 8))]
        image = np.zeros((size, size, 3), np.uint8)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(60, 255, 3)
        sub = folder / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"img{i}.{['png', 'jpg', 'webp'][i % 3]}")
    return folder


def _train(data: Path, out: Path, **overrides) -> dict:
    options = {**TINY, **overrides}
    return train(TrainConfig(data=data, out=out, **options))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_trains_on_hubble_crops(arch: str, hubble_crops: Path, tmp_path: Path) -> None:
    out = tmp_path / arch
    summary = _train(hubble_crops, out, arch=arch, epochs=2)
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    if arch in ("wgan", "wgan-gp"):  # 24 crops / batch 8 = 3 critic steps in epoch 1, fewer than n_critic 5:
        assert rows[0]["g_loss"] is None  # no generator step yet, so no generator loss (not a false 0)
        rows[0]["g_loss"] = 0.0
    for row in rows:
        assert all(np.isfinite(row[k]) for k in ("g_loss", "d_loss", "d_acc_real", "d_acc_fake"))
        assert 0.0 <= row["d_acc_real"] <= 1.0 and 0.0 <= row["d_acc_fake"] <= 1.0
    assert {"kid", "kid_floor", "kid_thumbnails", "kid_thumbnails_floor", "diversity"} <= rows[-1].keys()
    assert all(np.isfinite(rows[-1][k]) for k in ("kid", "kid_thumbnails"))
    for name in ("generator.safetensors", "checkpoint.pt", "loss_curve.png", "report.json", "report.png", "samples/epoch-0002.png"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert {"kid", "diversity", "nearest_neighbour"} <= report["measures"].keys()
    assert summary["best"]["epoch"] in (1, 2)
    # the exported generator loads and samples at the trained size
    model = load_model(out)
    assert model.spec.arch == arch and model.spec.img_size == 32


def test_synthetic_folder_recursive_with_duplicates_and_broken_files(synthetic: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for path in synthetic.rglob("*.*"):
        target = data / path.relative_to(synthetic)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (data / "a" / "copy.png").write_bytes(next((synthetic / "a").glob("*.png")).read_bytes())
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (20, 20)).save(data / "tiny.png")
    images, report = load_images(data, 32)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    twin = next(p for p in (synthetic / "a").glob("*.png"))
    assert len(report.duplicates) == 1 and report.duplicates[0] in ("a/copy.png", f"a/{twin.name}")
    assert report.unreadable and report.unreadable[0].startswith("broken.jpg")
    assert report.too_small and report.too_small[0].startswith("tiny.png")
    summary = _train(data, tmp_path / "m", arch="dcgan", epochs=1)
    assert summary["data"]["used"] == 20 and summary["data"]["duplicates"] == report.duplicates
    assert len(_metrics(tmp_path / "m")) == 1


@pytest.mark.slow
def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(hubble_crops: Path, tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    _train(hubble_crops, whole, arch="diffaug", epochs=3, eval_every=2)
    _train(hubble_crops, split, arch="diffaug", epochs=2, eval_every=2)
    train(TrainConfig(data=hubble_crops, out=split, epochs=3, resume=True, eval_every=2, sample_every=1))
    assert _metrics(whole) == [{**r, "seconds": w["seconds"], "images_per_s": w["images_per_s"]} for r, w in zip(_metrics(split), _metrics(whole))]
    a, b = load_file(str(whole / "generator-last.safetensors")), load_file(str(split / "generator-last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trip(hubble_crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    _train(hubble_crops, out, arch="wgan-gp", epochs=1)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["spec"]["arch"] == "wgan-gp"
    assert checkpoint["hyper"]["n_critic"] == 5 and checkpoint["hyper"]["lr"] == 1e-4
    from generators.gan.models import ModelSpec, build_discriminator, build_generator

    spec = ModelSpec.from_dict(checkpoint["spec"])
    G, D = build_generator(spec), build_discriminator(spec)
    G.load_state_dict(checkpoint["generator"])
    D.load_state_dict(checkpoint["discriminator"])
    assert all(torch.equal(G.state_dict()[k], v) for k, v in checkpoint["generator"].items())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "too_small", "not_power_of_two", "too_large"],
)
def test_bad_data_or_size_is_a_clear_error_and_writes_nothing(case: str, hubble_crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    data, size, expect = hubble_crops, 32, ""
    if case == "missing":
        data, expect = tmp_path / "nope", "no such folder"
    elif case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
        (data / "notes.txt").write_text("no images here")
        expect = "no jpg/png/webp"
    elif case == "too_small":
        size, expect = 64, "smaller than --img-size 64"
    elif case == "not_power_of_two":
        size, expect = 48, "--img-size 48"
    else:
        size, expect = 1024, "--img-size 1024"
    with pytest.raises(InvalidRequest, match=expect):
        _train(data, out, img_size=size, epochs=1)
    assert not out.exists()


def test_existing_model_is_not_overwritten_without_resume(hubble_crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    _train(hubble_crops, out, arch="dcgan", epochs=1)
    before = _snapshot(out)
    with pytest.raises(InvalidRequest, match="--resume"):
        _train(hubble_crops, out, arch="dcgan", epochs=2)
    assert _snapshot(out) == before


def test_resume_from_incompatible_or_corrupt_checkpoint(hubble_crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    _train(hubble_crops, out, arch="dcgan", epochs=1)
    before = _snapshot(out)
    with pytest.raises(InvalidRequest, match=r"incompatible.*--img-size 64 \(checkpoint: 32\)"):
        train(TrainConfig(data=hubble_crops, out=out, img_size=64, epochs=2, resume=True))
    with pytest.raises(InvalidRequest, match="--arch wgan"):
        train(TrainConfig(data=hubble_crops, out=out, arch="wgan", epochs=2, resume=True))
    with pytest.raises(InvalidRequest, match="already trained 1 epochs"):
        train(TrainConfig(data=hubble_crops, out=out, epochs=1, resume=True))
    assert _snapshot(out) == before

    (out / "checkpoint.pt").write_bytes(b"\x00garbage")
    before = _snapshot(out)
    with pytest.raises(CorruptModel, match="not a readable checkpoint"):
        train(TrainConfig(data=hubble_crops, out=out, epochs=2, resume=True))
    assert _snapshot(out) == before
    with pytest.raises(InvalidRequest, match="does not exist"):
        train(TrainConfig(data=hubble_crops, out=tmp_path / "fresh", epochs=2, resume=True))


def test_dataset_crops_is_seeded_and_refuses_to_overwrite(tmp_path: Path) -> None:
    make_crops(HUBBLE, tmp_path / "a", size=48, count=3, seed=5)
    make_crops(HUBBLE, tmp_path / "b", size=48, count=3, seed=5)
    assert (tmp_path / "a" / "crop-00002.png").read_bytes() == (tmp_path / "b" / "crop-00002.png").read_bytes()
    assert Image.open(tmp_path / "a" / "crop-00000.png").size == (48, 48)
    with pytest.raises(InvalidRequest, match="is not empty"):
        make_crops(HUBBLE, tmp_path / "a", size=48, count=3, seed=6)
    photos = tmp_path / "photos"  # a folder of the person's own images: crops would join that data set
    photos.mkdir()
    (photos / "oak.jpg").write_bytes(b"")
    with pytest.raises(InvalidRequest, match="is not empty"):
        make_crops(HUBBLE, photos, size=48, count=3)
    assert [p.name for p in photos.iterdir()] == ["oak.jpg"]
    with pytest.raises(InvalidRequest, match="is a folder"):
        make_crops(tmp_path, tmp_path / "d", size=48, count=3)
    with pytest.raises(InvalidRequest, match="larger than the image"):
        make_crops(HUBBLE, tmp_path / "c", size=4000, count=3)
    assert not (tmp_path / "c").exists()
    os.sync()


def test_unknown_augmentation_is_refused_before_anything_is_written(hubble_crops: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="--augment 'colour,flip'"):
        _train(hubble_crops, tmp_path / "m", augment="colour,flip", epochs=1)
    assert not (tmp_path / "m").exists()


def test_spatial_latent_trains_and_bad_latent_res_is_refused(hubble_crops: Path, tmp_path: Path) -> None:
    _train(hubble_crops, tmp_path / "s", arch="diffaug", z_dim=32, latent_res=4, epochs=1)
    model = load_model(tmp_path / "s")
    assert model.spec.latent_res == 4 and model.generator.project[0].in_channels == 2
    with pytest.raises(InvalidRequest, match="--latent-res 4"):
        _train(hubble_crops, tmp_path / "d", arch="dcgan", latent_res=4, epochs=1)
    with pytest.raises(InvalidRequest, match="--latent-res 16"):
        _train(hubble_crops, tmp_path / "d", arch="diffaug", z_dim=256, latent_res=16, epochs=1)  # 16 > 32/4
    assert not (tmp_path / "d").exists()


def test_patch_discriminator_and_normless_generator(hubble_crops: Path, tmp_path: Path) -> None:
    from generators.gan.models import ModelSpec, build_discriminator, build_generator

    spec = ModelSpec(arch="diffaug", img_size=32, width=4, max_width=16, z_dim=8, g_norm="none", patch_res=8)
    scores = build_discriminator(spec)(torch.zeros(3, 3, 32, 32))
    assert scores.shape == (3 * 8 * 8,)  # one score per patch of an 8x8 grid
    G = build_generator(spec)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules())
    # the default spec keeps the DCGAN-style networks that older model folders were trained with
    assert build_discriminator(ModelSpec(arch="diffaug", img_size=32, width=4, max_width=16))(torch.zeros(3, 3, 32, 32)).shape == (3,)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in build_generator(ModelSpec(arch="diffaug", img_size=32)).modules())

    _train(hubble_crops, tmp_path / "p", arch="diffaug", g_norm="none", patch_res=8, epochs=1)
    model = load_model(tmp_path / "p")
    assert (model.spec.g_norm, model.spec.patch_res) == ("none", 8)
    assert np.isfinite(_metrics(tmp_path / "p")[0]["d_loss"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"arch": "dcgan", "g_norm": "none"}, "--g-norm 'none'"),
        ({"arch": "diffaug", "g_norm": "layer"}, "--g-norm 'layer'"),
        ({"arch": "dcgan", "patch_res": 8}, "--patch-res 8"),
        ({"arch": "diffaug", "patch_res": 6}, "--patch-res 6"),
        ({"arch": "diffaug", "patch_res": 16}, "--patch-res 16"),  # 16 > 32/4
        ({"lr_d": 2.0}, "--lr-d 2.0"),
        ({"arch": "dcgan", "g_padding": "circular"}, "--g-padding 'circular'"),
        ({"arch": "diffaug", "g_padding": "zeros"}, "--g-padding 'zeros'"),
    ],
)
def test_bad_generator_norm_padding_patch_res_or_lr_d_is_refused(overrides: dict, message: str, hubble_crops: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=message):
        _train(hubble_crops, tmp_path / "m", epochs=1, **overrides)
    assert not (tmp_path / "m").exists()


def test_circular_padding_makes_the_generator_blind_to_the_border(hubble_crops: Path, tmp_path: Path) -> None:
    """With circular padding, rolling the spatial noise (and the injected noise)
    rolls the image by the same amount: no pixel is treated as a border pixel.
    With reflect padding the border is visible to the network and the rolled
    image differs. (Nearest upsampling doubles the shift at every block.)"""
    from generators.gan.models import ModelSpec, NoiseInjection, build_generator

    def rolled_difference(padding: str) -> float:
        spec = ModelSpec(arch="diffaug", img_size=32, width=4, max_width=16, z_dim=64, latent_res=4, g_norm="none", g_padding=padding)
        torch.manual_seed(0)
        G = build_generator(spec).eval()
        for module in G.modules():  # equivariance is about the convolutions: switch the per-pixel noise off
            if isinstance(module, NoiseInjection):
                module.weight.data.zero_()
        z = torch.randn(1, 4, 4, 4)
        with torch.no_grad():
            image, shifted = G(z), G(torch.roll(z, shifts=(1, 2), dims=(2, 3)))
        # relative to the image's own variation (a fresh network's output is faint)
        return ((torch.roll(image, shifts=(8, 16), dims=(2, 3)) - shifted).abs().max() / image.std()).item()

    assert rolled_difference("circular") < 1e-3
    assert rolled_difference("reflect") > 0.1

    _train(hubble_crops, tmp_path / "c", arch="diffaug", g_norm="none", g_padding="circular", latent_res=4, z_dim=64, epochs=1)
    model = load_model(tmp_path / "c")
    assert model.spec.g_padding == "circular"
    assert model.generator.to_rgb[0].padding_mode == "circular"


def test_generator_step_leaves_the_discriminator_without_gradients(hubble_crops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The G step freezes D (its weight gradients are never used); D must be
    trainable again for the next D step, and D's gradients come from its own step only."""
    import importlib

    train_module = importlib.import_module("generators.gan.train")

    seen: list[tuple[bool, bool]] = []
    original = train_module.g_loss

    def spy(arch: str, fake_out: torch.Tensor) -> torch.Tensor:
        seen.append((fake_out.requires_grad, any(p.requires_grad for p in discriminators[-1].parameters())))
        return original(arch, fake_out)

    discriminators: list[torch.nn.Module] = []
    build = train_module.build_discriminator

    def keep(spec):
        discriminators.append(build(spec))
        return discriminators[-1]

    monkeypatch.setattr(train_module, "build_discriminator", keep)
    monkeypatch.setattr(train_module, "g_loss", spy)
    _train(hubble_crops, tmp_path / "f", arch="dcgan", epochs=1)
    assert seen and all(grad_to_g and not d_trainable for grad_to_g, d_trainable in seen)
    assert all(p.requires_grad for p in discriminators[-1].parameters())


def test_checkpoint_from_before_the_new_options_resumes(hubble_crops: Path, tmp_path: Path) -> None:
    """Model folders trained before --lr-d, --g-norm, --patch-res, --g-padding and the
    per-epoch thumbnail KID existed keep resuming (and their report still plots)."""
    out = tmp_path / "old"
    _train(hubble_crops, out, arch="diffaug", epochs=1)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    del checkpoint["hyper"]["lr_d"], checkpoint["spec"]["g_norm"], checkpoint["spec"]["patch_res"], checkpoint["spec"]["g_padding"]
    for evaluation in checkpoint["evaluations"]:  # nor did they keep the thumbnail KID per evaluation
        del evaluation["kid_thumbnails"], evaluation["kid_thumbnails_floor"]
    assert checkpoint["evaluations"]
    torch.save(checkpoint, out / "checkpoint.pt")
    _train(hubble_crops, out, epochs=2, resume=True)
    assert [row["epoch"] for row in _metrics(out)] == [1, 2]
    assert (out / "report.png").stat().st_size > 0


# --- bad settings, and what a months-long run needs to survive ------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 64, "max_width": 32}, "--max-width 32: must be at least --width 64"),
        ({"latent_res": -1}, "--latent-res -1: must be at least 1"),
        ({"arch": "diffaug", "latent_res": 2, "z_dim": 32}, "--latent-res 2: .* a power of two from 4"),
        ({"patch_res": 0}, "--patch-res 0: must be at least 1"),
        ({"threads": -1}, "--threads -1: must be at least 1"),
        ({"threads": 0}, "--threads 0: must be at least 1"),
        ({"seed": 2**70}, "--seed 1180591620717411303424: must be from 0"),
        ({"seed": -3}, "--seed -3"),
        ({"ema_kimg": -5.0}, "--ema-kimg -5.0: must be 0 or more"),
        ({"gp_lambda": float("nan")}, "--gp-lambda nan"),
        ({"device": "tpu"}, "--device 'tpu': choose auto, cpu, cuda or cuda:N"),
        ({"device": "cuda:x"}, "--device 'cuda:x'"),
        ({"arch": "gan", "img_size": 256}, "--img-size 256: --arch gan .* goes up to 128"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(overrides: dict, message: str, hubble_crops: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=message):
        _train(hubble_crops, tmp_path / "m", epochs=1, **overrides)
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_device_without_a_gpu_is_a_clear_error(hubble_crops: Path, tmp_path: Path) -> None:
    from generators.gan.train import resolve_device

    with pytest.raises(InvalidRequest, match="--device 'cuda': torch sees no CUDA GPU"):
        _train(hubble_crops, tmp_path / "m", epochs=1, device="cuda")
    assert not (tmp_path / "m").exists()
    assert resolve_device("auto") == torch.device("cpu")


def test_model_folder_inside_the_data_folder_is_refused(hubble_crops: Path, tmp_path: Path) -> None:
    data = tmp_path / "photos"
    data.mkdir()
    for path in sorted(hubble_crops.glob("*.png"))[:8]:
        (data / path.name).write_bytes(path.read_bytes())
    before = _snapshot(data)
    with pytest.raises(InvalidRequest, match="--out .* is inside --data"):
        _train(data, data / "model", epochs=1)
    with pytest.raises(InvalidRequest, match="--data .* is inside --out"):
        _train(data, tmp_path, epochs=1)
    assert _snapshot(data) == before


def test_too_few_images_is_a_clear_error(hubble_crops: Path, tmp_path: Path) -> None:
    data = tmp_path / "three"
    data.mkdir()
    for path in sorted(hubble_crops.glob("*.png"))[:3]:
        (data / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InvalidRequest, match="only 3 usable image.*at least 4"):
        _train(data, tmp_path / "m", epochs=1)
    assert not (tmp_path / "m").exists()


def test_sixteen_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    opened = Image.open(tmp_path / "ramp16.png")
    assert opened.mode.startswith("I")  # what Pillow gives for a 16-bit PNG
    images, report = load_images(tmp_path, 32)
    assert report.used == ["ramp16.png"]
    values = images[0].float()
    assert 100 < values.mean() < 155  # a ramp from black to white, not ~255 everywhere
    assert values.min() < 20 and values.max() > 235
    assert torch.equal(images[0, 0], images[0, 1])  # grey: the same in every channel


def test_skipped_files_are_logged_before_training(synthetic: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for path in list(synthetic.rglob("*.png"))[:5]:
        (data / path.name).write_bytes(path.read_bytes())
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level("WARNING", logger="generators.gan.data"):
        load_images(data, 32)
    assert "using 5 images, skipped 1 unreadable (e.g. broken.jpg" in caplog.text


def test_data_cache_ignores_how_the_folder_is_named_and_keeps_one_copy(hubble_crops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m"
    monkeypatch.chdir(hubble_crops.parent)
    _train(Path(hubble_crops.name), out, arch="dcgan", epochs=1)
    caches = list((out / "cache").glob("data-*.pt"))
    assert len(caches) == 1
    _, report = load_images(hubble_crops.resolve(), 32, cache_dir=out / "cache")  # absolute path: same cache
    assert report.cached and report.cache_file == caches[0]
    (out / "cache" / "data-0123456789abcdef.pt").write_bytes(b"an older copy of the data set")
    _train(hubble_crops, out, epochs=2, resume=True)
    assert list((out / "cache").glob("data-*.pt")) == caches


def test_previous_checkpoint_is_kept_and_named_when_the_last_one_is_broken(hubble_crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    _train(hubble_crops, out, arch="dcgan", epochs=2)
    assert torch.load(out / "checkpoint-prev.pt", weights_only=False)["epoch"] == 1
    (out / "checkpoint.pt").write_bytes(b"\x00half a checkpoint")  # e.g. a power cut on a file system without ordering
    with pytest.raises(CorruptModel, match=r"previous epoch's checkpoint is kept beside it: `mv .*checkpoint-prev.pt .*checkpoint.pt`"):
        train(TrainConfig(data=hubble_crops, out=out, epochs=3, resume=True))
    os.replace(out / "checkpoint-prev.pt", out / "checkpoint.pt")
    train(TrainConfig(data=hubble_crops, out=out, epochs=3, resume=True, eval_every=1, sample_every=1))
    assert [row["epoch"] for row in _metrics(out)] == [1, 2, 3]  # epoch 2 trained again, not listed twice


def test_a_second_trainer_on_the_same_folder_is_refused(hubble_crops: Path, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "m"
    _train(hubble_crops, out, arch="dcgan", epochs=1)
    before = _snapshot(out)
    with (out / ".train.lock").open("a") as held:  # as a running `bot train` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(InvalidRequest, match="another `bot train` is training into this folder"):
            train(TrainConfig(data=hubble_crops, out=out, epochs=2, resume=True))
    assert _snapshot(out) == before
    train(TrainConfig(data=hubble_crops, out=out, epochs=2, resume=True))  # free again once released


def test_resume_survives_a_damaged_metrics_file(hubble_crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    _train(hubble_crops, out, arch="dcgan", epochs=2)
    rows = _metrics(out)
    (out / "metrics.jsonl").write_text(json.dumps(rows[0]) + '\n{"epoch": 2, "g_lo')  # a crash mid-write
    train(TrainConfig(data=hubble_crops, out=out, epochs=3, resume=True))
    resumed = _metrics(out)
    assert resumed[:2] == rows and resumed[2]["epoch"] == 3  # rebuilt from the checkpoint's own history


def test_resume_on_other_images_is_refused_unless_asked_for(hubble_crops: Path, tmp_path: Path) -> None:
    out, other = tmp_path / "m", tmp_path / "other"
    _train(hubble_crops, out, arch="dcgan", epochs=1)
    make_crops(HUBBLE, other, size=32, count=24, seed=99)
    before = _snapshot(out)
    with pytest.raises(InvalidRequest, match=r"not the images this model was trained on \(24 images from .*; now 24\).*--new-data"):
        train(TrainConfig(data=other, out=out, epochs=2, resume=True))
    assert _snapshot(out) == before
    moved = tmp_path / "moved"
    hubble_crops.rename(moved)  # the same images elsewhere are the same data
    try:
        train(TrainConfig(data=moved, out=out, epochs=2, resume=True))
    finally:
        moved.rename(hubble_crops)
    summary = train(TrainConfig(data=other, out=out, epochs=3, resume=True, new_data=True, eval_every=1))
    assert summary["best"]["epoch"] == 3  # the best-checkpoint search started again on the new images
    assert torch.load(out / "checkpoint.pt", weights_only=False)["data"]["path"] == str(other)


def test_sample_the_last_epoch_and_refuse_out_of_range_seeds(hubble_crops: Path, tmp_path: Path) -> None:
    from generators.gan.sample import sample_to_dir

    from generators.gan.sample import _sha256

    out = tmp_path / "m"
    _train(hubble_crops, out, arch="dcgan", epochs=2, eval_every=5)  # evaluated at epoch 2 only: best == last
    best = sample_to_dir(out, tmp_path / "best", n=1, seed=4)[0].read_bytes()
    last = sample_to_dir(out, tmp_path / "last", n=1, seed=4, weights="last")[0].read_bytes()
    assert best == last  # the same network (epoch 2) ...
    # ... read from the other file (its metadata differs, so does its sum)
    assert load_model(out, "last").sha256 == _sha256(out / "generator-last.safetensors") != load_model(out).sha256
    (out / "generator-last.safetensors").unlink()
    with pytest.raises(Exception, match="generator-last.safetensors"):
        sample_to_dir(out, tmp_path / "x", n=1, seed=4, weights="last")
    with pytest.raises(InvalidRequest, match="--weights 'first'"):
        sample_to_dir(out, tmp_path / "x", n=1, seed=4, weights="first")
    with pytest.raises(InvalidRequest, match="--seed 9223372036854775807: must be from 0 to 9223372036854775806"):
        sample_to_dir(out, tmp_path / "x", n=2, seed=2**63 - 1)
    assert not (tmp_path / "x").exists()
