"""The model store: ``models/`` with a sha256 manifest.

Layout::

    models/manifest.json                 {"models": {name: entry}}  (other keys kept as they are)
    models/<name>/model.safetensors      converted weights, the only thing run time reads
    models/<name>/config.yaml            (VQGAN) the taming-transformers config
    models/.downloads/<name>/<file>.part partial downloads, resumed with HTTP Range

Nothing half-written ever appears under ``models/<name>``: a model is built in
``models/.tmp-<name>-*`` and renamed into place, then the manifest is replaced
atomically (write to a temp file, fsync, rename) under a file lock.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from generators.errors import CorruptModel, InvalidRequest, ModelUnavailable
from generators.models.checkpoints import load_state_dict, sha256_file
from generators.models.known import KNOWN_MODELS, ModelSpec, SourceFile

Progress = Callable[[int, int, dict[str, Any]], None]
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class ModelStore:
    """Install, list and verify models under ``models_dir``."""

    def __init__(self, models_dir: str | os.PathLike[str]):
        self.root = Path(models_dir)

    # ------------------------------------------------------------------ reading

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.exists():
            return {"models": {}}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptModel(f"model manifest {path} is unreadable ({exc})") from exc
        data.setdefault("models", {})
        return data

    def entry(self, name: str) -> dict[str, Any] | None:
        return self.manifest()["models"].get(name)

    def list(self) -> list[dict[str, Any]]:
        """Every known or installed model with its status."""
        installed = self.manifest()["models"]
        rows = []
        for name in sorted(set(KNOWN_MODELS) | set(installed)):
            spec = KNOWN_MODELS.get(name)
            entry = installed.get(name)
            rows.append({
                "name": name,
                "kind": (entry or {}).get("kind") or (spec.kind if spec else "?"),
                "installed": entry is not None,
                "description": spec.description if spec else (entry or {}).get("description", ""),
                "size_hint": spec.size_hint if spec else "",
                "files": (entry or {}).get("files", {}),
                "source": (entry or {}).get("source", ""),
            })
        return rows

    def paths(self, name: str) -> dict[str, Path]:
        """Paths of an installed model's files by role (``weights``, ``config``).

        Raises ``ModelUnavailable`` naming the command that installs it.
        """
        entry = self.entry(name)
        if entry is None:
            raise ModelUnavailable(self.missing_message(name))
        paths = {role: self.root / info["path"] for role, info in entry["files"].items()}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ModelUnavailable(
                f"model {name!r} is in the manifest but {', '.join(missing)} is gone; "
                f"run: bot models fetch {name}"
            )
        return paths

    def missing_message(self, name: str) -> str:
        if name in KNOWN_MODELS:
            how = "--weights FILE" if KNOWN_MODELS[name].kind == "clip" else "--checkpoint CKPT --config YAML"
            return (f"model {name!r} is not installed in {self.root}; run: bot models fetch {name} "
                    f"(or: bot models import {name} {how})")
        return (f"model {name!r} is not installed in {self.root} and is not a known download; "
                f"run: bot models import {name} --checkpoint CKPT --config YAML (VQGAN) or --weights FILE (CLIP); "
                f"known downloads: {', '.join(sorted(KNOWN_MODELS))}")

    def spec(self, name: str) -> ModelSpec:
        if name not in KNOWN_MODELS:
            raise InvalidRequest(f"model {name!r} is unknown; known models: {', '.join(sorted(KNOWN_MODELS))}")
        return KNOWN_MODELS[name]

    # ------------------------------------------------------------------ fetch / import

    def fetch(self, name: str, *, progress: Progress | None = None, force: bool = False) -> dict[str, Any]:
        """Download a known model from its official URLs (resuming ``.part``
        files), check sums, convert to safetensors and install it."""
        spec = self.spec(name)
        if not force and self.entry(name) is not None:
            return self.entry(name)
        downloaded: dict[str, Path] = {}
        originals: dict[str, dict[str, Any]] = {}
        for source in spec.files:
            path = self._download(name, source, progress)
            digest = sha256_file(path)
            if source.sha256 and digest != source.sha256:
                path.unlink()
                raise CorruptModel(
                    f"{source.url}: sha256 {digest} differs from the published {source.sha256}; "
                    "the file was deleted, run the fetch again"
                )
            downloaded[source.role] = path
            originals[source.role] = {"url": source.url, "sha256": digest, "sha256_verified": bool(source.sha256)}
        # A file fetched from the official URL is trusted for a full unpickle:
        # when its sum is published it was just checked; when not (heibox), the
        # official HTTPS source is the only evidence there is (see known.py).
        entry = self._install(spec.name, spec.kind, downloaded, trusted=True,
                              open_clip_name=spec.open_clip_name, source="fetch", originals=originals)
        shutil.rmtree(self.root / ".downloads" / name, ignore_errors=True)
        return entry

    def import_files(self, name: str, files: dict[str, str | os.PathLike[str]], *, kind: str | None = None,
                     open_clip_name: str | None = None, trust: bool = False) -> dict[str, Any]:
        """Install local files: ``{"checkpoint": ..., "config": ...}`` for a VQGAN,
        ``{"weights": ...}`` for CLIP. A pickle needing a full unpickle is read
        only when its sha256 matches the known official file or ``trust``."""
        spec = KNOWN_MODELS.get(name)
        kind = kind or (spec.kind if spec else None)
        if kind not in ("vqgan", "clip"):
            raise InvalidRequest(f"model {name!r}: kind {kind!r} is not allowed; use vqgan or clip")
        paths = {role: Path(p) for role, p in files.items()}
        for role, p in paths.items():
            if not p.is_file():
                raise InvalidRequest(f"{role} file {str(p)!r} does not exist")
        needed = {"vqgan": {"checkpoint", "config"}, "clip": {"weights"}}[kind]
        if set(paths) != needed:
            raise InvalidRequest(f"model {name!r} ({kind}) needs files {sorted(needed)}, got {sorted(paths)}")
        originals: dict[str, dict[str, Any]] = {}
        official = {s.role: s.sha256 for s in spec.files} if spec else {}
        matches_official = True
        for role, p in paths.items():
            digest = sha256_file(p)
            verified = bool(official.get(role)) and digest == official.get(role)
            matches_official = matches_official and verified
            originals[role] = {"path": str(p.resolve()), "sha256": digest, "sha256_verified": verified}
        open_clip_name = open_clip_name or (spec.open_clip_name if spec else "")
        return self._install(name, kind, paths, trust=trust or matches_official,
                             open_clip_name=open_clip_name, source="import", originals=originals)

    # ------------------------------------------------------------------ verify

    def verify(self, name: str | None = None) -> list[dict[str, Any]]:
        """Re-check every installed file against the manifest's sha256."""
        models = self.manifest()["models"]
        names = [name] if name else sorted(models)
        results = []
        for n in names:
            if n not in models:
                raise ModelUnavailable(self.missing_message(n))
            problems = []
            for role, info in models[n]["files"].items():
                path = self.root / info["path"]
                if not path.is_file():
                    problems.append(f"{role}: {path} is missing")
                elif sha256_file(path) != info["sha256"]:
                    problems.append(f"{role}: {path} sha256 differs from the manifest")
            results.append({"name": n, "ok": not problems, "problems": problems})
        return results

    # ------------------------------------------------------------------ internals

    def _download(self, name: str, source: SourceFile, progress: Progress | None) -> Path:
        """Download ``source`` to ``models/.downloads/<name>/<file>.part``,
        resuming what is there with an HTTP Range request; rename on success.
        A short body raises ``CorruptModel`` and keeps the part for the next try."""
        import requests

        folder = self.root / ".downloads" / name
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / source.filename
        if final.exists():
            return final
        part = folder / (source.filename + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            response = requests.get(source.url, headers=headers, stream=True, timeout=60)
        except requests.RequestException as exc:
            raise ModelUnavailable(f"cannot download {source.url} ({exc}); check the network and retry "
                                   f"`bot models fetch {name}`") from exc
        with response:
            if response.status_code == 416:  # asked for bytes past the end: start again
                part.unlink(missing_ok=True)
                return self._download(name, source, progress)
            if response.status_code not in (200, 206):
                raise ModelUnavailable(f"cannot download {source.url}: HTTP {response.status_code}")
            if response.status_code == 200:
                have = 0  # server ignored Range: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else 0
            received = have
            with open(part, "ab" if have else "wb") as out:
                try:
                    for chunk in response.iter_content(1 << 16):
                        out.write(chunk)
                        received += len(chunk)
                        if progress:
                            progress(received, total, {"file": source.filename})
                except requests.RequestException as exc:
                    raise CorruptModel(
                        f"download of {source.url} broke off at {received} bytes ({exc}); "
                        f"the partial file is kept: run `bot models fetch {name}` again to resume"
                    ) from exc
        if total and received != total:
            raise CorruptModel(
                f"download of {source.url} is truncated ({received} of {total} bytes); "
                f"the partial file is kept: run `bot models fetch {name}` again to resume"
            )
        os.replace(part, final)
        return final

    def _install(self, name: str, kind: str, files: dict[str, Path], *, trusted: bool = False, trust: bool = False,
                 open_clip_name: str, source: str, originals: dict[str, Any]) -> dict[str, Any]:
        """Convert ``files`` into a temp folder, check them, rename it into place,
        then record the manifest entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".store.lock")):
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
            try:
                if kind == "vqgan":
                    _convert_vqgan(files["checkpoint"], files["config"], staging, trusted or trust)
                else:
                    _convert_clip(files["weights"], open_clip_name, staging, trusted or trust)
                target = self.root / name
                if target.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=self.root))
                    os.replace(target, old / "x")
                    shutil.rmtree(old)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            entry = {
                "name": name,
                "kind": kind,
                "source": source,
                "installed_at": _now(),
                "original": originals,
                "files": {
                    role: {"path": f"{name}/{fname}", "sha256": sha256_file(target / fname),
                           "bytes": (target / fname).stat().st_size}
                    for role, fname in (("weights", WEIGHTS), ("config", CONFIG))
                    if (target / fname).exists()
                },
            }
            if kind == "clip":
                entry["open_clip_name"] = open_clip_name
            manifest = self.manifest()
            manifest["models"][name] = entry
            _atomic_write_json(self.root / MANIFEST, manifest)
        return entry


def _atomic_write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _convert_vqgan(checkpoint: Path, config: Path, out: Path, allow_full_unpickle: bool) -> None:
    """Load strictly against the config (so a mismatch fails here, not at run
    time) and write the inference weights as safetensors."""
    from safetensors.torch import save_file

    from generators.vqgan_clip.vqgan import VQGAN, VQGANConfig

    cfg = VQGANConfig.from_yaml(config)
    state = load_state_dict(checkpoint, allow_full_unpickle=allow_full_unpickle)
    model = VQGAN(cfg)
    model.load_official_state_dict(state, source=str(checkpoint))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    shutil.copyfile(config, out / CONFIG)


def _convert_clip(weights: Path, open_clip_name: str, out: Path, allow_full_unpickle: bool) -> None:
    """Build the open_clip architecture, load the weights strictly, save safetensors.
    OpenAI's TorchScript archives are read with open_clip's own converter, only
    for a trusted file (its sha256 was checked against the URL)."""
    import open_clip
    from safetensors.torch import save_file

    from generators.vqgan_clip.clip_model import check_clip_name, create_architecture

    check_clip_name(open_clip_name)
    model = create_architecture(open_clip_name)
    try:
        state = load_state_dict(weights, allow_full_unpickle=False)
        if not any(k.startswith("visual.") for k in state):
            raise CorruptModel(f"CLIP weights {weights} hold no visual tower")
    except CorruptModel:
        if not allow_full_unpickle:
            raise
        try:
            converted = open_clip.load_openai_model(str(weights), precision="fp32", device="cpu")
        except Exception as exc:
            raise CorruptModel(f"CLIP weights {weights} cannot be read ({exc})") from exc
        state = converted.state_dict()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptModel(f"CLIP weights {weights} do not match {open_clip_name}: {str(exc)[:400]}") from exc
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
