#!/usr/bin/env bash
# Prepare a development / CI environment for semcache.
#
#   * installs redis-server and PostgreSQL from apt when they are missing
#   * creates .venv in the repository root when it is missing
#   * installs torch (CPU wheel) first, then `pip install -e '.[test]'`
#
# Idempotent: a stamp file inside .venv records a hash of pyproject.toml (and
# of the pins below); when it matches, the pip step is skipped and a re-run
# takes a second or two.  Set SEMCACHE_SETUP_FORCE=1 to reinstall anyway.
#
# Environment knobs (all optional):
#   PYTHON                 interpreter used to create .venv (default: python3)
#   SEMCACHE_SETUP_FORCE=1 ignore the stamp and reinstall
#   SEMCACHE_SKIP_APT=1    never call apt-get (servers must already be present)
set -euo pipefail

# Bump when the install procedure changes in a way that needs a reinstall.
SETUP_VERSION=1
# torch MUST be installed before sentence-transformers: the local CPU wheel
# satisfies its requirement, otherwise pip pulls gigabytes of CUDA packages.
TORCH_SPEC="torch==2.13.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
if [[ -n "${CI:-}" || ! -t 1 ]]; then
    export PIP_PROGRESS_BAR=off
fi

# --------------------------------------------------------------------------
# 1. System packages (redis-server, PostgreSQL server binaries)
# --------------------------------------------------------------------------
have_pg_server() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && return 0
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

missing_pkgs=()
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
    || missing_pkgs+=(redis-server)
have_pg_server && command -v pg_isready >/dev/null 2>&1 \
    || missing_pkgs+=(postgresql)

if (( ${#missing_pkgs[@]} )); then
    if [[ "${SEMCACHE_SKIP_APT:-}" == 1 ]]; then
        die "missing system packages: ${missing_pkgs[*]} (SEMCACHE_SKIP_APT=1 set)"
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "missing system packages (${missing_pkgs[*]}) and no apt-get; install them by hand"
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install ${missing_pkgs[*]}"
        SUDO=(sudo -n)
    fi
    log "installing system packages: ${missing_pkgs[*]}"
    # Keep the packages' maintainer scripts from starting system-wide
    # daemons (e.g. redis on :6379); the tests start their own servers.
    policy_created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    apt_log="$(mktemp)"
    apt_rc=0
    {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends -o Dpkg::Options::=--force-confdef \
            -o Dpkg::Options::=--force-confold "${missing_pkgs[@]}"
    } >"$apt_log" 2>&1 </dev/null || apt_rc=$?
    if (( policy_created )); then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    fi
    if (( apt_rc != 0 )); then
        tail -n 40 "$apt_log" >&2
        rm -f "$apt_log"
        die "apt-get install ${missing_pkgs[*]} failed (rc=$apt_rc)"
    fi
    rm -f "$apt_log"
    command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get"
    have_pg_server || die "PostgreSQL server binaries still missing after apt-get"
fi

# --------------------------------------------------------------------------
# 2. Virtual environment + Python packages
# --------------------------------------------------------------------------
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.semcache-setup.stamp"

if [[ ! -x "$VPY" ]] || ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
    PY="${PYTHON:-python3}"
    command -v "$PY" >/dev/null 2>&1 || die "$PY not found"
    log "creating virtualenv .venv with $("$PY" --version 2>&1)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

want_hash="$(
    {
        echo "setup-version=$SETUP_VERSION"
        echo "torch=$TORCH_SPEC"
        "$VPY" -c 'import sys; print(sys.version)'
        cat pyproject.toml
    } | sha256sum | cut -d' ' -f1
)"

stamp_ok() {
    [[ "${SEMCACHE_SETUP_FORCE:-}" != 1 ]] \
        && [[ -f "$STAMP" ]] \
        && [[ "$(cat "$STAMP")" == "$want_hash" ]]
}

if stamp_ok; then
    log "python environment up to date (.venv, stamp matches pyproject.toml)"
    exit 0
fi

# Serialise concurrent installs into the same venv.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV/.semcache-setup.lock"
    flock 9
    if stamp_ok; then   # somebody else finished it while we waited
        log "python environment up to date (installed concurrently)"
        exit 0
    fi
fi

rm -f "$STAMP"
# hatchling refuses to build when [project].readme names a missing file;
# say so plainly instead of a long pip traceback.
missing_readme="$("$VPY" - <<'EOF'
import os
try:
    import tomllib
except ImportError:  # Python < 3.11: skip the check
    raise SystemExit(0)
with open("pyproject.toml", "rb") as f:
    readme = tomllib.load(f).get("project", {}).get("readme")
path = readme if isinstance(readme, str) else (readme or {}).get("file")
if path and not os.path.exists(path):
    print(path)
EOF
)" || missing_readme=""
[[ -z "$missing_readme" ]] \
    || die "pyproject.toml names readme '$missing_readme', which does not exist (commit it)"
start=$SECONDS
log "installing $TORCH_SPEC (CPU wheel) into .venv"
"$VPY" -m pip install -q "$TORCH_SPEC"
log "installing semcache in editable mode with the [test] extras"
"$VPY" -m pip install -q -e '.[test]'
# Sanity: the CPU torch wheel must still be the one installed (no CUDA swap).
"$VPY" - "$TORCH_SPEC" <<'EOF'
import sys
from importlib.metadata import version
want = sys.argv[1].split("==", 1)[1]
got = version("torch")
if not got.split("+", 1)[0] == want:
    sys.exit(f"[setup] ERROR: torch {got} installed, expected {want}")
EOF
printf '%s\n' "$want_hash" > "$STAMP"
log "python environment ready in $((SECONDS - start))s"
