#!/usr/bin/env bash
# Quick start: install, then train the embedded default (long-tailed Fashion-MNIST, imbalanced noised top-K loss).
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package where install.sh could install it (root), else the
# trainer downloads it through TFDS on first use; offline and without either, it says so in one line.
# Extra arguments go to the trainer, e.g. `bash scripts/quickstart.sh --loss=ce`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/install.sh | tail -n 1)
exec "$PY" -m experiments.train "$@"
