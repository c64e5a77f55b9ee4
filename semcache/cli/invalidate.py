"""Removing entries: ``semcache invalidate`` (by criteria) and ``semcache flush`` (everything)."""

from __future__ import annotations

import click

from .options import filter_options, json_option, parse_params, pass_ctx, target_options
from .output import echo_json
from .targets import CliContext, Criteria, open_target

__all__ = ["flush", "invalidate"]


def _report_removed(removed: int, as_json: bool) -> None:
    if as_json:
        echo_json({"removed": removed})
    else:
        click.echo(f"removed {removed} entries")


@click.command()
@target_options(envvars=False)
@click.option("--id", "--key", "keys", multiple=True, help="Entry id / exact key (repeatable).")
@click.option(
    "--prompt",
    default=None,
    help="The entry stored for this exact prompt (with --model/--namespace/--param).",
)
@click.option(
    "--param", "param_pairs", multiple=True, metavar="KEY=VALUE", help="Scope param for --prompt."
)
@filter_options
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask, however many entries match.")
@click.option(
    "--confirm-over",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Ask before removing more than this many.",
)
@json_option
@pass_ctx
def invalidate(
    ctx: CliContext,
    keys: tuple[str, ...],
    prompt: str | None,
    param_pairs: tuple[str, ...],
    namespace: str | None,
    model: str | None,
    tag: str | None,
    scope: str | None,
    prompt_pattern: str | None,
    older_than: float | None,
    dry_run: bool,
    yes: bool,
    confirm_over: int,
    as_json: bool,
) -> None:
    """Remove entries from every tier and the index; criteria combine with AND."""
    criteria = Criteria(
        keys=keys,
        prompt=prompt,
        params=parse_params(param_pairs),
        namespace=namespace,
        model=model,
        tag=tag,
        scope=scope,
        prompt_pattern=prompt_pattern,
        older_than_seconds=older_than,
    )
    if criteria.is_empty():
        raise click.UsageError(
            "name at least one of --id, --prompt, --namespace, --model, --tag, --scope, --pattern, --older-than (or use `semcache flush`)"
        )
    target = open_target(ctx)
    matched = target.count(criteria)
    if dry_run:
        if as_json:
            echo_json({"matched": matched, "dry_run": True})
        else:
            click.echo(f"would remove {matched} entries")
        return
    if matched > confirm_over and not yes:
        click.confirm(f"remove {matched} entries?", abort=True, err=True)
    _report_removed(target.invalidate(criteria), as_json)


@click.command()
@target_options(envvars=False)
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@json_option
@pass_ctx
def flush(ctx: CliContext, yes: bool, as_json: bool) -> None:
    """Remove every entry (with a tenant token on --server: every entry of that tenant)."""
    target = open_target(ctx)
    if not yes:
        what = (
            "every entry of this token's tenant (or all, for the admin)"
            if target.remote
            else f"all {target.count_all()} entries"
        )
        click.confirm(f"remove {what}?", abort=True, err=True)
    _report_removed(target.flush(), as_json)
