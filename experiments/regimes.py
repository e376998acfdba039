r"""The regime table (docs/results/regimes.md): which stand-in, in which training regime, reproduces the seed tables.

    python -m experiments.regimes        # reads docs/results/<grid>/runs.csv, writes docs/results/regimes.md

For every committed grid of a stand-in (long-tailed Fashion-MNIST, the generated problems) and regime (underfit,
converged or fit, pretrained), it checks, on the grid's own per-seed numbers (runs.csv):

- the seeds' **baseline orderings**, differences of macro top-1 in points (`ORDERINGS`): from the noised top-K
  paper's Pl@ntNet-300K table focal - CE, LDAM - CE, imbalanced noised - LDAM, balanced noised - CE; from the MM
  paper's Table 1 (CIFAR-10-LT exp 100, top-1 accuracy = 100 - error) LDAM - CE, LDAM-DRW - CE-DRW (M-DRW),
  MM-DRW - LDAM-DRW. An ordering is reproduced when the grid's difference has the seed's sign, "beyond noise" when
  it also exceeds twice its standard error over seeds;
- the paper's **claim 2** (the imbalanced noised top-K loss is the best method) and **claim 4** (it beats logit
  adjustment, the best of the LA rows), and **VS - LA**, at every K of the grid;
- how well each regime fits its training data: cross-entropy's train-fit top-1.

A stand-in whose grids reproduce the seeds' baseline orderings is the one whose verdict on the paper's method counts
most; one that reverses them is weak evidence either way.
"""
import csv
import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from absl import app
from absl import flags
import numpy as np

from experiments import aggregate
from experiments import grids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", RESULTS, "Where the grids' folders (with runs.csv) are.")
flags.DEFINE_string("output", None, "The Markdown file to write. Default: <results_dir>/regimes.md.")


@dataclasses.dataclass(frozen=True)
class Ordering:
  """`a - b` in points of top-1 accuracy in a seed table (`seed`: one figure per table that has both rows)."""
  a: str
  b: str
  label: str
  seed: Tuple[Tuple[str, float], ...]  # (table, figure)


# Pl@ntNet-300K: macro top-1 of the noised top-K paper's table (CE 36.3, focal 37.6, LDAM 40.6, balanced noised 35.8,
# imbalanced noised 42.4). MM Table 1, CIFAR-10-LT exp 100, top-1 error: ERM 29.64, LDAM 26.65, M-DRW 24.94,
# LDAM-DRW 22.97, MM-DRW 21.98.
ORDERINGS = (
    Ordering("focal", "ce", "focal - CE", (("Pl@ntNet", 1.3),)),
    Ordering("ldam", "ce", "LDAM - CE", (("Pl@ntNet", 4.3), ("MM T1", 2.99))),
    Ordering("noised_imbalanced", "ldam", "imb. noised - LDAM", (("Pl@ntNet", 1.8),)),
    Ordering("noised_balanced", "ce", "bal. noised - CE", (("Pl@ntNet", -0.5),)),
    Ordering("ldam_drw", "ce_drw", "LDAM-DRW - CE-DRW", (("MM T1", 1.97),)),
    Ordering("mm_drw", "ldam_drw", "MM-DRW - LDAM-DRW", (("MM T1", 0.99),)),
)
SEED_TABLES = ("Pl@ntNet", "MM T1")
LOGIT_ADJUSTED = ("la", "ce_posthoc_la", "balanced_softmax")


@dataclasses.dataclass(frozen=True)
class StandIn:
  """One (grid, setting): a stand-in problem in one regime."""
  grid: str
  setting: str
  problem: str
  regime: str


STAND_INS = (
    StandIn("fashion_mnist_lt", "exp100", "Fashion-MNIST-LT exp 100 (CNN)", "10 epochs (the grid)"),
    StandIn("fashion_mnist_lt", "step10", "Fashion-MNIST-LT step 10 (CNN)", "10 epochs (the grid)"),
    StandIn("fashion_mnist_lt_converged", "exp100", "Fashion-MNIST-LT exp 100 (CNN)", "converged (100 epochs)"),
    StandIn("synthetic_lt", "lt100", "generated, 100 classes (MLP)", "underfit"),
    StandIn("synthetic_lt_fit", "lt100", "generated, 100 classes (MLP)", "fit"),
    StandIn("synthetic_lt_pretrained", "lt100", "generated, 100 classes (MLP)", "pretrained"),
    StandIn("synthetic_plantnet1081_pretrained", "plantnet1081", "generated, 1,081 classes, Pl@ntNet tail (MLP)",
            "pretrained"),
    StandIn("synthetic_plantnet1081_fit", "plantnet1081", "generated, 1,081 classes, Pl@ntNet tail (MLP)", "fit"),
)

Cells = Dict[Tuple[str, int], List[float]]  # (method, K) -> per-seed values (%)


def read_cells(path: str, setting: str, metric: str = "macro_top") -> Tuple[Cells, Cells]:
  """Per-seed macro top-K (or, with metric "macro_avg", average-K) and train fit of one setting of a runs.csv.

  Returns `(cells, train_fit)`: (method, K) -> values in %, the K of a top-K loss being the one it trained with.
  """
  cells, fit = {}, {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      if row["setting"] != setting:
        continue
      for k in (int(k) for k in row["ks"].split()):
        value = row.get(f"{metric}{k}_accuracy", "")
        if value:
          cells.setdefault((row["row"], k), []).append(100.0 * float(value))
        if row.get("train_fit_top1_accuracy"):
          fit.setdefault((row["row"], k), []).append(100.0 * float(row["train_fit_top1_accuracy"]))
  return cells, fit


def _diff(cells: Cells, a: str, b: str, k: int) -> Optional[Tuple[float, float]]:
  if (a, k) not in cells or (b, k) not in cells:
    return None
  return aggregate.seed_difference(cells[(a, k)], cells[(b, k)])


def ordering_cell(cells: Cells, ordering: Ordering, k: int = 1) -> Tuple[str, Optional[int]]:
  """The table cell of one ordering and its score: 2 reproduced beyond noise, 1 same sign within noise, 0 reversed
  (None when the grid lacks a row)."""
  d = _diff(cells, ordering.a, ordering.b, k)
  if d is None:
    return "—", None
  delta, se = d
  same = np.sign(delta) == np.sign(ordering.seed[0][1])
  beyond = abs(delta) > 2 * se
  mark = ("yes" if beyond else "yes, within noise") if same else ("no, within noise" if not beyond else "**no**")
  return f"{delta:+.2f} ± {se:.2f} ({mark})", (2 if beyond else 1) if same else 0


def _mean(values):
  return float(np.mean(values))


def _labels(grid_name: str) -> Dict[str, str]:
  grid = grids.GRIDS.get(grid_name)
  return dict(grid.rows) if grid else {}


def claims_row(cells: Cells, k: int, labels: Optional[Dict[str, str]] = None) -> List[str]:
  """Cells of claim 2 (rank of the imbalanced noised loss, its difference to the best other method), claim 4
  (imbalanced noised - best LA row) and VS - best LA row, at K."""
  labels = labels or {}
  name = lambda m: labels.get(m, m)  # pylint: disable=unnecessary-lambda-assignment
  out = []
  # Ties (the LA loss and balanced softmax are the same loss at tau = 1) go to the row that comes first in `cells`:
  # a stable sort of an ordered list, not of a set, whose order changes with PYTHONHASHSEED.
  methods = sorted(dict.fromkeys(m for m, kk in cells if kk == k), key=lambda m: -_mean(cells[(m, k)]))
  if ("noised_imbalanced", k) in cells and len(methods) > 1:
    other = next(m for m in methods if m != "noised_imbalanced")
    delta, se = _diff(cells, "noised_imbalanced", other, k)
    out.append(f"{methods.index('noised_imbalanced') + 1} of {len(methods)}; {delta:+.2f} ± {se:.2f} vs {name(other)} "
               f"({aggregate.verdict(delta, se)})")
  else:
    out.append("—")
  la = [m for m in LOGIT_ADJUSTED if (m, k) in cells]
  best_la = max(la, key=lambda m: _mean(cells[(m, k)])) if la else None
  for method in ("noised_imbalanced", "vs"):
    d = _diff(cells, method, best_la, k) if best_la else None
    out.append("—" if d is None else
               f"{d[0]:+.2f} ± {d[1]:.2f} vs {name(best_la)} ({aggregate.verdict(*d)})")
  return out


def build(results_dir: str) -> str:
  lines = ["# Regimes: which stand-in reproduces the seed tables, and what it says of the paper's method", "",
           "Written by `python -m experiments.regimes` from the committed grids' `runs.csv` (docs/results/<grid>/); "
           "every figure is a mean over the grid's seeds, ± its standard error (not the std of the grid tables), "
           "in points of macro top-K accuracy on a balanced test set.", ""]
  data = {s: read_cells(os.path.join(results_dir, s.grid, "runs.csv"), s.setting) for s in STAND_INS
          if os.path.exists(os.path.join(results_dir, s.grid, "runs.csv"))}
  present = [s for s in STAND_INS if data.get(s, ({},))[0]]  # runs.csv has runs of this setting
  missing = [s for s in STAND_INS if s not in present]

  lines += ["## The seeds' baseline orderings (macro top-1)", "",
            "Seed figures: " + "; ".join(f"{o.label} " + ", ".join(f"{v:+.2f} ({t})" for t, v in o.seed)
                                         for o in ORDERINGS) + ". "
            "\"yes\": the grid's difference has the seed's sign and exceeds twice its standard error; \"within "
            "noise\": it does not exceed it. Score: 2 per ordering reproduced beyond noise, 1 with the seed's sign "
            "within noise, 0 with the other sign; then the same score on each seed table's own orderings (" + "; ".join(
                f"{t}: " + ", ".join(o.label for o in ORDERINGS if t in dict(o.seed)) for t in SEED_TABLES) + "), "
            "whose regimes differ: Pl@ntNet-300K's ResNet-50 is pretrained and fine-tuned, MM Table 1's ResNet-32 "
            "trains 200 epochs from scratch on CIFAR-LT (a model that fits its training data).",
            "",
            "| stand-in | regime | CE train fit top-1 (%) | " + " | ".join(o.label for o in ORDERINGS)
            + " | score | " + " | ".join(SEED_TABLES) + " |",
            "|---|---|---|" + "---|" * (len(ORDERINGS) + 1 + len(SEED_TABLES))]
  scores, table_scores = {}, {}
  for s in present:
    cells, fit = data[s]
    row, total, possible = [], 0, 0
    per_table = {t: [0, 0] for t in SEED_TABLES}
    for o in ORDERINGS:
      text, score = ordering_cell(cells, o)
      row.append(text)
      if score is not None:
        total, possible = total + score, possible + 2
        for t, _ in o.seed:
          per_table[t][0] += score
          per_table[t][1] += 2
    scores[s] = (total, possible)
    table_scores[s] = {t: tuple(v) for t, v in per_table.items()}
    fit_text = f"{_mean(fit[('ce', 1)]):.1f}" if ("ce", 1) in fit else "—"
    lines.append(f"| {s.problem} | {s.regime} | {fit_text} | " + " | ".join(row) + f" | {total} of {possible} | "
                 + " | ".join(f"{a} of {b}" for a, b in per_table.values()) + " |")
  lines += [""]

  lines += ["## The paper's claims 2 and 4, and VS against logit adjustment", "",
            "Claim 2: rank of the imbalanced noised top-K loss among the grid's methods and its difference to the "
            "best other one. Claim 4: imbalanced noised top-K minus the best logit-adjusted row (LA loss, CE + "
            "post-hoc LA, balanced softmax). VS - LA: the VS loss minus the same row. Verdicts as in the grid "
            "tables (\"holds\"/\"fails\" beyond twice the standard error).", "",
            "| stand-in | regime | K | claim 2: rank; noised - best other | claim 4: noised - best LA | VS - best LA |",
            "|---|---|---|---|---|---|"]
  for s in present:
    cells, _ = data[s]
    for k in sorted({kk for _, kk in cells}):
      lines.append(f"| {s.problem} | {s.regime} | {k} | " + " | ".join(claims_row(cells, k, _labels(s.grid))) + " |")
  lines += [""]

  if present:
    best = max(present, key=lambda s: scores[s][0] / max(scores[s][1], 1))
    ranked = sorted(present, key=lambda s: -scores[s][0] / max(scores[s][1], 1))
    lines += ["## Which stand-in counts most", "",
              "Baseline-ordering scores, best first: " + "; ".join(
                  f"{s.problem}, {s.regime}: {scores[s][0]} of {scores[s][1]}" for s in ranked) + ".",
              f"The stand-in that reproduces the seeds' baseline orderings best is **{best.problem}, {best.regime}**: "
              "its verdicts on claims 2 and 4 (above) are the ones that count most."]
    for t in SEED_TABLES:
      rate = {s: table_scores[s][t][0] / table_scores[s][t][1] for s in present if table_scores[s][t][1]}
      if rate:
        top = max(rate.values())
        lines.append(f"On {t}'s own orderings alone the best is " + " and ".join(
            f"{s.problem}, {s.regime} ({table_scores[s][t][0]} of {table_scores[s][t][1]})"
            for s in present if rate.get(s) == top) + ".")
    lines += [""]
  if missing:
    lines += ["Not run yet (no `runs.csv`): " + "; ".join(f"`{s.grid}` ({s.problem}, {s.regime})" for s in missing)
              + ".", ""]
  return "\n".join(lines)


def main(argv):
  del argv
  output = FLAGS.output or os.path.join(FLAGS.results_dir, "regimes.md")
  text = build(FLAGS.results_dir)
  with open(output, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
