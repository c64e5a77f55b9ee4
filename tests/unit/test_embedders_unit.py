"""Unit tests of the embedders that need no model: hashing, callable, validation, helpers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from semcache.embedders import (
    DEFAULT_MODEL_ID,
    CallableEmbedder,
    Embedder,
    HashingEmbedder,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    check_texts,
    default_embedder,
    onnx_cache_root,
)
from semcache.embedders._models import TokenCounter, whitespace_prefix
from semcache.errors import EmbeddingError, InvalidInputError, MissingDependencyError


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


# --- HashingEmbedder -------------------------------------------------------------------


def test_hashing_shape_dtype_and_unit_rows() -> None:
    emb = HashingEmbedder()
    out = emb.embed(["hello world", "another text", ""])
    assert out.shape == (3, 64)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_hashing_attributes() -> None:
    emb = HashingEmbedder(dim=32)
    assert emb.model_id == "hashing-32"
    assert emb.dim == 32
    assert emb.max_tokens is None
    assert isinstance(emb, Embedder)
    assert HashingEmbedder().model_id == "hashing-64"


def test_hashing_deterministic_across_instances() -> None:
    a = HashingEmbedder().embed(["What is the capital of France?"])
    b = HashingEmbedder().embed(["What is the capital of France?"])
    np.testing.assert_array_equal(a, b)


def test_hashing_known_vector_is_stable() -> None:
    # A pinned value: guards against a switch to Python's per-process salted hash(), which
    # would make vectors stored by one process unusable by the next.
    v = HashingEmbedder(dim=8).embed(["abc"])[0]
    np.testing.assert_allclose(v, [0.3015, 0, -0.9045, 0, 0, 0.3015, 0, 0], atol=1e-4)


def test_hashing_similar_texts_are_closer_than_unrelated() -> None:
    emb = HashingEmbedder(dim=256)
    base, near, far = emb.embed(
        [
            "What is the capital of France?",
            "what's the capital of france",
            "Recipe for chocolate chip cookies with walnuts",
        ]
    )
    assert _cos(base, near) > 0.6
    assert _cos(base, near) > _cos(base, far) + 0.3


def test_hashing_case_and_whitespace_insensitive() -> None:
    emb = HashingEmbedder()
    a, b = emb.embed(["Hello   World", "hello world"])
    np.testing.assert_allclose(a, b)


def test_hashing_empty_and_punctuation_only_texts_are_unit_vectors() -> None:
    out = HashingEmbedder().embed(["", "   ", "!!!", "🙂"])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_hashing_empty_batch() -> None:
    out = HashingEmbedder(dim=16).embed([])
    assert out.shape == (0, 16)
    assert out.dtype == np.float32


def test_hashing_count_tokens_is_word_count() -> None:
    emb = HashingEmbedder()
    assert emb.count_tokens("") == 0
    assert emb.count_tokens("one two  three\nfour") == 4
    assert emb.count_tokens("word " * 100_000) == 100_000


@pytest.mark.parametrize("dim", [0, -1, 2.5, "64", True])
def test_hashing_rejects_bad_dim(dim: object) -> None:
    with pytest.raises(InvalidInputError):
        HashingEmbedder(dim=dim)  # type: ignore[arg-type]


# --- input validation shared by all embedders ---------------------------------------------


def _embedders() -> list[Embedder]:
    return [
        HashingEmbedder(),
        CallableEmbedder(lambda xs: np.ones((len(xs), 4)), dim=4, model_id="ones"),
        # Validation happens before any model is loaded, so these need no model files.
        SentenceTransformerEmbedder(),
        OnnxEmbedder(),
    ]


@pytest.mark.parametrize("bad", ["a bare string", b"bytes", None, 42, [1, 2], ["ok", None], {"a"}])
@pytest.mark.parametrize("index", range(4))
def test_embed_rejects_non_sequence_of_str(index: int, bad: object) -> None:
    emb = _embedders()[index]
    with pytest.raises(InvalidInputError):
        emb.embed(bad)  # type: ignore[arg-type]
    assert getattr(emb, "loaded", False) is False


@pytest.mark.parametrize("index", range(4))
def test_empty_batch_returns_zero_rows_without_loading(index: int) -> None:
    emb = _embedders()[index]
    out = emb.embed([])
    assert out.shape == (0, emb.dim)
    assert out.dtype == np.float32
    assert getattr(emb, "loaded", False) is False


@pytest.mark.parametrize("index", range(4))
def test_count_tokens_rejects_non_str(index: int) -> None:
    with pytest.raises(InvalidInputError):
        _embedders()[index].count_tokens(["not", "a", "str"])  # type: ignore[arg-type]


def test_check_texts_accepts_tuples_and_str_subclasses() -> None:
    class S(str):
        pass

    assert check_texts(("a", S("b"))) == ["a", "b"]
    assert check_texts([]) == []


def test_invalid_input_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        HashingEmbedder().embed("oops")  # a str is a Sequence[str] to mypy: caught at runtime


# --- CallableEmbedder ---------------------------------------------------------------------


def test_callable_normalises_and_passes_a_list() -> None:
    seen: list[object] = []

    def fn(texts: list[str]) -> list[list[float]]:
        seen.append(texts)
        return [[3.0, 4.0] for _ in texts]

    emb = CallableEmbedder(fn, dim=2, model_id="toy-2", max_tokens=10)
    out = emb.embed(("a", "b"))
    assert seen == [["a", "b"]]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
    assert emb.model_id == "toy-2"
    assert emb.max_tokens == 10
    assert isinstance(emb, Embedder)


def test_callable_single_row_1d_output_is_accepted() -> None:
    emb = CallableEmbedder(lambda xs: [1.0, 0.0, 0.0], dim=3, model_id="m")
    assert emb.embed(["x"]).shape == (1, 3)


def test_callable_nan_raises_embedding_error() -> None:
    emb = CallableEmbedder(lambda xs: np.full((len(xs), 3), np.nan), dim=3, model_id="m")
    with pytest.raises(EmbeddingError):
        emb.embed(["x"])


def test_callable_inf_raises_embedding_error() -> None:
    emb = CallableEmbedder(lambda xs: np.full((len(xs), 3), np.inf), dim=3, model_id="m")
    with pytest.raises(EmbeddingError):
        emb.embed(["x"])


def test_callable_dim_mismatch_raises_embedding_error() -> None:
    emb = CallableEmbedder(lambda xs: np.ones((len(xs), 5)), dim=3, model_id="m")
    with pytest.raises(EmbeddingError, match="dimension"):
        emb.embed(["x", "y"])


def test_callable_row_count_mismatch_raises_embedding_error() -> None:
    emb = CallableEmbedder(lambda xs: np.ones((1, 3)), dim=3, model_id="m")
    with pytest.raises(EmbeddingError):
        emb.embed(["x", "y"])


def test_callable_zero_vector_raises_embedding_error() -> None:
    emb = CallableEmbedder(lambda xs: np.zeros((len(xs), 3)), dim=3, model_id="m")
    with pytest.raises(EmbeddingError):
        emb.embed(["x"])


def test_callable_non_numeric_output_raises_embedding_error() -> None:
    emb = CallableEmbedder(lambda xs: [["a", "b"]], dim=2, model_id="m")
    with pytest.raises(EmbeddingError):
        emb.embed(["x"])


def test_callable_exceptions_from_fn_propagate() -> None:
    def fn(texts: list[str]) -> object:
        raise TimeoutError("upstream down")

    with pytest.raises(TimeoutError):
        CallableEmbedder(fn, dim=2, model_id="m").embed(["x"])


def test_callable_count_tokens_default_and_custom() -> None:
    emb = CallableEmbedder(lambda xs: np.ones((len(xs), 2)), dim=2, model_id="m")
    assert emb.count_tokens("a b c") == 3
    emb2 = CallableEmbedder(
        lambda xs: np.ones((len(xs), 2)), dim=2, model_id="m", token_counter=len
    )
    assert emb2.count_tokens("a b c") == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 0, "model_id": "m"},
        {"dim": 2, "model_id": ""},
        {"dim": 2, "model_id": "m", "max_tokens": 0},
    ],
)
def test_callable_rejects_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        CallableEmbedder(lambda xs: xs, **kwargs)  # type: ignore[arg-type]


def test_callable_rejects_non_callable() -> None:
    with pytest.raises(InvalidInputError):
        CallableEmbedder("nope", dim=2, model_id="m")  # type: ignore[arg-type]


def test_callable_concurrent_calls() -> None:
    emb = CallableEmbedder(lambda xs: np.array([[len(x), 1.0] for x in xs]), dim=2, model_id="len")
    expected = emb.embed([f"text {i}" * (i + 1) for i in range(20)])
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(50):
                got = emb.embed([f"text {i}" * (i + 1) for i in range(20)])
                np.testing.assert_array_equal(got, expected)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --- model embedders without loading a model ---------------------------------------------


def test_model_embedders_construct_without_io() -> None:
    for emb in (SentenceTransformerEmbedder(), OnnxEmbedder()):
        assert emb.model_id == DEFAULT_MODEL_ID
        assert emb.dim == 384
        assert emb.max_tokens == 256
        assert emb.loaded is False
        assert isinstance(emb, Embedder)
        assert emb.loaded is False  # isinstance() must not trigger loading


def test_other_model_name_is_its_model_id() -> None:
    assert SentenceTransformerEmbedder("some/other-model").model_id == "some/other-model"
    assert OnnxEmbedder("./local/model-dir").model_id == "./local/model-dir"
    assert OnnxEmbedder("all-MiniLM-L6-v2").model_id == DEFAULT_MODEL_ID


@pytest.mark.parametrize("cls", [SentenceTransformerEmbedder, OnnxEmbedder])
@pytest.mark.parametrize("kwargs", [{"num_threads": 0}, {"batch_size": 0}, {"model": ""}])
def test_model_embedders_reject_bad_config(cls: type, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        cls(**kwargs)


def test_onnx_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SEMCACHE_ONNX_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_cache_root() == tmp_path / "xdg" / "semcache" / "onnx"
    monkeypatch.setenv("SEMCACHE_ONNX_DIR", str(tmp_path / "env"))
    assert onnx_cache_root() == tmp_path / "env"
    assert onnx_cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_onnx_explicit_path_is_used_verbatim(tmp_path: Path) -> None:
    assert OnnxEmbedder(onnx_path=tmp_path / "m.onnx").onnx_path == tmp_path / "m.onnx"


def test_default_embedder_rejects_unknown_backend() -> None:
    with pytest.raises(InvalidInputError):
        default_embedder(backend="tensorflow")  # type: ignore[arg-type]


def test_default_embedder_without_any_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import semcache.embedders as pkg

    monkeypatch.setattr(pkg, "_installed", lambda *modules: False)
    with pytest.raises(MissingDependencyError) as info:
        default_embedder()
    assert info.value.extra == "embed"
    assert isinstance(info.value, ImportError)


def test_default_embedder_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import semcache.embedders as pkg

    monkeypatch.setattr(pkg, "_installed", lambda *modules: modules == ("sentence_transformers",))
    emb = default_embedder()
    assert isinstance(emb, SentenceTransformerEmbedder)
    assert emb.model_id == DEFAULT_MODEL_ID


def test_default_embedder_prefers_onnx_when_exportable(monkeypatch: pytest.MonkeyPatch) -> None:
    import semcache.embedders as pkg

    monkeypatch.setattr(pkg, "_installed", lambda *modules: True)
    assert isinstance(default_embedder(), OnnxEmbedder)
    assert isinstance(default_embedder(backend="torch"), SentenceTransformerEmbedder)


# --- token counting helpers ---------------------------------------------------------------


def test_whitespace_prefix_cuts_before_whitespace() -> None:
    assert whitespace_prefix("ab cd ef", 6) == "ab cd"
    assert whitespace_prefix("abcdef", 4) is None
    assert whitespace_prefix("a\nbc", 10) == "a"


def test_token_counter_short_circuits_long_texts() -> None:
    calls: list[int] = []

    def encode_len(text: str) -> int:
        calls.append(len(text))
        return len(text.split()) + 2

    counter = TokenCounter(encode_len, max_tokens=8)
    assert counter("a b c") == 5
    huge = "word " * 1_000_000
    n = counter(huge)
    assert n > 8
    assert max(calls) <= 16 * 8  # never tokenized the megabytes


def test_token_counter_falls_back_to_exact_count_for_sparse_long_text() -> None:
    # 10k blanks then one word: the prefix holds no tokens, so the whole text is counted.
    counter = TokenCounter(lambda t: len(t.split()) + 2, max_tokens=8)
    assert counter(" " * 10_000 + "x") == 3
    assert counter("y" * 10_000) == 3
