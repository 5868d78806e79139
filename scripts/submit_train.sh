#!/usr/bin/env bash
# Submit `barp train` as a Ray Job: uploads this repo as the job's working dir (data, caches and the venv
# excluded) and runs `python -m barp_ray.cli train <your flags>` on the cluster. See docs/jobs.md.
#
#   RAY_ADDRESS=http://127.0.0.1:8265 scripts/submit_train.sh --data /abs/path/data --epochs 2 \
#       --storage-path /abs/path/ray_results        # or s3://bucket/prefix
#
# Token authentication (Ray 2.60): RAY_AUTH_MODE defaults to `token` here; the token is read from
# RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. Set RAY_AUTH_MODE=disabled only
# for a cluster started with it disabled.
# Env: RAY_ADDRESS (dashboard URL, default http://127.0.0.1:8265), SUBMISSION_ID, RAY (the ray CLI),
#      PYTHON (python that has barp_ray, for the runtime env JSON), NO_WAIT=1 (return after submitting).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
RAY="${RAY:-ray}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"

RUNTIME_ENV="$(cd "$REPO" && "$PYTHON" -m barp_ray.tuning.jobs --runtime-env)"
args=(job submit --address "$ADDRESS" --working-dir "$REPO" --runtime-env-json "$RUNTIME_ENV")
if [[ -n "${SUBMISSION_ID:-}" ]]; then args+=(--submission-id "$SUBMISSION_ID"); fi
if [[ "${NO_WAIT:-0}" == "1" ]]; then args+=(--no-wait); fi

exec "$RAY" "${args[@]}" -- python -m barp_ray.cli train "$@"
