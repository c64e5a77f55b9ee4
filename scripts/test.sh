#!/usr/bin/env bash
# Run the semcache test suite against real, throw-away Redis and PostgreSQL
# servers.
#
#   bash scripts/test.sh [pytest args...]
#
# 1. runs scripts/setup.sh (system packages, .venv, editable install)
# 2. starts redis-server and PostgreSQL on free loopback ports, with all
#    their files in temporary directories
# 3. exports SEMCACHE_TEST_REDIS_URL, SEMCACHE_TEST_PG_URL, HF_HUB_OFFLINE=1
# 4. runs `.venv/bin/python -m pytest "$@"`
# 5. always stops both servers and removes the temporary directories
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

stop_postgres() {
    [[ -n "$PG_DATA" && -f "$PG_DATA/postmaster.pid" ]] || return 0
    local pid
    pid="$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
    pid_alive "$pid" || return 0
    "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    wait_pid_gone "$pid" 5 && return 0
    "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
    wait_pid_gone "$pid" 5 && return 0
    kill -KILL "$pid" 2>/dev/null || true
    wait_pid_gone "$pid" 5 || log "WARNING: could not stop postgres pid $pid"
}

cleanup() {
    local rc=$?
    (( CLEANED )) && return 0
    CLEANED=1
    set +e
    stop_redis
    stop_postgres
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    [[ -n "$PG_WORK" ]] && rm -rf "$PG_WORK"
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
start_postgres() {
    if (( ${#AS_PG[@]} )); then
        # Own directory under /tmp (always traversable by the postgres user).
        PG_WORK="$(mktemp -d /tmp/semcache-pg.XXXXXX)"
        chown postgres: "$PG_WORK"
    else
        PG_WORK="$WORK/pg"
        mkdir -p "$PG_WORK"
    fi
    chmod 700 "$PG_WORK"
    PG_DATA="$PG_WORK/data"
    local sock="$PG_WORK/sock" log_file="$PG_WORK/postgres.log"
    "${AS_PG[@]}" mkdir -p "$sock"

    if ! "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_SUPERUSER" \
            --auth=trust -E UTF8 --no-locale --no-sync \
            >"$WORK/initdb.log" 2>&1 </dev/null; then
        cat "$WORK/initdb.log" >&2
        die "initdb failed"
    fi
    # Loopback only.
    "${AS_PG[@]}" tee -a "$PG_DATA/postgresql.conf" >/dev/null <<EOF

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
    "${AS_PG[@]}" tee "$PG_DATA/pg_hba.conf" >/dev/null <<'EOF'
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
EOF

    local attempt
    for attempt in 1 2 3; do
        PG_PORT="$(free_port)"
        if "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$log_file" \
                -o "-p $PG_PORT" -w -t "$READY_TIMEOUT" start >/dev/null 2>&1 </dev/null; then
            local deadline=$(( SECONDS + READY_TIMEOUT ))
            while (( SECONDS < deadline )); do
                if "$PG_ISREADY" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1; then
                    "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
                        -U "$PG_SUPERUSER" -d postgres \
                        -c 'CREATE DATABASE semcache_test' >/dev/null </dev/null \
                        || die "could not create database semcache_test"
                    return 0
                fi
                sleep 0.2
            done
        fi
        log "postgres did not come up on port $PG_PORT (attempt $attempt)"
        "${AS_PG[@]}" tail -n 20 "$log_file" >&2 2>/dev/null || true
        stop_postgres
    done
    die "could not start PostgreSQL"
}

t0=$SECONDS
start_redis
start_postgres

export SEMCACHE_TEST_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
export SEMCACHE_TEST_PG_URL="postgresql+psycopg://${PG_SUPERUSER}@127.0.0.1:${PG_PORT}/semcache_test"
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export PYTHONDONTWRITEBYTECODE="${PYTHONDONTWRITEBYTECODE:-1}"

log "servers up in $(( SECONDS - t0 ))s ($(basename "$(dirname "$PG_BIN")") postgres, $("$REDIS_SERVER" --version | awk '{print $3}' | sed "s/^v=/redis /"))"
log "SEMCACHE_TEST_REDIS_URL=$SEMCACHE_TEST_REDIS_URL"
log "SEMCACHE_TEST_PG_URL=$SEMCACHE_TEST_PG_URL"

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
