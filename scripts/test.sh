#!/usr/bin/env bash
# Installs what the tests need, then runs pytest as pyproject.toml configures it: every test and the library's
# doctests, on 2 worker processes. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"     # the inner loop: the library's tests and doctests, no trainings
#   bash scripts/test.sh -k topk
# NTK_VENV and NTK_REQUIREMENTS choose the environment (scripts/install.sh), e.g. CI's torch run:
#   NTK_VENV=.venv-torch NTK_REQUIREMENTS=benchmarks/requirements.txt bash scripts/test.sh -m torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/install.sh | tail -n 1)
exec "$PY" -m pytest "$@"
