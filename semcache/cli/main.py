"""The ``semcache`` command line: serve, inspect, look up, invalidate, migrate, rebuild, bench.

Every command that reads or changes entries works against either a local store (the
SQL database and Redis named by ``--sql-url``/``--redis-url`` or ``SEMCACHE_…``) or a
running sidecar (``--server URL`` with ``--token``): see :mod:`semcache.cli.targets`.
Human output is a table; every read command takes ``--json``. Errors exit non-zero with
one line, never a traceback: see :mod:`semcache.cli.output`.

Exit codes: 0 ok, 1 error, 2 usage error, 3 not found, 4 cannot reach the target.

One module per command group: :mod:`~semcache.cli.serve`, :mod:`~semcache.cli.stats`,
:mod:`~semcache.cli.entries` (ls, show, lookup), :mod:`~semcache.cli.invalidate`
(invalidate, flush), :mod:`~semcache.cli.db`, :mod:`~semcache.cli.index`,
:mod:`~semcache.cli.model`, :mod:`~semcache.cli.bench`. This module is the root group and the entry point.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from .bench import bench
from .calibrate import calibrate
from .db import db
from .entries import lookup, ls, show
from .feedback import feedback
from .index import index
from .invalidate import flush, invalidate
from .model import model
from .options import target_options
from .output import log_notes, one_line, translate
from .serve import serve
from .stats import stats
from .targets import CliContext

__all__ = ["cli", "main"]


class _Group(click.Group):
    """A group that turns library errors raised by any subcommand into one-line CLI errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            translated = translate(exc)
            if translated is None:
                raise
            raise translated from exc


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="semcache", prog_name="semcache", message="%(prog)s %(version)s")
@target_options(envvars=True)
@click.option(
    "--verbose", "-v", is_flag=True, help="Also print the library's warnings (a tier in back-off, ...)."
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """semcache: a multi-level semantic cache for LLM calls.

    Commands act on the local store (SQLite semcache.db by default; --sql-url,
    --redis-url) or on a running sidecar (--server URL --token T).
    """
    ctx.ensure_object(CliContext)
    # a command says what went wrong in its own one line; the library's warnings (a tier
    # backing off, ...) printed ahead of it would only repeat it, worse (the server logs them)
    ctx.call_on_close(log_notes(quiet=not verbose and ctx.invoked_subcommand != "serve"))


for _command in (serve, stats, ls, show, lookup, invalidate, flush, feedback, calibrate, db, index, model, bench):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI; unexpected errors print one line (set SEMCACHE_DEBUG=1 for the traceback)."""
    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="semcache",
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("SEMCACHE_DEBUG"):
            raise
        click.echo(
            f"Error: unexpected {type(exc).__name__}: {one_line(exc)} (SEMCACHE_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
