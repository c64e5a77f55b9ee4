"""``semcache calibrate``: measure which verifier threshold keeps false hits under a target.

Scores labelled pairs (a JSONL file, or the labels feedback reports stored) with the
verifier, derives a calibration (:mod:`semcache.verify.calibration`) and prints, for
each target false-hit rate, the threshold, the recall, the measured rate and its 95%
upper bound, overall and per namespace with enough labels. ``--out`` writes it as JSON
for ``Policy(verifier_calibration=PATH)``. ``--verifier none`` calibrates the
embedder's cosine similarity instead (a ``similarity_threshold`` for a cache without
a verifier).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
import numpy as np

from .options import json_option, pass_ctx, target_options
from .output import CliError, echo_json, table
from .targets import CliContext, open_target

__all__ = ["calibrate"]

#: The false-hit rates every report shows.
TARGETS = (0.05, 0.02, 0.01, 0.005)

#: Pairs per verifier call.
_CHUNK = 256


def _labels(ctx: CliContext, path: str | None, from_feedback: bool, source: str = "all") -> tuple[list[Any], str]:
    from ..verify.calibration import label_rows, read_label_file

    if (path is None) == (not from_feedback):
        raise click.UsageError("give --labels FILE or --from-feedback (one of them)")
    if path is not None:
        pairs = read_label_file(path)
        return pairs, f"{path} ({len(pairs)} pairs)"
    try:
        from ..feedback import load_labels
    except ImportError as exc:
        raise CliError("--from-feedback needs the feedback labels (semcache.feedback.load_labels), which this install lacks") from exc
    if ctx.server:
        raise click.UsageError("--from-feedback reads the labels of the local store; it cannot be used with --server")
    target = open_target(ctx)
    cache = getattr(target, "cache", None)
    if cache is None:
        raise CliError("--from-feedback needs the local store")
    rows = [r for r in load_labels(cache) if source == "all" or r.get("source") == source]
    pairs = label_rows(rows, source="feedback label")
    if not pairs:
        which = "" if source == "all" else f" from source {source!r}"
        raise CliError(f"no feedback labels{which} are stored yet (report hits with `semcache feedback`)")
    kind = "feedback labels" if source == "all" else f"feedback labels from {source!r}"
    return pairs, f"{kind} ({len(pairs)} pairs)"


def _cosine_scores(ctx: CliContext, pairs: Sequence[Any]) -> tuple[np.ndarray, str]:
    from ..embedders import resolve_embedder

    choice = ctx.cache_config().embedder
    if choice is None:
        raise click.UsageError("--verifier none calibrates the embedder's cosine similarity: name an embedder, not none")
    embedder = resolve_embedder(choice)
    scores = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start : start + _CHUNK]
        a = np.asarray(embedder.embed([p.prompt for p in chunk]), dtype=np.float64)
        b = np.asarray(embedder.embed([p.cached_prompt for p in chunk]), dtype=np.float64)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        scores[start : start + len(chunk)] = np.clip((a * b).sum(axis=1), -1.0, 1.0)
    return scores, "cosine:" + str(embedder.model_id)


def _verifier_scores(choice: str, pairs: Sequence[Any]) -> tuple[np.ndarray, str]:
    from ..errors import VerifierError
    from ..verify.base import check_scores
    from ..verify.resolve import resolve_verifier

    verifier = resolve_verifier(choice)
    if verifier is None:  # pragma: no cover - "none" is handled by the caller
        raise click.UsageError("no verifier to calibrate")
    out = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), _CHUNK):
        chunk = [(p.prompt, p.cached_prompt) for p in pairs[start : start + _CHUNK]]
        try:
            raw = verifier.score(chunk)
        except VerifierError:
            raise
        except Exception as exc:
            raise VerifierError(f"the verifier {verifier.verifier_id} failed: {type(exc).__name__}: {exc}") from exc
        out[start : start + len(chunk)] = check_scores(raw, len(chunk), verifier.verifier_id)
    return out, verifier.verifier_id


def _rows(cal: Any, targets: Sequence[float], namespace: str | None = None, bound: str = "upper") -> list[dict[str, Any]]:
    out = []
    confident = bound == "upper"
    for t in targets:
        p = cal.point_for(t, namespace, confident=confident)
        fallback = (
            namespace is not None
            and cal.table(namespace).reaching(t, confident) is None
            and cal.reaching(t, confident) is not None
        )
        out.append(
            {
                "max_false_hit_rate": t,
                "threshold": p.threshold,
                "recall": p.recall,
                "false_hit_rate": p.false_hit_rate,
                "false_hit_upper": p.false_hit_upper,
                "reached": (p.false_hit_upper if confident else p.false_hit_rate) <= t,
                "overall_table": fallback,
            }
        )
    return out


def _print_rows(rows: list[dict[str, Any]], chosen: float) -> None:
    table(
        [
            [
                f"{r['max_false_hit_rate']:.2%}" + (" *" if r["max_false_hit_rate"] == chosen else ""),
                f"{r['threshold']:.4f}",
                f"{r['recall']:.3f}",
                f"{r['false_hit_rate']:.2%}",
                f"{r['false_hit_upper']:.2%}"
                + ("  (too few labels here for this rate: the overall table's figures)" if r.get("overall_table") else "")
                + ("" if r["reached"] else "  (not reached: the highest threshold)"),
            ]
            for r in rows
        ],
        ["TARGET", "THRESHOLD", "RECALL", "FALSE HITS", "UPPER 95%"],
    )


@click.command()
@target_options(envvars=False)
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False), default=None, help="A JSONL file of labelled pairs: {prompt, cached_prompt, correct, namespace?} or {a, b, label}.")
@click.option("--from-feedback", is_flag=True, help="Use the labels stored by feedback reports (local store).")
@click.option("--source", "label_source", type=click.Choice(["all", "user", "llm"]), default="all", show_default=True, help="With --from-feedback: only the labels people reported (user) or audits made (llm).")
@click.option("--verifier", "verifier_choice", default="default", show_default=True, help="default, none (the embedder's cosine similarity) or a cross-encoder name or path.")
@click.option("--target", type=click.FloatRange(0.0, 0.5, min_open=True), default=0.01, show_default=True, help="The false-hit rate the cache will aim for (Policy.max_false_hit_rate).")
@click.option("--namespace-min", type=click.IntRange(min=1), default=200, show_default=True, help="Labels a namespace needs for a table of its own.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, help="Write the calibration JSON here (for Policy.verifier_calibration).")
@click.option("--bound", type=click.Choice(["upper", "measured"]), default="upper", show_default=True, help="How a threshold meets a target, as Policy.calibration_bound: its 95% upper bound, or its measured rate.")
@click.option("--save-labels", type=click.Path(dir_okay=False, writable=True), default=None, help="Also write the labelled pairs used as JSONL (input for training/train_verifier.py --labels).")
@json_option
@pass_ctx
def calibrate(
    ctx: CliContext,
    labels_path: str | None,
    from_feedback: bool,
    label_source: str,
    verifier_choice: str,
    target: float,
    namespace_min: int,
    out: str | None,
    save_labels: str | None,
    bound: str,
    as_json: bool,
) -> None:
    """Measure the verifier threshold for a target false-hit rate on labelled pairs.

    A false hit is a pair labelled incorrect that scores at or above the threshold; the
    rate is over the incorrect pairs, with its one-sided 95% Clopper-Pearson upper bound.
    """
    from ..verify.calibration import derive

    if label_source != "all" and not from_feedback:
        raise click.UsageError("--source filters the stored feedback labels: use it with --from-feedback")
    pairs, source = _labels(ctx, labels_path, from_feedback, label_source)
    if save_labels is not None:
        import json

        with open(save_labels, "w", encoding="utf-8") as f:
            for p in pairs:
                row = {"prompt": p.prompt, "cached_prompt": p.cached_prompt, "correct": p.correct, "namespace": p.namespace}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    n_pos = sum(1 for p in pairs if p.correct)
    if n_pos == 0 or n_pos == len(pairs):
        raise CliError(f"{source}: the labels need both correct and incorrect pairs to measure a false-hit rate")
    cosine = verifier_choice.strip().lower() in ("none", "off")
    scores, verifier_id = _cosine_scores(ctx, pairs) if cosine else _verifier_scores(verifier_choice, pairs)
    cal = derive(
        scores,
        [p.correct for p in pairs],
        verifier_id=verifier_id,
        source=source,
        min_labels_per_namespace=namespace_min,
        namespaces=[p.namespace for p in pairs],
    )
    targets = sorted({*TARGETS, target}, reverse=True)
    if out is not None:
        cal.to_json(out)
    if as_json:
        echo_json(
            {
                "verifier_id": cal.verifier_id,
                "source": source,
                "n_positive": cal.n_positive,
                "n_negative": cal.n_negative,
                "target": target,
                "targets": _rows(cal, targets, bound=bound),
                "namespaces": {
                    ns: {"n_positive": sub.n_positive, "n_negative": sub.n_negative, "targets": _rows(cal, targets, ns, bound=bound)}
                    for ns, sub in sorted(cal.namespaces.items())
                },
                "out": out,
            }
        )
        return
    click.echo(f"{cal.verifier_id} on {source}: {cal.n_positive} correct, {cal.n_negative} incorrect")
    _print_rows(_rows(cal, targets, bound=bound), target)
    for ns, sub in sorted(cal.namespaces.items()):
        click.echo(f"\nnamespace {ns}: {sub.n_positive} correct, {sub.n_negative} incorrect")
        _print_rows(_rows(cal, targets, ns, bound=bound), target)
    if not cal.namespaces:
        click.echo(f"(no namespace has {namespace_min} labels with both kinds: one table for all)")
    if out is not None:
        click.echo(f"\nwrote {out}")
    if cosine:
        click.echo(
            f"use: Policy(verifier=None, similarity_threshold={cal.threshold_for(target, confident=bound == 'upper'):.4f})  "
            f"# {target:.2%} false hits on these labels"
        )
    elif out is not None:
        click.echo(f"use: Policy(verifier_calibration={out!r}, max_false_hit_rate={target})")
