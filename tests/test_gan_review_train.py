"""`bot train` as a user meets it when things go wrong: Ctrl-C or SIGTERM
mid-epoch, a disk that fills up while a checkpoint is written, an --out that
holds other files, and settings that make no sense. Each stop says which epoch
is kept and how to go on, and each refusal changes nothing."""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from bot.cli import main
from generators.errors import InvalidRequest
from generators.gan import TrainConfig, TrainingStopped, make_crops, train

train_module = importlib.import_module("generators.gan.train")  # the package exports the function under the same name

HUBBLE = Path(__import__("skimage").__file__).parent / "data" / "hubble_deep_field.jpg"
TINY = dict(arch="dcgan", img_size=32, width=4, max_width=16, z_dim=8, batch_size=8, sample_every=1, eval_every=5)
TINY_FLAGS = ["--arch", "dcgan", "--img-size", "32", "--width", "4", "--max-width", "16", "--z-dim", "8", "--batch-size", "8", "--eval-every", "5"]


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("review") / "crops"
    make_crops(HUBBLE, folder, size=32, count=24, seed=3)  # 3 batches of 8 per epoch
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def _epochs(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _interrupt_at(step: int):
    """A progress callback that behaves like Ctrl-C arriving at ``step``."""

    def progress(done: int, total: int, info: dict) -> None:
        if done == step:
            raise KeyboardInterrupt

    return progress


def test_ctrl_c_mid_epoch_says_which_epoch_is_kept_and_resume_goes_on(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(TrainingStopped) as stopped:
        train(TrainConfig(data=crops, out=out, epochs=3, **TINY), progress=_interrupt_at(5))  # epoch 2, batch 2
    message = str(stopped.value)
    assert "interrupted during epoch 2 of 3" in message and "holds epoch 1" in message
    assert f"--out {out} --epochs 3 --resume" in message
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    train(TrainConfig(data=crops, out=out, epochs=3, resume=True))
    assert _epochs(out) == [1, 2, 3]


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(TrainingStopped, match="no epoch had finished, so nothing was saved.*without --resume"):
        train(TrainConfig(data=crops, out=out, epochs=2, **TINY), progress=_interrupt_at(2))
    train(TrainConfig(data=crops, out=out, epochs=1, **TINY))  # what it left behind does not block a new run
    assert _epochs(out) == [1]


class _Killed(Exception):
    """What SIGTERM does in this test when `bot train` does not handle it (instead of killing pytest)."""


def test_sigterm_mid_epoch_stops_bot_train_with_a_message_and_exit_1(crops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m"
    real_update = train_module.update_ema
    calls = iter(range(1000))

    def update_then_terminate(*args, **kwargs) -> None:
        real_update(*args, **kwargs)
        if next(calls) == 4:  # epoch 2 (3 steps an epoch)
            os.kill(os.getpid(), signal.SIGTERM)

    def killed(signum: int, frame: object) -> None:
        raise _Killed

    monkeypatch.setattr(train_module, "update_ema", update_then_terminate)
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--data", str(crops), "--out", str(out), "--epochs", "3", *TINY_FLAGS])
    finally:
        signal.signal(signal.SIGTERM, previous)
    _, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "interrupted during epoch 2 of 3" in err and "holds epoch 1" in err and "--resume" in err
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is only in place while training


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one_and_no_partial_file(crops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m"
    real_save = torch.save
    checkpoints = iter(range(1000))

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        if isinstance(f, io.IOBase) and str(getattr(f, "name", "")).endswith("checkpoint.pt.tmp") and next(checkpoints) == 1:
            f.write(b"\x00" * 1000)  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(TrainingStopped) as stopped:
        train(TrainConfig(data=crops, out=out, epochs=3, **TINY))
    message = str(stopped.value)
    assert "No space left on device" in message and "epoch 2 of 3" in message and "holds epoch 1" in message and "--resume" in message
    assert not (out / "checkpoint.pt.tmp").exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    train(TrainConfig(data=crops, out=out, epochs=3, resume=True))
    assert _epochs(out) == [1, 2, 3]


def test_read_only_model_folder_is_an_error_message_not_a_traceback(crops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def read_only(*args, **kwargs) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(args[1]))

    monkeypatch.setattr(train_module, "save_file", read_only)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(crops), "--out", str(tmp_path / "m"), "--epochs", "2", *TINY_FLAGS])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 1
    # the weights files are written after the checkpoint: epoch 1's is kept, and a resume writes them
    assert "Error: could not write to --out" in err and "Permission denied" in err and "holds epoch 1" in err and "--resume" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_out_folder_with_other_files_is_refused_and_left_alone(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "config.json").write_text('{"mine": true}')  # a user's own file a run would overwrite
    before = _snapshot(out)
    with pytest.raises(InvalidRequest, match=r"--out .*project'.*not empty and not a model folder.*'notes.txt'"):
        train(TrainConfig(data=crops, out=out, epochs=1, **TINY))
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clip_value": float("nan")}, r"--clip-value nan: must be a finite number above 0"),
        ({"ema_kimg": float("inf")}, r"--ema-kimg inf: must be 0 or more \(a finite number\)"),
        ({"new_data": True}, r"--new-data: only means something with --resume"),
    ],
)
def test_settings_that_make_no_sense_are_refused_before_anything_is_written(overrides: dict, message: str, crops: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=message):
        train(TrainConfig(data=crops, out=tmp_path / "m", epochs=1, **{**TINY, **overrides}))
    assert not (tmp_path / "m").exists()


def test_a_folder_of_only_broken_files_does_not_blame_the_image_size(tmp_path: Path) -> None:
    data = tmp_path / "broken"
    data.mkdir()
    for name in ("a.jpg", "b.png", "c.webp"):
        (data / name).write_bytes(b"not an image")
    with pytest.raises(InvalidRequest) as refused:
        train(TrainConfig(data=data, out=tmp_path / "m", epochs=1, **TINY))
    assert "3 unreadable" in str(refused.value) and "--img-size" not in str(refused.value)
    assert not (tmp_path / "m").exists()


def test_a_data_cache_that_cannot_be_written_does_not_stop_training(crops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real_save = torch.save

    def cache_disk_full(obj, f, *args, **kwargs):
        if isinstance(f, Path) and f.parent.name == "cache":
            f.write_bytes(b"\x00" * 100)  # partly written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", cache_disk_full)
    out = tmp_path / "m"
    train(TrainConfig(data=crops, out=out, epochs=1, **TINY))
    assert _epochs(out) == [1]
    assert not list((out / "cache").iterdir())  # no partial cache left behind
    assert "could not write the data cache" in caplog.text


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_laid_on_black_not_on_what_an_editor_left_under_them(mode: str) -> None:
    """Dropping the alpha channel kept the hidden colour under transparent
    pixels (here bright green), which differs from file to file."""
    from PIL import Image

    from generators.gan.data import to_rgb

    rgba = Image.new("RGBA", (4, 2), (0, 255, 0, 0))  # fully transparent, green underneath
    rgba.putpixel((0, 0), (200, 100, 50, 255))  # one opaque pixel
    rgba.putpixel((1, 0), (200, 100, 50, 128))  # one half-transparent pixel
    if mode == "LA":
        image = rgba.convert("LA")
    elif mode == "P":
        image = Image.new("P", (4, 2), 1)
        image.putpalette([200, 100, 50, 0, 255, 0] + [0] * 762)
        image.putpixel((0, 0), 0)
        image.info["transparency"] = 1  # palette entry 1 (green) is transparent
    else:
        image = rgba
    out = to_rgb(image)
    assert out.mode == "RGB" and out.getpixel((3, 1)) == (0, 0, 0)
    assert out.getpixel((0, 0)) != (0, 0, 0)  # opaque pixels keep their colour
    if mode == "RGBA":
        assert out.getpixel((0, 0)) == (200, 100, 50) and out.getpixel((1, 0)) == (100, 50, 25)


def test_a_stop_after_the_checkpoint_leaves_no_weights_file_ahead_and_resume_writes_them(crops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights files follow the checkpoint. Before, generator.safetensors was
    written before the checkpoint, so a stop in between left the "best" file an
    epoch ahead of the checkpoint and the report. Now a stop between the two
    leaves them behind, and the resume writes them from the checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    real_export = train_module.export_weights

    def stop_at_the_first_export(sampler, out, epoch, best, **kwargs):
        if not kwargs.get("only_if_stale"):
            raise KeyboardInterrupt
        return real_export(sampler, out, epoch, best, **kwargs)

    monkeypatch.setattr(train_module, "export_weights", stop_at_the_first_export)
    out = tmp_path / "m"
    settings = TINY | {"eval_every": 1}  # epoch 1 is evaluated, so it is the best so far
    with pytest.raises(TrainingStopped, match="holds epoch 1"):
        train(TrainConfig(data=crops, out=out, epochs=3, **settings))
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["best"]["epoch"] == 1
    assert not (out / "generator.safetensors").exists() and not (out / "generator-last.safetensors").exists()

    with pytest.raises(TrainingStopped):  # resume, and stop again in the first batch of epoch 2
        train(TrainConfig(data=crops, out=out, epochs=3, resume=True), progress=_interrupt_at(4))
    for name in ("generator.safetensors", "generator-last.safetensors"):
        with safe_open(str(out / name), framework="pt") as handle:
            assert handle.metadata()["epoch"] == "1"
        weights = load_file(out / name)
        assert weights.keys() == checkpoint["generator"].keys()
        assert all(torch.equal(weights[k], checkpoint["generator"][k]) for k in weights)


def test_a_second_trainer_refused_by_the_lock_leaves_the_data_caches_alone(crops: Path, tmp_path: Path) -> None:
    """The data cache used to be written, and older caches pruned, before the
    training lock was taken: a second `bot train --new-data` started beside a
    running one deleted the running one's cache before being refused."""
    out = tmp_path / "m"
    train(TrainConfig(data=crops, out=out, epochs=1, **TINY))
    other = tmp_path / "other"
    make_crops(HUBBLE, other, size=32, count=24, seed=4)
    before = _snapshot(out / "cache")
    assert len(before) == 1
    with train_module.training_lock(out):  # a run in progress
        with pytest.raises(InvalidRequest, match="another `bot train`"):
            train(TrainConfig(data=other, out=out, epochs=2, resume=True, new_data=True))
    assert _snapshot(out / "cache") == before
