"""Throw-away servers for tests that must control a server's lifetime.

The shared servers started by ``scripts/test.sh`` (``SEMCACHE_TEST_REDIS_URL``)
must never be stopped by a test.  Tests that exercise outages and recovery
start their own Redis with :class:`RedisServer` instead::

    from tests._servers import RedisServer, RedisServerUnavailable

    def test_recovers(redis_server):          # or: with RedisServer() as srv:
        ...
        redis_server.stop()    # clients now get connection errors
        ...
        redis_server.start()   # same port (and URL) again, empty dataset

``RedisServerUnavailable`` is raised when no ``redis-server`` binary exists;
the :func:`redis_server` fixture turns that into ``pytest.skip``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

__all__ = [
    "RedisServer",
    "RedisServerUnavailable",
    "find_redis_server",
    "free_port",
    "redis_server",
]

LOOPBACK = "127.0.0.1"


class RedisServerUnavailable(RuntimeError):
    """No usable ``redis-server`` binary (callers usually ``pytest.skip``)."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on *host* that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    """Path of ``redis-server`` (``$SEMCACHE_REDIS_SERVER`` overrides PATH)."""
    explicit = os.environ.get("SEMCACHE_REDIS_SERVER")
    candidates = [explicit] if explicit else []
    candidates += [shutil.which("redis-server"), "/usr/bin/redis-server",
                   "/usr/local/bin/redis-server"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise RedisServerUnavailable(
        "redis-server not found (install it, e.g. via scripts/setup.sh)"
    )


def _ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Raw RESP PING, so this module does not need redis-py."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` on a loopback port, files in a temp dir.

    No persistence (``--save '' --appendonly no``): every :meth:`start`
    begins with an empty dataset.  The port is kept across stop/start so the
    :attr:`url` stays valid.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        startup_timeout: float = 15.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = find_redis_server()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self._dir: Path | None = Path(tempfile.mkdtemp(prefix="semcache-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self._dir / "redis.log"

    # -- properties ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> RedisServer:
        """Start (or restart) the server on the same port; wait until it answers."""
        if self._dir is None:
            raise RuntimeError("RedisServer is closed")
        if self.running:
            return self
        cmd = [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            *self.extra_args,
        ]
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(
                    f"redis-server exited during startup on port {self.port}:\n"
                    + self.log_tail()
                )
            if _ping(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"redis-server did not answer on port {self.port} within "
            f"{self.startup_timeout}s:\n" + self.log_tail()
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the port is kept."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        # Make sure the port is really closed before returning.
        deadline = time.monotonic() + timeout
        while _ping(self.host, self.port, timeout=0.2) and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        """Crash-stop (SIGKILL), e.g. to simulate an abrupt outage."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and delete its temp dir.  Idempotent."""
        try:
            self.stop()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    # -- context manager ----------------------------------------------------
    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:  # last-resort safety net; close() is the API
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(5)
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url} {state}>"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private, started :class:`RedisServer`; skips when redis-server is missing.

    Use it from a test module with ``from tests._servers import redis_server``
    (or re-export it from a conftest.py).
    """
    try:
        server = RedisServer()
    except RedisServerUnavailable as e:
        pytest.skip(str(e))
    with server:
        yield server
