"""The ONNX export cache: keyed on the model files' content, stale copies removed, the export announced."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from semcache.embedders import onnx as onnx_mod
from semcache.embedders.onnx import OnnxEmbedder, ensure_exported, remove_stale_exports


def _model(folder: Path, weights: bytes = b"weights " * 1000) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def _path(model_dir: Path, root: Path) -> Path:
    return OnnxEmbedder(str(model_dir), onnx_dir=root).onnx_path


def test_the_same_files_in_another_virtualenv_share_one_export(tmp_path):
    root = tmp_path / "onnx"
    a = _model(tmp_path / "venv1" / "model")
    b = tmp_path / "venv2" / "model"
    shutil.copytree(a, b)
    os.utime(b / "model.safetensors", ns=(1, 1))  # a new install: other mtimes, same bytes
    assert _path(a, root).parent.name.split("-")[-1] == _path(b, root).parent.name.split("-")[-1]
    # another weights file: another export
    c = _model(tmp_path / "venv3" / "model", weights=b"other " * 1000)
    assert _path(c, root).parent.name.split("-")[-1] != _path(a, root).parent.name.split("-")[-1]
    # each weights file is hashed once per (path, size, mtime); the memo says so
    memo = json.loads((root / ".weight-hashes.json").read_text())
    assert len(memo) == 3


def test_weights_replaced_in_place_give_another_export(tmp_path):
    root = tmp_path / "onnx"
    a = _model(tmp_path / "m")
    before = _path(a, root)
    (a / "model.safetensors").write_bytes(b"retrained " * 1000)
    assert _path(a, root) != before


def test_the_export_format_is_part_of_the_key(tmp_path, monkeypatch):
    root = tmp_path / "onnx"
    a = _model(tmp_path / "m")
    before = _path(a, root)
    monkeypatch.setattr(onnx_mod, "_EXPORT_FORMAT", "semcache-onnx-99")
    assert _path(a, root) != before


def _export_dir(root: Path, name: str, *, marker: dict | None, extra: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"graph")
    if marker is not None:
        (d / "export.json").write_text(json.dumps(marker))
    if extra:
        (d / extra).write_bytes(b"x")
    return d


def test_stale_exports_are_removed_and_nothing_else(tmp_path):
    root = tmp_path / "onnx"
    live_src = _model(tmp_path / "live-model")
    fmt = onnx_mod._EXPORT_FORMAT
    old_layout = _export_dir(root, "all-MiniLM-L6-v2-0123456789abcdef", marker=None)
    old_format = _export_dir(root, "all-MiniLM-L6-v2-1111111111111111", marker={"format": "semcache-onnx-1", "sources": [str(live_src)]})
    gone = _export_dir(root, "all-MiniLM-L6-v2-2222222222222222", marker={"format": fmt, "sources": [str(tmp_path / "deleted-venv")]})
    used = _export_dir(root, "all-MiniLM-L6-v2-3333333333333333", marker={"format": fmt, "sources": [str(tmp_path / "deleted"), str(live_src)]})
    busy = _export_dir(root, "all-MiniLM-L6-v2-4444444444444444", marker=None, extra=".model.onnx.123.abc.tmp")
    kept = _export_dir(root, "all-MiniLM-L6-v2-5555555555555555", marker=None)
    foreign = _export_dir(root, "my-own-models", marker=None)
    removed = remove_stale_exports(root, keep=kept.name)
    assert sorted(removed) == sorted([old_layout, old_format, gone])
    assert {p.name for p in root.iterdir()} == {used.name, busy.name, kept.name, foreign.name}


def test_ensure_exported_says_what_it_does_and_cleans_up(tmp_path, monkeypatch, caplog):
    root = tmp_path / "onnx"
    src = _model(tmp_path / "m")
    stale = _export_dir(root, "m-0123456789abcdef", marker=None)
    path = _path(src, root)

    def fake_export(model_dir, dest):
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        (dest.parent / "export.json").write_text(json.dumps({"format": onnx_mod._EXPORT_FORMAT, "sources": [str(model_dir)]}))
        dest.write_bytes(b"graph")
        return dest

    monkeypatch.setattr(onnx_mod, "export_in_child", fake_export)
    caplog.set_level(logging.INFO, logger="semcache.embedders.onnx")
    assert ensure_exported(src, path, "m") is True
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith("exporting m to ONNX") and str(path.parent) in said[0]
    assert said[1].startswith("ONNX export of m done in ") and said[1].endswith("s")
    assert said[2] == f"removed 1 stale ONNX export(s): {stale.name}"
    assert not stale.exists() and path.is_file()
    caplog.clear()
    assert ensure_exported(src, path, "m") is False and not caplog.records  # there: nothing said


def test_a_read_only_cache_folder_still_works(tmp_path, monkeypatch):
    root = tmp_path / "onnx"
    src = _model(tmp_path / "m")
    path = _path(src, root)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"graph")
    (path.parent / "export.json").write_text(json.dumps({"format": onnx_mod._EXPORT_FORMAT, "sources": []}))

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(Path, "write_text", refuse)
    assert ensure_exported(src, path, "m") is False  # the source is not recorded, and no error
