#!/usr/bin/env bash
# Installs everything and runs the whole test suite (slow and network-marked tests included), then ruff.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Real IDX files for the reader's test: Debian's Fashion-MNIST, when this machine can install it.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "note: dataset-fashion-mnist not installed; the real-file IDX test will be skipped"
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
