#!/usr/bin/env bash
# Installs everything and runs the whole test suite (slow and network-marked tests included), then ruff.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# A Debian package, when this machine can install it (root, apt-get); refreshes the index once if needed.
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  apt-get install -y -qq "$1" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$1" >/dev/null 2>&1; }
}
# Real IDX files for the reader's test: Debian's Fashion-MNIST.
[ -d /usr/share/datasets/fashion-mnist ] || apt_install dataset-fashion-mnist \
  || echo "note: dataset-fashion-mnist not installed; the real-file IDX test will be skipped"
# wrk, the load generator of the serving benchmark (tests/test_bench_serve.py).
command -v wrk >/dev/null || apt_install wrk || echo "note: wrk not installed; the serving benchmark test will be skipped"
# promtool, which checks and unit-tests the alerting rules (tests/test_deploy.py): Debian's prometheus package
# (on a machine running systemd, installing it also enables the prometheus daemon on port 9090).
command -v promtool >/dev/null || apt_install prometheus \
  || echo "note: prometheus (promtool) not installed; the alerting rule tests will be skipped"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
