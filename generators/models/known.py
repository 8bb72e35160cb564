"""The models the store knows how to fetch: where each file comes from and,
where known, its sha256.

Honesty note on checksums. The taming-transformers checkpoints are published on
heibox.uni-heidelberg.de without checksums, and no sha256 could be checked from
this development machine (no internet). They are recorded as ``None``: the
store then computes the sum at download time, records it in
``models/manifest.json`` (``sha256_verified: false``) and converts the file to
safetensors right away, so later runs only ever read the converted file. Fill
in a sum here once it has been checked against a second download.

The OpenAI CLIP URL carries the file's sha256 as a path segment (the
convention the ``clip`` and ``open_clip`` packages verify), so that one is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SourceFile:
    role: str  # "checkpoint" | "config" | "weights"
    url: str
    filename: str
    sha256: str | None = None  # None: not verified (see the module docstring)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "vqgan" | "clip"
    description: str
    files: tuple[SourceFile, ...]
    # For kind == "clip": the open_clip architecture name the weights belong to.
    open_clip_name: str = ""
    size_hint: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


_HEIBOX = "https://heibox.uni-heidelberg.de/d/{share}/files/?p=%2F{path}&dl=1"

KNOWN_MODELS: dict[str, ModelSpec] = {}


def register_known_model(spec: ModelSpec) -> None:
    """Add (or replace) a fetchable model; tests register a tiny one served locally."""
    KNOWN_MODELS[spec.name] = spec


register_known_model(ModelSpec(
    name="vqgan_imagenet_f16_16384",
    kind="vqgan",
    description="VQGAN, ImageNet, f=16, 16384 codes (taming-transformers); the usual VQGAN+CLIP model",
    size_hint="about 1 GB download, 290 MB converted",
    files=(
        # sha256 unverified: heibox publishes none and none could be checked here.
        SourceFile("checkpoint", _HEIBOX.format(share="a7530b09fed84f80a887", path="ckpts%2Flast.ckpt"), "last.ckpt"),
        SourceFile("config", _HEIBOX.format(share="a7530b09fed84f80a887", path="configs%2Fmodel.yaml"), "model.yaml"),
    ),
))

register_known_model(ModelSpec(
    name="vqgan_imagenet_f16_1024",
    kind="vqgan",
    description="VQGAN, ImageNet, f=16, 1024 codes (taming-transformers)",
    size_hint="about 1 GB download, 275 MB converted",
    files=(
        # sha256 unverified: heibox publishes none and none could be checked here.
        SourceFile("checkpoint", _HEIBOX.format(share="8088892a516d4e3baf92", path="ckpts%2Flast.ckpt"), "last.ckpt"),
        SourceFile("config", _HEIBOX.format(share="8088892a516d4e3baf92", path="configs%2Fmodel.yaml"), "model.yaml"),
    ),
))

register_known_model(ModelSpec(
    name="clip_vit_b_32_openai",
    kind="clip",
    description="CLIP ViT-B/32, OpenAI weights (the perceptor of the original VQGAN+CLIP notebooks)",
    size_hint="about 340 MB",
    open_clip_name="ViT-B-32-quickgelu",
    files=(
        SourceFile(
            "weights",
            "https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
            "ViT-B-32.pt",
            # The URL's own path segment; the clip/open_clip packages check the same sum.
            sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        ),
    ),
))
