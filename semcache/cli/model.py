"""``semcache model export``: export the embedder's ONNX graph now (at install or image build)."""

from __future__ import annotations

import time

import click

from .options import json_option
from .output import CliError, echo_json

__all__ = ["model"]


@click.group()
def model() -> None:
    """The embedding model: export its ONNX graph ahead of the first start."""


@model.command("export")
@click.option("--model", "name", default=None, help="Model name or path [default: all-MiniLM-L6-v2].")
@click.option(
    "--onnx-dir",
    default=None,
    help="Where exports live [default: $SEMCACHE_ONNX_DIR or ~/.cache/semcache/onnx].",
)
@json_option
def model_export(name: str | None, onnx_dir: str | None, as_json: bool) -> None:
    """Export the model to ONNX unless an export of the same files is there (then: nothing to do).

    The first `semcache serve` otherwise does it (10-20 s, once per model version), in a
    child process that peaks at about 800 MB. Needs the `embed` extra (torch,
    transformers, onnx).
    """
    from ..embedders.onnx import OnnxEmbedder

    embedder = OnnxEmbedder(name, onnx_dir=onnx_dir)
    t0 = time.perf_counter()
    path = embedder.onnx_path
    existed = path.is_file()
    embedder.load()  # exports when needed, then loads the graph once to prove it runs
    if embedder.embed(["export check"]).shape != (1, embedder.dim):  # pragma: no cover
        raise CliError(f"{path} does not give {embedder.dim}-dimensional vectors")
    seconds = round(time.perf_counter() - t0, 1)
    if as_json:
        echo_json({"path": str(path), "exported": not existed, "seconds": seconds})
    elif existed:
        click.echo(f"already exported: {path}")
    else:
        click.echo(f"exported in {seconds:.1f}s: {path}")
