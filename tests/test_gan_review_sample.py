"""`bot sample` and `bot dataset crops` as a user meets them: a typo in --n or
--count, an --out that already holds images, a model stopped before its first
evaluation, an interrupt halfway, and --json that is JSON only."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest

from support import run_bot
from generators.gan import TrainConfig, make_crops, train
from generators.gan.sample import sample_to_dir

sample_module = importlib.import_module("generators.gan.sample")
HUBBLE = Path(__import__("skimage").__file__).parent / "data" / "hubble_deep_field.jpg"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("review-sample")
    make_crops(HUBBLE, root / "crops", size=32, count=16, seed=4)
    out = root / "tiny"
    train(TrainConfig(data=root / "crops", out=out, arch="dcgan", img_size=32, width=4, max_width=16, z_dim=8, batch_size=8, epochs=1))
    return out


def test_a_huge_n_is_refused_naming_the_allowed_range(model: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_bot(capsys, "sample", "--model", str(model), "--n", "100000000", "--out", str(tmp_path / "o"))
    assert code == 2 and "--n 100000000: must be from 1 to 10000" in err
    assert not (tmp_path / "o").exists()


def test_existing_samples_are_never_overwritten(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "posts"
    out.mkdir()
    (out / "sample-1.png").write_bytes(b"an image from another model")
    code, _, err = run_bot(capsys, "sample", "--model", str(model), "--n", "3", "--seed", "0", "--out", str(out))
    assert code == 2 and "--out" in err and "sample-1.png" in err and "--seed from 3" in err
    assert (out / "sample-1.png").read_bytes() == b"an image from another model"
    assert sorted(p.name for p in out.iterdir()) == ["sample-1.png"]  # nothing written when refusing
    code, _, _ = run_bot(capsys, "sample", "--model", str(model), "--n", "2", "--seed", "3", "--out", str(out))
    assert code == 0 and (out / "sample-3.png").exists()


def test_a_model_stopped_before_its_first_evaluation_points_to_weights_last(model: Path, tmp_path: Path, capsys) -> None:
    stopped = tmp_path / "stopped"
    shutil.copytree(model, stopped)
    (stopped / "generator.safetensors").unlink()  # as after Ctrl-C before epoch --eval-every
    code, _, err = run_bot(capsys, "sample", "--model", str(stopped), "--n", "1", "--out", str(tmp_path / "o"))
    assert code == 2 and "no evaluated generator yet" in err and "--weights last" in err
    assert not (tmp_path / "o").exists()
    code, _, _ = run_bot(capsys, "sample", "--model", str(stopped), "--weights", "last", "--n", "1", "--out", str(tmp_path / "o"))
    assert code == 0 and (tmp_path / "o" / "sample-0.png").exists()


def test_images_are_written_as_they_are_drawn_so_an_interrupt_keeps_them(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_draw = sample_module.drawn_images
    calls = iter(range(100))

    def draw_then_fail(*args, **kwargs):
        if next(calls) == 2:
            raise RuntimeError("interrupted")
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(sample_module, "drawn_images", draw_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        sample_to_dir(model, tmp_path / "o", n=5, seed=0)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["sample-0.png", "sample-1.png"]  # finished files only


def test_sampling_reports_progress_and_json_is_all_of_stdout(model: Path, tmp_path: Path, capsys) -> None:
    seen: list[tuple[int, int]] = []
    sample_to_dir(model, tmp_path / "a", n=3, seed=0, progress=lambda done, total, info: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    code, out, _ = run_bot(capsys, "sample", "--model", str(model), "--n", "2", "--out", str(tmp_path / "b"), "--json")
    assert code == 0 and json.loads(out) == [str(tmp_path / "b" / "sample-0.png"), str(tmp_path / "b" / "sample-1.png")]


def test_dataset_crops_refuses_a_huge_count_and_reports_progress(tmp_path: Path, capsys) -> None:
    code, _, err = run_bot(capsys, "dataset", "crops", "--from", str(HUBBLE), "--count", "100000000", "--out", str(tmp_path / "c"))
    assert code == 2 and "--count 100000000: must be from 1 to 100000" in err
    assert not (tmp_path / "c").exists()
    seen: list[tuple[int, int]] = []
    make_crops(HUBBLE, tmp_path / "d", size=16, count=3, progress=lambda done, total, info: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_an_interrupted_crops_run_can_be_run_again_into_the_same_folder(tmp_path: Path) -> None:
    """An interrupt left crop files and no crops.json; the rerun was refused as
    'not empty' and the user had to clear the folder by hand."""
    out = tmp_path / "crops"

    def interrupt_after_three(done: int, total: int, info: dict) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_crops(HUBBLE, out, size=16, count=6, seed=2, progress=interrupt_after_three)
    assert sorted(p.name for p in out.iterdir()) == ["crop-00000.png", "crop-00001.png", "crop-00002.png"]

    summary = make_crops(HUBBLE, out, size=16, count=6, seed=2)
    assert summary["count"] == 6
    assert sorted(p.name for p in out.iterdir()) == [f"crop-{i:05d}.png" for i in range(6)] + ["crops.json"]
    fresh = tmp_path / "fresh"
    make_crops(HUBBLE, fresh, size=16, count=6, seed=2)
    assert all((out / f"crop-{i:05d}.png").read_bytes() == (fresh / f"crop-{i:05d}.png").read_bytes() for i in range(6))


@pytest.mark.parametrize("other", ["notes.txt", "crops.json"])
def test_a_folder_with_anything_else_is_still_refused(tmp_path: Path, other: str) -> None:
    """A finished crops folder (it has crops.json) or one holding a user's file is never cleared."""
    out = tmp_path / "crops"
    out.mkdir()
    (out / "crop-00000.png").write_bytes(b"mine")
    (out / other).write_text("keep me")
    with pytest.raises(Exception, match="is not empty"):
        make_crops(HUBBLE, out, size=16, count=2, seed=0)
    assert (out / other).read_text() == "keep me" and (out / "crop-00000.png").read_bytes() == b"mine"
