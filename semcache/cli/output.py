"""What the CLI prints: JSON, tables, key/value lists, and errors as one line with an exit code.

Exit codes: 0 ok, 1 error, 2 usage error (click's own), 3 not found, 4 cannot reach the target.
Every other CLI module imports from here; this module imports none of them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from ..errors import BackendUnavailable, SemcacheError, UnknownEntryError

__all__ = [
    "CliError",
    "NotFoundError",
    "UnreachableError",
    "duration",
    "echo_json",
    "iso_utc",
    "kv",
    "log_notes",
    "one_line",
    "plural",
    "short",
    "table",
    "translate",
]


# -- errors ------------------------------------------------------------------------
class CliError(click.ClickException):
    """A command failed; click prints ``Error: <message>`` and exits 1."""

    exit_code = 1


class NotFoundError(CliError):
    """The entry (or database) asked for does not exist."""

    exit_code = 3


class UnreachableError(CliError):
    """The sidecar, database or Redis could not be reached."""

    exit_code = 4


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def translate(exc: BaseException) -> click.ClickException | None:
    """Turn a library error into a one-line CLI error (``None``: not ours to translate)."""
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, BackendUnavailable):
        return UnreachableError(one_line(exc))
    if isinstance(exc, UnknownEntryError):
        return NotFoundError(one_line(exc))
    if isinstance(exc, SemcacheError):
        return CliError(one_line(exc))
    try:
        import httpx
    except ImportError:  # pragma: no cover
        httpx = None  # type: ignore[assignment]
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return UnreachableError(f"cannot reach the sidecar: {one_line(exc)}")
    if isinstance(exc, OSError):
        return CliError(one_line(exc))
    return None


# -- output ------------------------------------------------------------------------
def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (values JSON lacks print as strings)."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows as aligned columns (the last column is never padded)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = (
        "  ".join(h.ljust(w) for h, w in zip(headers[:-1], widths[:-1]))
        + ("  " if len(headers) > 1 else "")
        + headers[-1]
    )
    click.echo(line)
    for r in cells:
        click.echo(
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths[:-1]))
            + ("  " if len(r) > 1 else "")
            + r[-1]
        )


def kv(data: dict[str, Any], indent: int = 0) -> None:
    """Print ``key  value`` lines, nested dicts indented under their key; ``-`` for nothing."""
    width = max((len(str(k)) for k in data), default=0)
    for k, v in data.items():
        if isinstance(v, dict) and v:
            click.echo(f"{' ' * indent}{k}:")
            kv(v, indent + 2)
        else:
            shown = (
                "-"
                if v is None or v == {}
                else (", ".join(map(str, v)) if isinstance(v, list) else v)
            )
            click.echo(f"{' ' * indent}{str(k).ljust(width)}  {shown}")


def duration(seconds: float | None) -> str:
    """``90`` -> ``1.5m``, ``None`` -> ``never``."""
    if seconds is None:
        return "never"
    s = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{s:.0f}s"


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 entry``, ``3 entries``, ``0 entries``: the count with the noun that fits it."""
    if many is None:
        many = one[:-1] + "ies" if one.endswith("y") and one[-2:-1] not in "aeiou" else one + "s"
    return f"{n} {one if n == 1 else many}"


def iso_utc(epoch: float | None) -> str | None:
    """``1764654851.2`` -> ``2025-12-02T05:54:11Z`` (seconds, UTC); ``None`` stays ``None``."""
    if epoch is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(float(epoch), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def short(text: str, n: int = 60) -> str:
    """``text`` on one line, cut to ``n`` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# -- the library's log ---------------------------------------------------------------
#: Loggers whose INFO lines say what a long step is doing (the first ONNX export).
NOTE_LOGGERS = ("semcache.embedders.onnx",)


def log_notes(*, quiet: bool) -> Callable[[], None]:
    """Print the library's progress notes on stderr as ``semcache: ...`` lines; with
    ``quiet``, hold back its warnings (a tier backing off, ...), which would come ahead
    of the command's own one-line error. Returns what undoes both."""
    undo: list[Callable[[], None]] = []
    if quiet:
        root = logging.getLogger("semcache")
        level = root.level
        root.setLevel(logging.ERROR)
        undo.append(lambda: root.setLevel(level))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("semcache: %(message)s"))
    for name in NOTE_LOGGERS:
        logger = logging.getLogger(name)
        saved = (logger.level, logger.propagate)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(handler)

        def restore(logger: logging.Logger = logger, saved: tuple[int, bool] = saved) -> None:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]

        undo.append(restore)

    def undo_all() -> None:
        for u in reversed(undo):
            u()

    return undo_all
