"""experiments/results_index.py through experiments/regimes.py: the results index, its summary figure and README.md's
results block, regenerated from the committed runs.csv and checked by hand on a tiny grid."""
import math
import os
import re
import subprocess
import sys

import pytest

from experiments import regimes
from experiments import results_index
from tests import shared_runs
from tests import test_regime_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "docs", "results")
README = os.path.join(REPO, "README.md")
_write, _runs = test_regime_table._write, test_regime_table._runs  # pylint: disable=protected-access


def _tiny_grid(root):
  """A synthetic_lt runs.csv of 3 seeds whose claim 4 is known by hand (per-seed macro top-1 / top-3, in %).

  K = 1: the noised loss 56, 58, 60 (mean 58); LA loss 50, 52, 54 (52), the best LA row; CE + post-hoc LA 51;
  balanced softmax 49. K = 3 (the noised model trained with K = 3): noised 78, 80, 82 (80); balanced softmax 83, 83,
  86 (84), the best LA row; LA loss 81; post-hoc 79. The noised loss with LA offsets is the best method at both K,
  and is neither "the noised loss" nor an LA method.
  """
  rows = (_runs("ce", "lt100", [0.40, 0.41, 0.42], [0.70] * 3, fit=0.6)
          + _runs("la", "lt100", [0.50, 0.52, 0.54], [0.80, 0.81, 0.82])
          + _runs("ce_posthoc_la", "lt100", [0.51] * 3, [0.79] * 3)
          + _runs("balanced_softmax", "lt100", [0.49] * 3, [0.83, 0.83, 0.86])
          + _runs("noised_imbalanced", "lt100", [0.56, 0.58, 0.60], ks="1")
          + _runs("noised_imbalanced", "lt100", [0.0] * 3, [0.78, 0.80, 0.82], ks="3")
          + _runs("noised_imbalanced_la", "lt100", [0.70] * 3, [0.90] * 3))
  _write(str(root / "synthetic_lt" / "runs.csv"), rows)


# Standard errors of the differences of means, seeds independent: sqrt(4/3 + 4/3) at K = 1, sqrt(4/3 + 3/3) at K = 3.
SE1, SE3 = math.sqrt(8 / 3), math.sqrt(7 / 3)


def test_the_difference_is_the_noised_loss_minus_the_best_la_method_at_each_k(tmp_path):
  _tiny_grid(tmp_path)
  (row,) = regimes.summaries(str(tmp_path))
  assert (row.grid, row.setting, row.regime, row.runs, row.seeds) == ("synthetic_lt", None, "underfit", 21, 3)
  assert row.train_fit == pytest.approx(60.0)
  one, three = row.gaps
  assert (one.k, three.k) == (1, 3)
  assert one.delta == pytest.approx(6.0) and one.se == pytest.approx(SE1)  # 58 - 52: the noised loss ahead
  assert three.delta == pytest.approx(-4.0) and three.se == pytest.approx(SE3)  # 80 - 84: behind
  assert (one.best_la, three.best_la) == ("LA loss (tau 1)", "Balanced softmax")
  assert one.best == three.best == "noised top-K, imbalanced + LA offsets (tau 1)"
  # The same numbers as regimes.md's claim 4.
  text = regimes.build(str(tmp_path))
  assert f"| +6.00 ± {SE1:.2f} vs LA loss (tau 1) (holds) |" in text
  assert f"| -4.00 ± {SE3:.2f} vs Balanced softmax (fails) |" in text


def test_the_index_row_and_the_figure_bars_show_those_differences(tmp_path):
  _tiny_grid(tmp_path)
  rows = regimes.summaries(str(tmp_path))
  page = results_index.index_page(rows)
  assert (f"| [synthetic_lt](synthetic_lt/table.md) | generated, 100 classes (MLP) | underfit | 60.0 | 1 / 3 | "
          f"+6.00 ± {SE1:.2f} / -4.00 ± {SE3:.2f} | noised top-K, imbalanced + LA offsets (tau 1) (K 1, 3) | "
          "21 (3 seeds) |") in page
  assert "Over the 2 (stand-in, K) cells the noised loss is below the best logit-adjusted method in 1, beyond twice " \
         "the standard error in 1; above it beyond noise in 1." in page
  assert results_index.counts(rows) == (2, 1, 1, 1)
  # Two bars around x = 0, heights the differences, error bars twice their standard errors.
  bars = results_index.figure_bars(rows)
  assert [(x, k) for x, k, _, _ in bars] == [(pytest.approx(-0.2), 1), (pytest.approx(0.2), 3)]
  assert [h for _, _, h, _ in bars] == pytest.approx([6.0, -4.0])
  assert [e for _, _, _, e in bars] == pytest.approx([2 * SE1, 2 * SE3])
  assert "## Tuned" not in page  # no study has a table yet
  (tmp_path / "tuned" / "fashion_exp100").mkdir(parents=True)
  (tmp_path / "tuned" / "empty").mkdir()
  (tmp_path / "tuned" / "fashion_exp100" / "table.md").write_text("# Tuned\n")
  assert regimes.tuned_pages(str(tmp_path)) == ["tuned/fashion_exp100/table.md"]
  page = results_index.index_page(rows, regimes.tuned_pages(str(tmp_path)))
  assert page.split("## Tuned")[1].count("](") == 2  # the tuning page and the study's table
  assert "[fashion_exp100](tuned/fashion_exp100/table.md)" in page
  assert "## Tuned" in regimes.build(str(tmp_path)) and "(tuned/fashion_exp100/table.md)" in regimes.build(
      str(tmp_path))
  block = results_index.readme_block(rows)
  assert "[synthetic_lt](docs/results/synthetic_lt/table.md)" in block
  assert f"| 60.0 | 1 / 3 | +6.00 ± {SE1:.2f} / -4.00 ± {SE3:.2f} |" in block


def test_the_readme_block_replaces_only_the_text_between_the_markers():
  start, end = results_index.README_START, results_index.README_END
  readme = f"# Title\n\nVerdict.\n\n{start}\nold table\n{end}\n\n## Install\n"
  new = results_index.replace_block(readme, "new table")
  assert new == f"# Title\n\nVerdict.\n\n{start}\nnew table\n{end}\n\n## Install\n"
  assert results_index.replace_block(new, "new table") == new
  for broken in ("# Title\n", f"{start}\n", f"{end}\n{start}\n", f"{start}\n{end}\n{start}\n{end}\n"):
    assert results_index.replace_block(broken, "new table") is None


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.regimes", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=shared_runs.SUBPROCESS_TIMEOUT_S, check=False)


@pytest.mark.slow
def test_the_command_writes_every_file_and_check_finds_stale_ones(tmp_path):
  pytest.importorskip("matplotlib")
  _tiny_grid(tmp_path)
  start, end = results_index.README_START, results_index.README_END
  readme, bare = tmp_path / "README.md", tmp_path / "BARE.md"
  readme.write_text(f"intro\n{start}\nold\n{end}\nrest\n")
  bare.write_text("no markers\n")
  flags = [f"--results_dir={tmp_path}"]
  assert _cli(*flags, f"--readme={readme}", "--check").returncode == 1  # nothing written yet
  out = _cli(*flags, f"--readme={readme}")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = regimes.summaries(str(tmp_path))
  assert readme.read_text() == f"intro\n{start}\n{results_index.readme_block(rows)}\n{end}\nrest\n"
  assert (tmp_path / "index.md").read_text() == results_index.index_page(rows)
  assert (tmp_path / "regimes.md").read_text() == regimes.build(str(tmp_path))
  assert (tmp_path / "summary.png").read_bytes() == results_index.summary_png(rows)
  check = _cli(*flags, f"--readme={readme}", "--check")
  assert check.returncode == 0 and "Up to date" in check.stdout, check.stdout + check.stderr[-3000:]
  readme.write_text(readme.read_text().replace("+6.00", "+6.01"))
  check = _cli(*flags, f"--readme={readme}", "--check")
  assert check.returncode == 1 and f"stale: {readme}" in check.stdout
  # A README without the markers is left as it is, and does not make the check fail.
  out = _cli(*flags, f"--readme={bare}")
  assert out.returncode == 0 and "has no <!-- results-index:start -->" in out.stdout
  assert bare.read_text() == "no markers\n"
  assert _cli(*flags, f"--readme={bare}", "--check").returncode == 0


def test_the_committed_index_regimes_table_and_readme_block_are_up_to_date():
  outputs = regimes.render(RESULTS, README, figure=False)
  assert regimes.stale(outputs) == [], "Regenerate with `python -m experiments.regimes`."
  # Every link of the index resolves from docs/results/.
  page = outputs[os.path.join(RESULTS, "index.md")].decode()
  links = re.findall(r"\]\(([^)]+)\)", page)
  assert {"summary.png", "regimes.md", "regimes_protocols.md", "fashion_mnist_lt/table.md"} <= set(links)
  for link in links:
    assert os.path.exists(os.path.join(RESULTS, link)), link


def _pinned_matplotlib():
  with open(os.path.join(REPO, "requirements.txt")) as f:
    return next(line.split("==")[1].strip() for line in f if line.startswith("matplotlib=="))


def test_the_summary_figure_is_byte_stable_and_the_committed_one_is_up_to_date():
  matplotlib = pytest.importorskip("matplotlib")
  rows = regimes.summaries(RESULTS)
  png = results_index.summary_png(rows)
  assert png.startswith(b"\x89PNG") and png == results_index.summary_png(rows)
  assert b"Matplotlib" not in png  # no version stamp in the metadata
  if matplotlib.__version__ != _pinned_matplotlib():
    pytest.skip(f"matplotlib {matplotlib.__version__}, not the pinned {_pinned_matplotlib()}: its rendering may "
                "differ from the committed figure's")
  with open(os.path.join(RESULTS, results_index.FIGURE), "rb") as f:
    assert f.read() == png, "Regenerate with `python -m experiments.regimes`."
