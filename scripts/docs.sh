#!/usr/bin/env bash
# Builds the docs site into docs/_build/html with warnings as errors: a broken cross-reference, a link to a missing
# page or anchor, or a page in no table of contents fails the build. The API pages are generated from the docstrings
# (autodoc + napoleon); the Markdown pages are read by myst-parser (docs/conf.py says how).
# The build has its own virtual environment, .venv-docs, made from docs/requirements.txt only (NTK_DOCS_VENV moves
# it). Every build starts from a fresh Sphinx environment (-E), so a warning of an unchanged page is never skipped.
# Extra arguments go to sphinx-build, e.g. `bash scripts/docs.sh -v` for a verbose build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${NTK_DOCS_VENV:-.venv-docs}
OUT=docs/_build/html
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ ! -x $VENV/bin/python ]]; then
  if ! "$PY" -m venv "$VENV" >&2; then
    echo "Could not create a virtual environment with $PY (on Debian: apt-get install python3-venv)." >&2
    exit 1
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
fi
"$VENV/bin/python" -m pip install -q -r docs/requirements.txt >&2
"$VENV/bin/python" -m sphinx -E -W --keep-going -n -q -b html docs "$OUT" "$@"
echo "Docs built: $OUT/index.html"
