#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite (library doctests included) on 2 worker processes.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k topk`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/install.sh | tail -n 1)
exec "$PY" -m pytest -n 2 --doctest-modules noised_topk_jax tests "$@"
