"""``semcache index rebuild`` / ``index check``: the semantic index against L3."""

from __future__ import annotations

import sys

import click

from .options import json_option, pass_ctx, target_options
from .output import CliError, echo_json, kv, plural
from .targets import CliContext, open_target

__all__ = ["index"]


@click.group()
def index() -> None:
    """The semantic index: rebuild it from L3, or check it against L3."""


@index.command("rebuild")
@target_options(envvars=False)
@click.option(
    "--reembed", is_flag=True, help="Also embed entries with no vector (or another embedder's)."
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar [default: on a terminal]."
)
@json_option
@pass_ctx
def index_rebuild(ctx: CliContext, reembed: bool, progress: bool | None, as_json: bool) -> None:
    """Rebuild the index (locally this loads the model; with --server the sidecar's own index)."""
    show = sys.stderr.isatty() if progress is None else progress
    n = open_target(ctx, semantic=True).index_rebuild(reembed, show and not as_json)
    if as_json:
        echo_json({"vectors": n})
    else:
        click.echo(f"index holds {plural(n, 'vector')}")


@index.command("check")
@target_options(envvars=False)
@json_option
@pass_ctx
def index_check(ctx: CliContext, as_json: bool) -> None:
    """Compare the index with L3: counts and keys missing on either side (exit 1 if inconsistent)."""
    data = open_target(ctx, semantic=True).index_check()
    if as_json:
        echo_json(data)
    else:
        kv(data)
        unembedded = (data.get("l3_total_live") or 0) - (data.get("l3_embedded") or 0)
        if data.get("semantic") and unembedded > 0:
            # not an error: long prompts are exact-only, and other embedders' vectors are never compared
            others = data.get("l3_other_embedders") or {}
            whose = "; ".join(
                [f"{plural(n, 'carries', 'carry')} vectors from {m}" for m, n in others.items()]
                + ([f"{data['l3_without_vector']} no vector at all"] if data.get("l3_without_vector") else [])
            )
            click.echo(
                f"note: {plural(unembedded, 'live entry', 'live entries')} {'has' if unembedded == 1 else 'have'} "
                f"no vector from {data.get('embedder')}" + (f" ({whose})" if whose else "")
                + "; `semcache index rebuild --reembed` embeds them"
            )
    if data.get("semantic") and data.get("consistent") is False:
        raise CliError("the index and L3 disagree: run `semcache index rebuild`")
