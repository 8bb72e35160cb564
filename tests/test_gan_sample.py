"""Sampling a trained GAN: `bot sample` is deterministic per seed, the registered
`gan` generator serves `bot post`, and missing or broken models fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from generators import get_generator
from generators.errors import CorruptModel, InvalidRequest, ModelUnavailable
from generators.gan import TrainConfig, make_crops, train
from generators.registry import GenerationRequest

HUBBLE = Path(__import__("skimage").__file__).parent / "data" / "hubble_deep_field.jpg"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding one tiny trained model, ``gan/tiny``."""
    root = tmp_path_factory.mktemp("models")
    make_crops(HUBBLE, root / "crops", size=32, count=24, seed=4)
    # about 50 steps, so batch-norm running statistics have settled and samples depend on z
    out = root / "models" / "gan" / "tiny"
    train(TrainConfig(data=root / "crops", out=out, arch="diffaug", img_size=32, width=4, max_width=16, z_dim=8, batch_size=4, epochs=8, eval_every=8, sample_every=8))
    return root / "models"


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_bot_sample_is_deterministic_per_seed(models_dir: Path, tmp_path: Path, capsys) -> None:
    model = str(models_dir / "gan" / "tiny")
    code, out, _ = _run(["sample", "--model", model, "--n", "3", "--seed", "10", "--out", str(tmp_path / "a"), "--json"], capsys)
    assert code == 0 and len(json.loads(out)) == 3
    # a different n and batch: image for seed 11 must not change
    code, _, _ = _run(["sample", "--model", model, "--n", "1", "--seed", "11", "--out", str(tmp_path / "b")], capsys)
    assert code == 0
    assert (tmp_path / "a" / "sample-11.png").read_bytes() == (tmp_path / "b" / "sample-11.png").read_bytes()
    assert (tmp_path / "a" / "sample-10.png").read_bytes() != (tmp_path / "a" / "sample-11.png").read_bytes()
    code, _, _ = _run(["sample", "--model", model, "--n", "1", "--seed", "11", "--size", "100", "--out", str(tmp_path / "c")], capsys)
    assert code == 0 and Image.open(tmp_path / "c" / "sample-11.png").size == (100, 100)


def test_bot_sample_bad_input_exit_codes(models_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(["sample", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "bot train" in err
    code, _, err = _run(["sample", "--model", str(models_dir / "gan" / "tiny"), "--n", "0", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--n 0" in err
    assert not (tmp_path / "o").exists()


def test_cli_train_and_dataset_crops(tmp_path: Path, capsys) -> None:
    code, out, _ = _run(["dataset", "crops", "--from", str(HUBBLE), "--size", "32", "--count", "10", "--out", str(tmp_path / "crops"), "--json"], capsys)
    assert code == 0 and json.loads(out)["count"] == 10
    args = ["train", "--data", str(tmp_path / "crops"), "--out", str(tmp_path / "m"), "--arch", "dcgan", "--img-size", "32", "--width", "4", "--max-width", "8", "--z-dim", "8", "--batch-size", "5"]
    code, out, _ = _run([*args, "--epochs", "1", "--json"], capsys)
    assert code == 0 and json.loads(out)["last"]["epoch"] == 1
    code, _, err = _run(["train", "--data", str(tmp_path / "crops"), "--out", str(tmp_path / "m"), "--epochs", "2", "--resume", "--img-size", "64"], capsys)
    assert code == 2 and "incompatible" in err
    code, _, err = _run(["train", "--data", str(tmp_path / "crops"), "--out", str(tmp_path / "n"), "--img-size", "100"], capsys)
    assert code == 2 and "power of two" in err


def test_registered_generator_upscales_and_reports_model(models_dir: Path) -> None:
    generator = get_generator("gan", {"models_dir": str(models_dir)})
    calls = []
    request = GenerationRequest(seed=5, size=96, model="tiny", progress=lambda s, t, i: calls.append((s, t)))
    generator.check(request)
    result = generator.generate(request)
    assert result.image.size == (96, 96) and result.generator == "gan"
    assert result.parameters["native_size"] == 32 and result.parameters["upscaler"] == "lanczos"
    assert result.parameters["drawn_size"] == 32  # a vector latent: drawn at the training size, then upscaled
    # everything the archive records is plain data (no image object turned into "<PIL.Image ... at 0x...>")
    assert json.loads(json.dumps({"parameters": result.parameters, "extras": result.extras})) == {"parameters": result.parameters, "extras": result.extras}
    import hashlib

    weights = models_dir / "gan" / "tiny" / "generator.safetensors"
    assert result.models["generator"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert calls and calls[-1] == (1, 1)
    again = generator.generate(GenerationRequest(seed=5, size=96, model=str(models_dir / "gan" / "tiny")))
    assert again.image.tobytes() == result.image.tobytes()
    other = generator.generate(GenerationRequest(seed=6, size=96, model="tiny"))
    assert other.image.tobytes() != result.image.tobytes()


def test_registered_generator_missing_and_corrupt_models(models_dir: Path, tmp_path: Path) -> None:
    generator = get_generator("gan", {"models_dir": str(tmp_path)})
    with pytest.raises(ModelUnavailable, match="bot train"):
        generator.check(GenerationRequest(model="nope", size=64))
    with pytest.raises(InvalidRequest, match="size 5"):
        generator.check(GenerationRequest(model="nope", size=5))
    broken = tmp_path / "gan" / "broken"
    shutil.copytree(models_dir / "gan" / "tiny", broken)
    (broken / "generator.safetensors").write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(CorruptModel, match="not readable safetensors"):
        generator.check(GenerationRequest(model="broken", size=64))
    config = json.loads((broken / "config.json").read_text())
    config["spec"]["width"] = 8  # weights no longer fit the network
    (broken / "config.json").write_text(json.dumps(config))
    shutil.copy(models_dir / "gan" / "tiny" / "generator.safetensors", broken / "generator.safetensors")
    with pytest.raises(CorruptModel, match="does not match"):
        generator.check(GenerationRequest(model="broken", size=64))


def test_spatial_latent_model_draws_posts_larger_than_its_training_size(tmp_path: Path) -> None:
    from generators.gan import load_model, sample
    from generators.gan.sample import MAX_NATIVE_SCALE, drawn_images, native_scale

    make_crops(HUBBLE, tmp_path / "crops", size=32, count=12, seed=5)
    out = tmp_path / "spatial"
    train(TrainConfig(data=tmp_path / "crops", out=out, arch="diffaug", img_size=32, width=4, max_width=16, z_dim=32,
                      latent_res=4, g_norm="none", patch_res=8, batch_size=4, epochs=1, eval_every=1, sample_every=1))
    model = load_model(out)
    assert [native_scale(model.spec, size) for size in (None, 32, 70, 96, 1350)] == [1, 1, 2, 3, MAX_NATIVE_SCALE]
    drawn = drawn_images(model, [3], scale=3)[0]
    assert drawn.size == (96, 96)  # drawn, not upscaled: a 12x12 noise map through the same convolutions
    assert drawn.tobytes() == drawn_images(model, [3], scale=3)[0].tobytes()  # deterministic per seed
    assert sample(model, 1, 3, size=96)[0].tobytes() == drawn.tobytes()
    result = get_generator("gan", {}).generate(GenerationRequest(seed=3, size=200, model=str(out)))
    assert result.parameters["drawn_size"] == 128 and result.image.size == (200, 200)


def test_bundled_hubble_model_samples_a_dark_sky_with_bright_sources() -> None:
    """The model the night-sky topic uses is committed and works offline."""
    generator = get_generator("gan", {"models_dir": str(REPO / "models")})
    result = generator.generate(GenerationRequest(seed=1, size=256, model="hubble-128"))
    assert result.parameters["native_size"] == 128 and result.image.size == (256, 256)
    assert result.parameters["drawn_size"] == 256  # a spatial latent: drawn at 2x, not upscaled
    pixels = sorted(result.image.convert("L").tobytes())
    assert pixels[len(pixels) // 2] < 90  # mostly dark sky
    assert pixels[-len(pixels) // 200] > pixels[len(pixels) // 2] + 40  # with bright points


def test_a_topic_can_post_from_the_last_epoch(models_dir: Path) -> None:
    from generators.gan.sample import _sha256

    folder = models_dir / "gan" / "tiny"
    generator = get_generator("gan", {"models_dir": str(models_dir)})
    best = generator.generate(GenerationRequest(seed=2, size=32, model="tiny"))
    last = generator.generate(GenerationRequest(seed=2, size=32, model="tiny", options={"weights": "last"}))
    assert best.models["generator"]["sha256"] == _sha256(folder / "generator.safetensors")
    assert last.models["generator"]["sha256"] == _sha256(folder / "generator-last.safetensors")
    assert (best.parameters["weights"], last.parameters["weights"]) == ("best", "last")
    with pytest.raises(InvalidRequest, match="seed 9223372036854775808: must be from 0 to 9223372036854775807"):
        generator.check(GenerationRequest(seed=2**63, size=32, model="tiny"))
    with pytest.raises(InvalidRequest, match="weights 'first': choose one of best, last"):
        generator.check(GenerationRequest(seed=2, size=32, model="tiny", options={"weights": "first"}))
    with pytest.raises(InvalidRequest, match="option 'wieghts': the gan generator takes only weights"):
        generator.check(GenerationRequest(seed=2, size=32, model="tiny", options={"wieghts": "last"}))
