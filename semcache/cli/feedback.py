"""Reporting on a hit: ``semcache feedback ENTRY_ID --wrong|--correct --prompt TEXT``."""

from __future__ import annotations

import click

from .options import json_option, parse_params, pass_ctx, target_options
from .output import UnreachableError, echo_json, kv
from .targets import CliContext, Query, open_target

__all__ = ["feedback"]


@click.command()
@target_options(envvars=False)
@click.argument("entry_id")
@click.option("--wrong/--correct", "wrong", default=None, help="Whether the entry answered wrongly.")
@click.option("--prompt", required=True, help="The prompt that was looked up (the request).")
@click.option("--model", default=None, help="Scope: the model of the lookup.")
@click.option("--namespace", "-n", default=None, help="Scope: the namespace (tenant) of the lookup.")
@click.option("--param", "param_pairs", multiple=True, metavar="KEY=VALUE", help="Scope param of the lookup.")
@click.option(
    "--source",
    type=click.Choice(["user", "llm"]),
    default="user",
    show_default=True,
    help="Who judged the hit.",
)
@json_option
@pass_ctx
def feedback(
    ctx: CliContext,
    entry_id: str,
    wrong: bool | None,
    prompt: str,
    model: str | None,
    namespace: str | None,
    param_pairs: tuple[str, ...],
    source: str,
    as_json: bool,
) -> None:
    """Report that entry ENTRY_ID answered --prompt wrongly (or correctly).

    Wrong on a paraphrase (a semantic hit): that prompt is never answered by this entry
    again, by any replica. Wrong on the entry's own prompt (an exact hit): the entry is
    invalidated. Every report is kept as a label. Give the scope of the lookup
    (--model, --namespace, --param) so that the request is the one that was answered.
    """
    if wrong is None:
        raise click.UsageError("say --wrong or --correct")
    query = Query(prompt=prompt, model=model, namespace=namespace, params=parse_params(param_pairs))
    target = open_target(ctx, semantic=True)
    done = target.feedback(entry_id, query, not wrong, source)
    if not target.remote and done.get("stored_in") == "process":
        raise UnreachableError(
            "no tier could keep the report, and this process exits now: run it again once the store is back"
        )
    if as_json:
        echo_json(done)
        return
    if done.get("blocked"):
        what = "blocked: this prompt is no longer answered by this entry"
    elif done.get("invalidated"):
        what = "the entry was wrong and is invalidated"
    else:
        what = "recorded"
    click.echo(f"{done.get('verdict')} ({done.get('kind')} hit): {what}")
    kv({k: done.get(k) for k in ("entry_id", "similarity", "stored_in", "label_id")})
