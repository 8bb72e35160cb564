"""``bot login``: the one interactive command. It logs in to Instagram with a
person at the terminal (two-factor code, challenge), saves the session for
every other command and the daemon, and releases posts paused by a challenge."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys

import click

from bot.cli.common import AppContext, emit_json, pass_app
from bot.errors import BadInput, BotError, Busy
from bot.publish.instagram import _describe, load_session, make_client, save_session, session_path, totp_code
from bot.store import exclusive

log = logging.getLogger("bot.cli.login")


@click.command("login")
@click.option("--username", help="Instagram username (default: instagram.username / BOT_INSTAGRAM_USERNAME).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@pass_app
def command(app: AppContext, username: str | None, as_json: bool) -> None:
    """Log in to Instagram and save the session (state/instagram_session.json, mode 0600).

    Asks for what is missing: the password when BOT_INSTAGRAM_PASSWORD is not
    set, a two-factor code when no TOTP seed is configured, the code of a
    challenge Instagram sends by e-mail or SMS. Posts paused by a challenge go
    back to `rendered`, so the next `bot post` (or the daemon) publishes them;
    while a post is being made (the post lock is held) they are left paused and
    the command exits 1, saying so.

    \b
    Examples:
        bot login
        BOT_INSTAGRAM_USERNAME=dstrtd.art bot login
        bot login --json
    """
    settings = app.settings
    ig = settings.instagram
    username = username or ig.username or click.prompt("Instagram username", err=True)
    password = ig.password or click.prompt(f"Password for {username}", hide_input=True, err=True)
    ig = dataclasses.replace(ig, username=username, password=password)
    client = make_client(ig, interactive=True)
    client.challenge_code_handler = _ask_challenge_code
    path = session_path(settings)
    with contextlib.redirect_stdout(sys.stderr):  # instagrapi prints; stdout is for the result (--json)
        relogin = load_session(client, path)  # keeps the device identity of the last session
        _login(client, ig, relogin=relogin)
        account = client.account_info()
    save_session(client, path)
    if not as_json:
        click.echo(f"Logged in as {account.username}; session saved to {path} (mode 0600).")
    released = _release_paused_posts(app)
    result = {"username": account.username, "business": account.is_business, "session_file": str(path),
              "released_posts": released}
    if as_json:
        emit_json(result)
        return
    for post_id in released:
        click.echo(f"  post {post_id}: paused -> rendered; run `bot post` to publish it")


def _release_paused_posts(app: AppContext) -> list[str]:
    """Set paused posts back to ``rendered`` under the post lock the pipeline
    holds, so a post the daemon (or a `bot post`) is working on is never
    changed under it. Raises Busy, the session already saved, when it is held."""
    try:
        with exclusive(app.settings.paths.state, "post", "bot login"):
            released = [post["id"] for post in app.store.posts(status="paused")]
            for post_id in released:
                app.store.update_post(post_id, status="rendered", error=None)
    except Busy as exc:
        raise Busy(f"{exc}. The login worked, but paused posts were not released; "
                   "run `bot login` again when that has finished") from None
    return released


def _ask_challenge_code(username: str, choice: object = None) -> str:
    """instagrapi's challenge prompt, on stderr like the other questions."""
    where = getattr(choice, "value", choice) or "e-mail or SMS"
    return click.prompt(f"Code Instagram sent by {where} for {username}", err=True).strip()


def _login(client, ig, *, relogin: bool) -> None:
    from instagrapi.exceptions import BadPassword, ChallengeError, ClientError, TwoFactorRequired

    code = totp_code(ig.totp_seed) if ig.totp_seed else ""
    try:
        try:
            client.login(ig.username, ig.password, relogin=relogin, verification_code=code)
        except TwoFactorRequired:
            code = totp_code(ig.totp_seed) if ig.totp_seed else click.prompt("Two-factor code", hide_input=False, err=True)
            client.login(ig.username, ig.password, relogin=True, verification_code=code.strip())
    except BadPassword as exc:
        raise BadInput(f"Instagram refused the login for {ig.username!r} ({_describe(exc)})") from None
    except (ChallengeError, ClientError) as exc:
        raise BotError(f"login failed: {_describe(exc)}") from None
