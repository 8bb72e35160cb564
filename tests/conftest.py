"""Fixtures shared by the whole suite.

Every test starts from a clean environment: no BOT_* variable from the
developer's shell leaks in, hubs are off, and torch uses the machine's two
cores without oversubscribing them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["MPLBACKEND"] = "Agg"

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_bot_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BOT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state folder, named to the bot through BOT_PATHS_STATE."""
    folder = tmp_path / "state"
    folder.mkdir()
    monkeypatch.setenv("BOT_PATHS_STATE", str(folder))
    return folder


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake Instagram API on 127.0.0.1, and the bot configured (through
    BOT_* variables only) to post to it from a small templates folder."""
    from fake_instagram import FakeInstagram
    from fake_instagram.harness import bot_env, write_templates

    with FakeInstagram(tmp_path / "tls") as server:
        for name, value in bot_env(server, tmp_path / "state", write_templates(tmp_path / "templates")).items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model store with a tiny VQGAN and a tiny CLIP of the real architectures
    (built here, nothing downloaded), as the vqgan-clip generator's config."""
    from generators.vqgan_clip.tiny import install_tiny_models

    return install_tiny_models(tmp_path_factory.mktemp("store") / "models")


@pytest.fixture(scope="module")
def generator(tiny_config: dict):
    """The vqgan-clip generator on the tiny models."""
    from generators import get_generator

    return get_generator("vqgan-clip", tiny_config)
