r"""The regime table (docs/results/regimes.md): which stand-in, in which training regime, reproduces the seed tables.

    python -m experiments.regimes          # reads docs/results/<grid>/runs.csv; writes docs/results/regimes.md,
                                           # summary.png, index.md and README.md's results block
    python -m experiments.regimes --check  # the same, compared with the committed files; exit 1 if one is stale

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

The same numbers feed the results index (`experiments/results_index.py`): docs/results/index.md, one row per
stand-in, with the summary figure docs/results/summary.png (imbalanced noised top-K - best logit-adjusted method, per
stand-in and K), and a compact copy of its table between README.md's `<!-- results-index:start -->` and
`<!-- results-index:end -->` markers.
"""
import csv
import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np

from experiments import aggregate
from experiments import grids
from experiments import results_index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", RESULTS, "Where the grids' folders (with runs.csv) are.")
flags.DEFINE_string("output", None, "The Markdown file to write. Default: <results_dir>/regimes.md.")
flags.DEFINE_string("readme", os.path.join(ROOT, "README.md"),
                    "The README whose results block (between its results-index markers) is rewritten; left unchanged "
                    "when it has no markers.")
flags.DEFINE_bool("check", False, "Write nothing: compare regimes.md, index.md, summary.png and the README block with "
                  "what the committed runs.csv give, list the stale ones and exit 1 if any.")


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
  """One (grid, setting): a stand-in problem in one regime; `figure` names it under its bars in summary.png."""
  grid: str
  setting: str
  problem: str
  regime: str
  figure: str
  real_images: bool = False


STAND_INS = (
    StandIn("fashion_mnist_lt", "exp100", "Fashion-MNIST-LT exp 100 (CNN)", "10 epochs (the grid)",
            "Fashion-MNIST\nexp 100\n10 epochs", real_images=True),
    StandIn("fashion_mnist_lt", "step10", "Fashion-MNIST-LT step 10 (CNN)", "10 epochs (the grid)",
            "Fashion-MNIST\nstep 10\n10 epochs", real_images=True),
    StandIn("fashion_mnist_lt_converged", "exp100", "Fashion-MNIST-LT exp 100 (CNN)", "converged (100 epochs)",
            "Fashion-MNIST\nexp 100\nconverged", real_images=True),
    StandIn("synthetic_lt", "lt100", "generated, 100 classes (MLP)", "underfit", "100 classes\nunderfit"),
    StandIn("synthetic_lt_fit", "lt100", "generated, 100 classes (MLP)", "fit", "100 classes\nfit"),
    StandIn("synthetic_lt_pretrained", "lt100", "generated, 100 classes (MLP)", "pretrained",
            "100 classes\npretrained"),
    StandIn("synthetic_plantnet1081_pretrained", "plantnet1081", "generated, 1,081 classes, Pl@ntNet tail (MLP)",
            "pretrained", "1,081 classes\npretrained"),
    StandIn("synthetic_plantnet1081_fit", "plantnet1081", "generated, 1,081 classes, Pl@ntNet tail (MLP)", "fit",
            "1,081 classes\nfit"),
)
# The imbalanced noised top-K loss as the paper runs it (without LA offsets: that is the row noised_imbalanced_la).
NOISED = "noised_imbalanced"

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


def ranked(cells: Cells, k: int) -> List[str]:
  """The methods with a cell at K, best mean first."""
  # Ties (the LA loss and balanced softmax are the same loss at tau = 1) go to the row that comes first in `cells`:
  # a stable sort of an ordered list, not of a set, whose order changes with PYTHONHASHSEED.
  return sorted(dict.fromkeys(m for m, kk in cells if kk == k), key=lambda m: -_mean(cells[(m, k)]))


def best_logit_adjusted(cells: Cells, k: int) -> Optional[str]:
  """The logit-adjusted row (`LOGIT_ADJUSTED`) of highest mean at K, the first of them on a tie; None without one."""
  la = [m for m in LOGIT_ADJUSTED if (m, k) in cells]
  return max(la, key=lambda m: _mean(cells[(m, k)])) if la else None


def noised_minus_best_la(cells: Cells, k: int) -> Optional[Tuple[float, float, str]]:
  """Claim 4 at K: (imbalanced noised - best LA row, its standard error over seeds, that row), in points; None when
  the grid lacks either."""
  best_la = best_logit_adjusted(cells, k)
  d = _diff(cells, NOISED, best_la, k) if best_la else None
  return None if d is None else (d[0], d[1], best_la)


def claims_row(cells: Cells, k: int, labels: Optional[Dict[str, str]] = None,
               also: Sequence[str] = ()) -> List[str]:
  """Cells of claim 2 (rank of the imbalanced noised loss, its difference to the best other method), claim 4
  (imbalanced noised - best LA row) and VS - best LA row, at K; then each method of `also` - best LA row."""
  labels = labels or {}
  name = lambda m: labels.get(m, m)  # pylint: disable=unnecessary-lambda-assignment
  out = []
  methods = ranked(cells, k)
  if (NOISED, k) in cells and len(methods) > 1:
    other = next(m for m in methods if m != NOISED)
    delta, se = _diff(cells, NOISED, other, k)
    out.append(f"{methods.index(NOISED) + 1} of {len(methods)}; {delta:+.2f} ± {se:.2f} vs {name(other)} "
               f"({aggregate.verdict(delta, se)})")
  else:
    out.append("—")
  best_la = best_logit_adjusted(cells, k)
  for method in (NOISED, "vs", *also):
    d = _diff(cells, method, best_la, k) if best_la else None
    out.append("—" if d is None else
               f"{d[0]:+.2f} ± {d[1]:.2f} vs {name(best_la)} ({aggregate.verdict(*d)})")
  return out


def read_stand_ins(results_dir: str) -> Dict[StandIn, Tuple[Cells, Cells]]:
  """`read_cells` of every stand-in whose grid's runs.csv has runs of its setting, in `STAND_INS` order."""
  data = {s: read_cells(os.path.join(results_dir, s.grid, "runs.csv"), s.setting) for s in STAND_INS
          if os.path.exists(os.path.join(results_dir, s.grid, "runs.csv"))}
  return {s: data[s] for s in STAND_INS if data.get(s, ({},))[0]}


def _ce_fit(fit: Cells) -> Optional[float]:
  """Cross-entropy's train-fit top-1 (%), mean over seeds (None when its runs predate the train fit)."""
  return _mean(fit[("ce", 1)]) if ("ce", 1) in fit else None


def _count_runs(path: str, setting: str) -> Tuple[int, int]:
  """(runs, distinct seeds) of one setting of a runs.csv."""
  with open(path, newline="") as f:
    rows = [row for row in csv.DictReader(f) if row["setting"] == setting]
  return len(rows), len({row["seed"] for row in rows})


def summaries(results_dir: str) -> List[results_index.Summary]:
  """The results index's row of every measured stand-in: claim 4 (`noised_minus_best_la`) and the best method at
  each K of its grid, CE's train fit, the runs."""
  out = []
  for s, (cells, fit) in read_stand_ins(results_dir).items():
    labels = _labels(s.grid)
    name = lambda m: labels.get(m, m)  # pylint: disable=unnecessary-lambda-assignment,cell-var-from-loop
    gaps = []
    for k in sorted({kk for _, kk in cells}):
      d = noised_minus_best_la(cells, k)
      if d is not None:
        gaps.append(results_index.Gap(k=k, delta=d[0], se=d[1], best_la=name(d[2]), best=name(ranked(cells, k)[0])))
    grid = grids.GRIDS.get(s.grid)
    runs, seeds = _count_runs(os.path.join(results_dir, s.grid, "runs.csv"), s.setting)
    out.append(results_index.Summary(
        grid=s.grid, setting=s.setting if grid is not None and len(grid.settings) > 1 else None, problem=s.problem,
        regime=s.regime, figure=s.figure, real_images=s.real_images, train_fit=_ce_fit(fit), runs=runs, seeds=seeds,
        gaps=tuple(gaps)))
  return out


def build(results_dir: str) -> str:
  lines = ["# Regimes: which stand-in reproduces the seed tables, and what it says of the paper's method", "",
           "Written by `python -m experiments.regimes` from the committed grids' `runs.csv` (docs/results/<grid>/); "
           "every figure is a mean over the grid's seeds, ± its standard error (not the std of the grid tables), "
           "in points of macro top-K accuracy on a balanced test set.", ""]
  data = read_stand_ins(results_dir)
  present = list(data)
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
    fit_text = "—" if _ce_fit(fit) is None else f"{_ce_fit(fit):.1f}"
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
    by_score = sorted(present, key=lambda s: -scores[s][0] / max(scores[s][1], 1))
    lines += ["## Which stand-in counts most", "",
              "Baseline-ordering scores, best first: " + "; ".join(
                  f"{s.problem}, {s.regime}: {scores[s][0]} of {scores[s][1]}" for s in by_score) + ".",
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
  tuned = tuned_pages(results_dir)
  if tuned:
    lines += ["## Tuned", "",
              "Every figure above compares the methods at their papers' hyperparameters. Claims 2 and 4, VS against "
              "the best LA row and the baseline orderings re-checked after every method had the same Optuna budget "
              "on validation: " + results_index.tuned_links(tuned) + " (section \"Default "
              "against tuned\").", ""]
  return "\n".join(lines)


def tuned_pages(results_dir: str) -> List[str]:
  """The equal-budget studies' tables (experiments.tuned), relative to `results_dir`, in name order."""
  tuned = os.path.join(results_dir, "tuned")
  names = sorted(os.listdir(tuned)) if os.path.isdir(tuned) else []
  return [f"tuned/{n}/table.md" for n in names if os.path.exists(os.path.join(tuned, n, "table.md"))]


def render(results_dir: str, readme: Optional[str] = None, figure: bool = True) -> Dict[str, bytes]:
  """path -> the bytes the committed runs.csv give: regimes.md, index.md, summary.png (with `figure`) and, when
  `readme` names a file with the results-index markers, that file with its block rewritten."""
  rows = summaries(results_dir)
  out = {os.path.join(results_dir, "regimes.md"): build(results_dir).encode(),
         os.path.join(results_dir, "index.md"): results_index.index_page(rows, tuned_pages(results_dir)).encode()}
  if figure:
    out[os.path.join(results_dir, results_index.FIGURE)] = results_index.summary_png(rows)
  if readme and os.path.exists(readme):
    with open(readme, encoding="utf-8") as f:
      text = results_index.replace_block(f.read(), results_index.readme_block(rows))
    if text is not None:
      out[readme] = text.encode()
  return out


def stale(outputs: Dict[str, bytes]) -> List[str]:
  """The paths of `outputs` whose file is missing or holds other bytes."""
  out = []
  for path, content in outputs.items():
    if not os.path.exists(path):
      out.append(path)
      continue
    with open(path, "rb") as f:
      if f.read() != content:
        out.append(path)
  return out


def main(argv):
  del argv
  outputs = render(FLAGS.results_dir, FLAGS.readme, figure=aggregate.can_plot())
  regimes_md = os.path.join(FLAGS.results_dir, "regimes.md")
  if FLAGS.output:
    outputs[FLAGS.output] = outputs.pop(regimes_md)
  notes = []
  if not aggregate.can_plot():
    notes.append(f"matplotlib is not installed: {results_index.FIGURE} left as it is.")
  if FLAGS.readme and FLAGS.readme not in outputs:
    notes.append(f"{FLAGS.readme} is missing or has no {results_index.README_START} ... {results_index.README_END} "
                 "markers: left as it is.")
  if FLAGS.check:
    old = stale(outputs)
    for line in notes + [f"stale: {p}" for p in old]:
      print(line)
    if old:
      print("Regenerate with `python -m experiments.regimes`.")
      sys.exit(1)
    print(f"Up to date: {', '.join(sorted(outputs))}.")
    return
  changed = stale(outputs)
  for path in changed:  # unchanged files are not rewritten (README.md may be open in an editor)
    with open(path, "wb") as f:
      f.write(outputs[path])
  print(outputs[FLAGS.output or regimes_md].decode())
  for line in notes + [f"{'wrote' if p in changed else 'unchanged'}: {p}" for p in sorted(outputs)]:
    print(line)


if __name__ == "__main__":
  app.run(main)
