"""Integration tests with the real all-MiniLM-L6-v2 model: torch vs ONNX, tokens, threads."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from semcache.embedders import (
    DEFAULT_MODEL_ID,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    default_embedder,
)

pytestmark = pytest.mark.model

_TOPICS = [
    "the capital of France",
    "photosynthesis",
    "a sourdough starter",
    "Kubernetes pods",
    "the French Revolution",
    "black holes",
    "interest rates",
    "the offside rule in football",
    "vaccines",
    "Rust's borrow checker",
    "climate change",
    "jazz improvisation",
]
_TEMPLATES = [
    "What is {}?",
    "Explain {} to a five-year-old.",
    "tell me about {}",
    "{}!!!",
    "Why does {} matter in 2024?",
    "Can you summarise {} in 3 bullet points?",
    "I've been reading about {}; what are the main criticisms?",
    "{}: pros & cons (v2.0)",
    "HOW DOES {} WORK",
    "compare {} with something similar, please",
]
_ODD = [
    "",
    " ",
    "?",
    "42",
    "3.14159 * 2 = 6.28318",
    "user@example.com wrote: ok",
    "Ünïcödé façade naïve café",
    "日本語のテキストです。",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "emoji 🙂🚀🔥 test",
    "def f(x):\n    return x ** 2  # square",
    "SELECT * FROM t WHERE id = 7;",
    "https://example.org/path?q=semantic+cache&n=10",
    "a\tb\nc\r\nd",
    "....!!!,,,;;;",
    "The year 1999 had 365 days; 2000 had 366.",
    "C'est la vie, n'est-ce pas ?",
]


def _varied_sentences() -> list[str]:
    """Return a few hundred varied texts: short, long, punctuation, numbers, unicode, questions."""
    out = [t.format(topic) for topic in _TOPICS for t in _TEMPLATES]
    out += _ODD
    out += [f"Q: {o.upper()} / {o[::-1]}" for o in _ODD]
    out += [f"Order #{i} of {i * 17 % 101} items costs ${i * 3.5:.2f}" for i in range(40)]
    out += [
        f"{a} versus {b}? {'Yes.' if i % 2 else 'No!'} ({i}%)"
        for i, (a, b) in enumerate(zip(_TOPICS, _TOPICS[3:] + _TOPICS[:3]))
    ]
    out += [f"{_TOPICS[i % 12]} " * (1 + i % 7) + "..." for i in range(60)]
    # Long texts, several over the 256-token window (exercises truncation on both paths).
    for k in (5, 20, 60, 120):
        out.append(
            " ".join(f"Sentence {j} is about {_TOPICS[j % len(_TOPICS)]}." for j in range(k))
        )
    out.append("word " * 2000)
    return out


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def torch_embedder() -> SentenceTransformerEmbedder:
    emb = SentenceTransformerEmbedder()
    emb.load()
    return emb


@pytest.fixture(scope="session")
def onnx_embedder(onnx_dir: Path) -> OnnxEmbedder:
    emb = OnnxEmbedder(onnx_dir=onnx_dir)
    emb.load()  # exports once into the session's temp dir
    return emb


@pytest.fixture(params=["torch", "onnx"])
def embedder(
    request: pytest.FixtureRequest,
    torch_embedder: SentenceTransformerEmbedder,
    onnx_embedder: OnnxEmbedder,
) -> Iterator[SentenceTransformerEmbedder | OnnxEmbedder]:
    yield torch_embedder if request.param == "torch" else onnx_embedder


def test_identity(embedder: SentenceTransformerEmbedder | OnnxEmbedder) -> None:
    assert embedder.model_id == DEFAULT_MODEL_ID
    assert embedder.dim == 384
    assert embedder.max_tokens == 256


def test_onnx_matches_torch_on_varied_sentences(
    torch_embedder: SentenceTransformerEmbedder, onnx_embedder: OnnxEmbedder
) -> None:
    texts = _varied_sentences()
    assert len(texts) >= 200
    a = torch_embedder.embed(texts)
    b = onnx_embedder.embed(texts)
    assert a.shape == b.shape == (len(texts), 384)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    cos = (a * b).sum(axis=1)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.999, f"cosine {cos.min():.5f} for {texts[worst]!r}"


def test_batch_and_single_agree(embedder: SentenceTransformerEmbedder | OnnxEmbedder) -> None:
    # Padding in a mixed-length batch must not change a text's vector.
    texts = ["short", "a considerably longer sentence with many more word pieces in it", "mid size"]
    batch = embedder.embed(texts)
    singles = np.vstack([embedder.embed([t]) for t in texts])
    assert ((batch * singles).sum(axis=1) > 0.9999).all()


def test_paraphrase_beats_unrelated(embedder: SentenceTransformerEmbedder | OnnxEmbedder) -> None:
    q, para, other = embedder.embed(
        [
            "How do I reset my router to factory settings?",
            "What's the way to restore my router's factory defaults?",
            "The best time to plant tomatoes is late spring.",
        ]
    )
    assert float(q @ para) > 0.7
    assert float(q @ para) > float(q @ other) + 0.3


def test_count_tokens(
    torch_embedder: SentenceTransformerEmbedder, onnx_embedder: OnnxEmbedder
) -> None:
    for emb in (torch_embedder, onnx_embedder):
        assert emb.count_tokens("") == 2  # [CLS] [SEP]
        assert emb.count_tokens("hello world") == 4
    long_text = " ".join(f"token{i}" for i in range(400))
    n_torch = torch_embedder.count_tokens(long_text)
    assert n_torch == onnx_embedder.count_tokens(long_text)
    assert n_torch > torch_embedder.max_tokens  # type: ignore[operator]


def test_count_tokens_megabyte_text_is_fast(
    embedder: SentenceTransformerEmbedder | OnnxEmbedder,
) -> None:
    huge = "The quick brown fox jumps over the lazy dog. " * 25_000  # ~1.1 MB
    embedder.count_tokens("warm up")
    t0 = time.perf_counter()
    n = embedder.count_tokens(huge)
    elapsed = time.perf_counter() - t0
    assert n > embedder.max_tokens  # type: ignore[operator]
    assert elapsed < 0.05, f"count_tokens took {elapsed:.3f}s"


def test_embed_truncates_to_the_window(
    embedder: SentenceTransformerEmbedder | OnnxEmbedder,
) -> None:
    head = " ".join(f"alpha{i}" for i in range(300))  # far more than 256 tokens
    a, b = embedder.embed([head, head + " completely different tail about volcanoes"])
    assert float(a @ b) > 0.9999


def test_onnx_huge_text_matches_torch(
    torch_embedder: SentenceTransformerEmbedder, onnx_embedder: OnnxEmbedder
) -> None:
    # The ONNX path tokenizes only a prefix of huge texts; the vector must not change.
    huge = "Semantic caches store answers to similar prompts. " * 20_000
    a = torch_embedder.embed([huge])
    b = onnx_embedder.embed([huge])
    assert float((a * b).sum()) >= 0.999


def test_concurrent_embed(embedder: SentenceTransformerEmbedder | OnnxEmbedder) -> None:
    texts = [f"question number {i} about {_TOPICS[i % len(_TOPICS)]}" for i in range(12)]
    expected = embedder.embed(texts)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for k in range(6):
                i = (offset + k) % len(texts)
                got = embedder.embed([texts[i], texts[(i + 1) % len(texts)]])
                np.testing.assert_allclose(got[0], expected[i], atol=1e-5)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_onnx_export_is_reused(onnx_embedder: OnnxEmbedder, onnx_dir: Path) -> None:
    path = onnx_embedder.onnx_path
    assert path.is_file()
    assert path.parent.parent == onnx_dir
    assert path.parent.name.startswith("all-MiniLM-L6-v2-")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    mtime = path.stat().st_mtime_ns
    again = OnnxEmbedder(onnx_dir=onnx_dir, num_threads=2)
    again.load()
    assert again.onnx_path == path
    assert path.stat().st_mtime_ns == mtime  # not exported a second time
    np.testing.assert_allclose(
        again.embed(["same vectors"]), onnx_embedder.embed(["same vectors"]), atol=1e-5
    )


def test_onnx_dir_env_var(monkeypatch: pytest.MonkeyPatch, onnx_dir: Path) -> None:
    monkeypatch.setenv("SEMCACHE_ONNX_DIR", os.fspath(onnx_dir))
    assert OnnxEmbedder().onnx_path.parent.parent == onnx_dir


def test_default_embedder_is_onnx_here(onnx_dir: Path) -> None:
    emb = default_embedder(onnx_dir=onnx_dir)
    assert isinstance(emb, OnnxEmbedder)
    assert emb.model_id == DEFAULT_MODEL_ID
