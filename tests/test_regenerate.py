"""The ``regenerate`` command a post's manifest.json records makes the same
image again: run as written, from the post's own record, with the bundled GAN."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from support import run_bot as run


def test_manifest_regenerate_command_remakes_the_posted_image(state_dir: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "post", "--topic", "night-sky", "--dry-run", "--json")
    assert code == 0, err
    folder = state_dir / "archive" / json.loads(out)["post_id"]
    command = json.loads((folder / "manifest.json").read_text())["regenerate"]
    argv = shlex.split(command)
    assert argv[:2] == ["bot", "generate"] and "--size" in argv and "--out" in argv

    code, _, err = run(capsys, *argv[1:])
    assert code == 0, err
    out_dir = tmp_path / argv[argv.index("--out") + 1]
    assert (out_dir / "image.png").read_bytes() == (folder / "original.png").read_bytes()
