"""``semcache bench``: run a benchmark from ``benchmarks/``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from .output import CliError, NotFoundError

__all__ = ["bench"]


def _benchmarks_dir() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        d = base / "benchmarks"
        if d.is_dir() and any(d.glob("bench_*.py")):
            return d
    raise NotFoundError("no benchmarks/ folder found: run `semcache bench` from a source checkout")


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False, default="sidecar_load")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks.")
def bench(name: str, args: tuple[str, ...], list_only: bool) -> None:
    """Run a benchmark from benchmarks/ (default: sidecar_load); extra ARGS go to it."""
    d = _benchmarks_dir()
    available = sorted(p.stem[len("bench_") :] for p in d.glob("bench_*.py"))
    if list_only:
        click.echo("\n".join(available))
        return
    if name not in available:
        raise NotFoundError(f"no benchmark {name!r}; available: {', '.join(available)}")
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    rc = subprocess.call([sys.executable, str(d / f"bench_{name}.py"), *args], env=env)
    if rc != 0:
        raise CliError(f"benchmark {name} exited with status {rc}")
