#!/usr/bin/env bash
# Installs what the binaries and the tests need: a virtual environment `.venv` built from requirements.txt only and,
# where apt-get is available with root rights, real Fashion-MNIST from Debian's dataset-fashion-mnist package.
# Elsewhere (macOS, no root, another Linux) the trainer downloads Fashion-MNIST through TFDS on first use.
# The environment does not see the machine's site-packages, so what passes here passes for a new user: a package the
# machine happens to have (torch, say) cannot leak into the tests. NTK_VENV moves it (default: .venv);
# NTK_REQUIREMENTS names more requirement files installed with requirements.txt (CI's torch environment:
# NTK_VENV=.venv-torch NTK_REQUIREMENTS=benchmarks/requirements.txt); NTK_INSTALL_DATASET=0 leaves Fashion-MNIST out.
# Prints the Python interpreter to use on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${NTK_VENV:-.venv}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ ! -x $VENV/bin/python ]]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python >= 3.11 is needed (pyproject.toml), and $PY is $("$PY" -V 2>&1 || echo missing):" \
      "point PYTHON at a newer one, e.g. PYTHON=python3.12 bash $0." >&2
    exit 1
  fi
  if ! "$PY" -m venv "$VENV" >&2; then
    echo "Could not create a virtual environment with $PY (on Debian: apt-get install python3-venv)." >&2
    exit 1
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
fi
REQUIREMENTS=(-r requirements.txt)
for extra in ${NTK_REQUIREMENTS:-}; do
  REQUIREMENTS+=(-r "$extra")
done
"$VENV/bin/python" -m pip install -q "${REQUIREMENTS[@]}" >&2

if [[ ${NTK_INSTALL_DATASET:-1} != 0 && ! -d /usr/share/datasets/fashion-mnist ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >&2 \
      || echo "apt-get could not install dataset-fashion-mnist: the trainer will download Fashion-MNIST through" \
        "TFDS on first use instead (about 30 MB; needs network)." >&2
  else
    echo "Fashion-MNIST: Debian's dataset-fashion-mnist is not installed (that takes root and apt-get; with sudo:" \
      "sudo apt-get install dataset-fashion-mnist), so the trainer downloads it through TFDS on first use, into" \
      "${TFDS_DATA_DIR:-~/tensorflow_datasets} (about 30 MB; needs network)." >&2
  fi
fi
echo "$VENV/bin/python"
