"""One settings object, read once: defaults -> bot.toml -> BOT_* environment -> flags.

Every setting ``key`` of table ``[section]`` can be overridden by the environment
variable ``BOT_<SECTION>_<KEY>`` (upper case), e.g. ``BOT_SCHEDULE_CRON``; a
``BOT_<SECTION>_*`` variable that names no setting is refused, as is an unknown key.
Secrets (``instagram.password``, ``instagram.totp_seed``) are read only from
the environment, or from a file the environment names
(``BOT_INSTAGRAM_PASSWORD_FILE``), and are masked wherever settings are printed.
``[generators.<name>]`` tables are passed as they are to that generator, which
validates them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from bot.errors import ConfigError
from bot.store import jsonable

# The folder that holds bot/, generators/, templates/ and models/.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

SECRET_KEYS = {("instagram", "password"), ("instagram", "totp_seed")}
MASK = "********"


@dataclass
class PathsSettings:
    state: Path = PROJECT_ROOT / "state"
    models: Path = PROJECT_ROOT / "models"
    templates: Path = PROJECT_ROOT / "templates"


@dataclass
class AccountSettings:
    # Where the poster's QR code and the caption point people to.
    url: str = "https://www.instagram.com/dstrtd.art/"
    name: str = "DSTRTD"


@dataclass
class PublishSettings:
    # "auto": instagram when credentials are configured, otherwise outbox.
    publisher: str = "auto"
    max_attempts: int = 3
    retry_backoff_seconds: float = 30.0


@dataclass
class PostersSettings:
    size: str = "A3"
    bleed_mm: float = 3.0
    dpi: int = 300
    layout: str = "artwork-qr"
    mark: bool = False
    # Optional per-poster link, e.g. "https://example.org/p/{city}/{post_id}";
    # empty means the QR code leads to account.url.
    link_template: str = ""


@dataclass
class InstagramSettings:
    username: str = ""
    password: str = ""
    totp_seed: str = ""
    # Point the real client at a test double: host:port replacing Instagram's
    # API domain, a CA bundle to trust, and instagrapi's private transport.
    api_host: str = ""
    ca_file: str = ""
    transport: str = "requests"
    delay_range: list[float] = field(default_factory=lambda: [1.0, 3.0])
    cooldown_seconds: float = 6 * 3600.0
    engagement_schedule_hours: list[float] = field(
        default_factory=lambda: [1.0, 6.0, 24.0, 72.0, 168.0, 720.0]
    )


@dataclass
class ScheduleSettings:
    cron: str = "0 18 * * *"
    timezone: str = "Europe/Berlin"
    jitter_seconds: int = 0
    grace_seconds: int = 6 * 3600
    strategy: str = "least-recent"
    engagement_interval_minutes: float = 60.0
    # How often the daemon rewrites state/heartbeat.json; `bot healthcheck`
    # calls a heartbeat older than three times this stale.
    heartbeat_seconds: float = 30.0


@dataclass
class Settings:
    paths: PathsSettings = field(default_factory=PathsSettings)
    account: AccountSettings = field(default_factory=AccountSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    posters: PostersSettings = field(default_factory=PostersSettings)
    instagram: InstagramSettings = field(default_factory=InstagramSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    # [generators.<name>] tables, passed to the generator untouched.
    generators: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where the settings came from, for `bot config show`.
    source: str = "defaults"

    def generator_config(self, name: str) -> dict[str, Any]:
        """The configuration table for generator ``name`` (``vqgan-clip`` reads
        ``[generators.vqgan_clip]``), plus the models directory."""
        table = dict(self.generators.get(name.replace("-", "_"), {}))
        table.setdefault("models_dir", str(self.paths.models))
        return table

    @property
    def has_instagram_credentials(self) -> bool:
        return bool(self.instagram.username and self.instagram.password)

    def as_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """Plain data for printing; secrets masked unless asked otherwise."""
        data = dataclasses.asdict(self)
        for section, key in SECRET_KEYS:
            if mask_secrets and data[section].get(key):
                data[section][key] = MASK
        return jsonable(data)


_SECTIONS = ("paths", "account", "publish", "posters", "instagram", "schedule")

# Numbers that only make sense in a range: checked when read, so that every
# command (`bot post` too, not only the daemon) refuses them, naming the setting.
# [posters] values are checked by the poster renderer, [instagram] delay_range
# by the Instagram publisher.
_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "publish.max_attempts": ("1 or more", lambda v: v >= 1),
    "publish.retry_backoff_seconds": ("0 or more", lambda v: v >= 0),
    "instagram.cooldown_seconds": ("more than 0", lambda v: v > 0),
    "instagram.engagement_schedule_hours": ("hours after publication, each 0 or more", lambda v: all(h >= 0 for h in v)),
    "schedule.jitter_seconds": ("0 or more", lambda v: v >= 0),
    "schedule.grace_seconds": ("0 or more", lambda v: v >= 0),
    "schedule.heartbeat_seconds": ("more than 0", lambda v: v > 0),
    "schedule.engagement_interval_minutes": ("0 (off) or more", lambda v: v >= 0),
}


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults, then ``config_path`` (or ``$BOT_CONFIG``, or
    ``./bot.toml`` when present), then ``BOT_*`` variables, then ``overrides``
    (``{"section.key": value}`` from command-line flags).

    Raises :class:`ConfigError` naming the file, key, value and what is allowed.
    """
    env = os.environ if environ is None else environ
    settings = Settings()
    path = _config_file(config_path, env)
    if path is not None:
        _apply_file(settings, path)
        settings.source = str(path)
    _apply_environment(settings, env)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        _set(settings, section, key, value, origin="command line")
    _resolve_paths(settings, base=path.parent if path else Path.cwd())
    return settings


def _config_file(config_path: Any, env: Mapping[str, str]) -> Path | None:
    explicit = config_path or env.get("BOT_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist (from --config or BOT_CONFIG)")
        return path
    default = Path.cwd() / "bot.toml"
    return default if default.is_file() else None


def _apply_file(settings: Settings, path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a settings file is TOML text") from None
    for section, table in data.items():
        if section == "generators":
            if not isinstance(table, dict) or not all(isinstance(t, dict) for t in table.values()):
                raise ConfigError(f"{path}: [generators] must hold tables like [generators.gan]")
            _apply_generator_tables(settings, path, table)
            continue
        if section not in _SECTIONS:
            raise ConfigError(
                f"{path}: unknown table [{section}]; allowed: {', '.join(_SECTIONS + ('generators',))}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section!r} must be a table, got {table!r}")
        for key, value in table.items():
            if (section, key) in SECRET_KEYS:
                raise ConfigError(
                    f"{path}: [{section}] {key} is a secret and is read only from the environment "
                    f"(BOT_{section.upper()}_{key.upper()} or BOT_{section.upper()}_{key.upper()}_FILE); "
                    "remove it from the file"
                )
            _set(settings, section, key, value, origin=str(path))


def _apply_generator_tables(settings: Settings, path: Path, tables: dict[str, Any]) -> None:
    """Keep the ``[generators.<name>]`` tables under the name the generator
    reads: ``[generators.vqgan-clip]``, spelt like the generator, used to be
    stored as it was and never read (the generator asks for ``vqgan_clip``)."""
    spelt: dict[str, str] = {}
    for name, table in tables.items():
        key = name.replace("-", "_")
        if key in spelt:
            raise ConfigError(
                f"{path}: [generators.{spelt[key]}] and [generators.{name}] are the same generator's "
                "settings; keep one of them"
            )
        spelt[key] = name
        settings.generators[key] = dict(table)


def check_generator_tables(
    settings: Settings, generator_names: Iterable[str], build: Callable[[str, dict[str, Any]], Any] | None = None
) -> None:
    """Raise :class:`ConfigError` for a ``[generators.<name>]`` table that no
    generator reads, and, given ``build`` (the registry's ``get_generator``),
    for a key in a table that its generator refuses. A misspelt name or key
    was accepted and ignored: the post was made with the defaults the person
    meant to change. Not done while loading, because knowing the generators
    means importing them (and torch), which commands like ``bot healthcheck``
    must not pay for."""
    names = list(generator_names)
    allowed = sorted({name.replace("-", "_") for name in names})
    for name in settings.generators:
        if name not in allowed:
            raise ConfigError(
                f"{settings.source}: [generators.{name}] names no generator; allowed: "
                + ", ".join(f"[generators.{a}]" for a in allowed)
            )
    if build is None:
        return
    from generators.errors import GeneratorError

    for name in names:
        table = name.replace("-", "_")
        if table in settings.generators:
            try:
                build(name, settings.generator_config(name))  # builds only: no model is loaded
            except GeneratorError as exc:
                raise ConfigError(f"{settings.source}: [generators.{table}]: {exc}") from None


def _apply_environment(settings: Settings, env: Mapping[str, str]) -> None:
    _check_environment_names(settings, env)
    for section in _SECTIONS:
        for f in dataclasses.fields(getattr(settings, section)):
            name = f"BOT_{section.upper()}_{f.name.upper()}"
            secret_file = env.get(f"{name}_FILE") if (section, f.name) in SECRET_KEYS else None
            if secret_file and env.get(name):
                raise ConfigError(
                    f"${name} and ${name}_FILE are both set; allowed: one of them (the secret "
                    "itself, or the file that holds it)"
                )
            if name in env and not secret_file:
                _set(settings, section, f.name, env[name], origin=f"${name}")
            elif secret_file:
                secret_path = Path(secret_file)
                try:
                    secret = secret_path.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"${name}_FILE={str(secret_path)!r}: cannot read: {exc.strerror}") from exc
                except UnicodeDecodeError:
                    raise ConfigError(f"${name}_FILE={str(secret_path)!r}: not a UTF-8 text file") from None
                _set(settings, section, f.name, secret, origin=f"${name}_FILE")


def _set(settings: Settings, section: str, key: str, value: Any, *, origin: str) -> None:
    table = getattr(settings, section, None)
    if section not in _SECTIONS or table is None:
        raise ConfigError(f"{origin}: unknown table {section!r}; allowed: {', '.join(_SECTIONS)}")
    names = {f.name: f for f in dataclasses.fields(table)}
    if key not in names:
        raise ConfigError(f"{origin}: unknown key {section}.{key}; allowed: {', '.join(sorted(names))}")
    default = getattr(type(table)(), key)
    coerced = _coerce(value, default, f"{section}.{key}", origin)
    allowed, test = _RANGES.get(f"{section}.{key}", ("", None))
    if test is not None and not test(coerced):
        raise ConfigError(f"{origin}: {section}.{key} = {coerced!r} is not allowed; allowed: {allowed}")
    setattr(table, key, coerced)


def _check_environment_names(settings: Settings, env: Mapping[str, str]) -> None:
    """Refuse a ``BOT_<TABLE>_*`` variable that names no setting: a typo
    (``BOT_SCHEDULE_CRONN``) was ignored without a word, and the bot ran on
    the default the person meant to override."""
    known = set()
    for section in _SECTIONS:
        for f in dataclasses.fields(getattr(settings, section)):
            known.add(f"BOT_{section.upper()}_{f.name.upper()}")
    known |= {f"BOT_{section.upper()}_{key.upper()}_FILE" for section, key in SECRET_KEYS}
    for name in sorted(env):
        if name.startswith("BOT_GENERATORS_"):
            raise ConfigError(
                f"${name}: [generators.*] settings are read from bot.toml only; put the setting in its "
                "[generators.<name>] table there (e.g. [generators.gan])"
            )
        section = next((s for s in _SECTIONS if name.startswith(f"BOT_{s.upper()}_")), None)
        if section is not None and name not in known:
            prefix = f"BOT_{section.upper()}_"
            allowed = sorted(k for k in known if k.startswith(prefix))
            raise ConfigError(f"${name} is not a setting; allowed for [{section}]: {', '.join(allowed)}")


def _coerce(value: Any, default: Any, name: str, origin: str) -> Any:
    """Convert ``value`` (from TOML or an environment string) to the type of the default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if isinstance(default, (int, float)):
            # int(2.5) == 2 and int(True) == 1 would silently change what the
            # person wrote; inf and nan pass every range check downstream.
            if isinstance(value, bool):
                raise ValueError
            if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = type(default)(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if isinstance(default, list):
            items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
            # each item as a setting of its own: inf, nan and true used to pass inside a list
            item_default = default[0] if default else ""
            try:
                return [_coerce(v, item_default, name, origin) for v in items]
            except ConfigError:
                raise ValueError from None
        if isinstance(default, Path):
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise ValueError  # state = 5, or an unset shell variable (not the current folder)
            return Path(str(value))
        if not isinstance(value, str):  # url = 5 or cron = 18:00:00 in bot.toml: write it in quotes
            raise ValueError
        return value
    except (TypeError, ValueError, OverflowError):
        kind = "path" if isinstance(default, Path) else type(default).__name__
        if isinstance(default, list):
            kind = f"list of {type(default[0]).__name__ if default else 'str'}"
        elif isinstance(default, str):
            kind = "str (text in quotes)"
        raise ConfigError(f"{origin}: {name} = {value!r} is not a valid {kind}") from None


def _resolve_paths(settings: Settings, base: Path) -> None:
    """Relative paths from bot.toml or the environment are taken from the
    config file's folder (or the current folder when there is none)."""
    for f in dataclasses.fields(settings.paths):
        path = Path(getattr(settings.paths, f.name)).expanduser()
        setattr(settings.paths, f.name, path if path.is_absolute() else (base / path).resolve())
