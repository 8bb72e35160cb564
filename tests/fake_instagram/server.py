"""A fake Instagram API for tests: HTTPS on 127.0.0.1, the endpoints instagrapi
3.x really calls, every request recorded, and each refusal on demand.

The bot reaches it through its own settings only: ``instagram.api_host`` (this
server's host:port; the client keeps the host it meant in the ``Host``
header), ``instagram.ca_file`` (the CA that signed this server's certificate)
and ``instagram.transport = "requests"``.

Served (paths as instagrapi sends them):

* login: ``GET /api/v1/qe/sync/`` on the public session (the password
  public key, in ``ig-set-password-encryption-*`` headers); ``POST /graphql_www``
  (USDID registration); the Bloks CAA steps under
  ``/api/v1/bloks/async_action/...`` (on host ``b.i.instagram.com``);
  ``/api/v1/attestation/create_android_keystore/``; then the app's warm-up
  calls (reels tray, timeline), answered ``{"status": "ok"}``.
  The password is decrypted with the key handed out and checked.
* account: ``GET /api/v1/accounts/current_user/`` (the session check).
* publishing: ``POST /rupload_igphoto/<name>``, ``POST /api/v1/media/configure/``.
* challenges (only when :attr:`FakeInstagram.challenge_step` is set):
  ``GET /api/v1/challenge/`` answers that step; the Bloks ``take_challenge``
  call with a new password changes :attr:`FakeInstagram.password`.
* reading: ``GET /api/v1/feed/user/<id>/`` (paged: ``max_id`` in,
  ``next_max_id`` and ``more_available`` out), ``GET /api/v1/media/<pk>/info/``,
  ``POST /api/v1/ads/graphql/`` (media insights, business accounts only).

Refusals (:meth:`FakeInstagram.fail`): ``429``, ``please_wait``,
``feedback_required``, ``challenge_required``, ``login_required``, ``500``,
``drop`` (close the connection, do nothing), ``drop_after`` (do the work,
then close the connection without answering: "the configure landed but the
answer was lost"), ``hang_after`` (do the work, then hold the answer until
:meth:`FakeInstagram.release`).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .certs import TLSFiles, make_password_key, make_tls_files

USER_ID = 4242424242
PASSWORD_KEY_ID = 41
FEED_PAGE = 18  # the most items one feed page holds
REFUSALS = ("429", "please_wait", "feedback_required", "challenge_required", "login_required", "500",
            "drop", "drop_after", "hang_after")
_IG_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def shortcode(pk: int) -> str:
    code = ""
    while pk:
        pk, rest = divmod(pk, 64)
        code = _IG_ALPHABET[rest] + code
    return code


@dataclass
class Recorded:
    method: str
    path: str
    host: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, Any] = field(default_factory=dict)
    answered: str = "ok"


@dataclass
class _Refusal:
    pattern: str
    kind: str
    times: int


class FakeInstagram:
    """Start with :meth:`start` (or use as a context manager); point the bot at
    :attr:`api_host` with :attr:`ca_file`."""

    def __init__(self, folder: Path, *, username: str = "dstrtd.test", password: str = "correct horse battery",
                 business: bool = True):
        self.username = username
        self.password = password
        self.business = business
        self.tls: TLSFiles = make_tls_files(folder)
        self.password_key = make_password_key()
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self.medias: list[dict[str, Any]] = []  # oldest first
        self.uploads: dict[str, int] = {}  # upload id -> bytes received
        self.sessions: set[str] = set()
        self.refusals: list[_Refusal] = []
        self.likes_per_read = 3  # each media_info read sees more likes, so snapshots differ
        self.released = threading.Event()
        # The step ``GET /api/v1/challenge/`` answers while a challenge is being
        # resolved (e.g. {"step_name": "change_password", ...}); None: not served.
        self.challenge_step: dict[str, Any] | None = None
        self._next_pk = 3100000000000000000
        self.server: ThreadingHTTPServer | None = None

    # -- control ------------------------------------------------------------------

    @property
    def ca_file(self) -> str:
        return str(self.tls.ca_file)

    @property
    def api_host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """The settings that point the bot here (as BOT_* variables)."""
        return {
            "BOT_INSTAGRAM_API_HOST": self.api_host,
            "BOT_INSTAGRAM_CA_FILE": self.ca_file,
            "BOT_INSTAGRAM_TRANSPORT": "requests",
            "BOT_INSTAGRAM_USERNAME": self.username,
            "BOT_INSTAGRAM_PASSWORD": self.password,
            "BOT_INSTAGRAM_DELAY_RANGE": "0,0",
        }

    def fail(self, pattern: str, kind: str, times: int = 1) -> None:
        """The next ``times`` requests whose path contains ``pattern`` get ``kind``."""
        assert kind in REFUSALS, kind
        with self.lock:
            self.refusals.append(_Refusal(pattern, kind, times))

    def release(self) -> None:
        self.released.set()

    def expire_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()

    def calls(self, pattern: str, method: str | None = None) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if pattern in r.path and (method is None or r.method == method)]

    def start(self) -> "FakeInstagram":
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> "FakeInstagram":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- state --------------------------------------------------------------------

    def _take_refusal(self, path: str) -> str | None:
        with self.lock:
            for refusal in self.refusals:
                if refusal.pattern in path and refusal.times > 0:
                    refusal.times -= 1
                    return refusal.kind
        return None

    def add_media(self, caption: str, upload_id: str | None = None, taken_at: int | None = None) -> dict[str, Any]:
        with self.lock:
            self._next_pk += 1
            pk = self._next_pk
            media = {
                "pk": pk,
                "id": f"{pk}_{USER_ID}",
                "code": shortcode(pk),
                "taken_at": taken_at or int(time.time()),
                "media_type": 1,
                "upload_id": upload_id,
                "caption": {"text": caption},
                "user": self.user_short(),
                "image_versions2": {"candidates": [{"url": f"https://scontent.example/{pk}.jpg", "width": 1080, "height": 1350}]},
                "like_count": 0,
                "comment_count": 0,
                "original_width": 1080,
                "original_height": 1350,
            }
            self.medias.append(media)
            return media

    def user_short(self) -> dict[str, Any]:
        return {"pk": str(USER_ID), "username": self.username, "full_name": "DSTRTD test"}

    def account(self) -> dict[str, Any]:
        return {**self.user_short(), "is_private": False, "profile_pic_url": "https://scontent.example/me.jpg",
                "is_verified": False, "is_business": self.business, "account_type": 2 if self.business else 1}

    def new_session(self) -> str:
        sessionid = f"{USER_ID}%3A{base64.b32encode(time.time_ns().to_bytes(8, 'big')).decode().strip('=')}%3A1"
        with self.lock:
            self.sessions.add(sessionid)
        return sessionid

    def decrypt_password(self, enc_password: str) -> str:
        """Undo instagrapi's ``password_encrypt`` (``#PWD_INSTAGRAM:4:<ts>:<b64>``)."""
        _, _, timestamp, payload = enc_password.split(":", 3)
        raw = base64.b64decode(payload)
        size = int.from_bytes(raw[14:16], "little")
        session_key = self.password_key.decrypt(raw[16:16 + size], padding.PKCS1v15())
        tag, cipher = raw[16 + size:32 + size], raw[32 + size:]
        return AESGCM(session_key).decrypt(raw[2:14], cipher + tag, timestamp.encode()).decode()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeInstagram
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    # -- plumbing -----------------------------------------------------------------

    def _handle(self, method: str) -> None:
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        record = Recorded(method, self.path, self.headers.get("Host", ""), dict(self.headers.items()), body,
                          _form(body, self.headers.get("Content-Type", "")))
        with fake.lock:
            fake.requests.append(record)
        refusal = fake._take_refusal(path)
        record.answered = refusal or "ok"
        if refusal == "drop":
            return self._drop()
        if refusal and refusal not in ("drop_after", "hang_after"):
            return self._refuse(refusal)
        status, payload, headers = self._route(method, path, record)
        if refusal == "drop_after":
            return self._drop()
        if refusal == "hang_after":
            fake.released.wait(120)
            return self._drop()
        self._send(status, payload, headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass

    def _refuse(self, kind: str) -> None:
        if kind == "429":
            return self._send(429, {"message": "rate limited", "status": "fail"})
        if kind == "please_wait":
            return self._send(400, {"message": "Please wait a few minutes before you try again.", "status": "fail"})
        if kind == "feedback_required":
            return self._send(400, {"message": "feedback_required", "spam": True, "status": "fail",
                                    "feedback_title": "Action Blocked",
                                    "feedback_message": "This action was blocked. Please try again later."})
        if kind == "challenge_required":
            return self._send(400, {"message": "challenge_required", "status": "fail", "error_type": "checkpoint_challenge_required",
                                    "challenge": {"url": "https://i.instagram.com/challenge/?next=/api/v1/",
                                                  "api_path": "/challenge/", "lock": True}})
        if kind == "login_required":
            return self._send(403, {"message": "login_required", "status": "fail", "logout_reason": 3})
        return self._send(500, b"Internal Server Error")

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        sessionid = ""
        if auth.startswith("Bearer IGT:2:"):
            try:
                sessionid = json.loads(base64.b64decode(auth.rsplit(":", 1)[1])).get("sessionid", "")
            except ValueError:
                sessionid = ""
        if not sessionid:
            match = re.search(r"sessionid=([^;]+)", self.headers.get("Cookie", ""))
            sessionid = match.group(1) if match else ""
        return sessionid in self.fake.sessions

    # -- routes -------------------------------------------------------------------

    def _route(self, method: str, path: str, record: Recorded) -> tuple[int, Any, dict[str, str]]:
        fake = self.fake
        ok = {"status": "ok"}
        if path == "/api/v1/qe/sync/":
            public = fake.password_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            return 200, ok, {"ig-set-password-encryption-key-id": str(PASSWORD_KEY_ID),
                             "ig-set-password-encryption-pub-key": base64.b64encode(public).decode()}
        if path == "/graphql_www":
            return 200, {"data": {"usdid_registration": {"success": True}}, "status": "ok"}, {}
        if path.endswith("caa.login.process_client_data_and_redirect/"):
            node = {"data": {"key": "CAA_ACCOUNT_ACCESS_CONTEXT:aac", "initial": "fake-aac-token"}}
            return 200, {"layout": {"bloks_payload": {"data": [node]}}, "status": "ok"}, {}
        if path == "/api/v1/attestation/create_android_keystore/":
            return 200, {"challenge_nonce": "fake-challenge-nonce", "key_nonce": "fake-key-nonce", "status": "ok"}, {}
        if path.endswith("caa.login.async.send_login_request/"):
            return self._login(record)
        if path == "/api/v1/challenge/" and fake.challenge_step is not None:
            return 200, {**fake.challenge_step, "status": "ok"}, {}
        if path.endswith("challenge.navigation.take_challenge/") and "enc_new_password1" in record.form:
            # the "change your password" step: the account's password is now the one sent
            fake.password = fake.decrypt_password(record.form["enc_new_password1"])
            return 200, {"action": "close", "status": "ok"}, {}
        if path.startswith("/api/v1/bloks/") or path in ("/api/v1/launcher/sync/",):
            return 200, ok, {}
        if not self._authorized():
            return 403, {"message": "login_required", "status": "fail"}, {}
        if path.startswith("/api/v1/accounts/current_user/"):
            return 200, {"user": fake.account(), "status": "ok"}, {}
        if path.startswith("/rupload_igphoto/"):
            params = json.loads(self.headers.get("X-Instagram-Rupload-Params", "{}"))
            with fake.lock:
                fake.uploads[params["upload_id"]] = len(record.body)
            return 200, {"upload_id": params["upload_id"], "xsharing_nonces": {}, "status": "ok"}, {}
        if path == "/api/v1/media/configure/":
            upload_id = str(record.form.get("upload_id", ""))
            if upload_id not in fake.uploads:
                return 400, {"message": "media_needs_reupload", "error_title": "no upload", "status": "fail"}, {}
            media = fake.add_media(record.form.get("caption", ""), upload_id)
            return 200, {"media": media, "upload_id": upload_id, "status": "ok"}, {}
        match = re.fullmatch(r"/api/v1/feed/user/(\d+)/", path)
        if match:
            return 200, self._feed_page(parse_qs(urlsplit(self.path).query)), {}
        match = re.fullmatch(r"/api/v1/media/(\d+)/info/", path)
        if match:
            with fake.lock:
                media = next((m for m in fake.medias if str(m["pk"]) == match.group(1)), None)
                if media is None:
                    return 404, {"message": "Media not found or unavailable", "status": "fail"}, {}
                media["like_count"] += fake.likes_per_read
                media["comment_count"] += 1
                media = dict(media)
            return 200, {"items": [media], "num_results": 1, "status": "ok"}, {}
        if path == "/api/v1/ads/graphql/":
            if not fake.business:
                return 200, {"data": {}, "status": "ok"}, {}
            pk = json.loads(record.form.get("query_params", "{}")).get("query_params", {}).get("id")
            node = {"id": str(pk), "inline_insights_node": {"metrics": {"reach_count": 100, "impression_count": 150,
                                                                        "save_count": 2, "share_count": 1}}}
            return 200, {"data": {"instagram_post_by_igid": node}, "status": "ok"}, {}
        # The app's warm-up calls after login (reels tray, timeline, ...).
        return 200, ok, {}

    def _feed_page(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """One page of the account's feed, newest first, as Instagram pages it:
        at most ``FEED_PAGE`` items whatever ``count`` asks, and a
        ``next_max_id`` (the last item's id) to pass as ``max_id`` for the next."""
        with self.fake.lock:
            items = list(reversed(self.fake.medias))
        max_id = (query.get("max_id") or [""])[0]
        if max_id:
            ids = [m["id"] for m in items]
            items = items[ids.index(max_id) + 1:] if max_id in ids else []
        count = int((query.get("count") or [FEED_PAGE])[0] or FEED_PAGE)
        page, more = items[:min(count, FEED_PAGE)], len(items) > min(count, FEED_PAGE)
        answer = {"items": page, "num_results": len(page), "more_available": more, "status": "ok"}
        if more:
            answer["next_max_id"] = page[-1]["id"]
        return answer

    def _login(self, record: Recorded) -> tuple[int, Any, dict[str, str]]:
        fake = self.fake
        params = json.loads(record.form.get("params", "{}"))
        inputs = params.get("client_input_params", {})
        try:
            password = fake.decrypt_password(inputs.get("password", ""))
        except Exception:
            password = None
        if inputs.get("contact_point") != fake.username or password != fake.password:
            return 400, {"message": "The password you entered is incorrect.", "error_type": "bad_password",
                         "status": "fail"}, {}
        sessionid = fake.new_session()
        token = base64.b64encode(json.dumps({"ds_user_id": str(USER_ID), "sessionid": sessionid}).encode()).decode()
        inner = {
            "login_response": json.dumps({"logged_in_user": fake.account(), "status": "ok"}),
            "headers": json.dumps({"IG-Set-Authorization": f"Bearer IGT:2:{token}", "ig-set-ig-u-rur": "RVA"}),
            "cookies": f"Set-Cookie: sessionid={sessionid}; Set-Cookie: ds_user_id={USER_ID}",
        }
        action = f"(bk.action.caa.HandleLoginResponse, {json.dumps(json.dumps(inner))})"
        return 200, {"layout": {"bloks_payload": {"action": action}}, "status": "ok"}, {}


def _form(body: bytes, content_type: str) -> dict[str, Any]:
    """Form fields of a request; a signed body (``signed_body=SIGNATURE.<json>``) is unpacked."""
    if not body or "x-www-form-urlencoded" not in content_type:
        return {}
    text = body.decode("utf-8", "replace")
    if text.startswith("signed_body=SIGNATURE."):
        try:
            return json.loads(unquote_plus(text[len("signed_body=SIGNATURE."):]))
        except ValueError:
            return {}
    return {k: v[0] for k, v in parse_qs(text).items()}
