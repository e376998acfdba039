#!/usr/bin/env bash
# One command for a machine with an accelerator (or `--tiny`: a CPU smoke run): environment, library tests, the
# noised loss against PyTorch, train-step share, the default job; writes benchmarks/RESULTS_GPU.md. Installs nothing:
# it uses the machine's python3 (a CUDA machine's jax, flax, optax, orbax, torch). See scripts/device_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/device_check.py "$@"
