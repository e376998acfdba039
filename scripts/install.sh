#!/usr/bin/env bash
# Installs what the binaries and the tests need: the Python packages of requirements.txt and, where apt-get is
# available with root rights, real Fashion-MNIST from Debian's dataset-fashion-mnist package.
# Prints the Python interpreter to use on its last line (a .venv is made when the system Python refuses pip).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$PY" -m pip install -q -r requirements.txt >&2; then
  echo "pip refused to install into $PY; using a virtual environment in .venv instead." >&2
  "$PY" -m venv .venv
  PY=.venv/bin/python
  "$PY" -m pip install -q --upgrade pip >&2
  "$PY" -m pip install -q -r requirements.txt >&2
fi

if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >&2 \
      || echo "apt-get could not install dataset-fashion-mnist; the binaries will try TFDS instead." >&2
  else
    echo "Not root or no apt-get: Fashion-MNIST will come through TFDS (fashion_mnist) on first use." >&2
  fi
fi
echo "$PY"
