#!/usr/bin/env bash
# Creates .venv once and installs everything into it; safe to run again (then it only checks).
# torch 2.13.0 goes in first and pinned: a looser torch requirement resolved before it would pull the
# newest CUDA build (several GB). With it installed, the project's "torch>=2.4" is already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "mindtrace needs Python 3.10+"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
# requirements.txt pins the versions the suite runs with and the Bento ships (one source of pins).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.txt -e ".[dev]"
