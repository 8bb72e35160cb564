"""Training images: find, decode once, cache as one uint8 tensor.

A user's folder of photos is messy, so nothing in it is fatal on its own:
unreadable files, exact duplicates (same bytes) and images smaller than the
training size are skipped and listed in a :class:`DatasetReport`. Only a folder
with no usable image at all is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from generators.errors import InvalidRequest

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
#: Most crops one call cuts: more is a typo, and would fill the disk with files.
MAX_CROPS = 100_000
#: The files make_crops writes before its crops.json (temporary names included).
_CROP_FILE = re.compile(r"\.?crop-\d{5}\.png(\.tmp)?|crops\.json\.tmp")
CACHE_VERSION = 2  # 2: transparent pixels laid on black (to_rgb)


@dataclass
class DatasetReport:
    """What :func:`load_images` used and what it skipped, and why."""

    used: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)
    cached: bool = False
    cache_file: Path | None = None  # where the decoded tensor is (or is to be) cached

    def to_dict(self) -> dict:
        return {
            "used": len(self.used),
            "unreadable": self.unreadable,
            "duplicates": self.duplicates,
            "too_small": self.too_small,
            "from_cache": self.cached,
        }


def find_image_files(data_dir: Path) -> list[Path]:
    """Every jpg/jpeg/png/webp under ``data_dir`` (recursively), sorted so that
    the dataset order, and hence a seeded run, does not depend on the file system."""
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(data_dir).parts))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. Pillow's own conversion clips 16-bit and 32-bit greyscale
    (scientific and astronomical images often are) to white, so those are
    scaled down first: 16-bit by its full range, float by its own min and max.
    Transparent pixels are laid on black: dropping the alpha channel would keep
    whatever colour an editor left under them, different from file to file."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode != "I" or values.max() > 255 else 1.0  # 32-bit "I" may hold 8-bit values
        image = Image.fromarray((values / scale).clip(0, 255).round().astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = values.min(), values.max()
        image = Image.fromarray(((values - low) / ((high - low) or 1.0) * 255).round().astype(np.uint8))
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Largest centred square, resized to ``size`` with Lanczos (downscaling
    only: smaller images are rejected before this)."""
    image = to_rgb(ImageOps.exif_transpose(image))
    return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def check_data_dir(data_dir: Path) -> list[Path]:
    """Raise :class:`InvalidRequest` for a missing or empty data folder."""
    if not data_dir.is_dir():
        raise InvalidRequest(f"--data {str(data_dir)!r}: no such folder; give a folder of jpg/png/webp images")
    files = find_image_files(data_dir)
    if not files:
        raise InvalidRequest(
            f"--data {str(data_dir)!r}: no jpg/png/webp images found (searched recursively); "
            "`bot dataset crops --from IMAGE --out DIR` makes a training set from one large image"
        )
    return files


def _cache_key(data_dir: Path, files: list[Path], size: int) -> str:
    """Changes whenever a file is added, removed, replaced or touched, or the size
    changes; not when the folder is named by another path (relative, absolute)."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{size}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(data_dir)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_images(data_dir: Path, size: int, cache_dir: Path | None = None) -> tuple[torch.Tensor, DatasetReport]:
    """Decode every usable image under ``data_dir`` to an ``(N, 3, size, size)``
    uint8 tensor (kept as uint8 to save memory; batches are scaled to [-1, 1]).

    With ``cache_dir`` a decoded tensor cached there is reused while the folder
    is unchanged, so a resumed or repeated run does not decode again; the caller
    stores a fresh one with :func:`update_cache` once it has accepted the data.
    """
    files = check_data_dir(data_dir)
    cache_path = cache_dir / f"data-{_cache_key(data_dir, files, size)}.pt" if cache_dir else None
    if cache_path and cache_path.exists():
        try:
            cached = torch.load(cache_path, weights_only=False)
            report = DatasetReport(**cached["report"], cached=True, cache_file=cache_path)
            _log_skipped(data_dir, report)
            return cached["images"], report
        except Exception as exc:  # a broken cache is only a cache: decode again
            log.warning("ignoring unreadable data cache %s: %s", cache_path, exc)

    report = DatasetReport(cache_file=cache_path)
    seen: set[str] = set()
    arrays: list[np.ndarray] = []
    for path in files:
        rel = str(path.relative_to(data_dir))
        try:
            raw = path.read_bytes()
            digest = hashlib.sha256(raw).hexdigest()
            if digest in seen:
                report.duplicates.append(rel)
                continue
            with Image.open(path) as image:
                image.load()
                if min(image.size) < size:
                    report.too_small.append(f"{rel} ({image.size[0]}x{image.size[1]})")
                    continue
                arrays.append(np.asarray(center_crop_resize(image, size), dtype=np.uint8))
            seen.add(digest)
            report.used.append(rel)
        except Exception as exc:  # PIL raises many kinds for a broken file
            report.unreadable.append(f"{rel} ({type(exc).__name__})")

    if not arrays:
        reasons = []
        if report.too_small:
            reasons.append(f"{len(report.too_small)} smaller than --img-size {size} (e.g. {report.too_small[0]})")
        if report.unreadable:
            reasons.append(f"{len(report.unreadable)} unreadable (e.g. {report.unreadable[0]})")
        # the size hint only when size is the problem: a folder of broken files is not fixed by a smaller --img-size
        hint = f"; images must be at least {size}x{size} pixels (lower --img-size or use larger images)" if report.too_small else "; give a folder of readable jpg/png/webp images"
        raise InvalidRequest(f"--data {str(data_dir)!r}: no usable image: {'; '.join(reasons) or 'all duplicates'}{hint}")
    _log_skipped(data_dir, report)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), report


def _log_skipped(data_dir: Path, report: DatasetReport) -> None:
    """Say what was skipped before training starts, not only in the summary at its end."""
    skipped = [(name, items) for name, items in (("unreadable", report.unreadable), ("duplicates", report.duplicates), ("too small", report.too_small)) if items]
    if skipped:
        details = "; ".join(f"{len(items)} {name} (e.g. {items[0]})" for name, items in skipped)
        log.warning("%s: using %d images, skipped %s", data_dir, len(report.used), details)


def update_cache(images: torch.Tensor, report: DatasetReport) -> None:
    """Store freshly decoded images in the report's cache file and delete the
    folder's older caches (each is a full copy of the data set, and a folder
    that changes over months would otherwise pile them up)."""
    if report.cache_file is None:
        return
    if not report.cached:
        report.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = report.cache_file.with_suffix(".tmp")
        saved = {k: v for k, v in report.__dict__.items() if k not in ("cached", "cache_file")}
        try:
            torch.save({"images": images, "report": saved}, tmp)
            tmp.replace(report.cache_file)
        except OSError as exc:  # a full disk: the cache only saves decoding time, so train without it
            tmp.unlink(missing_ok=True)
            log.warning("could not write the data cache %s (%s); the next run decodes the images again", report.cache_file, exc)
            return
    for old in report.cache_file.parent.glob("data-*.pt"):
        if old != report.cache_file:
            old.unlink()


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range of the generator's tanh."""
    return batch.float().div_(127.5).sub_(1.0)


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return batch.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def make_crops(source: Path, out_dir: Path, size: int, count: int, seed: int = 0, progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> dict:
    """Cut ``count`` random ``size``x``size`` crops out of one large image into
    ``out_dir`` as PNG files (``crop-00000.png`` ...). Seeded, so the same
    arguments give the same crops. Returns a summary dict; ``progress(done, count, {})``
    is called after each crop."""
    if source.is_dir():
        raise InvalidRequest(f"--from {str(source)!r}: is a folder; give one large image file")
    if not source.is_file():
        raise InvalidRequest(f"--from {str(source)!r}: no such file")
    if size < 8:
        raise InvalidRequest(f"--size {size}: must be at least 8 pixels")
    if not (1 <= count <= MAX_CROPS):
        raise InvalidRequest(f"--count {count}: must be from 1 to {MAX_CROPS}")
    if seed < 0:
        raise InvalidRequest(f"--seed {seed}: must be at least 0")
    try:
        with Image.open(source) as opened:
            image = to_rgb(ImageOps.exif_transpose(opened))
    except Exception as exc:
        raise InvalidRequest(f"--from {str(source)!r}: not a readable image ({exc})") from exc
    width, height = image.size
    if width < size or height < size:
        raise InvalidRequest(f"--size {size}: larger than the image ({width}x{height})")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not _unfinished_crops(out_dir):
            # Training reads a folder recursively: crops added to a folder of other
            # images (or of earlier crops) would silently change that data set.
            raise InvalidRequest(f"--out {str(out_dir)!r}: is not empty; choose an empty or new folder")
        # Only what an interrupted run of this command left (crops, no crops.json): start it again.
        for partial in out_dir.iterdir():
            partial.unlink()
        log.info("%s: removed the crops of an interrupted run; cutting them again", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        left = int(rng.integers(0, width - size + 1))
        top = int(rng.integers(0, height - size + 1))
        # through a temporary name: an interrupt never leaves a cut-off crop that looks finished
        path, tmp = out_dir / f"crop-{i:05d}.png", out_dir / f".crop-{i:05d}.png.tmp"
        image.crop((left, top, left + size, top + size)).save(tmp, format="PNG")
        os.replace(tmp, path)
        if progress:
            progress(i + 1, count, {})
    summary = {"source": str(source), "out": str(out_dir), "size": size, "count": count, "seed": seed}
    (out_dir / "crops.json.tmp").write_text(json.dumps(summary, indent=2))
    os.replace(out_dir / "crops.json.tmp", out_dir / "crops.json")  # written last: its presence marks a finished run
    return summary


def _unfinished_crops(folder: Path) -> bool:
    """Whether ``folder`` holds only what an interrupted :func:`make_crops` left:
    crop files (finished or temporary) and no ``crops.json``."""
    return all(_CROP_FILE.fullmatch(entry.name) and entry.is_file() for entry in folder.iterdir())
