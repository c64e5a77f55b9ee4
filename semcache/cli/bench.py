"""``semcache bench``: run one of the benchmarks (:mod:`semcache.bench`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from ..bench import BENCHMARKS, Benchmark
from .output import CliError, NotFoundError

__all__ = ["bench"]

#: The source checkout this package runs from, when it does (an editable install).
_CHECKOUT = Path(__file__).resolve().parents[2]


def _checkout_script(b: Benchmark, given: str | None) -> Path:
    """A checkout's ``benchmarks/bench_NAME.py``, for the benchmarks that are not installed."""
    if given is not None:
        d = Path(given).expanduser()
        if (d / f"bench_{b.name}.py").is_file():
            return d / f"bench_{b.name}.py"
        raise NotFoundError(f"{d} holds no bench_{b.name}.py: --dir names a semcache checkout's benchmarks/ folder")
    for base in (Path.cwd(), _CHECKOUT):
        script = base / "benchmarks" / f"bench_{b.name}.py"
        if script.is_file():
            return script
    raise NotFoundError(
        f"benchmark {b.name} is not installed with the package: it needs {b.also}. "
        f"Clone the semcache repository, install what it needs ({b.install_hint()}), and run "
        f"`semcache bench {b.name}` in the checkout (or pass --dir CHECKOUT/benchmarks)"
    )


def _listing() -> str:
    width = max(len(n) for n in BENCHMARKS)
    lines = []
    for b in BENCHMARKS.values():
        where = "" if b.module else "  [source checkout only]"
        lines.append(f"{b.name:<{width}}  {b.summary}{where}")
        needs = b.install_hint()
        if b.also:
            needs = f"{needs}; {b.also}" if needs else b.also
        if needs:
            lines.append(f"{'':<{width}}    needs: {needs}")
    return "\n".join(lines)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False, default="sidecar_load")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks and what each needs.")
@click.option(
    "--dir",
    "bench_dir",
    envvar="SEMCACHE_BENCHMARKS_DIR",
    default=None,
    help="A checkout's benchmarks/ folder, for those not installed (verifier, history) "
    "[default: ./benchmarks, else the checkout this runs from].",
)
def bench(name: str, args: tuple[str, ...], list_only: bool, bench_dir: str | None) -> None:
    """Run a benchmark (default: sidecar_load); extra ARGS go to it (`semcache bench NAME --help`).

    All but two are installed with the package; verifier and history need a source
    checkout. --list says what each needs.
    """
    if list_only:
        click.echo(_listing())
        return
    b = BENCHMARKS.get(name)
    if b is None:
        raise NotFoundError(f"no benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    missing = b.missing_extras()
    if missing:
        raise CliError(
            f"benchmark {name} needs the {', '.join(missing)} extra"
            f"{'s' if len(missing) > 1 else ''}: {b.install_hint()}"
            + (f" (and {b.also})" if b.also else "")
        )
    if b.module is not None:
        cmd = [sys.executable, "-m", b.module, *args]
    else:
        cmd = [sys.executable, str(_checkout_script(b, bench_dir)), *args]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    for var, value in b.env.items():
        env.setdefault(var, value)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise CliError(f"benchmark {name} exited with status {rc}")
