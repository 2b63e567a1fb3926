#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install, fetch MNIST, train the MLP, register it in MLflow
# (the promotion gate decides whether it becomes champion), and import the champion into the BentoML store.
# Extra arguments go to `mindtrace train` (e.g. --epochs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/mindtrace train "$@"
.venv/bin/mindtrace registry import champion
