"""experiments/regimes.py: the regime table from runs.csv files, checked on hand-made grids with known answers."""
import csv
import math
import os

import numpy as np

from experiments import regimes

HEADER = ["run", "preset", "row", "setting", "seed", "ks", "macro_top1_accuracy", "macro_top3_accuracy",
          "train_fit_top1_accuracy"]


def _write(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(HEADER)
    for row in rows:
      w.writerow(row)


def _runs(method, setting, top1, top3=None, ks="1 3", fit=0.5):
  """One runs.csv line per seed; `top1`, `top3`: per-seed accuracies in [0, 1]."""
  top3 = top3 or top1
  return [[f"{method}_seed{i}", method, method, setting, i, ks, a, b, fit] for i, (a, b) in enumerate(zip(top1, top3))]


def test_read_cells_keeps_one_setting_and_the_k_each_model_trained_with(tmp_path):
  path = str(tmp_path / "g" / "runs.csv")
  _write(path, _runs("ce", "a", [0.4, 0.5], fit=0.9) + _runs("ce", "b", [0.1, 0.1])
         + _runs("noised_imbalanced", "a", [0.3, 0.3], [0.6, 0.7], ks="3"))
  cells, fit = regimes.read_cells(path, "a")
  assert cells == {("ce", 1): [40.0, 50.0], ("ce", 3): [40.0, 50.0], ("noised_imbalanced", 3): [60.0, 70.0]}
  assert fit[("ce", 1)] == [90.0, 90.0]


def test_ordering_scores_follow_the_sign_of_the_seed_figure_and_the_noise():
  ldam_ce = next(o for o in regimes.ORDERINGS if o.label == "LDAM - CE")  # seed figures positive
  bal_ce = next(o for o in regimes.ORDERINGS if o.label == "bal. noised - CE")  # seed figure negative
  cells = {("ce", 1): [40.0, 41.0, 42.0], ("ldam", 1): [45.0, 46.0, 47.0], ("noised_balanced", 1): [41.0, 41.0, 41.0]}
  text, score = regimes.ordering_cell(cells, ldam_ce)
  # +5 points, standard error sqrt(1/3 + 1/3) = 0.816: reproduced beyond noise.
  assert score == 2 and text.startswith(f"+5.00 ± {math.sqrt(2 / 3):.2f} (yes)")
  text, score = regimes.ordering_cell(cells, bal_ce)  # 0.00 ± 0.58: not the seed's (negative) sign
  assert score == 0 and "no, within noise" in text
  cells[("noised_balanced", 1)] = [38.0, 39.0, 40.0]
  assert regimes.ordering_cell(cells, bal_ce)[1] == 2
  cells[("noised_balanced", 1)] = [40.0, 40.5, 41.0]  # -0.50 ± 0.65: the seed's sign, within noise
  assert regimes.ordering_cell(cells, bal_ce)[1] == 1
  assert regimes.ordering_cell({("ce", 1): [1.0]}, ldam_ce) == ("—", None)


def test_claims_rank_the_noised_loss_and_compare_it_and_vs_with_the_best_la_row():
  cells = {("ce", 1): [30.0, 31.0], ("la", 1): [40.0, 41.0], ("ce_posthoc_la", 1): [42.0, 43.0],
           ("noised_imbalanced", 1): [44.0, 45.0], ("vs", 1): [35.0, 35.0]}
  claim2, claim4, vs = regimes.claims_row(cells, 1, {"ce_posthoc_la": "CE + post-hoc LA"})
  # Standard error sqrt(0.5 / 2 + 0.5 / 2) = 0.71 < 2 / 2: beyond noise.
  assert claim2 == "1 of 5; +2.00 ± 0.71 vs CE + post-hoc LA (holds)"
  assert claim4 == "+2.00 ± 0.71 vs CE + post-hoc LA (holds)"
  assert vs == "-7.50 ± 0.50 vs CE + post-hoc LA (fails)"
  assert regimes.claims_row({("ce", 1): [1.0]}, 1) == ["—", "—", "—"]
  # `also`: further methods against the same best LA row (the tuned tables' noised + LA column).
  cells[("noised_imbalanced_la", 1)] = [42.0, 42.0]
  assert (regimes.claims_row(cells, 1, also=("noised_imbalanced_la",))[3]
          == "-0.50 ± 0.50 vs ce_posthoc_la (fails, within noise)")
  assert regimes.claims_row(cells, 1, also=("missing",))[3] == "—"


def test_claim_2_breaks_a_tie_by_the_order_of_the_rows_whatever_the_hash_seed():
  # The LA loss and balanced softmax are one loss at tau = 1: tied means must name the same row on every run.
  tied = [40.0, 41.0]
  for first, second in (("la", "balanced_softmax"), ("balanced_softmax", "la")):
    cells = {("noised_imbalanced", 1): [30.0, 31.0], (first, 1): tied, (second, 1): list(tied)}
    assert regimes.claims_row(cells, 1)[0].endswith(f"vs {first} (fails)")


def test_build_scores_each_present_grid_and_lists_the_missing_ones(tmp_path):
  rng = np.random.default_rng(0)

  def noisy(mean):
    return list(mean + 0.001 * rng.standard_normal(3))

  # A grid that reproduces every ordering, and one that reverses them all.
  good = {"ce": 0.40, "focal": 0.42, "ldam": 0.45, "noised_imbalanced": 0.47, "noised_balanced": 0.38,
          "ce_drw": 0.46, "ldam_drw": 0.48, "mm_drw": 0.50}
  bad = {m: 0.80 - v for m, v in good.items()}
  for grid, setting, values in (("fashion_mnist_lt", "exp100", good), ("synthetic_lt", "lt100", bad)):
    _write(str(tmp_path / grid / "runs.csv"),
           [r for m, v in values.items() for r in _runs(m, setting, noisy(v), ks="1")])
  text = regimes.build(str(tmp_path))
  assert "| Fashion-MNIST-LT exp 100 (CNN) | 10 epochs (the grid) | 50.0 |" in text
  assert text.count("(yes)") == 6 and text.count("(**no**)") == 6
  # Overall, then per seed table (Pl@ntNet: 4 orderings; MM Table 1: 3, LDAM - CE counted in both).
  assert "| 12 of 12 | 8 of 8 | 6 of 6 |" in text and "| 0 of 12 | 0 of 8 | 0 of 6 |" in text
  assert "best is **Fashion-MNIST-LT exp 100 (CNN), 10 epochs (the grid)**" in text
  assert ("On MM T1's own orderings alone the best is Fashion-MNIST-LT exp 100 (CNN), 10 epochs (the grid) (6 of 6)."
          in text)
  assert "`synthetic_lt_fit`" in text and "`fashion_mnist_lt_converged`" in text
  assert "Fashion-MNIST-LT step 10" not in text.split("Not run yet")[0]  # no runs of that setting: no row
