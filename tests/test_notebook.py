"""notebooks/colab_quickstart.ipynb runs top to bottom (smoke mode: tiny config, generated data) with nbclient.

The kernel starts in notebooks/, as Jupyter would start it; the notebook's first cell moves to the repository root,
finds the package importable and installs nothing. `NTK_NOTEBOOK_SMOKE=1` selects the tiny configuration.
"""
import os

import pytest

from tests import shared_runs

# Listed in requirements.txt; a machine without them skips these tests, naming the package.
nbformat = pytest.importorskip("nbformat", exc_type=ImportError)
nbclient = pytest.importorskip("nbclient", exc_type=ImportError)
pytest.importorskip("ipykernel", exc_type=ImportError)  # the kernel nbclient starts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "colab_quickstart.ipynb")


def _text(cell):
  parts = []
  for out in cell.get("outputs", []):
    if out["output_type"] == "stream":
      parts.append(out["text"])
    elif "data" in out and "text/plain" in out["data"]:
      parts.append(out["data"]["text/plain"])
  return "".join(parts)


def test_notebook_is_clean_and_states_tpu_differences():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  # Committed without outputs, and installation comes first.
  assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
  first_code = next(c for c in nb.cells if c.cell_type == "code")
  assert "pip install" in first_code.source and "find_spec(\"noised_topk_jax\") is None" in first_code.source
  markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
  for phrase in ("TPU", "global batch", "selection=\"auto\"", "lax.top_k", "half_precision"):
    assert phrase in markdown, phrase
  assert REPO not in nbformat.writes(nb)


@pytest.mark.slow
def test_notebook_executes_in_smoke_mode(monkeypatch):
  pytest.importorskip("matplotlib", exc_type=ImportError)  # the notebook plots per-class accuracy
  monkeypatch.setenv("NTK_NOTEBOOK_SMOKE", "1")
  monkeypatch.delenv("PYTHONPATH", raising=False)  # the notebook must find the checkout by itself
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # The timeout of each cell and of the kernel's start: a guard against a hang, not a limit on a busy machine.
  client = nbclient.NotebookClient(nb, timeout=shared_runs.SUBPROCESS_TIMEOUT_S,
                                   startup_timeout=shared_runs.SUBPROCESS_TIMEOUT_S, iopub_timeout=60,
                                   kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
  client.execute()  # raises CellExecutionError, with the failing cell's traceback, on any error

  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  install, devices = _text(code_cells[0]), _text(code_cells[1])
  assert "noised_topk_jax" in install and "working directory: " + REPO in install
  assert "backend: cpu" in devices
  outputs = "\n".join(_text(c) for c in code_cells)
  assert "| top-K accuracy (%) |" in outputs and "| macro top-K accuracy (%) |" in outputs
  assert "noised_imbalanced" in outputs
  images = [o for c in code_cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) == 1, "the per-class accuracy plot is missing"
