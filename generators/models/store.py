"""The model store: ``models/`` with a sha256 manifest.

Layout::

    models/manifest.json                 {"models": {name: entry}}  (other keys kept as they are)
    models/<name>/model.safetensors      converted weights, the only thing run time reads
    models/<name>/config.yaml            (VQGAN) the taming-transformers config
    models/.downloads/<name>/<file>.part partial downloads, resumed with HTTP Range
    models/.downloads/<name>/<file>.part.json  the ETag / Last-Modified the download
                                         started with, sent as If-Range on resume
    models/.downloads/<name>/<file>      a finished download, kept only until it is
                                         installed or fails a check (then deleted)
    models/.downloads/<name>.lock        held by the fetch of <name> that is running

Nothing half-written ever appears under ``models/<name>``: a model is built in
``models/.tmp-<name>-*`` and renamed into place, then the manifest is replaced
atomically (write to a temp file, fsync, rename) under a file lock.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from filelock import FileLock, Timeout

from generators.errors import CorruptModel, DownloadFailed, InvalidRequest, ModelUnavailable
from generators.models.checkpoints import UntrustedCheckpoint, load_state_dict, sha256_file
from generators.models.known import KNOWN_MODELS, ModelSpec, SourceFile

Progress = Callable[[int, int, dict[str, Any]], None]
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class FetchOutcome(str, enum.Enum):
    """What ``fetch`` did. It checks the installed files itself, so a caller
    that reports the outcome need not hash a model of gigabytes a second time."""

    ALREADY_INSTALLED = "already installed"
    INSTALLED = "installed"
    REINSTALLED = "reinstalled"  # was in the manifest: damaged, or --force


@dataclass(frozen=True)
class FetchResult:
    """The outcome of ``fetch`` and the model's manifest entry after it."""

    outcome: FetchOutcome
    entry: dict[str, Any]


class _ByteProgress:
    """Reports one step (``checking``, ``hashing``, ``converting``) over the
    bytes of several files to a ``Progress`` callback as ``(done, total,
    {"step": ..., "file": ...})``. Hashing or converting a model of gigabytes
    takes minutes; without this the command shows nothing all that time."""

    def __init__(self, progress: Progress | None, step: str, paths: list[Path]):
        self.progress = progress
        self.step = step
        self.total = sum(p.stat().st_size for p in paths if p.is_file())
        self.done = 0

    def report(self, done: int, file: str) -> None:
        if self.progress is not None:
            self.progress(done, self.total, {"step": self.step, "file": file})

    def sha256(self, path: Path) -> str:
        """``sha256_file(path)``, reporting the bytes read."""
        start = self.done
        digest = sha256_file(path, progress=lambda read: self.report(start + read, path.name))
        self.done = start + path.stat().st_size
        return digest


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_NAMES = {MANIFEST, "gan"}  # the manifest, and models/gan/ with the trained GANs


def check_model_name(name: str) -> None:
    """A model is a folder directly under the store: refuse names that are not
    one plain folder name, or that are taken by the store's own files."""
    if not MODEL_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise InvalidRequest(
            f"model name {name!r} is not allowed; use 1-100 letters, digits, '_', '-' or '.', starting with a "
            f"letter or digit (e.g. my_vqgan), and not {' or '.join(sorted(RESERVED_NAMES))}"
        )


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
        if isinstance(data, dict):
            data.setdefault("models", {})
        problem = _manifest_problem(data)
        if problem:
            raise CorruptModel(
                f"model manifest {path} is not valid: {problem}. It is left as it is: correct it, or move it "
                "aside and install the models again (bot models fetch NAME / bot models import NAME ...)"
            )
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
                f"run: {self.reinstall_command(name)}"
            )
        return paths

    def reinstall_command(self, name: str) -> str:
        """The command that puts back a damaged model: ``fetch`` only knows the
        known downloads; anything imported has to be imported again."""
        if name in KNOWN_MODELS:
            return fetch_command(KNOWN_MODELS[name])
        kind = (self.entry(name) or {}).get("kind", "vqgan")
        return f"bot models import {name} {IMPORT_ARGS[kind]}"

    def missing_message(self, name: str) -> str:
        if name in KNOWN_MODELS:
            spec = KNOWN_MODELS[name]
            return (f"model {name!r} is not installed in {self.root}; run: {fetch_command(spec)} "
                    f"(or: bot models import {name} {IMPORT_ARGS[spec.kind]})")
        return (f"model {name!r} is not installed in {self.root} and is not a known download; "
                f"run: bot models import {name} {IMPORT_ARGS['vqgan']} (VQGAN) or {IMPORT_ARGS['clip']} (CLIP); "
                f"known downloads: {', '.join(sorted(KNOWN_MODELS))}")

    def spec(self, name: str) -> ModelSpec:
        if name not in KNOWN_MODELS:
            raise InvalidRequest(f"model {name!r} is unknown; known models: {', '.join(sorted(KNOWN_MODELS))}")
        return KNOWN_MODELS[name]

    # ------------------------------------------------------------------ fetch / import

    def fetch(self, name: str, *, progress: Progress | None = None, force: bool = False,
              trust: bool = False) -> FetchResult:
        """Download a known model from its official URLs (resuming ``.part``
        files), check sums, convert to safetensors and install it.

        An installed model whose files are missing or differ from the manifest
        is installed again: that is what ``paths`` and ``verify`` tell the user
        to run. ``force`` installs again anyway and throws away earlier
        downloads, so a bad file that passed the download checks cannot be
        reused. A checkpoint that needs a full (stubbed) unpickle is read only
        when its sha256 matched a published one, or with ``trust``: a file
        with no published sum is otherwise vouched for by nobody.

        The result says whether the model was already installed, installed or
        installed again: only this check hashes the installed files, and a
        large model takes a while to hash.
        """
        spec = self.spec(name)
        previous = self.entry(name)  # an unreadable manifest fails here, not after the download
        if previous is not None and not force and self.intact(name, progress=progress):
            return FetchResult(FetchOutcome.ALREADY_INSTALLED, previous)
        folder = self.root / ".downloads" / name
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Two fetches of one model would append to the same .part file.
        lock = FileLock(str(self.root / ".downloads" / f"{name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise DownloadFailed(
                f"another `bot models fetch` of {name!r} is running (it holds {lock.lock_file}); "
                "wait for it to finish, then run the command again"
            ) from None
        try:
            return self._fetch_locked(spec, previous, folder, force=force, trust=trust, progress=progress)
        finally:
            lock.release()

    def _fetch_locked(self, spec: ModelSpec, previous: dict[str, Any] | None, folder: Path, *, force: bool,
                      trust: bool, progress: Progress | None) -> FetchResult:
        """The download and install of ``fetch``, under the model's download lock."""
        name = spec.name
        if force:
            shutil.rmtree(folder, ignore_errors=True)
        retry = fetch_command(spec)
        downloaded: dict[str, Path] = {}
        originals: dict[str, dict[str, Any]] = {}
        for source in spec.files:
            path = self._download(name, source, progress)
            digest = _ByteProgress(progress, "hashing", [path]).sha256(path)
            if source.sha256 and digest != source.sha256:
                path.unlink()
                raise CorruptModel(
                    f"{source.url}: sha256 {digest} differs from the published {source.sha256}; "
                    f"the file was deleted, run `{retry}` again"
                )
            downloaded[source.role] = path
            originals[source.role] = {"url": source.url, "sha256": digest, "sha256_verified": bool(source.sha256)}
        # Only the pickle (checkpoint / weights) can need trust; configs are
        # read with yaml.safe_load.
        pickles = [source for source in spec.files if source.role != "config"]
        verified = all(source.sha256 for source in pickles)
        try:
            entry = self._install(spec.name, spec.kind, downloaded, allow_full_unpickle=verified or trust,
                                  open_clip_name=spec.open_clip_name, source="fetch", originals=originals,
                                  progress=progress)
        except UntrustedCheckpoint as exc:
            # Not the file's fault: keep the download so that the run with
            # --trust does not download it again.
            unverified = [source.url for source in pickles if not source.sha256]
            raise UntrustedCheckpoint(
                f"model {name!r}: no sha256 is published for {', '.join(unverified)}, and the checkpoint "
                "holds objects besides tensors, which only a full (stubbed) unpickle reads; refusing to "
                f"unpickle it without trust. The download is kept in {folder}. If you trust that source, "
                f"run: {fetch_command(spec)}"
            ) from exc
        except CorruptModel as exc:
            # A file that fails to convert (an HTML page, a truncated file with
            # no Content-Length, a bad config) must not be reused by the next try.
            shutil.rmtree(folder, ignore_errors=True)
            raise CorruptModel(
                f"{exc}; the downloaded files were deleted, run `{retry}` to download them again"
            ) from exc
        shutil.rmtree(folder, ignore_errors=True)
        return FetchResult(FetchOutcome.INSTALLED if previous is None else FetchOutcome.REINSTALLED, entry)

    def import_files(self, name: str, files: dict[str, str | os.PathLike[str]], *, kind: str | None = None,
                     open_clip_name: str | None = None, trust: bool = False,
                     progress: Progress | None = None) -> dict[str, Any]:
        """Install local files: ``{"checkpoint": ..., "config": ...}`` for a VQGAN,
        ``{"weights": ...}`` for CLIP. A pickle needing a full unpickle is read
        only when its sha256 matches the known official file or ``trust``.

        ``progress`` hears of the hashing and converting (a checkpoint of
        about 1 GB takes minutes). An installed model of the other kind is not
        replaced: every setting that names it expects its kind."""
        check_model_name(name)
        spec = KNOWN_MODELS.get(name)
        kind = kind or (spec.kind if spec else None)
        if kind not in ("vqgan", "clip"):
            raise InvalidRequest(f"model {name!r}: kind {kind!r} is not allowed; use vqgan or clip")
        if spec is not None and kind != spec.kind:
            # Installed under a known name, the wrong kind would be listed as
            # that model, satisfy `fetch`, and fail every generate that uses it.
            raise InvalidRequest(
                f"model {name!r} is a {spec.kind} model (a known download), not {kind}; import {kind} files "
                f"under another name (e.g. my_{kind}), or give {name} its own files: {IMPORT_ARGS[spec.kind]}"
            )
        installed = (self.entry(name) or {}).get("kind")
        if installed is not None and installed != kind:
            # Replacing it would silently change what every setting naming
            # it gets: a clip_weights that gets a VQGAN fails only at run time.
            raise InvalidRequest(
                f"model {name!r} is installed as a {installed} model, not {kind}; allowed: {installed} files "
                f"under this name ({IMPORT_ARGS[installed]}), or {kind} files under another name "
                f"(e.g. my_{kind}). To reuse the name, first delete {self.root / name} and its entry in "
                f"{self.root / MANIFEST}"
            )
        paths = {role: Path(p) for role, p in files.items()}
        for role, p in paths.items():
            if not p.is_file():
                raise InvalidRequest(f"{role} file {str(p)!r} does not exist")
        needed = {"vqgan": {"checkpoint", "config"}, "clip": {"weights"}}[kind]
        if set(paths) != needed:
            raise InvalidRequest(f"model {name!r} ({kind}) needs files {sorted(needed)}, got {sorted(paths)}")
        open_clip_name = open_clip_name or (spec.open_clip_name if spec else "")
        if kind == "clip" and not open_clip_name:
            # Weights do not say which architecture they belong to, and the
            # store only knows that for its known downloads.
            raise InvalidRequest(
                f"model {name!r}: --clip-model is required for CLIP weights the store does not know "
                f"(open_clip_name, the open_clip architecture of the weights, e.g. --clip-model "
                f"ViT-B-32-quickgelu). Known CLIP downloads: "
                f"{', '.join(sorted(n for n, s in KNOWN_MODELS.items() if s.kind == 'clip'))}"
            )
        originals: dict[str, dict[str, Any]] = {}
        official = {s.role: s.sha256 for s in spec.files} if spec else {}
        matches_official = True
        hashing = _ByteProgress(progress, "hashing", list(paths.values()))
        for role, p in paths.items():
            digest = hashing.sha256(p)
            verified = bool(official.get(role)) and digest == official.get(role)
            matches_official = matches_official and verified
            originals[role] = {"path": str(p.resolve()), "sha256": digest, "sha256_verified": verified}
        return self._install(name, kind, paths, allow_full_unpickle=trust or matches_official,
                             open_clip_name=open_clip_name, source="import", originals=originals,
                             progress=progress)

    # ------------------------------------------------------------------ verify

    def verify(self, name: str | None = None, *, progress: Progress | None = None) -> list[dict[str, Any]]:
        """Re-check every installed file against the manifest's sha256;
        ``progress`` hears of the bytes hashed (models are gigabytes)."""
        models = self.manifest()["models"]
        names = [name] if name else sorted(models)
        for n in names:
            if n not in models:
                raise ModelUnavailable(self.missing_message(n))
        checking = _ByteProgress(progress, "checking",
                                 [self.root / info["path"] for n in names for info in models[n]["files"].values()])
        results = []
        for n in names:
            problems = []
            for role, info in models[n]["files"].items():
                path = self.root / info["path"]
                if not path.is_file():
                    problems.append(f"{role}: {path} is missing")
                elif checking.sha256(path) != info["sha256"]:
                    problems.append(f"{role}: {path} sha256 differs from the manifest")
            results.append({"name": n, "ok": not problems, "problems": problems})
        return results

    def intact(self, name: str, *, progress: Progress | None = None) -> bool:
        """Whether ``name`` is installed with every file there and matching its
        recorded sha256 (what ``fetch`` needs to find to do nothing)."""
        if self.entry(name) is None:
            return False
        return all(result["ok"] for result in self.verify(name, progress=progress))

    # ------------------------------------------------------------------ internals

    def _download(self, name: str, source: SourceFile, progress: Progress | None) -> Path:
        """Download ``source`` to ``models/.downloads/<name>/<file>.part``,
        resuming what is there with an HTTP Range request; rename on success.
        A short body raises ``CorruptModel`` and keeps the part for the next try.

        A resumed part is only extended by the bytes that follow it: the
        request carries If-Range with the ETag or Last-Modified of the first
        response (a changed file comes back whole, with 200), and a 206 whose
        Content-Range starts elsewhere is thrown away for a full download."""
        import requests

        folder = self.root / ".downloads" / name
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / source.filename
        if final.exists():  # complete, kept after a refusal that was not the file's fault
            return final
        part = folder / (source.filename + ".part")
        validators = folder / (source.filename + ".part.json")
        have = part.stat().st_size if part.exists() else 0
        # The file's own bytes: requests asks for gzip by default and decodes
        # it, and then neither Content-Length nor a Range offset counts the
        # bytes written here (a compressed reply looked truncated on every try).
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if_range = _read_if_range(validators)
            if if_range:
                headers["If-Range"] = if_range
        try:
            response = requests.get(source.url, headers=headers, stream=True, timeout=60)
        except requests.RequestException as exc:
            raise DownloadFailed(f"cannot download {source.url} ({exc}); check the network and retry "
                                 f"`{fetch_command(KNOWN_MODELS[name])}`") from exc
        with response:
            if response.status_code == 416 and have:  # asked for bytes past the end: start again
                part.unlink(missing_ok=True)
                validators.unlink(missing_ok=True)
                return self._download(name, source, progress)
            if response.status_code not in (200, 206):
                raise DownloadFailed(f"cannot download {source.url}: HTTP {response.status_code}; retry "
                                     f"`{fetch_command(KNOWN_MODELS[name])}` later")
            range_total = 0
            if response.status_code == 206:
                content_range = response.headers.get("Content-Range", "")
                start, range_total = _parse_content_range(content_range)
                if start != have:
                    if not have:
                        raise DownloadFailed(f"cannot download {source.url}: the server answered a request "
                                             f"for the whole file with Content-Range {content_range!r}")
                    # Not the bytes that follow the part: appending them would
                    # corrupt the file. Start over with a plain request.
                    response.close()
                    part.unlink(missing_ok=True)
                    validators.unlink(missing_ok=True)
                    return self._download(name, source, progress)
            else:
                have = 0  # the whole file: the server ignored Range, or If-Range found it changed
                _write_if_range(validators, response.headers)
            length = response.headers.get("Content-Length")
            total = range_total or (have + int(length) if length is not None else 0)
            received = have
            with open(part, "ab" if have else "wb") as out:
                try:
                    for chunk in response.iter_content(1 << 16):
                        out.write(chunk)
                        received += len(chunk)
                        if progress:
                            progress(received, total, {"step": "downloading", "file": source.filename})
                except requests.RequestException as exc:
                    raise CorruptModel(
                        f"download of {source.url} broke off at {received} bytes ({exc}); "
                        f"the partial file is kept: run `{fetch_command(KNOWN_MODELS[name])}` again to resume"
                    ) from exc
        if total and received != total:
            raise CorruptModel(
                f"download of {source.url} is truncated ({received} of {total} bytes); "
                f"the partial file is kept: run `{fetch_command(KNOWN_MODELS[name])}` again to resume"
            )
        os.replace(part, final)
        validators.unlink(missing_ok=True)
        return final

    def _install(self, name: str, kind: str, files: dict[str, Path], *, allow_full_unpickle: bool,
                 open_clip_name: str, source: str, originals: dict[str, Any],
                 progress: Progress | None = None) -> dict[str, Any]:
        """Convert ``files`` into a temp folder, check them, rename it into place,
        then record the manifest entry. Converting reports no bytes of its own:
        ``progress`` hears when it starts and ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".store.lock")):
            # Every install holds the lock, so temp folders seen now were left
            # by one that crashed.
            for stale in [*self.root.glob(".tmp-*"), *self.root.glob(".old-*")]:
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
            try:
                # mkdtemp makes it owner-only; the model folder gets the mode
                # of any new folder, so that another user (a container's) can read it.
                os.chmod(staging, 0o777 & ~_umask())
                weights_file = files["checkpoint" if kind == "vqgan" else "weights"]
                converting = _ByteProgress(progress, "converting", [weights_file])
                converting.report(0, weights_file.name)
                if kind == "vqgan":
                    _convert_vqgan(files["checkpoint"], files["config"], staging, allow_full_unpickle)
                else:
                    _convert_clip(files["weights"], open_clip_name, staging, allow_full_unpickle)
                converting.report(converting.total, weights_file.name)
                target = self.root / name
                if target.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=self.root))
                    os.replace(target, old / "x")
                    shutil.rmtree(old)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            written = [target / fname for fname in (WEIGHTS, CONFIG) if (target / fname).exists()]
            hashing = _ByteProgress(progress, "hashing", written)
            entry = {
                "name": name,
                "kind": kind,
                "source": source,
                "installed_at": _now(),
                "original": originals,
                "files": {
                    role: {"path": f"{name}/{fname}", "sha256": hashing.sha256(target / fname),
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


IMPORT_ARGS = {"vqgan": "--checkpoint CKPT --config YAML", "clip": "--weights FILE --clip-model ARCH"}


def fetch_command(spec: ModelSpec) -> str:
    """``bot models fetch NAME``, with ``--trust`` when a checkpoint of the
    download publishes no sha256 (fetch refuses to unpickle it otherwise), so
    that every message names a command that works."""
    unverified = any(not source.sha256 for source in spec.files if source.role != "config")
    return f"bot models fetch {spec.name}" + (" --trust" if unverified else "")


def _parse_content_range(value: str) -> tuple[int | None, int]:
    """``"bytes 1000-4999/5000"`` -> ``(1000, 5000)``; ``(None, 0)`` when it
    cannot be read, and a total of 0 when the server says ``*``."""
    try:
        unit, _, spec = value.strip().partition(" ")
        span, _, size = spec.partition("/")
        if unit.lower() != "bytes":
            return None, 0
        start = int(span.split("-")[0])
        return start, int(size) if size.strip().isdigit() else 0
    except ValueError:
        return None, 0


def _write_if_range(path: Path, headers: Any) -> None:
    """Remember the validator of a full response for If-Range on resume. A
    weak ETag may not be used there (RFC 9110), so Last-Modified stands in."""
    etag = headers.get("ETag") or ""
    value = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified") or ""
    if value:
        path.write_text(json.dumps({"if_range": value}), encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


def _read_if_range(path: Path) -> str:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("if_range") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _manifest_problem(data: Any) -> str | None:
    """What is wrong with a parsed manifest, or None. Checked on every read:
    a hand-edited or foreign file gave a traceback (AttributeError, KeyError)
    in list, verify and fetch, and a file path outside the store would have
    been read and hashed as a model file."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return 'it must be a JSON object whose "models" is an object of name: entry'
    for name, entry in data["models"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            return f'model {name!r}: the entry must be an object with "files"'
        for role, info in entry["files"].items():
            if not (isinstance(info, dict) and isinstance(info.get("path"), str)
                    and isinstance(info.get("sha256"), str)):
                return f'model {name!r}, file {role!r}: it must be an object with a "path" and a "sha256"'
            relative = PurePosixPath(info["path"])
            if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                return (f"model {name!r}, file {role!r}: path {info['path']!r} is not allowed; "
                        "use a path inside the model folder, e.g. NAME/model.safetensors")
    return None


def _atomic_write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # not mkstemp's owner-only mode: see _install
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
