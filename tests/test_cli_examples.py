"""The "Examples:" of every ``--help`` work as written: users copy them.

The examples are read from the help texts themselves (``bot --help``, ``bot
COMMAND --help``, ``bot GROUP SUB --help``), never copied here, so that an
example edited or added later is checked too:

- every example (all of them, whether run here or not) names only commands,
  options, choices and ``BOT_*`` settings that exist, gives every option its
  value and every command its required options and arguments;
- the ones that take seconds are run in a sandbox (a temporary state folder
  with a few published posts, tiny VQGAN and CLIP models of the real
  architectures, the bundled GAN, a fake Instagram on 127.0.0.1) and must
  exit 0 and do what they say. Where an example would run for minutes as
  written (training 40 epochs, optimising 250 steps of VQGAN+CLIP), the
  sandbox makes it small: bot.toml caps the VQGAN+CLIP image side, cutouts
  and plateau window, and the training examples get a few crops and one or
  two epochs (:data:`SMALLER`).

Examples that cannot run here (downloads, full-size CLIP weights, a GPU, a
daemon's schedule) say why in :func:`why_not_run`; a cheap static check
covers what they claim where there is one (the daemon schedules, the training
size of the GPU example).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import click
import pytest

from bot.cli import cli
from bot.cli.common import OutputFile
from support import REPO, run_bot

# --- 1. the examples, read from the help texts -----------------------------------

ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Example:
    page: str  # the help page it is on, e.g. "bot models import"
    line: str  # as printed, comment included
    env: tuple[tuple[str, str], ...]  # VAR=value before `bot`
    argv: tuple[str, ...]  # after `bot`
    comment: str

    @property
    def command(self) -> tuple[str, ...]:
        """The command path it calls, e.g. ("models", "import")."""
        return command_path(self.argv)

    def option(self, name: str) -> str | None:
        argv = list(self.argv)
        return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def command_path(argv: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    cmd, path, i = cli, [], 0
    while isinstance(cmd, click.Group) and i < len(argv):
        token = argv[i]
        if token.startswith("-"):
            i += 2 if _takes_value(cmd, token) else 1
            continue
        if token not in cmd.commands:
            break
        cmd = cmd.commands[token]
        path.append(token)
        i += 1
    return tuple(path)


def _takes_value(cmd: click.Command, token: str) -> bool:
    param = _option(cmd, token.partition("=")[0])
    return bool(param) and "=" not in token and not (param.is_flag or param.count)


def _option(cmd: click.Command, name: str) -> click.Option | None:
    for param in cmd.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def help_pages() -> Iterator[tuple[str, click.Command, str]]:
    """(page name, command, help text) for the root, every command and every
    subcommand, as ``--help`` prints them."""

    def walk(cmd: click.Command, ctx: click.Context) -> Iterator[tuple[str, click.Command, str]]:
        yield ctx.command_path, cmd, cmd.get_help(ctx)
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():  # the order they were added (bot/cli/__init__.py)
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))

    yield from walk(cli, click.Context(cli, info_name="bot"))


def examples_in(page: str, text: str) -> list[Example]:
    """The command lines of a help text (above its option list): indented lines
    that are, after optional VAR=value assignments, a `bot` command."""
    found = []
    for raw in text.split("\nOptions:")[0].splitlines():
        if not raw.startswith("  ") or "bot" not in raw:
            continue
        code, comment = raw.strip(), ""
        hash_mark = re.search(r"\s+#\s", code)
        if hash_mark:
            code, comment = code[: hash_mark.start()], code[hash_mark.end():]
        try:
            tokens = shlex.split(code)
        except ValueError:
            continue
        env = []
        while tokens and ENV_ASSIGNMENT.match(tokens[0]):
            name, _, value = tokens.pop(0).partition("=")
            env.append((name, value))
        if tokens[:1] == ["bot"] and len(tokens) > 1:
            found.append(Example(page, raw.strip(), tuple(env), tuple(tokens[1:]), comment.strip()))
    return found


PAGES = list(help_pages())
# Each distinct example once, in the order of the help pages (`bot --help`
# first, then the commands in their order): a later example may use what an
# earlier one made (`bot sample --model models/gan/sky` after `bot train`).
EXAMPLES: list[Example] = []
for _page, _cmd, _text in PAGES:
    for _example in examples_in(_page, _text):
        if _example.line not in {e.line for e in EXAMPLES}:
            EXAMPLES.append(_example)


def test_every_help_page_has_examples():
    assert len(PAGES) >= 20, [p for p, _, _ in PAGES]
    for page, cmd, text in PAGES:
        examples = examples_in(page, text)
        assert examples, f"`{page} --help` shows no example"
        if page != "bot":  # the root's is "First command to try"
            assert re.search(r"^ +Examples:$", text.split("\nOptions:")[0], re.M), f"`{page} --help` has no Examples: section"
            here = page.split()[1:]
            assert any(e.command[: len(here)] == tuple(here) for e in examples), (
                f"no example on `{page} --help` calls `{page}`: {[e.line for e in examples]}"
            )


# --- 2. every example names only what exists ----------------------------------------


def flag_problems(argv: tuple[str, ...]) -> list[str]:
    """Why ``bot ARGV`` would be refused before it runs: an unknown command or
    option, an option without its value, a value outside a choice or not a
    number, a missing required option or argument, a stray argument."""
    problems: list[str] = []
    cmd: click.Command = cli
    path = ["bot"]
    given: set[str] = set()
    positional: list[str] = []

    def finish_level() -> None:
        for param in cmd.params:
            if isinstance(param, click.Option) and param.required and param.name not in given:
                problems.append(f"`{' '.join(path)}` needs {param.opts[-1]}")
        arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
        most = None if any(a.nargs == -1 for a in arguments) else sum(a.nargs for a in arguments)
        least = sum(max(a.nargs, 1) for a in arguments if a.required)
        if len(positional) < least:
            problems.append(f"`{' '.join(path)}` needs {least} argument(s), got {positional}")
        if most is not None and len(positional) > most:
            problems.append(f"`{' '.join(path)}` takes {most} argument(s), got {positional}")

    i = 0
    tokens = list(argv)
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("-") and len(token) > 1:
            name, eq, inline = token.partition("=")
            param = _option(cmd, name)
            if param is None:
                names = sorted(o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts))
                problems.append(f"`{' '.join(path)}` has no option {name} (it has {', '.join(names)})")
                i += 1
                continue
            given.add(param.name)
            if param.is_flag or param.count:
                if eq:
                    problems.append(f"{name} is a flag and takes no value")
                i += 1
                continue
            values = [inline] if eq else tokens[i + 1 : i + 1 + param.nargs]
            i += 1 if eq else 1 + param.nargs
            if len(values) < param.nargs or any(v.startswith("--") for v in values):
                problems.append(f"{name} needs a value")
                continue
            for value in values:
                if isinstance(param.type, (click.Choice, click.types.IntParamType, click.types.FloatParamType)):
                    try:  # choices, numbers and their ranges: no file system involved
                        param.type.convert(value, param, None)
                    except click.BadParameter as exc:
                        problems.append(f"{name} {value}: {exc.message}")
                if isinstance(param.type, OutputFile) and Path(value).suffix.lower() != param.type.suffix:
                    problems.append(f"{name} {value}: must end in {param.type.suffix}")
            continue
        if isinstance(cmd, click.Group) and not positional:
            sub = cmd.commands.get(token)
            if sub is None:
                problems.append(f"`{' '.join(path)}` has no command {token!r} (it has {', '.join(cmd.commands)})")
                return problems
            finish_level()
            cmd, given, positional = sub, set(), []
            path.append(token)
            i += 1
            continue
        positional.append(token)
        i += 1
    if isinstance(cmd, click.Group) and not cmd.invoke_without_command:
        problems.append(f"`{' '.join(path)}` needs a command ({', '.join(cmd.commands)})")
    finish_level()
    return problems


def test_the_flag_check_finds_what_it_should():
    """The checker below is the whole guarantee for the examples not run: it
    must refuse each kind of mistake."""
    assert flag_problems(("post", "--topic", "coral")) == []
    assert flag_problems(("--config", "x.toml", "config", "show", "--json")) == []
    assert flag_problems(("posters", "--mark", "--no-mark", "--out", "a.pdf")) == []
    assert "has no option --nope" in " ".join(flag_problems(("post", "--nope")))
    assert "has no option --json" in " ".join(flag_problems(("--json", "config", "show")))  # root has none
    assert "needs a value" in " ".join(flag_problems(("post", "--topic")))
    assert "needs a value" in " ".join(flag_problems(("post", "--topic", "--dry-run")))
    assert "takes no value" in " ".join(flag_problems(("post", "--dry-run=1")))
    assert "needs --out" in " ".join(flag_problems(("sample", "--model", "m")))
    assert "dcgam" in " ".join(flag_problems(("train", "--data", "d", "--out", "o", "--arch", "dcgam")))
    assert "--n 4x" in " ".join(flag_problems(("sample", "--model", "m", "--out", "o", "--n", "4x")))
    assert "--max-age 0" in " ".join(flag_problems(("healthcheck", "--max-age", "0")))
    assert "must end in .pdf" in " ".join(flag_problems(("posters", "--out", "a.png")))
    assert "no command 'shows'" in " ".join(flag_problems(("topics", "shows", "coral")))
    assert "needs 1 argument" in " ".join(flag_problems(("topics", "show")))
    assert "takes 1 argument" in " ".join(flag_problems(("topics", "show", "a", "b")))
    assert "needs a command" in " ".join(flag_problems(("models",)))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.line for e in EXAMPLES])
def test_example_names_only_existing_options(example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert flag_problems(example.argv) == [], f"`{example.page} --help`: {example.line}"
    if example.env:  # a BOT_* variable that is no setting, or a value it refuses, is an error
        from bot.config import load_settings

        monkeypatch.chdir(tmp_path)
        load_settings(environ=dict(example.env))


# --- 3. the sandbox -------------------------------------------------------------------

# The VQGAN+CLIP settings of the sandbox: the tiny models, and a small image
# with a short plateau window, so that a generation takes a second (with the
# profile's 250 steps it took minutes even with the tiny models).
BOT_TOML = """\
[generators.vqgan_clip]
vqgan = "{vqgan}"
clip_weights = "{clip_weights}"
clip_model = "{clip_model}"
cutouts = 2
max_side = 32
stop_min_steps = 2
stop_window = 10
"""

PLUGIN = "from generators.vqgan_clip.tiny import register_tiny_clip\nregister_tiny_clip()\n"


@dataclass
class Sandbox:
    root: Path
    work: Path  # the current folder of every example
    env: dict[str, str]
    ig_env: dict[str, str] = field(default_factory=dict)
    models_env: dict[str, str] = field(default_factory=dict)
    daemon: subprocess.Popen | None = None
    daemon_state: Path | None = None
    published: list[str] = field(default_factory=list)


def _image(path: Path, side: int) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    from fake_instagram import FakeInstagram
    from fake_instagram.harness import write_templates
    from generators.models.store import ModelStore
    from generators.vqgan_clip.tiny import install_tiny_models, write_tiny_vqgan

    root = tmp_path_factory.mktemp("cli-examples")
    models = root / "models"
    tiny = install_tiny_models(models)
    (models / "gan").mkdir()
    (models / "gan" / "hubble-128").symlink_to(REPO / "models" / "gan" / "hubble-128")
    (root / "bot.toml").write_text(BOT_TOML.format(**tiny))
    (root / "plugins").mkdir()
    (root / "plugins" / "tiny_clip_plugin.py").write_text(PLUGIN)
    work = root / "work"
    work.mkdir()
    (work / "other.toml").write_text(BOT_TOML.format(**tiny))  # `bot --config other.toml ...`
    _image(work / "hubble_deep_field.jpg", 256)
    _image(work / "reef.jpg", 128)
    _image(work / "sky.jpg", 128)
    env = {"BOT_CONFIG": str(root / "bot.toml"), "BOT_PATHS_STATE": str(root / "state"),
           "BOT_PATHS_MODELS": str(models)}
    box = Sandbox(root=root, work=work, env=env)

    # a second model store holding the VQGAN the models examples name
    models_named = root / "models-named"
    ckpt, config, _ = write_tiny_vqgan(root / "tiny-vqgan")
    ModelStore(models_named).import_files("vqgan_imagenet_f16_16384", {"checkpoint": ckpt, "config": config},
                                          kind="vqgan", trust=True)
    box.models_env = {**env, "BOT_PATHS_MODELS": str(models_named)}
    # `bot models import ... --checkpoint last.ckpt --config model.yaml`: files in the official format
    write_tiny_vqgan(work)

    # `bot run`, started now so that it is up by the time `bot healthcheck` runs;
    # a state of its own, as one daemon holds its state (`bot run --once` runs too)
    box.daemon_state = root / "daemon-state"
    daemon_env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    daemon_env.update(env, BOT_PATHS_STATE=str(box.daemon_state), BOT_PLUGINS="tiny_clip_plugin",
                      PYTHONPATH=str(root / "plugins"))
    old = os.getcwd()
    with open(root / "daemon.log", "w") as log:
        box.daemon = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=work, env=daemon_env,
                                      stdout=log, stderr=subprocess.STDOUT)
    try:
        os.chdir(work)
        with FakeInstagram(root / "tls", username="dstrtd.art") as fake:
            # published posts: one in the sandbox's outbox (for `bot posters`: one
            # page each), one on the fake Instagram (`bot engagement`)
            code, out, err = _cli(env, "post", "--topic", "coral", "--dry-run")
            assert code == 0, err
            box.published = [folder.name for folder in (root / "state" / "archive").iterdir()]  # post ids
            box.ig_env = {**env, **fake.env(), "BOT_PATHS_STATE": str(root / "ig-state"),
                          "BOT_PATHS_TEMPLATES": str(write_templates(root / "ig-templates")),
                          "BOT_POSTERS_SIZE": "A5", "BOT_INSTAGRAM_ENGAGEMENT_SCHEDULE_HOURS": "0"}
            code, out, err = _cli(box.ig_env, "post", "--topic", "reef")
            assert code == 0, err
            yield box
    finally:
        os.chdir(old)
        if box.daemon.poll() is None:
            box.daemon.kill()
            box.daemon.wait()


def _cli(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """``bot ARGV`` in this process with exactly the ``BOT_*`` variables of ``env``
    (for the module fixture, which has no capsys)."""
    from click.testing import CliRunner

    from bot.cli import main
    from fake_instagram.harness import _as_click

    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("BOT_")]:
            mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        result = CliRunner().invoke(_as_click(main), list(argv), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# --- 4. running them ------------------------------------------------------------------

# Examples that run for minutes as written, run smaller: (flag, value as
# written) -> value here. Said in the module docstring.
SMALLER = {
    ("dataset", "crops", "--count", "1000"): "8",  # the crops `bot train` then learns from
    ("train", "--epochs", "40"): "1",
    ("train", "--epochs", "80"): "2",
}

# Examples in files being edited elsewhere that do not work yet: the line ->
# (the test that shows it, why). Remove an entry when its example is fixed
# (test_known_broken_are_still_there says when).
KNOWN_BROKEN: dict[str, tuple[str, str]] = {}  # example line -> (test it fails, why): none now


def _marked(examples: list[Example], test: str) -> list:
    return [pytest.param(e, id=e.line, marks=pytest.mark.xfail(reason=KNOWN_BROKEN[e.line][1], strict=True))
            if KNOWN_BROKEN.get(e.line, ("",))[0] == test else pytest.param(e, id=e.line) for e in examples]


def why_not_run(example: Example) -> str | None:
    """Why an example is only flag-checked here, or None when it is run."""
    argv = example.argv
    if example.command == ("models", "fetch"):
        return "downloads from the internet"
    if example.command == ("models", "import") and "--weights" in argv:
        return "needs CLIP weights of a full-size architecture (hundreds of MB; checked by hand)"
    if example.command == ("run",) and "--once" not in argv:
        return "runs until stopped: the plain one is the sandbox's daemon; schedules: test_run_example_schedules"
    if example.command == ("train",) and ("--device" in argv or "--arch" in argv):
        return "trains 50 epochs (or needs a GPU); test_train_examples_fit_their_data checks its size"
    if example.command == ("post",) and "--abandon" in argv:
        return "needs a post that cannot be finished (tests/test_pipeline_edges.py runs it)"
    return None


RUN = [e for e in EXAMPLES if why_not_run(e) is None]


def _prepare(example: Example, box: Sandbox) -> tuple[dict[str, str], list[str]]:
    """The environment and argv an example runs with in the sandbox."""
    env = dict(box.env)
    if example.command[:1] in (("login",), ("engagement",)):
        env = dict(box.ig_env)
    if example.command[:1] == ("models",):
        env = dict(box.models_env)
    if example.command[:1] in (("post",), ("run",)):  # posts of their own, not more pages for `bot posters`
        env["BOT_PATHS_STATE"] = str(box.root / "post-state")
    if example.command == ("healthcheck",):  # the state of the running `bot run`
        env["BOT_PATHS_STATE"] = str(box.daemon_state)
    if example.command == ("models", "import"):  # into a store that does not have it yet
        env["BOT_PATHS_MODELS"] = str(box.root / "models-import")
    env.update(example.env)
    argv = list(example.argv)
    for i, token in enumerate(argv[:-1]):
        value = SMALLER.get((*example.command, token, argv[i + 1]))
        if value is not None:
            argv[i + 1] = value
    if example.command == ("posters",) and "--post" in argv:  # an id of this sandbox
        argv[argv.index("--post") + 1] = box.published[-1]
    for i, token in enumerate(argv):  # absolute paths (/tmp/...) into the sandbox
        if token.startswith("/tmp/"):
            argv[i] = str(box.root / "tmp" / Path(token).name)
            (box.root / "tmp").mkdir(exist_ok=True)
    return env, argv


def _wait_for_daemon(box: Sandbox) -> None:
    from bot.daemon import read_heartbeat

    deadline = time.monotonic() + 60
    while (read_heartbeat(box.daemon_state) or {}).get("status") != "running":
        assert box.daemon is not None and box.daemon.poll() is None, (box.root / "daemon.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "`bot run` wrote no running heartbeat in 60 s"
        time.sleep(0.2)


def _check(example: Example, argv: list[str], out: str, err: str, box: Sandbox) -> None:
    """What an example says it does, beyond exiting 0."""
    cmd = example.command
    opt = dict(zip(argv, argv[1:]))
    if "--json" in argv:
        json.loads(out)
    if cmd == ("post",):
        post = json.loads(out) if "--json" in argv else None
        if "--topic" in argv:
            assert f"({opt['--topic']})" in out.splitlines()[0]
        if "--dry-run" in argv:
            assert "via outbox" in out and str(box.root / "post-state" / "outbox") in out
        if post:
            assert post["status"] == "published" and Path(post["artefacts"]["original"]).is_file()
    if cmd == ("config", "show") and "--json" in argv:
        data = json.loads(out)
        if "BOT_SCHEDULE_CRON" in dict(example.env):
            assert data["schedule"]["cron"] == dict(example.env)["BOT_SCHEDULE_CRON"]
        if "--config" in argv:
            assert data["source"].endswith(opt["--config"])
    if cmd == ("healthcheck",):
        assert out.startswith("healthy")
    if cmd == ("run",):
        from bot.daemon import read_heartbeat

        assert read_heartbeat(box.root / "post-state")["stop_reason"] == "--once finished"
    if cmd == ("topics", "show"):
        text = out if "--json" not in argv else json.loads(out)["caption"]
        assert "This is what" in text
    if cmd == ("posters",):
        pdf = box.work / opt["--out"]
        assert pdf.is_file() and pdf.with_suffix(".contact.png").is_file()
        if "--city" in argv:
            assert f"/{opt['--city']}/" in out
        if "--post" in argv:
            assert [p["post_id"] for p in json.loads(out)["pages"]] == [opt["--post"]]
    if cmd == ("login",):
        assert (Path(box.ig_env["BOT_PATHS_STATE"]) / "instagram_session.json").is_file()
        if "--json" in argv:
            assert json.loads(out)["username"] == "dstrtd.art"
    if cmd == ("engagement",) and "--chart" in argv:
        assert Path(opt["--chart"]).is_file()
    if cmd == ("dataset", "crops"):
        assert len(list((box.work / opt["--out"]).glob("crop-*.png"))) == int(opt["--count"])
    if cmd == ("train",):
        assert (box.work / opt["--out"] / "generator.safetensors").is_file()
    if cmd == ("sample",):
        n, seed = int(opt.get("--n", 16)), int(opt.get("--seed", 0))
        written = sorted((box.work / opt["--out"]).glob("sample-*.png"))
        assert {p.name for p in written} >= {f"sample-{seed + i}.png" for i in range(n)}
        if "--size" in argv:
            from PIL import Image

            assert Image.open(box.work / opt["--out"] / f"sample-{seed}.png").size == (int(opt["--size"]),) * 2
    if cmd == ("generate",):
        folder = box.work / opt["--out"]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert (folder / "image.png").is_file()
        if "--iterations" in argv:
            assert manifest["extras"]["stop_step"] <= int(opt["--iterations"])
        for i, token in enumerate(argv):
            step = int(argv[i + 1]) if token == "--snapshot" else None
            # the sandbox's plateau rule stops early (bot.toml); whether an example's step is
            # always reached is test_generate_example_snapshots_are_always_written
            if step is not None and step <= manifest["extras"]["stop_step"]:
                assert (folder / "snapshots" / f"step-{step:05d}.png").is_file(), f"no snapshot at step {step}"
    if cmd == ("models", "verify") and "--json" in argv:
        assert all(r["ok"] for r in json.loads(out))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", _marked(RUN, "runs"))
def test_example_runs(example: Example, sandbox: Sandbox, capsys, monkeypatch: pytest.MonkeyPatch):
    env, argv = _prepare(example, sandbox)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(sandbox.work)
    if example.command == ("healthcheck",):
        _wait_for_daemon(sandbox)
    if example.command == ("run",):  # `bot run` points logging at this test's stdout: put it back after
        import logging

        root = logging.getLogger()
        monkeypatch.setattr(root, "handlers", list(root.handlers))
        monkeypatch.setattr(root, "level", root.level)
    code, out, err = run_bot(capsys, *argv)
    assert code == 0, f"{example.line}\nran as: bot {shlex.join(argv)}\n{out[-2000:]}\n{err[-3000:]}"
    _check(example, argv, out, err, sandbox)


def test_run_example_stops_cleanly(sandbox: Sandbox):
    """`bot run` as written: up (its heartbeat says running, so the healthcheck
    examples above had a daemon to check), and SIGTERM ends it with status 0."""
    assert any(e.argv == ("run",) for e in EXAMPLES)
    _wait_for_daemon(sandbox)
    assert sandbox.daemon is not None
    sandbox.daemon.send_signal(signal.SIGTERM)
    assert sandbox.daemon.wait(timeout=60) == 0, (sandbox.root / "daemon.log").read_text()[-3000:]


def test_known_broken_are_still_there():
    """A KNOWN_BROKEN line that is no longer in the help has been fixed: remove its entry."""
    lines = {e.line for e in EXAMPLES}
    assert [line for line in KNOWN_BROKEN if line not in lines] == []


def test_examples_run_or_say_why_not():
    """Most examples run; the few that do not say why (so that a new example is
    run unless someone decides otherwise)."""
    ran = [e for e in EXAMPLES if why_not_run(e) is None]
    skipped = {e.line: why_not_run(e) for e in EXAMPLES if why_not_run(e)}
    assert len(ran) >= 40, skipped
    assert len(skipped) <= 11, skipped


# --- 5. what the examples not run claim -------------------------------------------------


def test_run_example_schedules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The `bot run` examples' schedules load, and one that says "every N s" fires every N s."""
    from datetime import datetime, timedelta, timezone

    from bot.config import load_settings
    from bot.scheduling import cron_trigger

    monkeypatch.chdir(tmp_path)
    scheduled = [e for e in EXAMPLES if e.command == ("run",) and "BOT_SCHEDULE_CRON" in dict(e.env)]
    assert len(scheduled) >= 2
    for example in scheduled:
        schedule = load_settings(environ=dict(example.env)).schedule
        trigger = cron_trigger(schedule.cron, schedule.timezone)
        fires, moment = [], datetime(2026, 3, 1, 12, 0, 3, tzinfo=timezone.utc)
        for _ in range(4):
            fires.append(trigger.get_next_fire_time(None, moment))
            moment = fires[-1] + timedelta(seconds=1)
        gaps = {(b - a).total_seconds() for a, b in zip(fires, fires[1:])}
        every = re.search(r"every (\d+) s\b", example.comment)
        if every:
            assert gaps == {float(every.group(1))}, (example.line, fires)
        if schedule.timezone == "UTC" and "9,18" in schedule.cron:
            assert {f.astimezone(timezone.utc).hour for f in fires} == {9, 18}


def test_train_examples_fit_their_data():
    """A `bot train` example on crops made by an example of the same page trains at
    a size those crops have (smaller images are skipped: "no usable image")."""
    for page, _, text in PAGES:
        examples = examples_in(page, text)
        crop_size = {e.option("--out").rstrip("/"): int(e.option("--size") or 64)
                     for e in examples if e.command == ("dataset", "crops")}
        for example in examples:
            data = (example.option("--data") or "").rstrip("/")
            if example.command == ("train",) and data in crop_size:
                img_size = int(example.option("--img-size") or 64)  # `bot train --help`: [default: 64]
                assert img_size <= crop_size[data], (
                    f"`{page} --help`: {example.line}: trains at {img_size} px on the "
                    f"{crop_size[data]}-px crops of {data}"
                )


SNAPSHOTS = [e for e in EXAMPLES if e.command == ("generate",) and "--snapshot" in e.argv]


@pytest.mark.parametrize("example", _marked(SNAPSHOTS, "snapshots"))
def test_generate_example_snapshots_are_always_written(example: Example):
    """A --snapshot step after the step where a run may stop is silently not
    written: the plateau rule may stop any run from its minimum steps on (unless
    --stop none), and no run goes past its --iterations or the profile's cap."""
    from generators.vqgan_clip.plugin import CPU_PROFILE, FULL_PROFILE

    profiles = [p for name, p in (("cpu", CPU_PROFILE), ("full", FULL_PROFILE))
                if example.option("--profile") in (None, "auto", name)]
    iterations = [int(example.option("--iterations") or p["iterations"]) for p in profiles]
    reached = min(iterations)
    if example.option("--stop") != "none":
        reached = min([reached] + [p["stop_min_steps"] for p in profiles])
    argv = list(example.argv)
    steps = [int(argv[i + 1]) for i, token in enumerate(argv) if token == "--snapshot"]
    assert max(steps) <= reached, f"{example.line}: --snapshot {max(steps)}, but a run may stop at step {reached}"
