"""The ``instagram`` publisher: one feed photo per post through instagrapi, exactly once.

Instagram is where a bot loses its account or doubles a post, so this module
takes over every decision instagrapi would otherwise make on its own:

* **One send per request.** instagrapi's ``requests`` transport retries POSTs
  on 429/5xx and dropped connections, and ``private_request`` re-sends after an
  incomplete read or a timeout: a 500 or a dropped connection after
  ``media/configure`` could publish twice while the caller sees success.
  :class:`BotClient` turns both off; the pipeline owns retries and calls
  :meth:`InstagramPublisher.find` before any of them.
* **Our settings win.** ``load_settings()`` restores the transport, TLS and
  retry settings saved in the session file over the constructor's, so
  :meth:`BotClient.apply_bot_settings` runs again after every load.
* **"Not found" must mean "looked and it is not there".** ``user_medias_v1``
  returns ``[]`` when throttled; :meth:`InstagramPublisher.find` reads the
  account feed itself, page after page (``max_id``/``next_max_id``) back to
  when the post was planned, and raises ``PublishError(outcome_unknown=True)``
  when it cannot look or would have to read more than ``FEED_PAGES`` pages.
* **Every host can be redirected.** ``instagram.api_host`` (host:port) sends
  every request of every session the client has (private API, the Bloks login
  host ``b.i.instagram.com`` frozen in default arguments, the password
  public-key URL on the public session, the web fallback of ``media_info``, the
  upload host) to a test double, keeping the original host in the ``Host``
  header; ``instagram.ca_file`` is the CA bundle to trust there.
* **Nobody waits on stdin.** Challenges and two-factor prompts pause the post
  and tell the person to run ``bot login`` (the one interactive command).
* **Secrets stay secret.** :func:`install_secret_filter` masks the password,
  the TOTP seed, session ids and authorization tokens in every log record.

Refusals map to the publisher errors of :mod:`bot.errors`: 429, "please wait a
few minutes", ``feedback_required`` and rate limits are a
:class:`PublishCoolDown`; challenges, a login refused after one relogin and a
suspended account are :class:`PublishPaused`; network errors and 5xx are a
retryable :class:`PublishError` whose ``outcome_unknown`` says whether the
configure call may have landed; a media Instagram says does not exist is
:class:`MediaGone`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import stat
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import BaseAdapter

from bot.config import InstagramSettings, Settings
from bot.captions import check_caption
from bot.errors import BadInput, CaptionTooLong, MediaGone, PublishCoolDown, PublishError, PublishPaused
from bot.publish.base import Publication, Submission, register_publisher
from bot.store import atomic_write_bytes, iso, utcnow

log = logging.getLogger("bot.publish.instagram")
CLIENT_LOGGER = "bot.instagram.client"

SESSION_FILE = "instagram_session.json"
TRANSPORTS = ("requests", "curl", "utls")
IMAGE_SIZE = (1080, 1350)
# Connect and read timeouts for every request: instagrapi sends its private
# requests without one, which would let a dead connection hang the daemon.
REQUEST_TIMEOUT = (10.0, 60.0)
# `find` reads the account's feed a page at a time (18 media a page, as the app
# asks) back to the post's start, but at most FEED_PAGES pages: a person who
# posted more than that by hand since then gets "cannot tell", never "not there".
FEED_PAGE_SIZE = 18
FEED_PAGES = 10
# A media taken this long before its post was planned cannot belong to it
# (clock skew between us and Instagram).
CLOCK_SLACK = timedelta(minutes=10)
# What fixes a refused login or a challenge; `bot login` itself says what to run next
# (it releases paused posts for `bot post`), so the hint fits posting and engagement alike.
LOGIN_HINT = "run `bot login` at a terminal to complete it"


# -- secrets out of logs ------------------------------------------------------------

_SECRET_PATTERNS = [
    re.compile(r"(Bearer\s+IGT:\d+:)[A-Za-z0-9+/=_-]+"),
    re.compile(r"(#PWD_INSTAGRAM[^:\s]*:\d+:\d+:)[A-Za-z0-9+/=]+"),
    re.compile(r"""(sessionid["']?\s*[:=]\s*["']?)[^"'\s;,&}]+""", re.IGNORECASE),
    # Not after a letter: instagrapi's "BadPassword: The password you entered..."
    # is an exception name, and masking its next word read as a leaked password.
    re.compile(r"""(?<![A-Za-z])((?:enc_)?password["']?\s*[:=]\s*["']?)[^"'\s;,&}]+""", re.IGNORECASE),
]
_MASK = "********"


class SecretFilter(logging.Filter):
    """Masks known secret values and secret-shaped fields in a log record.

    It rewrites the record itself (message, arguments, traceback text), so
    every handler after it, including test log capture, sees the masked text.
    """

    def __init__(self) -> None:
        super().__init__("secrets")
        self.values: set[str] = set()

    def add(self, *values: str | None) -> None:
        # Short values would mask ordinary words; real secrets are long.
        self.values.update(v for v in values if v and len(v) >= 4)

    def mask(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, _MASK)
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + _MASK, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        record.msg, record.args = self.mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True


SECRETS = SecretFilter()
# Loggers that may see secrets: instagrapi's own and ours. A logger's filter
# only applies to records made on that logger, hence the explicit list; the
# handlers of the root logger get the filter too.
_FILTERED_LOGGERS = (
    "",
    "bot",
    "bot.pipeline",
    "bot.publish.instagram",
    "bot.engagement",
    "bot.cli.login",
    CLIENT_LOGGER,
    "instagrapi",
    "instagrapi.mixins.user",
    "private_request",
    "public_request",
    "graphql_request",
    "urllib3.connectionpool",
)


def install_secret_filter(*secrets: str | None) -> SecretFilter:
    """Register ``secrets`` and make sure every log record the bot or
    instagrapi makes passes :data:`SECRETS`. Safe to call many times."""
    SECRETS.add(*secrets)
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if SECRETS not in logger.filters:
            logger.addFilter(SECRETS)
    for handler in logging.getLogger().handlers:
        if SECRETS not in handler.filters:
            handler.addFilter(SECRETS)
    return SECRETS


def _describe(exc: BaseException) -> str:
    """A one-line, secret-free description of an instagrapi/requests error."""
    text = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return SECRETS.mask(f"{type(exc).__name__}: {text}")[:300]


# -- the client ---------------------------------------------------------------------


class _RedirectAdapter(BaseAdapter):
    """Wraps the adapter instagrapi mounted on a session: sends every request
    to ``api_host`` (when set), keeps the original host in the ``Host`` header,
    trusts ``ca_file`` (when set) and gives every request a timeout. Nothing
    else changes, so instagrapi's own transport (``requests``, ``curl``,
    ``utls``) still does the sending.

    The CA file is applied here, per request, because requests lets
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override a session's ``verify``."""

    def __init__(self, inner: BaseAdapter, api_host: str, ca_file: str = ""):
        super().__init__()
        self.inner = inner
        self.api_host = api_host
        self.ca_file = ca_file

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):  # type: ignore[override]
        if self.api_host:
            parts = urlsplit(request.url)
            if parts.netloc != self.api_host:
                if not any(k.lower() == "host" for k in request.headers):
                    request.headers["Host"] = parts.netloc
                request.url = urlunsplit(("https", self.api_host, parts.path, parts.query, parts.fragment))
        return self.inner.send(
            request, stream=stream, timeout=timeout or REQUEST_TIMEOUT, verify=self.ca_file or verify,
            cert=cert, proxies=proxies,
        )

    def close(self) -> None:
        self.inner.close()


def _client_class():
    """instagrapi is imported on first use: most commands never need it."""
    from instagrapi import Client
    from instagrapi.utils.timing import random_delay

    class BotClient(Client):
        """instagrapi's client with the bot's transport, TLS, delay and retry
        policy, and one send per request (see the module docstring)."""

        def __init__(self, ig: InstagramSettings, *, interactive: bool = False):
            self.bot_settings = ig
            self.interactive = interactive
            super().__init__(
                logger=logging.getLogger(CLIENT_LOGGER),
                delay_range=_delay_range(ig),
                private_transport=ig.transport,
                session_retry_total=0,
                session_retry_statuses=[],
                request_timeout=0,
                with_challenge_flow=interactive,
            )
            self.apply_bot_settings()

        def apply_bot_settings(self) -> None:
            """(Re-)apply our transport, TLS, retry and delay settings; call it
            after ``load_settings`` because that restores the saved ones."""
            ig = self.bot_settings
            # request_timeout is instagrapi's fixed sleep before each request;
            # delay_range is ours. No retries below us: we own them.
            self.set_retry_config(
                request_timeout=0,
                public_request_retries_count=0,
                session_retry_total=0,
                session_retry_backoff_factor=0,
                session_retry_statuses=[],
                private_transport=ig.transport,
            )
            self.set_tls_verify(ig.ca_file or True)
            self.delay_range = _delay_range(ig)
            self.with_challenge_flow = self.interactive
            for name in ("private", "public", "graphql"):
                session = getattr(self, name, None)
                if session is None:
                    continue
                for prefix, adapter in list(session.adapters.items()):
                    inner = adapter.inner if isinstance(adapter, _RedirectAdapter) else adapter
                    session.mount(prefix, _RedirectAdapter(inner, ig.api_host, ig.ca_file))

        def private_request(self, endpoint, data=None, params=None, login=False, with_signature=True,
                            headers=None, extra_sig=None, domain=None):
            """One request, sent once. instagrapi's version re-sends after an
            incomplete read, a timeout or a resolved challenge, which can land a
            configure twice; outside ``bot login`` a challenge is raised as is."""
            if self.interactive:
                return super().private_request(endpoint, data=data, params=params, login=login,
                                               with_signature=with_signature, headers=headers,
                                               extra_sig=extra_sig, domain=domain)
            headers = dict(headers or {})
            if self.authorization and "authorization" not in {k.lower() for k in headers}:
                headers["Authorization"] = self.authorization
            if self.delay_range:
                random_delay(delay_range=self.delay_range)
            self.private_requests_count += 1
            return self._send_private_request(endpoint, data=data, params=params, login=login,
                                              with_signature=with_signature, headers=headers or None,
                                              extra_sig=extra_sig, domain=domain)

    return BotClient


def _delay_range(ig: InstagramSettings) -> list[float] | None:
    low, high = ig.delay_range
    return None if high <= 0 else [low, high]


def make_client(ig: InstagramSettings, *, interactive: bool = False):
    """A fresh instagrapi client configured from ``ig`` (no network)."""
    install_secret_filter(ig.password, ig.totp_seed)
    return _client_class()(ig, interactive=interactive)


def session_path(settings: Settings) -> Path:
    return Path(settings.paths.state) / SESSION_FILE


def save_session(client: Any, path: Path) -> None:
    """``dump_settings``, but atomic and readable by this user only (0600):
    the file holds the session cookie, which is as good as the password."""
    # The mode is set on the temp file before it is renamed into place: a
    # chmod after the rename left a window (and, after a crash there, a file)
    # readable by every user of the machine.
    atomic_write_bytes(path, json.dumps(client.get_settings(), indent=1, default=str).encode("utf-8"), mode=0o600)


def load_session(client: Any, path: Path) -> bool:
    """Load a saved session into ``client``, then re-apply our settings over
    the transport, TLS and retry settings the file restores. False when there
    is no usable session: log in with the password, as on the first run.

    * A file others may read (copied from a backup, another machine) is made
      0600 first: it is as good as the password.
    * A file that is not a session (hand-edited, another tool's, cut short) is
      moved aside to ``<name>.corrupt`` and treated as absent. Loading it used
      to fail every post with the same parse error, reported as "cannot tell
      whether an earlier attempt was published", and `bot login` crashed on it.
    * A file this user cannot read (written by root, say) stops with a
      message saying how to fix it, not as a network error retried forever.
    """
    if not path.is_file():
        return False
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
            log.warning("instagram: %s was readable by other users; made it owner-only (0600)", path)
    except OSError as exc:  # another user's file: say so, and let the read below decide
        log.warning("instagram: %s is readable by other users and cannot be made owner-only (%s)", path, exc)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return _set_aside(client, path, exc)
    except OSError as exc:
        raise PublishPaused(
            f"cannot read the saved Instagram session {path} ({exc.strerror or exc}); give it to the user "
            f"the bot runs as (chown, chmod 600) or delete it, then run `bot login`"
        ) from None
    try:
        saved = json.loads(text)
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        client.set_settings(saved)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        return _set_aside(client, path, exc)
    client.apply_bot_settings()
    install_secret_filter(client.sessionid, client.authorization)
    return True


def _set_aside(client: Any, path: Path, exc: Exception) -> bool:
    """Move an unusable session file out of the way (kept 0600 for a person to
    look at), reset ``client`` to a fresh one, and say so."""
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    client.set_settings({})
    client.apply_bot_settings()
    log.warning("instagram: the saved session %s is not usable (%s: %s); moved it to %s and logging in again",
                path, type(exc).__name__, SECRETS.mask(str(exc))[:200], aside.name)
    return False


def totp_code(seed: str) -> str:
    import pyotp

    return pyotp.TOTP(seed.replace(" ", "")).now()


def totp_seed_problem(seed: str) -> str | None:
    """Why ``seed`` is not a base32 authenticator seed, or None. Checked before
    any work: found at login time, a typo cost a whole generation and came out
    as "unexpected error while logging in (Error: Non-base32 digit found)"."""
    if not seed:
        return None
    try:
        totp_code(seed)
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        return (f"instagram.totp_seed (BOT_INSTAGRAM_TOTP_SEED) is not a usable authenticator seed ({exc}); "
                "expected the base32 key (letters A-Z, digits 2-7) shown when two-factor authentication was set up")
    return None


# -- error mapping -----------------------------------------------------------------


def classify(exc: BaseException, settings: InstagramSettings, *, configure_sent: bool, action: str) -> PublishError:
    """Turn an instagrapi/requests error into the publisher error the pipeline
    acts on. ``configure_sent``: the configure request may have reached
    Instagram, so a lost answer means the post may be out."""
    from instagrapi import exceptions as ig

    what = _describe(exc)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, PublishError):
        return exc
    if isinstance(exc, (ig.PleaseWaitFewMinutes, ig.ClientThrottledError, ig.FeedbackRequired,
                        ig.RateLimitError, ig.SentryBlock)) or status == 429:
        return PublishCoolDown(
            f"Instagram asked the bot to slow down while {action} ({what}); "
            f"backing off for {settings.cooldown_seconds:.0f} s",
            seconds=settings.cooldown_seconds,
        )
    if isinstance(exc, (ig.ChallengeError, ig.AccountSuspended, ig.TwoFactorRequired)):
        return PublishPaused(f"Instagram wants a person to act while {action} ({what}); {LOGIN_HINT}")
    if isinstance(exc, (ig.BadPassword, ig.BadCredentials)):
        # `bot login` with the same password would be refused too: say which setting to check.
        return PublishPaused(
            f"Instagram refused the login while {action} ({what}); check the password in "
            f"BOT_INSTAGRAM_PASSWORD (or the file BOT_INSTAGRAM_PASSWORD_FILE names), then {LOGIN_HINT}"
        )
    if isinstance(exc, (ig.LoginRequired, ig.ReloginAttemptExceeded, ig.ClientUnauthorizedError)):
        return PublishPaused(f"Instagram refused the login while {action} ({what}); {LOGIN_HINT}")
    if isinstance(exc, (ig.MediaNotFound, ig.MediaUnavailable)):
        return MediaGone(f"Instagram says the media does not exist while {action} ({what})")
    network = (ig.ClientConnectionError, ig.ClientIncompleteReadError, ig.ClientRequestTimeout,
               ig.ClientJSONDecodeError, requests.RequestException, OSError)
    if isinstance(exc, network) or (status is not None and status >= 500):
        return PublishError(
            f"network error or server error while {action} ({what})"
            + ("; the post may have been published" if configure_sent else ""),
            retryable=True,
            outcome_unknown=configure_sent,
        )
    if isinstance(exc, ig.ClientError):
        return PublishError(f"Instagram refused {action} ({what})", retryable=False, outcome_unknown=False)
    return PublishError(f"unexpected error while {action} ({what})", retryable=True, outcome_unknown=configure_sent)


# -- matching a post with the account's media ---------------------------------------


def upload_id_for(attempt_id: str) -> str:
    """The upload id of an attempt, derived from its id so that recording the
    attempt records the upload id too: 13 digits, like the millisecond
    timestamps the app sends."""
    digest = int(hashlib.sha256(attempt_id.encode()).hexdigest(), 16)
    return str(10**12 + digest % (9 * 10**12))


def caption_fingerprint(caption: str) -> str:
    """Whitespace-insensitive hash of a caption (Instagram trims and may
    normalise line breaks)."""
    return hashlib.sha256(" ".join(caption.split()).encode("utf-8")).hexdigest()[:16]


def _planned_at(submission: Submission) -> datetime | None:
    """When the post was planned, from its metadata or its id (``YYYYmmdd-HHMMSS-...``)."""
    text = submission.metadata.get("created_at")
    if text:
        return datetime.fromisoformat(text)
    match = re.match(r"^(\d{8}-\d{6})-", submission.post_id)
    if match:
        return datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    return None


def _matches(item: dict[str, Any], submission: Submission, upload_ids: set[str], not_before: datetime | None) -> bool:
    if str(item.get("upload_id") or "") in upload_ids:
        return True
    caption = (item.get("caption") or {}).get("text") or ""
    if caption_fingerprint(caption) != caption_fingerprint(submission.caption):
        return False
    # Same caption: only a media taken after the post was planned is this post's
    # (a topic's caption can repeat across posts).
    taken = item.get("taken_at")
    if not_before is None or taken is None:
        return True
    return datetime.fromtimestamp(int(taken), timezone.utc) >= not_before - CLOCK_SLACK


def _publication(item: dict[str, Any], *, upload_id: str | None, extra: dict[str, Any]) -> Publication:
    code = item.get("code")
    taken = item.get("taken_at")
    return Publication(
        publisher="instagram",
        published_at=iso(datetime.fromtimestamp(int(taken), timezone.utc)) if taken else iso(utcnow()),
        media_id=str(item.get("id") or item.get("pk")),
        code=code,
        url=f"https://www.instagram.com/p/{code}/" if code else None,
        extra={"media_pk": str(item.get("pk")), "upload_id": upload_id, **extra},
    )


# -- the publisher ------------------------------------------------------------------


class InstagramPublisher:
    name = "instagram"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ig = settings.instagram
        self.session_file = session_path(settings)
        self._client: Any = None
        self.account: Any = None  # instagrapi Account, after the session check
        install_secret_filter(self.ig.password, self.ig.totp_seed)

    # 0. configuration, before any work --------------------------------------------

    def check(self) -> None:
        ig = self.ig
        problems = []
        if not ig.username:
            problems.append("instagram.username is empty (set BOT_INSTAGRAM_USERNAME)")
        if not ig.password:
            problems.append("instagram.password is empty (set BOT_INSTAGRAM_PASSWORD or BOT_INSTAGRAM_PASSWORD_FILE)")
        if ig.transport not in TRANSPORTS:
            problems.append(f"instagram.transport = {ig.transport!r}; allowed: {', '.join(TRANSPORTS)}")
        if ig.ca_file and not Path(ig.ca_file).is_file():
            problems.append(f"instagram.ca_file = {ig.ca_file!r} is not a file")
        if ig.api_host and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", ig.api_host):
            problems.append(f"instagram.api_host = {ig.api_host!r}; expected host or host:port, e.g. 127.0.0.1:8443")
        if len(ig.delay_range) != 2 or min(ig.delay_range) < 0 or ig.delay_range[0] > ig.delay_range[1]:
            problems.append(f"instagram.delay_range = {ig.delay_range!r}; expected two seconds values 0 <= low <= high")
        if ig.cooldown_seconds <= 0:
            problems.append(f"instagram.cooldown_seconds = {ig.cooldown_seconds!r}; expected a positive number")
        seed_problem = totp_seed_problem(ig.totp_seed)
        if seed_problem:
            problems.append(seed_problem)
        if problems:
            raise BadInput("the instagram publisher cannot run: " + "; ".join(problems))

    # 1. a logged-in session ------------------------------------------------------

    def session(self) -> Any:
        """A logged-in client: the saved session (checked with one request), a
        relogin at most once when Instagram says the login is gone, and the
        session saved back. Never asks anything on stdin."""
        from instagrapi.exceptions import LoginRequired

        if self._client is not None:
            return self._client
        client = make_client(self.ig)
        try:
            if load_session(client, self.session_file) and client.user_id:
                try:
                    self.account = client.account_info()
                except LoginRequired:
                    log.info("instagram: the saved session is no longer valid; logging in again once")
                    self._login(client, relogin=True)
            else:
                self._login(client, relogin=False)
        except Exception as exc:
            raise classify(exc, self.ig, configure_sent=False, action="logging in") from None
        save_session(client, self.session_file)
        self._client = client
        return client

    def _login(self, client: Any, *, relogin: bool) -> None:
        from instagrapi.exceptions import TwoFactorRequired

        code = totp_code(self.ig.totp_seed) if self.ig.totp_seed else ""
        try:
            client.login(self.ig.username, self.ig.password, relogin=relogin, verification_code=code)
        except TwoFactorRequired as exc:
            raise PublishPaused(f"Instagram asks for a two-factor code ({_describe(exc)}); {LOGIN_HINT}") from None
        install_secret_filter(client.sessionid, client.authorization)
        self.account = client.account_info()

    def _call(self, action: str, work: Callable[[Any], Any], *, configure: bool = False) -> Any:
        """Run one request; on ``LoginRequired`` log in again once and repeat it
        (Instagram refused it before doing anything)."""
        from instagrapi.exceptions import LoginRequired

        client = self.session()
        try:
            return work(client)
        except LoginRequired:
            log.info("instagram: login required while %s; logging in again once", action)
        except Exception as exc:
            raise classify(exc, self.ig, configure_sent=configure, action=action) from None
        try:
            self._login(client, relogin=True)
            save_session(client, self.session_file)
            return work(client)
        except Exception as exc:
            raise classify(exc, self.ig, configure_sent=configure, action=action) from None

    # 2. did it land? --------------------------------------------------------------

    def recent_media(self, not_before: datetime | None) -> list[dict[str, Any]]:
        """The account's media taken since ``not_before`` (and perhaps a few
        older), newest first, read from its feed page by page; every page when
        ``not_before`` is None. A post may have landed before any number of
        posts made by hand, so one page is not enough.

        Raises ``PublishError(outcome_unknown=True)`` when the feed cannot be
        read, or when ``FEED_PAGES`` pages did not reach ``not_before``: unlike
        ``user_medias_v1`` (which returns ``[]`` when throttled), what this
        returns is everything there is to see."""
        media: list[dict[str, Any]] = []
        max_id = ""

        def read(client: Any) -> dict[str, Any]:
            answer = client.private_request(
                f"feed/user/{client.user_id}/",
                params={"count": FEED_PAGE_SIZE, "max_id": max_id, "rank_token": client.rank_token,
                        "ranked_content": "true"},
            )
            if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
                raise PublishError("Instagram's feed answer has no items list", outcome_unknown=True)
            return answer

        for _ in range(FEED_PAGES):
            answer = self._call("reading the account's recent media", read)
            page, max_id = answer["items"], str(answer.get("next_max_id") or "")
            media.extend(page)
            oldest = page[-1].get("taken_at") if page else None
            if not (page and answer.get("more_available") and max_id):
                return media
            if not_before is not None and oldest and datetime.fromtimestamp(int(oldest), timezone.utc) < not_before:
                return media
        raise PublishError(
            f"read {FEED_PAGES} pages ({len(media)} media) of the account's feed without reaching "
            f"{iso(not_before) if not_before else 'its end'}; cannot tell whether the post landed",
            outcome_unknown=True,
        )

    def find(self, submission: Submission) -> Publication | None:
        upload_ids = {upload_id_for(a) for a in [submission.attempt_id, *submission.previous_attempt_ids]}
        not_before = _planned_at(submission)
        try:
            items = self.recent_media(not_before - CLOCK_SLACK if not_before else None)
        except PublishError as exc:
            exc.outcome_unknown = True
            raise
        found = sorted(
            (i for i in items if _matches(i, submission, upload_ids, not_before)),
            key=lambda i: (int(i.get("taken_at") or 0), str(i.get("pk"))),
        )
        if not found:
            return None
        extra: dict[str, Any] = {"found_by": "find"}
        if len(found) > 1:
            extra["duplicates"] = [str(i.get("id") or i.get("pk")) for i in found[1:]]
            log.warning(
                "post %s landed %d times on Instagram (media %s): a configure call was repeated. "
                "Keeping the first (%s); delete the others by hand.",
                submission.post_id, len(found), ", ".join(str(i.get("id")) for i in found), found[0].get("id"),
            )
        first = found[0]
        return _publication(first, upload_id=str(first.get("upload_id") or "") or None, extra=extra)

    # 3. send ----------------------------------------------------------------------

    def publish(self, submission: Submission) -> Publication:
        # a. check what we send before anything is sent
        image = self._read_image(submission.image_path)
        self._check_caption(submission)
        # b. an earlier attempt of this post may have landed: never send twice
        if submission.previous_attempt_ids and len(submission.previous_attempt_ids) > 1:
            found = self.find(submission)
            if found is not None:
                return found
        upload_id = upload_id_for(submission.attempt_id)
        # c. upload the bytes (nothing is published yet), d. configure (publishes)
        self._call("uploading the photo", lambda client: self._rupload(client, image, upload_id))
        answer = self._call(
            "publishing the photo",
            lambda client: client.photo_configure(upload_id, IMAGE_SIZE[0], IMAGE_SIZE[1], submission.caption),
            configure=True,
        )
        media = answer.get("media") if isinstance(answer, dict) else None
        if not isinstance(media, dict) or not media.get("pk"):
            raise PublishError(
                f"Instagram answered the configure call without a media ({SECRETS.mask(str(answer))[:200]})",
                retryable=True,
                outcome_unknown=True,
            )
        # e. save the refreshed session (best effort: the post is out, and a
        #    full disk here must not turn it into "outcome unknown"), then
        #    look once for a double landing
        try:
            save_session(self._client, self.session_file)
        except OSError as exc:
            log.warning("post %s: published, but the session could not be saved (%s); the next run logs in "
                        "from the older session", submission.post_id, exc)
        extra = {"attempt_id": submission.attempt_id, "caption_fingerprint": caption_fingerprint(submission.caption)}
        extra.update(self._duplicates_of(submission, str(media.get("pk"))))
        return _publication(media, upload_id=upload_id, extra=extra)

    def _duplicates_of(self, submission: Submission, media_pk: str) -> dict[str, Any]:
        """Best effort: a configure repeated below us would show as a second
        media for this post. Not being able to look is not an error here."""
        try:
            found = self.find(submission)
        except PublishError as exc:
            log.info("post %s: could not look for duplicates (%s)", submission.post_id, exc)
            return {}
        if found is None:
            return {}
        others = [m for m in [found.extra.get("media_pk"), *found.extra.get("duplicates", [])]
                  if m and m.split("_")[0] != media_pk]
        if others:
            log.warning("post %s: other media for the same post exist: %s", submission.post_id, ", ".join(others))
            return {"duplicates": others}
        return {}

    def _check_caption(self, submission: Submission) -> None:
        """The caption is read back from the post's caption.txt, which a person
        may have edited since it was rendered and checked; Instagram would take
        the upload and refuse (or silently drop) the caption only afterwards.
        Retryable: once the file is fixed, the next `bot post` sends it."""
        try:
            check_caption(submission.caption)
        except CaptionTooLong as exc:
            raise PublishError(
                f"nothing was sent: {exc}. This post's caption is {submission.image_path.parent / 'caption.txt'}; "
                "shorten it, then run `bot post`", retryable=True,
            ) from None

    def _read_image(self, path: Path) -> bytes:
        from PIL import Image

        try:
            data = Path(path).read_bytes()
            # Decode it all, not just the header: a JPEG cut short (disk full,
            # a copy interrupted) has the right size and format, uploads
            # fine, and is refused by Instagram only at the configure call.
            with Image.open(io.BytesIO(data)) as im:
                size, kind = im.size, im.format
                im.load()
        except OSError as exc:
            raise PublishError(f"cannot read the image {path}: {exc}", retryable=False) from None
        if size != IMAGE_SIZE or kind != "JPEG":
            raise PublishError(
                f"{path} is a {kind} of {size[0]}x{size[1]}; the bot sends only its own "
                f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG", retryable=False,
            )
        return data

    def _rupload(self, client: Any, data: bytes, upload_id: str) -> None:
        """Upload the JPEG as it is. instagrapi's ``photo_rupload`` would crop
        and re-encode it at quality 75; the bot already rendered it at
        1080x1350, high quality, sRGB. The request mirrors the app's."""
        from instagrapi import config as ig_config

        name = f"{upload_id}_0_{int(uuid.uuid4().int % 9_000_000_000) + 1_000_000_000}"
        params = {
            "retry_context": json.dumps({"num_step_auto_retry": 0, "num_reupload": 0, "num_step_manual_retry": 0}),
            "media_type": "1",
            "xsharing_user_ids": "[]",
            "upload_id": upload_id,
            "image_compression": json.dumps({"lib_name": "moz", "lib_version": "3.1.m", "quality": "95"}),
        }
        headers = client.private_headers({
            "Accept-Encoding": "gzip",
            "X-Instagram-Rupload-Params": json.dumps(params),
            "X_FB_PHOTO_WATERFALL_ID": str(uuid.uuid4()),
            "X-Entity-Type": "image/jpeg",
            "Offset": "0",
            "X-Entity-Name": name,
            "X-Entity-Length": str(len(data)),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        })
        if client.delay_range:
            from instagrapi.utils.timing import random_delay

            random_delay(delay_range=client.delay_range)
        try:
            response = client.private.post(f"https://{ig_config.API_DOMAIN}/rupload_igphoto/{name}", data=data, headers=headers)
        except requests.RequestException as exc:
            from instagrapi.exceptions import ClientConnectionError

            raise ClientConnectionError(f"{type(exc).__name__} {exc}") from None
        client.request_log(response)
        if response.status_code != 200:
            raise _rupload_error(response)


def _rupload_error(response: requests.Response) -> Exception:
    """The instagrapi exception ``_send_private_request`` would raise for this answer."""
    from instagrapi import exceptions as ig

    try:
        body = response.json()
    except ValueError:
        body = {}
    message = str(body.get("message", ""))
    fields = {k: v for k, v in body.items() if k != "message"}
    if "Please wait a few minutes" in message:
        return ig.PleaseWaitFewMinutes(message, response=response, **fields)
    if message == "login_required":
        return ig.LoginRequired(message, response=response, **fields)
    if message == "challenge_required":
        return ig.ChallengeRequired(message, **fields)
    if message == "feedback_required":
        return ig.FeedbackRequired(message, **fields)
    if response.status_code == 429:
        return ig.ClientThrottledError(message or "429 Too Many Requests", response=response, **fields)
    return ig.ClientError(message or f"upload answered HTTP {response.status_code}", response=response, **fields)


register_publisher("instagram", InstagramPublisher)
