"""The sidecar loads the embedder and the pair verifier before it reports ready, so the
first semantic lookup pays for neither; a verifier that cannot load stops the start."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace

import anyio
import numpy as np
import pytest

from semcache.errors import VerifierError
from semcache.server.app import create_app
from semcache.server.run import run_server
from tests._sidecar import TENANT_A, auth, in_process, server_config

WARM_UP_PAIR = ("semcache warm-up", "semcache warm-up")


class FakeVerifier:
    """A verifier with ``load()``: records what the sidecar did, and when."""

    verifier_id = "fake-verifier"

    def __init__(self, *, fail_load: bool = False, bad_scores: bool = False) -> None:
        self.loaded = False
        self.fail_load = fail_load
        self.bad_scores = bad_scores
        self.loads = 0
        self.calls: list[list[tuple[str, str]]] = []
        self.threads: list[str] = []
        self.ready_when_loaded: list[bool] = []
        self.app = None

    def load(self) -> None:
        self.loads += 1
        self.threads.append(threading.current_thread().name)
        if self.app is not None:
            self.ready_when_loaded.append(self.app.state.sidecar.ready)
        if self.fail_load:
            raise OSError("encoder.onnx: no such file")
        self.loaded = True

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.calls.append(list(pairs))
        return np.full(len(pairs), 2.0 if self.bad_scores else 0.9)


def config_with(tmp_path, verifier):
    """The test sidecar config with ``verifier`` and a raw score threshold (no calibration)."""
    cfg = server_config(tmp_path, threshold=None, verifier=verifier)
    policy = replace(cfg.cache.policy, verifier_threshold=0.5)
    return replace(cfg, cache=replace(cfg.cache, policy=policy))


async def test_the_verifier_is_loaded_and_scored_once_before_ready(tmp_path, caplog) -> None:
    fake = FakeVerifier()
    app = create_app(config_with(tmp_path, fake))
    fake.app = app
    assert not app.state.sidecar.ready
    with caplog.at_level(logging.INFO, logger="semcache.server"):
        async with in_process(app) as client:
            assert fake.loads == 1 and fake.ready_when_loaded == [False]
            assert fake.calls == [[WARM_UP_PAIR]]
            assert fake.threads[0] != threading.main_thread().name  # off the event loop
            assert (await client.get("/readyz")).status_code == 200
            stats = app.state.sidecar.cache.stats()["verifier"]
            assert stats["calls"] == 0  # the warm-up is not a lookup
    assert any("pair verifier fake-verifier" in r.getMessage() and "loaded" in r.getMessage() for r in caplog.records)


async def test_a_verifier_without_load_is_scored_once(tmp_path) -> None:
    calls: list[list[tuple[str, str]]] = []

    def scores(pairs):
        calls.append(list(pairs))
        return [0.9] * len(pairs)

    app = create_app(config_with(tmp_path, scores))
    async with in_process(app) as client:
        assert calls == [[WARM_UP_PAIR]]
        assert (await client.get("/readyz")).status_code == 200


async def test_no_verifier_nothing_to_warm(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="semcache.server"):
        async with in_process(create_app(server_config(tmp_path))) as client:
            assert (await client.get("/readyz")).status_code == 200
    assert not any("pair verifier" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fake", [FakeVerifier(fail_load=True), FakeVerifier(bad_scores=True)], ids=["load fails", "bad scores"])
async def test_a_verifier_that_cannot_load_stops_the_start(tmp_path, fake) -> None:
    app = create_app(config_with(tmp_path, fake))
    with pytest.raises(VerifierError, match="fake-verifier"):
        async with in_process(app):
            pass
    assert not app.state.sidecar.ready


def test_run_server_loads_the_verifier_before_it_listens(tmp_path, monkeypatch) -> None:
    import uvicorn

    fake = FakeVerifier()
    served = []

    def fake_run(self, sockets=None):  # instead of listening: close what run_server opened
        served.append(fake.loads)
        anyio.run(self.config.app.state.sidecar.cache.aclose)

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    lines: list[str] = []
    run_server(config_with(tmp_path, fake), echo=lines.append)
    assert served == [1] and fake.calls == [[WARM_UP_PAIR]]
    assert any(line.startswith("semcache: pair verifier fake-verifier (") and line.endswith(" loaded") for line in lines), lines


def test_run_server_refuses_to_start_with_a_verifier_that_cannot_load(tmp_path, monkeypatch) -> None:
    import uvicorn

    def never(self, sockets=None):
        raise AssertionError("must not listen")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    with pytest.raises(VerifierError, match="could not load: OSError"):
        run_server(config_with(tmp_path, FakeVerifier(fail_load=True)), echo=lambda line: None)


@pytest.mark.model
async def test_the_default_verifier_is_loaded_before_the_first_lookup(tmp_path, minilm, caplog) -> None:
    cfg = server_config(tmp_path, embedder=minilm, threshold=None, verifier="default")
    app = create_app(cfg)
    with caplog.at_level(logging.INFO, logger="semcache.server"):
        async with in_process(app) as client:
            verifier = app.state.sidecar.cache.verifier
            assert verifier.loaded  # before any request
            assert (await client.get("/readyz")).status_code == 200
            body = {"prompt": "How do I reverse a list in Python?", "value": "reversed()"}
            await client.post("/v1/entries", json=body, headers=auth(TENANT_A))
            hit = (
                await client.post("/v1/lookup", json={"prompt": "How can I reverse a list in Python?"}, headers=auth(TENANT_A))
            ).json()
            assert hit["hit"] and hit["kind"] == "semantic"
    assert any("pair verifier semcache-pair-verifier-1 (" in r.getMessage() for r in caplog.records)
