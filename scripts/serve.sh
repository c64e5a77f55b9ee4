#!/usr/bin/env bash
# Run the semcache HTTP server from the repository's .venv:
#   bash scripts/serve.sh [semcache serve options...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# setup.sh logs to stderr; keep stdout for the server itself.
bash scripts/setup.sh >&2
exec .venv/bin/python -m semcache.cli.main serve "$@"
