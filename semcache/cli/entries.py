"""Reading entries: ``semcache ls``, ``show`` and ``lookup`` (with ``--explain``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from .options import filter_options, filters, json_option, parse_params, pass_ctx, target_options
from .output import NotFoundError, duration, echo_json, iso_utc, kv, plural, short, table
from .targets import CliContext, Criteria, Query, open_target

__all__ = ["lookup", "ls", "show"]


@click.command("ls")
@target_options(envvars=False)
@filter_options
@click.option(
    "--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="Entries per page."
)
@click.option("--page", type=click.IntRange(1), default=1, show_default=True, help="Page number.")
@json_option
@pass_ctx
def ls(
    ctx: CliContext,
    namespace: str | None,
    model: str | None,
    tag: str | None,
    scope: str | None,
    prompt_pattern: str | None,
    older_than: float | None,
    limit: int,
    page: int,
    as_json: bool,
) -> None:
    """List entries, newest first, filtered and paginated."""
    which = filters(namespace, model, tag, scope, prompt_pattern, older_than)
    target = open_target(ctx)
    offset = (page - 1) * limit
    entries = target.list(which, limit, offset)
    counted = Criteria(**asdict(which))
    total = target.count_all() if counted.is_empty() else target.count(counted)
    # an entry written or removed between the two calls must not make the range lie
    total = max(total, offset + len(entries)) if entries else total
    if as_json:
        echo_json({"entries": entries, "page": page, "limit": limit, "total": total})
        return
    if not entries:
        click.echo(
            f"no entries on page {page} (of {plural(total, 'entry')})" if page > 1 and total else "no entries"
        )
        return
    table(
        [
            (
                e["entry_id"],
                duration(e.get("age_seconds")),
                duration(e.get("ttl_seconds_left")),
                e.get("model") or "-",
                e.get("namespace") or "-",
                ",".join(e.get("tags") or []) or "-",
                short(e.get("prompt", "")),
            )
            for e in entries
        ],
        ["ID", "AGE", "TTL", "MODEL", "NAMESPACE", "TAGS", "PROMPT"],
    )
    shown = f"showing {offset + 1}\u2013{offset + len(entries)} of {total}"
    more = offset + len(entries) < total
    click.echo(f"({shown}, page {page}" + (f"; next: --page {page + 1})" if more else ")"))


@click.command()
@target_options(envvars=False)
@click.argument("entry_id")
@json_option
@pass_ctx
def show(ctx: CliContext, entry_id: str, as_json: bool) -> None:
    """Show one entry with its value."""
    entry = open_target(ctx).show(entry_id)
    if entry is None:
        raise NotFoundError(f"no entry {entry_id}")
    if as_json:
        echo_json(entry)
        return
    value = entry.pop("value", None)
    b64 = entry.pop("value_base64", None)
    for when in ("created_at", "expires_at"):
        if isinstance(entry.get(when), (int, float)):
            entry[when] = iso_utc(entry[when])
    entry["age"] = duration(entry.pop("age_seconds", None))
    entry["ttl_left"] = duration(entry.pop("ttl_seconds_left", None))
    kv(entry)
    click.echo("value:")
    click.echo(
        f"  <{len(b64) * 3 // 4} bytes, base64> {b64[:60]}"
        if b64
        else json.dumps(value, indent=2, ensure_ascii=False)
    )


@click.command()
@target_options(envvars=False)
@click.argument("prompt")
@click.option("--model", default=None, help="Scope: model name.")
@click.option("--namespace", "-n", default=None, help="Scope: namespace (tenant).")
@click.option(
    "--param",
    "param_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Scope: a generation param (repeatable).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Cosine similarity for this lookup.",
)
@click.option(
    "--explain", is_flag=True, help="Show the nearest candidates, the checks and the decision."
)
@click.option(
    "-k",
    "k",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="Candidates to show with --explain.",
)
@json_option
@pass_ctx
def lookup(
    ctx: CliContext,
    prompt: str,
    model: str | None,
    namespace: str | None,
    param_pairs: tuple[str, ...],
    threshold: float | None,
    explain: bool,
    k: int,
    as_json: bool,
) -> None:
    """Look PROMPT up (exact, then semantic); --explain shows why it hits or misses."""
    query = Query(
        prompt=prompt,
        model=model,
        namespace=namespace,
        params=parse_params(param_pairs),
        threshold=threshold,
    )
    target = open_target(ctx, semantic=True)
    data = target.explain(query, k) if explain else target.lookup(query)
    if as_json:
        echo_json(data)
    elif explain:
        _print_explain(data)
    else:
        _print_lookup(data)


def _print_lookup(data: dict[str, Any]) -> None:
    if not data.get("hit"):
        click.echo(f"miss  (key {data.get('key')})")
        return
    click.echo(
        f"hit  {data['kind']} from {data['tier']}  similarity {data['similarity']:.4f}  entry {data['entry_id']}  "
        f"age {duration(data.get('age_seconds'))}  ttl {duration(data.get('ttl_seconds_left'))}"
    )
    click.echo(f"matched prompt: {data.get('matched_prompt')}")
    value = data.get("value")
    click.echo(
        "value: " + (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    )


def _checks(candidate: dict[str, Any]) -> str:
    """``numbers:ok order:FAIL verifier:0.93``: each guard's verdict on a candidate, and
    the verifier's score when it was scored."""
    guards = candidate.get("guards") or []
    checks = [f"{g['name']}:{'ok' if g['passed'] else 'FAIL'}" for g in guards]
    if candidate.get("verifier_score") is not None:
        checks.append(f"verifier:{candidate['verifier_score']:.2f}")
    return " ".join(checks) or "-"


def _print_explain(data: dict[str, Any]) -> None:
    click.echo(
        f"key {data.get('key')}  scope {data.get('scope')}  threshold {data.get('threshold')}"
    )
    if data.get("verifier"):
        vthr = data.get("verifier_threshold")
        shown = f"{vthr:.4f}" if isinstance(vthr, (int, float)) else vthr
        click.echo(
            f"verifier {data['verifier']}  score threshold {shown}"
            f"  (max false-hit rate {data.get('max_false_hit_rate')}, similarity floor {data.get('similarity_floor')})"
        )
    cands = data.get("candidates") or []
    if cands:
        table(
            [
                (
                    f"{c['similarity']:.4f}",
                    "yes" if c.get("passed_threshold") else "no",
                    _checks(c),
                    c.get("decision", ""),
                    c.get("entry_id", ""),
                    short(c.get("prompt") or "-", 50),
                )
                for c in cands
            ],
            ["SIMILARITY", ">=THR", "CHECKS", "DECISION", "ENTRY", "PROMPT"],
        )
    elif data.get("kind") != "exact":
        click.echo("no semantic candidates in this scope")
    decision = data.get("decision", "miss")
    detail = (
        f" ({data['kind']}, entry {data.get('entry_id')})"
        if decision == "hit"
        else (f" ({data['reason']})" if data.get("reason") else "")
    )
    click.echo(f"decision: {decision}{detail}")
