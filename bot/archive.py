"""The post archive: every artefact of a post in ``state/archive/<post-id>/``.

    original.png      the generator's image, untouched
    generation.json   what the generator reported (seed, parameters, models, loss curve)
    snapshots/        images at chosen steps, when the generator keeps them
    instagram.jpg     exactly 1080x1350 (4:5), sRGB, high quality: what is posted
    caption.txt       the caption as posted
    poster.pdf        the print-ready street poster
    loss_curve.png    the loss per step, when the generator reports one
    manifest.json     everything needed to make the same image again

Each file is written atomically, so a step that finds its file on disk after a
crash can trust it and reuse it.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import platform
from pathlib import Path
from typing import Any

from PIL import Image, ImageCms, ImageOps

from bot.store import atomic_write_bytes, atomic_write_text, jsonable
from generators import GenerationResult

FILES = {
    "original": "original.png",
    "generation": "generation.json",
    "instagram": "instagram.jpg",
    "caption": "caption.txt",
    "poster": "poster.pdf",
    "loss_curve": "loss_curve.png",
    "manifest": "manifest.json",
}

# Instagram's largest feed format: portrait 4:5 at 1080 px wide.
INSTAGRAM_SIZE = (1080, 1350)
JPEG_QUALITY = 95

# Versions recorded in every manifest: what could change the pixels.
_PACKAGES = ("dstrtd-bot", "torch", "torchvision", "open_clip_torch", "numpy", "pillow")


def archive_dir(state_dir: Path, post_id: str) -> Path:
    return Path(state_dir) / "archive" / post_id


def relative(state_dir: Path, path: Path) -> str:
    """Artefact paths are stored relative to the state folder, so a moved or
    restored state folder keeps working."""
    return str(Path(path).relative_to(state_dir))


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG file bytes (for an atomic write)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_generation(folder: Path, result: GenerationResult, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the image, its snapshots and the generator's report (with
    ``request``, what the generator was asked for); the image last, so that
    ``original.png`` on disk means the whole step finished."""
    folder.mkdir(parents=True, exist_ok=True)
    snapshot_files = {}
    for step, snapshot in sorted(result.snapshots.items()):
        path = folder / "snapshots" / f"step-{step:05d}.png"
        atomic_write_bytes(path, png_bytes(snapshot.convert("RGB")))
        snapshot_files[str(step)] = str(path.relative_to(folder))
    report = {
        "generator": result.generator,
        "seed": result.seed,
        "parameters": result.parameters,
        "models": result.models,
        "timings": result.timings,
        "loss_label": result.loss_label,
        "loss_curve": result.loss_curve,
        "snapshots": snapshot_files,
        "extras": jsonable(result.extras),
        "size": list(result.image.size),
        "request": request,
    }
    atomic_write_text(folder / FILES["generation"], json.dumps(report, indent=1))
    atomic_write_bytes(folder / FILES["original"], png_bytes(result.image.convert("RGB")))
    return report


def load_generation(folder: Path) -> tuple[Image.Image, dict[str, Any]]:
    with Image.open(folder / FILES["original"]) as image:
        image.load()
        picture = image.convert("RGB")
    report = json.loads((folder / FILES["generation"]).read_text(encoding="utf-8"))
    return picture, report


def render_instagram_jpeg(image: Image.Image, path: Path) -> None:
    """Render the post image ourselves: exactly 1080x1350, centre-cropped to 4:5,
    upscaled with Lanczos, sRGB profile embedded, JPEG quality 95 with full
    chroma. instagrapi would otherwise crop and re-encode at quality 75."""
    fitted = ImageOps.fit(image.convert("RGB"), INSTAGRAM_SIZE, method=Image.Resampling.LANCZOS)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    fitted.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True, icc_profile=srgb)
    atomic_write_bytes(path, buffer.getvalue())


def plot_loss_curve(curve: list[float], label: str, title: str, path: Path) -> None:
    """The loss per step as a PNG, as the seed's quantitative analysis plots it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=150)
    axis.plot(range(1, len(curve) + 1), curve, linewidth=1.2, color="#1f6f8b")
    axis.set_xlabel("step")
    axis.set_ylabel(label)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / FILES["manifest"], json.dumps(jsonable(manifest), indent=2, sort_keys=True))
