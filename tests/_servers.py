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

:class:`PostgresServer` is the same for PostgreSQL (a private cluster made by
``initdb`` in a temp dir, run as the ``postgres`` user when the tests run as
root), with the outages a production database has: :meth:`PostgresServer.restart`
(``pg_ctl restart -m fast``) and :meth:`PostgresServer.kill` (SIGKILL of the
postmaster, then :meth:`PostgresServer.start` recovers the same data on the
same port)::

    with PostgresServer() as pg:
        url = pg.url               # postgresql+psycopg://...@127.0.0.1:PORT/semcache
        pg.kill(); pg.start()

:class:`RedisClusterServer` is a private Redis Cluster (3 masters, a replica each)
whose masters a test may kill (:meth:`RedisClusterServer.kill_master`, then
:meth:`RedisClusterServer.wait_failover` for a replica's promotion) and restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

__all__ = [
    "PostgresServer",
    "PostgresServerUnavailable",
    "RedisClusterServer",
    "RedisServer",
    "RedisServerUnavailable",
    "find_pg_bin",
    "find_redis_cli",
    "find_redis_server",
    "free_cluster_port",
    "free_port",
    "postgres_server",
    "redis_server",
]

LOOPBACK = "127.0.0.1"


class _Managed:
    """``with server:`` starts it (closing it again if the start fails) and closes it."""

    def start(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
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


class RedisServer(_Managed):
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


# -- PostgreSQL ---------------------------------------------------------------


class PostgresServerUnavailable(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``), or no
    ``postgres`` user to run them as root (callers usually ``pytest.skip``)."""


def find_pg_bin() -> str:
    """The directory holding ``initdb``/``pg_ctl``/``postgres`` (``$SEMCACHE_PG_BIN``
    overrides; then the newest ``/usr/lib/postgresql/*/bin``; then ``pg_ctl`` on PATH)."""

    def usable(d: str) -> bool:
        return all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres"))

    explicit = os.environ.get("SEMCACHE_PG_BIN")
    if explicit and usable(explicit):
        return explicit
    root = Path("/usr/lib/postgresql")
    versions: list[tuple[tuple[int, ...], str]] = []
    if root.is_dir():
        for d in root.iterdir():
            try:
                ver = tuple(int(p) for p in d.name.split("."))
            except ValueError:
                continue
            if usable(str(d / "bin")):
                versions.append((ver, str(d / "bin")))
    if versions:
        return max(versions)[1]
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        d = os.path.dirname(os.path.realpath(pg_ctl))
        if usable(d):
            return d
    raise PostgresServerUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")


def _pg_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether the port takes a TCP connection (readiness is checked with pg_isready)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class PostgresServer(_Managed):
    """A private PostgreSQL cluster on a loopback port, files in a temp dir.

    ``initdb`` runs once (trust auth on loopback, fsync off); :meth:`start` creates
    the database :attr:`dbname` the first time. Data survive :meth:`stop`,
    :meth:`restart` and :meth:`kill` (crash recovery on the next start); the port is
    kept, so :attr:`url` stays valid. As root every server tool runs as the
    ``postgres`` user (PostgreSQL refuses to run as root).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        dbname: str = "semcache",
        startup_timeout: float = 30.0,
        settings: dict[str, str] | None = None,
        bin_dir: str | None = None,
    ) -> None:
        # bin_dir: another server build (the PostgreSQL with pgvector, say)
        self.bin = bin_dir or find_pg_bin()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.dbname = dbname
        self.startup_timeout = startup_timeout
        self.settings = dict(settings or {})
        self._as_pg: list[str] = []
        self.superuser = _current_user()
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresServerUnavailable("running as root but there is no 'postgres' user") from exc
            runuser = shutil.which("runuser")
            if runuser:
                self._as_pg = [runuser, "-u", "postgres", "--"]
            else:
                self._as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
            self.superuser = "postgres"
            # its own directory under /tmp: always traversable by the postgres user
            self._dir: Path | None = Path(tempfile.mkdtemp(prefix="semcache-pg-", dir="/tmp"))
            os.chown(self._dir, pw.pw_uid, pw.pw_gid)
        else:
            self._dir = Path(tempfile.mkdtemp(prefix="semcache-pg-"))
        os.chmod(self._dir, 0o700)
        self.data = self._dir / "data"
        self.sock = self._dir / "sock"
        self._log = self._dir / "postgres.log"
        self._initialised = False
        self._db_created = False

    # -- properties ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.superuser}@{self.host}:{self.port}/{self.dbname}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid`` (None when there is none)."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            return int(first)
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- helpers ------------------------------------------------------------
    def _run(self, *args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self._as_pg, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout or self.startup_timeout + 10,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n{self.log_tail()}")
        return proc

    def _tool(self, name: str) -> str:
        path = os.path.join(self.bin, name)
        return path if os.access(path, os.X_OK) else (shutil.which(name) or path)

    def _initdb(self) -> None:
        if self._initialised:
            return
        self._run("mkdir", "-p", str(self.sock))
        self._run(
            self._tool("initdb"), "-D", str(self.data), "-U", self.superuser, "--auth=trust",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )
        conf = {
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": f"'{self.sock}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            **self.settings,
        }
        extra = "\n# --- semcache test settings ---\n" + "".join(f"{k} = {v}\n" for k, v in conf.items())
        hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        subprocess.run([*self._as_pg, "tee", "-a", str(self.data / "postgresql.conf")], input=extra,
                       text=True, capture_output=True, check=True)
        subprocess.run([*self._as_pg, "tee", str(self.data / "pg_hba.conf")], input=hba,
                       text=True, capture_output=True, check=True)
        self._initialised = True

    def _ready(self) -> bool:
        proc = subprocess.run(
            [self._tool("pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "2"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
        )
        return proc.returncode == 0

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> PostgresServer:
        """Start (or start again after a crash) on the same port; wait until it accepts queries.

        After :meth:`kill`, the old backends may hold the shared memory for a moment:
        starting is retried until ``startup_timeout``.
        """
        if self._dir is None:
            raise RuntimeError("PostgresServer is closed")
        self._initdb()
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while not self.running:
            proc = self._run(
                self._tool("pg_ctl"), "-D", str(self.data), "-l", str(self._log),
                "-o", f"-p {self.port}", "-w", "-t", str(int(self.startup_timeout)), "start",
                check=False,
            )
            if proc.returncode == 0:
                break
            last = proc.stdout + proc.stderr
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{last}\n{self.log_tail()}")
            time.sleep(0.1)
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL is not ready on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)
        if not self._db_created:
            self._run(self._tool("createdb"), "-h", self.host, "-p", str(self.port), "-U", self.superuser, self.dbname)
            self._db_created = True
        return self

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: sessions are cut, the server is back when this returns."""
        self._run(
            self._tool("pg_ctl"), "-D", str(self.data), "-l", str(self._log), "-o", f"-p {self.port}",
            "-m", "fast", "-w", "-t", str(int(self.startup_timeout)), "restart",
        )
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL is not ready after restart:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """Crash-stop: SIGKILL the postmaster (its backends exit on their own); data stay."""
        pid = self.pid
        if pid is None or not self.running:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.running and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (fast, then immediate, then SIGKILL); data and port are kept."""
        if not self.running:
            return
        for mode in ("fast", "immediate"):
            self._run(self._tool("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)), "stop",
                      check=False, timeout=timeout + 10)
            if not self.running:
                return
        self.kill()

    def close(self) -> None:
        """Stop the server and delete its temp dir. Idempotent."""
        if self._dir is None:
            return
        try:
            self.stop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {self.host}:{self.port} {state}>"


def _current_user() -> str:
    import getpass

    return getpass.getuser()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A private, started :class:`PostgresServer`; skips when PostgreSQL is missing."""
    try:
        server = PostgresServer()
    except PostgresServerUnavailable as e:
        pytest.skip(str(e))
    with server:
        yield server


# -- Redis Cluster ----------------------------------------------------------------


def free_cluster_port(host: str = LOOPBACK, low: int = 20000, high: int = 55000) -> int:
    """A free port whose cluster bus port (``port + 10000``, below 65536) is free too."""
    import random

    for _ in range(500):
        port = random.randint(low, high)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, port))
                b.bind((host, port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for a Redis Cluster node")


def find_redis_cli() -> str:
    """Path of ``redis-cli`` (next to ``redis-server`` first)."""
    here = Path(find_redis_server()).with_name("redis-cli")
    for c in (str(here), shutil.which("redis-cli")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise RedisServerUnavailable("redis-cli not found (it comes with redis-server)")


class RedisClusterServer(_Managed):
    """A private Redis Cluster: ``masters`` masters with ``replicas`` replicas each, on
    loopback ports (each with its bus port free), files in a temp dir, no persistence.

    :meth:`kill_master` SIGKILLs a master and :meth:`wait_failover` waits until one of
    its replicas took over its slots; :meth:`restart` starts a killed node again on its
    port with its ``nodes.conf``, so it rejoins (as a replica of whoever took over)::

        with RedisClusterServer() as rc:
            urls = rc.urls                      # every node's redis://127.0.0.1:PORT
            port = rc.kill_master()
            seconds = rc.wait_failover(port)
            rc.restart(port)
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        host: str = LOOPBACK,
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = find_redis_server()
        self.cli = find_redis_cli()
        self.host = host
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout = startup_timeout
        self._dir: Path | None = Path(tempfile.mkdtemp(prefix="semcache-rcluster-"))
        self.ports: list[int] = []
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def urls(self) -> list[str]:
        return [f"redis://{self.host}:{p}" for p in self.ports]

    @property
    def url(self) -> str:
        """Every node, comma-separated (``RedisConfig(url=..., cluster=True)``)."""
        return ",".join(self.urls)

    def running(self, port: int) -> bool:
        proc = self._procs.get(port)
        return proc is not None and proc.poll() is None

    def _node_dir(self, port: int) -> Path:
        assert self._dir is not None, "RedisClusterServer is closed"
        d = self._dir / str(port)
        d.mkdir(exist_ok=True)
        return d

    def log_tail(self, port: int, lines: int = 20) -> str:
        try:
            text = (self._node_dir(port) / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _spawn(self, port: int) -> None:
        d = self._node_dir(port)
        cmd = [
            self.binary,
            "--bind", self.host,
            "--port", str(port),
            "--protected-mode", "yes",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(d / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(d),
            "--daemonize", "no",
        ]
        with open(d / "redis.log", "ab") as log:
            self._procs[port] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while not _ping(self.host, port):
            if self._procs[port].poll() is not None:
                raise RuntimeError(f"cluster node {port} exited during startup:\n" + self.log_tail(port))
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {port} did not answer:\n" + self.log_tail(port))
            time.sleep(0.05)

    def redis_cli(self, port: int, *args: str, timeout: float = 10.0) -> str:
        """Run ``redis-cli -p PORT ARGS`` and return its output."""
        out = subprocess.run(
            [self.cli, "-h", self.host, "-p", str(port), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        return out.stdout

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> RedisClusterServer:
        """Start every node, create the cluster and wait for ``cluster_state:ok``."""
        if self.ports:
            return self
        for _ in range(self.masters * (1 + self.replicas)):
            port = free_cluster_port(self.host)
            while port in self.ports:
                port = free_cluster_port(self.host)
            self.ports.append(port)
            self._spawn(port)
        created = subprocess.run(
            [self.cli, "--cluster", "create", *[f"{self.host}:{p}" for p in self.ports],
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if created.returncode != 0:
            raise RuntimeError("redis-cli --cluster create failed:\n" + created.stdout + created.stderr)
        self.wait_ok()
        return self

    def nodes(self, port: int | None = None) -> list[dict[str, object]]:
        """``CLUSTER NODES`` as seen from ``port`` (any running node by default): dicts
        with ``id``, ``port``, ``flags`` (a set), ``master`` (the master's id or ``-``)
        and ``slots`` (how many)."""
        ask = port if port is not None else next(p for p in self.ports if self.running(p))
        out: list[dict[str, object]] = []
        for line in self.redis_cli(ask, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            slots = 0
            for r in parts[8:]:
                if r.startswith("["):
                    continue
                lo, _, hi = r.partition("-")
                slots += int(hi or lo) - int(lo) + 1
            out.append({
                "id": parts[0],
                "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]),
                "flags": set(parts[2].split(",")),
                "master": parts[3],
                "slots": slots,
            })
        return out

    def master_ports(self) -> list[int]:
        """The ports of the masters that hold slots now (as a running node sees it)."""
        return sorted(
            int(str(n["port"])) for n in self.nodes()
            if "master" in n["flags"] and "fail" not in n["flags"] and int(str(n["slots"])) > 0
        )

    def state_ok(self) -> bool:
        """Whether every running node reports ``cluster_state:ok``, agrees on the masters,
        and every replica is in sync with its master (else it could not take over)."""
        live = [p for p in self.ports if self.running(p)]
        for p in live:
            if "cluster_state:ok" not in self.redis_cli(p, "cluster", "info"):
                return False
            repl = self.redis_cli(p, "info", "replication")
            if "role:slave" in repl and "master_link_status:up" not in repl:
                return False
        views = {tuple(sorted(int(str(n["port"])) for n in self.nodes(p)
                              if "master" in n["flags"] and "fail" not in n["flags"] and int(str(n["slots"])) > 0))
                 for p in live}
        return len(views) == 1 and all(live_port in live for live_port in next(iter(views)))

    def wait_ok(self, timeout: float = 30.0) -> float:
        """Wait until :meth:`state_ok`; return how long it took."""
        t0 = time.monotonic()
        while not self.state_ok():
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok:\n"
                                   + "\n".join(self.log_tail(p, 5) for p in self.ports))
            time.sleep(0.05)
        return time.monotonic() - t0

    def kill_master(self, port: int | None = None) -> int:
        """SIGKILL a master (the first by port unless given); return its port."""
        if port is None:
            port = self.master_ports()[0]
        proc = self._procs.pop(port, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        return port

    def wait_failover(self, port: int, timeout: float = 30.0) -> float:
        """Wait until a replica of the killed master ``port`` holds its slots and the
        cluster is ok again; return the seconds taken."""
        t0 = time.monotonic()
        while True:
            try:
                if port not in self.master_ports() and self.state_ok():
                    return time.monotonic() - t0
            except (StopIteration, ValueError):
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"no replica took over from master {port} within {timeout}s")
            time.sleep(0.05)

    def restart(self, port: int, timeout: float = 30.0) -> float:
        """Start a killed node again on its port (empty: no persistence); it rejoins as
        a replica. Return the seconds until the cluster agrees it is a replica."""
        t0 = time.monotonic()
        self._spawn(port)
        while True:
            me = [n for n in self.nodes(port) if "myself" in n["flags"]]
            if me and "slave" in me[0]["flags"] and self.state_ok():
                others = [p for p in self.ports if p != port and self.running(p)]
                seen = [n for n in self.nodes(others[0]) if n["port"] == port] if others else []
                if seen and "slave" in seen[0]["flags"] and "fail" not in seen[0]["flags"]:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"node {port} did not rejoin as a replica:\n" + self.log_tail(port))
            time.sleep(0.05)

    def close(self) -> None:
        """Kill every node and delete the temp dir.  Idempotent."""
        for port, proc in list(self._procs.items()):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


    def __del__(self) -> None:  # last-resort safety net; close() is the API
        try:
            for proc in self._procs.values():
                if proc.poll() is None:
                    proc.kill()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<RedisClusterServer {self.url}>"
