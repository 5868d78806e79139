#!/usr/bin/env bash
# Install, lint, and run the whole test suite (a real local Ray cluster, real MiniLM, real HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1 RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0
# the venv is installed without .pyc files (install.sh): let the first import of each module write its own,
# or every Ray worker recompiles torch & co. on import (~2x slower starts)
unset PYTHONDONTWRITEBYTECODE
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"  # token auth, decided explicitly (no warning at start)
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
