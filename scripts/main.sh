#!/usr/bin/env bash
# The main job, end to end: install, prepare data, embed, train on a local Ray cluster, evaluate, report.
# Data: $BARP_DATA_DIR (default ../shared/data/routerbench). Output: runs/demo (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1 RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0
exec .venv/bin/barp demo --out "${OUT:-runs/demo}" "$@"
