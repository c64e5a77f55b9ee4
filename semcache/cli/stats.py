"""``semcache stats``: counters (sidecar) or stored entries and schema (local)."""

from __future__ import annotations

import click

from .options import json_option, pass_ctx, target_options
from .output import echo_json, kv
from .targets import CliContext, open_target

__all__ = ["stats"]


@click.command()
@target_options(envvars=False)
@json_option
@pass_ctx
def stats(ctx: CliContext, as_json: bool) -> None:
    """Counters and sizes: hits by tier and kind, misses, entries, savings (sidecar) or stored entries (local)."""
    data = open_target(ctx).stats()
    if as_json:
        echo_json(data)
        return
    if data.get("target") == "local":
        kv({k: v for k, v in data.items() if k != "target"})
        return
    hits, misses = data.get("hits", 0), data.get("misses", 0)
    total = hits + misses
    tenant = data.get("namespace")  # set for a tenant token: its own tenant's counters
    shown = {
        "sidecar": data.get("target"),
        **({"tenant": tenant} if tenant is not None else {}),
        "hits": hits,
        "misses": misses,
        "hit rate": f"{hits / total:.1%}" if total else "-",
        "hits by tier/kind": data.get("hits_by") or None,
        "sets": data.get("sets"),
        "invalidated": data.get("invalidated"),
        "tokens saved": data.get("saved_tokens"),
        "money saved": f"${data.get('saved_cost_usd', 0):.4f}",
    }
    if tenant is None:  # the admin's: the cache-wide figures too
        shown["index vectors"] = (data.get("index") or {}).get("entries")
        shown["tier errors"] = data.get("tier_errors") or None
    kv(shown)
