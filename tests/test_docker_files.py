"""docker/Dockerfile and docker/compose.yaml, checked without a Docker engine:
every file, path and command they name exists, the targets and volumes agree,
no secret can reach the image, and the ENTRYPOINT/CMD and HEALTHCHECK commands
behave on this machine as they would in the container."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from bot.config import load_settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (after its FROM)."""
    found: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else rest
            found[current] = []
        elif current is not None:
            found[current].append((word, rest))
    return found


def exec_form(stage: list[tuple[str, str]], word: str) -> list[str]:
    [rest] = [r for w, r in stage if w == word]
    if word == "HEALTHCHECK":
        rest = rest[rest.index("CMD") + 3:]
    return json.loads(rest)


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_every_file_the_dockerfile_copies_exists_and_none_is_ignored() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    copies = [rest for word, rest in instructions() if word == "COPY" and "--from" not in rest]
    assert copies, "the Dockerfile copies nothing from the context"
    for rest in copies:
        *sources, _destination = rest.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_both_targets_run_bot_as_non_root_with_volumes_and_a_health_check() -> None:
    found = stages()
    assert {"cpu", "cuda"} <= set(found)
    for name in ("cpu", "cuda"):
        stage = found[name]
        # tini is PID 1 (installed in the same stage) and hands signals to the bot
        assert exec_form(stage, "ENTRYPOINT") == ["tini", "--", "bot"] and exec_form(stage, "CMD") == ["run"]
        assert re.search(r"apt-get install -y --no-install-recommends [\w.\- ]*\btini\b", " ".join(r for w, r in stage if w == "RUN"))
        assert exec_form(stage, "HEALTHCHECK") == ["bot", "healthcheck"]
        [user] = [r for w, r in stage if w == "USER"]
        assert user not in ("root", "0") and f"useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin {user}" in " ".join(r for w, r in stage if w == "RUN")
        [volumes] = [json.loads(r) for w, r in stage if w == "VOLUME"]
        env = image_env(stage)
        assert sorted(volumes) == sorted([env["BOT_PATHS_STATE"], env["BOT_PATHS_MODELS"]])
        # the settings the image sets are real settings of the bot
        settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("BOT_")})
        assert str(settings.paths.state) == "/data/state" and str(settings.paths.templates) == "/app/templates"
        assert any(w == "COPY" and "/app" in r for w, r in stage), "templates must be copied to /app/templates"


def test_torch_is_pinned_as_in_pyproject_and_comes_from_the_right_index() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in dependencies if d.startswith(("torch==", "torchvision==")))
    args = dict(rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest)
    assert args["TORCH_VERSION"] == pins["torch"] and args["TORCHVISION_VERSION"] == pins["torchvision"]
    found = stages()
    cpu_runs = " ".join(r for w, r in found["cpu"] if w == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu_runs and "torch==${TORCH_VERSION}" in cpu_runs
    [cuda_from] = [rest for word, rest in instructions() if word == "FROM" and rest.endswith("AS cuda")]
    assert args[cuda_from.split()[0].strip("${}")].startswith("nvidia/cuda:")
    assert "torch==${TORCH_VERSION}" in " ".join(r for w, r in found["cuda"] if w == "RUN")


def test_compose_builds_existing_targets_with_volumes_restart_secrets_and_gpu() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    targets = set(stages())
    services = compose["services"]
    assert set(compose["volumes"]) == {"state", "models"}
    for name, service in services.items():
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in targets
        assert service["restart"] in ("unless-stopped", "always")
        assert sorted(service["volumes"]) == ["models:/data/models", "state:/data/state"]
        [env_file] = service["env_file"]
        assert (COMPOSE.parent / (env_file["path"] + ".example")).is_file(), "ship an example of the env file"
        assert "environment" not in service  # secrets only through the env file
        assert not service.get("init"), "the image runs tini already; a second init only adds a process"
    gpu = services["bot-cuda"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["bot-cuda"]["build"]["target"] == "cuda" and services["bot"]["build"]["target"] == "cpu"
    assert "deploy" not in services["bot"]


def test_secrets_never_reach_the_build_context() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in (".venv", "state", ".git", "bot.toml", "*.env", "docker/bot.env"):
        assert pattern in ignored
    assert "/docker/bot.env" in (REPO / ".gitignore").read_text().split()
    assignments = _example_assignments(commented_too=True)
    secrets = {n: v for n, v in assignments.items() if n.startswith(("BOT_INSTAGRAM_PASSWORD", "BOT_INSTAGRAM_TOTP_SEED"))}
    assert secrets and all(v == "" for v in secrets.values()), "the example holds no secret value"


def _example_assignments(*, commented_too: bool) -> dict[str, str]:
    """NAME -> value of the env example's lines (``# NAME=value`` too, when asked)."""
    found = {}
    for line in (REPO / "docker" / "bot.env.example").read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?(BOT_[A-Z_]+)=(.*)", line.strip())
        if match and (commented_too or not match.group(1)):
            found[match.group(2)] = match.group(3)
    return found


def test_every_variable_of_the_env_example_is_a_setting_of_the_bot() -> None:
    import dataclasses

    from bot.config import Settings

    known = {f"BOT_{section.upper()}_{f.name.upper()}" for section in ("paths", "account", "publish", "posters", "instagram", "schedule")
             for f in dataclasses.fields(getattr(Settings(), section))}
    for name in _example_assignments(commented_too=True):
        assert name.removesuffix("_FILE") in known, f"{name} in docker/bot.env.example is no setting of the bot"


def test_the_env_example_copied_as_it_is_lets_a_password_file_through(tmp_path: Path) -> None:
    """The example used to set BOT_INSTAGRAM_PASSWORD= (empty); an empty
    variable is a value, so a BOT_INSTAGRAM_PASSWORD_FILE added beside it (as
    docs/docker.md says to do with Docker secrets) was never read, and the bot
    quietly posted to the outbox instead of Instagram."""
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    environ = {**_example_assignments(commented_too=False), "BOT_INSTAGRAM_USERNAME": "dstrtd.art",
               "BOT_INSTAGRAM_PASSWORD_FILE": str(secret)}
    settings = load_settings(environ=environ)
    assert settings.instagram.password == "s3cret" and settings.has_instagram_credentials
    assert settings.schedule.cron == "0 18 * * *"


# -- the commands the image runs, on this machine -----------------------------------


def _bot(args: list[str], state: Path, **extra: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env.update(BOT_PATHS_STATE=str(state), BOT_SCHEDULE_HEARTBEAT_SECONDS="10", **extra)
    # the image's `bot` is the console script of this project: run it as `python -m bot`
    assert args[0] == "bot"
    return subprocess.run([sys.executable, "-m", "bot", *args[1:]], env=env, capture_output=True, text=True, timeout=120)


def _without_init(entrypoint: list[str]) -> list[str]:
    """The command tini runs: what follows its ``--``."""
    assert entrypoint[:2] == ["tini", "--"], entrypoint
    return entrypoint[2:]


def _heartbeat(state: Path, *, age_seconds: float, status: str = "running") -> None:
    tick = (datetime.now(timezone.utc) - timedelta(seconds=age_seconds)).isoformat(timespec="seconds")
    state.mkdir(parents=True, exist_ok=True)
    (state / "heartbeat.json").write_text(json.dumps({"status": status, "pid": 1, "last_tick": tick}))


def test_the_health_check_command_tells_fresh_from_stale(tmp_path: Path) -> None:
    command = exec_form(stages()["cpu"], "HEALTHCHECK")
    state = tmp_path / "state"
    missing = _bot(command, state)
    assert missing.returncode == 1 and "no heartbeat" in missing.stderr
    _heartbeat(state, age_seconds=2)
    fresh = _bot(command, state)
    assert fresh.returncode == 0 and "healthy" in fresh.stdout
    _heartbeat(state, age_seconds=3600)  # a daemon killed an hour ago
    stale = _bot(command, state)
    assert stale.returncode == 1 and "s old (limit 30 s)" in stale.stderr
    _heartbeat(state, age_seconds=1, status="stopped")
    assert _bot(command, state).returncode == 1


def test_the_entrypoint_command_runs_the_daemon(tmp_path: Path) -> None:
    stage = stages()["cpu"]
    command = _without_init(exec_form(stage, "ENTRYPOINT")) + exec_form(stage, "CMD")
    state = tmp_path / "state"
    helped = _bot(command + ["--help"], state)
    assert helped.returncode == 0 and "SIGTERM" in helped.stdout
    # --once with nothing due: starts, takes the daemon lock, beats, stops cleanly
    ran = _bot(command + ["--once"], state, BOT_SCHEDULE_CRON="0 0 1 1 *")
    assert ran.returncode == 0, ran.stderr
    assert "daemon: started" in ran.stdout  # logs go to stdout, for `docker logs`
    beat = json.loads((state / "heartbeat.json").read_text())
    assert beat["status"] == "stopped" and beat["stop_reason"] == "--once finished"
    bad = _bot(command, state, BOT_SCHEDULE_CRON="every day")
    assert bad.returncode == 2 and "schedule.cron = 'every day'" in bad.stderr
