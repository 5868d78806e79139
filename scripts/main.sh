#!/usr/bin/env bash
# The main job, end to end: install, prepare data, embed, train on a local Ray cluster, seeds + leave-one-task-out,
# evaluate, report. Data: $BARP_DATA_DIR (default ../shared/data/routerbench). Output: runs/demo (override with OUT=...).
# Extra arguments go to `barp demo` (e.g. --seeds 0 1 2, --no-loto); stage times are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/install.sh
install_s=$((SECONDS - start))
export RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1 RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0
# the venv is installed without .pyc files (install.sh): let the first import of each module write its own,
# or every Ray worker recompiles torch & co. on import (~2x slower starts)
unset PYTHONDONTWRITEBYTECODE
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"  # token auth, decided explicitly (no warning at start)
.venv/bin/barp demo --out "${OUT:-runs/demo}" "$@"
echo "main job: install ${install_s}s, barp demo $((SECONDS - start - install_s))s, total $((SECONDS - start))s"
