"""``semcache bench``: run a benchmark from ``benchmarks/``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from .output import CliError, NotFoundError

__all__ = ["bench"]

#: The source checkout this package runs from, when it does (an editable install).
_CHECKOUT = Path(__file__).resolve().parents[2]


def _benchmarks_dir(given: str | None) -> Path:
    if given is not None:
        d = Path(given).expanduser()
        if d.is_dir() and any(d.glob("bench_*.py")):
            return d
        raise NotFoundError(f"{d} holds no bench_*.py: --dir names a semcache checkout's benchmarks/ folder")
    for base in (Path.cwd(), _CHECKOUT):
        d = base / "benchmarks"
        if d.is_dir() and any(d.glob("bench_*.py")):
            return d
    raise NotFoundError(
        "the benchmarks are not installed with the package: they are the scripts in the "
        "benchmarks/ folder of a semcache source checkout (git clone, then run "
        "`semcache bench` there, or pass --dir CHECKOUT/benchmarks); some need the test "
        "extra (pip install 'semcache-llm[test]')"
    )


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False, default="sidecar_load")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks.")
@click.option(
    "--dir",
    "bench_dir",
    envvar="SEMCACHE_BENCHMARKS_DIR",
    default=None,
    help="A checkout's benchmarks/ folder [default: ./benchmarks, else the checkout this runs from].",
)
def bench(name: str, args: tuple[str, ...], list_only: bool, bench_dir: str | None) -> None:
    """Run a benchmark from a source checkout's benchmarks/ (default: sidecar_load); extra ARGS go to it.

    The benchmarks are not part of the installed package: run this in a checkout, or
    pass --dir.
    """
    d = _benchmarks_dir(bench_dir)
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
