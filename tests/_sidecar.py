"""Helpers for sidecar tests: a config on a temporary SQLite file, the app in process, or in uvicorn.

from tests._sidecar import ADMIN, TENANT_A, TENANT_B, server_config, in_process, SidecarThread

cfg = server_config(tmp_path)                 # L1 + SQLite + hashing embedder, tokens below
cfg = server_config(tmp_path, embedder=minilm, threshold=None, verifier="default")  # the real default
async with in_process(create_app(cfg)) as client:   # lifespan run, httpx over ASGITransport
    await client.post("/v1/lookup", json=..., headers=auth(TENANT_A))

with SidecarThread(create_app(cfg)) as sc:    # real uvicorn on a free loopback port
    httpx.get(sc.url + "/healthz")
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from semcache import CacheConfig, MemoryConfig, Policy, RedisConfig, SQLConfig
from semcache.embedders import HashingEmbedder
from semcache.server.config import ServerConfig

__all__ = ["ADMIN", "TENANT_A", "TENANT_B", "SidecarThread", "auth", "in_process", "server_config"]

TENANT_A = "tok-a"
TENANT_B = "tok-b"
ADMIN = "tok-admin"


def auth(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"authorization": f"Bearer {token}"}


def server_config(
    tmp_path: Path,
    *,
    embedder: Any = None,
    threshold: float | None = 0.8,
    verifier: Any = None,
    redis_url: str | None = None,
    redis_prefix: str = "semcache:",
    sql_url: str | None = None,
    **kwargs: Any,
) -> ServerConfig:
    """A sidecar config: L1 + SQLite in ``tmp_path`` (+ Redis), two tenants and an admin token.

    Without a verifier by default: most sidecar tests run the hashing embedder, whose
    cosine similarity is all there is to match on (``verifier="default"`` for the shipped one).
    """
    cache = CacheConfig(
        memory=MemoryConfig(),
        redis=RedisConfig(url=redis_url, prefix=redis_prefix) if redis_url else None,
        sql=SQLConfig(url=sql_url or f"sqlite:///{tmp_path}/sidecar.db"),
        embedder=embedder if embedder is not None else HashingEmbedder(64),
        policy=Policy(similarity_threshold=threshold, verifier=verifier),
    )
    kwargs.setdefault("tokens", {TENANT_A: "tenant-a", TENANT_B: "tenant-b"})
    kwargs.setdefault("admin_token", ADMIN)
    return ServerConfig(cache=cache, **kwargs)


@asynccontextmanager
async def in_process(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an httpx client talking to it through ASGITransport."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            yield client


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SidecarThread:
    """The app served by uvicorn in a background thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = _free_port()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The sidecar's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SidecarThread:  # noqa: PYI034
        import uvicorn

        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            lifespan="on",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sidecar", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sidecar did not start")
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
