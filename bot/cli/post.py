"""``bot post``: make one post by hand, the same steps the daemon runs."""

from __future__ import annotations

import click

from bot.cli.common import AppContext, emit_json, pass_app, progress_bar
from bot.errors import BadInput
from bot.pipeline import abandon_unfinished, artefact_paths, run_post


@click.command("post")
@click.option("--topic", help="Topic slug (see `bot topics`). Default: the least recently posted available topic.")
@click.option("--generator", help="Use this generator instead of the topic's preferred one.")
@click.option("--publisher", help="Publisher name (default: instagram with credentials, else outbox).")
@click.option("--dry-run", is_flag=True, help="Write to state/outbox/ instead of publishing.")
@click.option("--seed", type=int, help="Random seed for the generator (default: random, recorded).")
@click.option("--abandon", is_flag=True,
              help="Give up the unfinished post instead of finishing it: it is marked failed (its archive is kept).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the post id, status and artefact paths.")
@pass_app
def command(
    app: AppContext,
    topic: str | None,
    generator: str | None,
    publisher: str | None,
    dry_run: bool,
    seed: int | None,
    abandon: bool,
    as_json: bool,
) -> None:
    """Make one post: generate, archive, caption, poster, publish, record.

    Re-running after a failure or crash resumes the unfinished post; it is
    never published twice. While a post is unfinished, flags that would
    change it (--dry-run, --publisher, --seed, --generator, --topic) are
    refused: run `bot post` without them to finish it first, or give it up
    with --abandon (a post whose topic or model is gone cannot be finished).

    \b
    Examples:
        bot post --topic night-sky --dry-run
        bot post --topic coral --seed 42
        bot post --json
        bot post --abandon   # when a post is unfinished and cannot be finished
    """
    if abandon:
        _abandon(app, {"--topic": topic, "--generator": generator, "--publisher": publisher,
                       "--dry-run": dry_run or None, "--seed": seed}, as_json)
        return
    with progress_bar("generating") as progress:
        post = run_post(
            app.settings,
            app.store,
            topic=topic,
            generator=generator,
            publisher=publisher,
            dry_run=dry_run,
            seed=seed,
            progress=progress,
        )
    paths = artefact_paths(app.settings, post)
    if as_json:
        emit_json(
            {
                "post_id": post["id"],
                "status": post["status"],
                "topic": post["topic"],
                "publisher": post["publisher"],
                "publication": post.get("publication"),
                "artefacts": paths,
            }
        )
        return
    publication = post.get("publication") or {}
    click.echo(f"Post {post['id']} ({post['topic']}) {post['status']} via {post['publisher']}: "
               f"{publication.get('url') or publication.get('media_id')}")
    for key, path in sorted(paths.items()):
        click.echo(f"  {key:<11} {path}")


def _abandon(app: AppContext, others: dict[str, object], as_json: bool) -> None:
    given = [flag for flag, value in others.items() if value is not None]
    if given:
        raise BadInput(f"--abandon gives up the unfinished post; it takes no {', '.join(given)}")
    post = abandon_unfinished(app.settings, app.store)
    if as_json:
        emit_json({"post_id": post["id"], "status": post["status"], "topic": post["topic"], "error": post["error"]})
        return
    click.echo(f"Post {post['id']} ({post['topic']}) given up ({post['error']['message']}); its archive is kept in "
               f"{app.settings.paths.state / post['archive']}. The next `bot post` starts a new post.")
