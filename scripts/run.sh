#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install, fetch MNIST, train the MLP, print test accuracy.
# Extra arguments go to `mindtrace train` (e.g. --epochs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/mindtrace train "$@"
