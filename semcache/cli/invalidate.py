"""Removing entries: ``semcache invalidate`` (by criteria) and ``semcache flush`` (everything)."""

from __future__ import annotations

import sys

import click

from .options import filter_options, json_option, parse_params, pass_ctx, target_options
from .output import CliError, echo_json, plural
from .targets import CliContext, Criteria, LocalTarget, RemoteTarget, Target, open_target

__all__ = ["flush", "invalidate"]


def _report_removed(removed: int, as_json: bool) -> None:
    if as_json:
        echo_json({"removed": removed})
    else:
        click.echo(f"removed {plural(removed, 'entry')}")


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _confirm(question: str, unasked: str) -> None:
    """Ask ``question`` on a terminal; without one (a script, a pipe) fail, saying ``unasked``.

    Raises:
        CliError: stdin is not a terminal, or the answer was no.
    """
    if not _stdin_is_terminal():
        raise CliError(f"{unasked}, and stdin is not a terminal to ask on: pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise CliError("not confirmed: nothing removed")


def _where(target: Target) -> str:
    """Where a removal acts, for its confirmation question: the sidecar, or the local tiers."""
    from ..config import redact_url

    if isinstance(target, RemoteTarget):
        return f"the sidecar at {target.url}"
    parts = []
    if isinstance(target, LocalTarget):
        cfg = target.config
        if cfg.redis is not None:
            parts.append(", ".join(redact_url(u.strip()) for u in cfg.redis.url.split(",")))
        if cfg.sql is not None:
            parts.append(redact_url(cfg.sql.url))
    return " + ".join(parts) or "the local store"


def _flush_what(target: Target, n: int) -> str:
    """``all 5 entries``; on a sidecar, whether the token reaches every tenant or only its own."""
    if isinstance(target, RemoteTarget):
        try:
            tenant = target.stats().get("namespace")  # a tenant token's stats name its tenant
        except CliError:
            tenant = None
        if tenant is not None:
            return f"{plural(n, 'entry')} (every entry of this token's tenant, {tenant})"
    return f"all {plural(n, 'entry')}"


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
            click.echo(f"would remove {plural(matched, 'entry')}")
        return
    if matched > confirm_over and not yes:
        _confirm(
            f"remove {plural(matched, 'entry')} from {_where(target)}?",
            f"{plural(matched, 'entry')} match, more than --confirm-over {confirm_over}",
        )
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
        what = f"{_flush_what(target, target.count_all())} from {_where(target)}"
        _confirm(f"remove {what}?", f"flush would remove {what}")
    _report_removed(target.flush(), as_json)
