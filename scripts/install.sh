#!/usr/bin/env bash
# Installs what the binaries and the tests need: a virtual environment `.venv` built from requirements.txt only and,
# where apt-get is available with root rights, real Fashion-MNIST from Debian's dataset-fashion-mnist package.
# The environment does not see the machine's site-packages, so what passes here passes for a new user: a package the
# machine happens to have (torch, say) cannot leak into the tests. NTK_VENV moves it (default: .venv).
# Prints the Python interpreter to use on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${NTK_VENV:-.venv}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ ! -x $VENV/bin/python ]]; then
  if ! "$PY" -m venv "$VENV" >&2; then
    echo "Could not create a virtual environment with $PY (on Debian: apt-get install python3-venv)." >&2
    exit 1
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
fi
"$VENV/bin/python" -m pip install -q -r requirements.txt >&2

if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >&2 \
      || echo "apt-get could not install dataset-fashion-mnist; the binaries will try TFDS instead." >&2
  else
    echo "Not root or no apt-get: Fashion-MNIST will come through TFDS (fashion_mnist) on first use." >&2
  fi
fi
echo "$VENV/bin/python"
