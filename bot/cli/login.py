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
from bot.publish.instagram import (
    _describe,
    install_secret_filter,
    load_session,
    make_client,
    save_session,
    session_path,
    totp_code,
    totp_seed_problem,
)
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
    seed_problem = totp_seed_problem(ig.totp_seed)
    if seed_problem:  # before asking anything: a bad seed would end in a traceback after the password
        raise BadInput(seed_problem)
    username = username or ig.username or click.prompt("Instagram username", err=True)
    password = ig.password or click.prompt(f"Password for {username}", hide_input=True, err=True)
    ig = dataclasses.replace(ig, username=username, password=password)
    client = make_client(ig, interactive=True)
    client.challenge_code_handler = _ask_challenge_code
    client.change_password_handler = _ask_new_password
    path = session_path(settings)
    with contextlib.redirect_stdout(sys.stderr):  # instagrapi prints; stdout is for the result (--json)
        try:
            relogin = load_session(client, path)  # keeps the device identity of the last session
            _login(client, ig, relogin=relogin)
            account = client.account_info()
        except (BotError, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            log.debug("bot login failed", exc_info=True)  # masked by the secret filter; shown with -v
            raise _login_failed(exc, ig.username) from None
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


def _ask_new_password(username: str) -> str:
    """Instagram's "change your password" challenge. instagrapi's own prompt
    reads the new password with ``input()``: shown on the terminal as it is
    typed, asked once (a typo would leave nobody knowing the password), and
    the bot's configured password silently out of date. This one hides it,
    asks twice, masks it in logs and says which setting to update."""
    new = click.prompt(f"Instagram asks for a new password for {username}", hide_input=True,
                       confirmation_prompt=True, err=True)
    install_secret_filter(new)
    click.echo("The Instagram password is being changed: update BOT_INSTAGRAM_PASSWORD (or the file "
               "BOT_INSTAGRAM_PASSWORD_FILE names) to the new one, or the bot cannot log in again "
               "when this session ends.", err=True)
    return new


def _login_failed(exc: Exception, username: str) -> BotError:
    """A message for a person at the terminal: what Instagram said and what to
    do next. Any error ends here, not as a traceback: instagrapi's challenge
    flow raises assertion and key errors when Instagram asks for a step it
    does not know."""
    from instagrapi import exceptions as ig

    what = _describe(exc)
    again = "then run `bot login` again"
    if isinstance(exc, (ig.BadPassword, ig.BadCredentials)):
        return BadInput(f"Instagram refused the login for {username!r} ({what}); check the password "
                        f"(BOT_INSTAGRAM_PASSWORD, BOT_INSTAGRAM_PASSWORD_FILE, or what you typed), {again}")
    if isinstance(exc, (ig.PleaseWaitFewMinutes, ig.ClientThrottledError, ig.FeedbackRequired,
                        ig.RateLimitError, ig.SentryBlock)):
        return BotError(f"Instagram asked to slow down ({what}); wait at least an hour, {again} "
                        "(each try before that prolongs the block)")
    if isinstance(exc, ig.TwoFactorRequired):
        return BotError(f"Instagram did not accept the two-factor code ({what}); {again} with a fresh code")
    if isinstance(exc, ig.AccountSuspended):
        return BotError(f"Instagram says the account {username!r} is suspended ({what}); settle it in the "
                        f"Instagram app, {again}")
    if isinstance(exc, (ig.ClientConnectionError, ig.ClientRequestTimeout, ig.ClientIncompleteReadError, OSError)):
        return BotError(f"cannot reach Instagram ({what}); check the network connection, {again}")
    if isinstance(exc, ig.ClientError) and not isinstance(exc, ig.ChallengeError):
        return BotError(f"login failed: {what}")
    return BotError(f"Instagram wants to verify this login and the bot could not complete the check ({what}). "
                    "Open the Instagram app (or instagram.com) on a phone or computer you usually use, confirm "
                    f"that the login was you, {again}")


def _login(client, ig, *, relogin: bool) -> None:
    from instagrapi.exceptions import TwoFactorRequired

    code = totp_code(ig.totp_seed) if ig.totp_seed else ""
    try:
        client.login(ig.username, ig.password, relogin=relogin, verification_code=code)
    except TwoFactorRequired:
        code = totp_code(ig.totp_seed) if ig.totp_seed else click.prompt("Two-factor code", hide_input=False, err=True)
        client.login(ig.username, ig.password, relogin=True, verification_code=code.strip())
