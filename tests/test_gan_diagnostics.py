"""The diagnostics flag a collapsed generator and a memorising one, leave a
generator that draws fresh images from the data's distribution alone, and read
convergence failure off the loss history."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generators.gan.data import load_images, make_crops
from generators.gan.diagnostics import convergence_check, diagnose, plot_report, stopping_advice

HUBBLE = Path(__import__("skimage").__file__).parent / "data" / "hubble_deep_field.jpg"


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor]:
    """Training crops and a disjoint set of fresh crops (another seed) of the Hubble field."""
    root = tmp_path_factory.mktemp("diag")
    make_crops(HUBBLE, root / "train", size=32, count=96, seed=1)
    make_crops(HUBBLE, root / "fresh", size=32, count=96, seed=2)
    return load_images(root / "train", 32)[0], load_images(root / "fresh", 32)[0]


def _noisy(images: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 -> [-1,1] float with a little noise (a generator never outputs exact bytes)."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * 0.01
    return images.float() / 127.5 - 1 + noise


def test_fresh_samples_from_the_data_distribution_raise_no_warning(crops) -> None:
    train, fresh = crops
    report = diagnose(lambda n: _noisy(fresh[:n], 0), train)
    assert report["warnings"] == []
    assert report["measures"]["diversity"]["value"] > 0.7
    assert report["measures"]["nearest_neighbour"]["copy_fraction"] < 0.1


def test_collapsed_generator_is_flagged(crops, tmp_path: Path) -> None:
    train, fresh = crops
    report = diagnose(lambda n: _noisy(fresh[:1].expand(n, -1, -1, -1), 1), train)
    assert report["measures"]["diversity"]["value"] < 0.1
    assert any(w.startswith("Mode collapse") for w in report["warnings"])
    assert report["measures"]["kid"]["value"] > report["measures"]["kid"]["floor"]
    plot_report(report, [], [], tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_memorising_generator_is_flagged(crops) -> None:
    train, _ = crops
    picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))
    report = diagnose(lambda n: _noisy(train[picks[:n]], 2), train)
    nn = report["measures"]["nearest_neighbour"]
    assert nn["copy_fraction"] > 0.9 and nn["value"] < nn["floor"] / 5
    assert any(w.startswith("Memorisation") for w in report["warnings"])
    assert not any(w.startswith("Mode collapse") for w in report["warnings"])
    assert report["_closest"][0][2] < nn["copy_threshold"]


def test_a_copy_of_any_training_image_is_found_not_only_of_the_evaluated_subset(crops) -> None:
    """The KID subset is capped (here at 16 of 96 images); the memorisation
    search still covers every training image."""
    from generators.gan.diagnostics import split_real

    train, _ = crops
    subset = set(split_real(train, max_images=16).indices.tolist())
    outside = torch.tensor([i for i in range(len(train)) if i not in subset])
    report = diagnose(lambda n: _noisy(train[outside[:n]], 4), train, max_images=16)
    nn = report["measures"]["nearest_neighbour"]
    assert nn["copy_fraction"] > 0.9
    assert any(w.startswith("Memorisation") for w in report["warnings"])
    i, j, _ = report["_closest"][0]
    assert j == int(outside[i]) and j not in subset  # the pair shown is the sample and the image it copies


def test_a_feature_constant_in_the_real_images_does_not_blow_up_kid(crops) -> None:
    """Real images with a black band (a constant feature); samples of the same
    distribution with faint noise there. KID must stay on the scale of its
    floor, not explode through a division by a zero standard deviation."""
    train, fresh = crops
    banded = train.clone()
    banded[:, :, :8] = 0
    samples = fresh.clone()
    samples[:, :, :8] = 0
    report = diagnose(lambda n: _noisy(samples[:n], 5), banded)
    kid = report["measures"]["kid_thumbnails"]
    assert kid["value"] < 3 * max(kid["floor"], 1.0), kid  # was ~1e15 with a 1e-6 std floor


def _history(d_loss: list[float], g_loss: list[float], acc: float) -> list[dict]:
    return [{"epoch": i + 1, "d_loss": d, "g_loss": g, "d_acc_real": acc, "d_acc_fake": acc} for i, (d, g) in enumerate(zip(d_loss, g_loss))]


def test_convergence_failure_read_from_losses() -> None:
    failing = _history([0.6, 0.3, 0.05, 0.01, 0.005, 0.002], [1.0, 2.0, 3.5, 5.0, 7.0, 9.0], 0.99)
    verdict = convergence_check(failing)
    assert verdict["discriminator_wins"] and verdict["generator_loss_climbing"]
    healthy = _history([0.7, 0.65, 0.68, 0.66, 0.7, 0.67], [1.1, 0.9, 1.2, 1.0, 1.1, 1.0], 0.75)
    verdict = convergence_check(healthy)
    assert not verdict["discriminator_wins"] and not verdict["generator_loss_climbing"]


def test_stopping_advice_names_the_best_epoch() -> None:
    evaluations = [{"epoch": e, "kid": k} for e, k in [(2, 0.5), (4, 0.2), (6, 0.3), (8, 0.25), (10, 0.4)]]
    advice = stopping_advice(evaluations)
    assert advice["best_epoch"] == 4 and advice["stopped_helping"]
    assert not stopping_advice(evaluations[:3])["stopped_helping"]
