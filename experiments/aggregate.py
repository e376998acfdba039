"""Turns the `results.json` of a grid's runs into the papers' tables, a CSV, plots and (Fashion-MNIST) claim checks."""
import csv
import dataclasses
import json
import math
import os
import re
from typing import Dict, List, Tuple

import numpy as np

Cell = Tuple[str, str, int]  # (row, setting, K)


def load_results(runs, workdir_root) -> Dict[str, dict]:
  """run name -> its results.json, for the runs that finished."""
  out = {}
  for run in runs:
    path = os.path.join(workdir_root, run.name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        out[run.name] = json.load(f)
  return out


# The tables' metrics: the grid's own ("macro_topk" or "top1_error") and, for runs that report it, macro average-K
# (experiments/set_eval.py; the threshold comes from the validation split). Header label, results.json key, lower is
# better.
METRICS = {"macro_topk": ("macro top-{K} (%)", "macro_top{k}_accuracy", False),
           "top1_error": ("top-1 error (%)", "top1_accuracy", True),
           "macro_avgk": ("macro average-{K} (%)", "macro_avg{k}_accuracy", False)}


def run_value(results: dict, metric: str, k: int) -> float:
  """The table's number for one run, in %."""
  if metric not in METRICS:
    raise ValueError(f"Unknown metric {metric!r}.")
  value = results["test"][METRICS[metric][1].format(k=k)]
  return 100.0 * (1.0 - value) if metric == "top1_error" else 100.0 * value


def collect_cells(grid, runs, results, metric=None) -> Dict[Cell, List[float]]:
  """(row, setting, K) -> the runs' values of `metric` (default: the grid's); runs without it are left out (older
  runs have no average-K)."""
  metric = metric or grid.metric
  cells = {}
  for run in runs:
    if run.name in results:
      for k in run.ks:
        if METRICS[metric][1].format(k=k) in results[run.name]["test"]:
          cells.setdefault((run.row, run.setting, k), []).append(run_value(results[run.name], metric, k))
  return cells


def train_fit_cells(runs, results) -> Dict[Tuple[str, str], Dict[Tuple[int, ...], List[float]]]:
  """(row, setting) -> {the K the run's model fills: per-seed train-fit top-1 (%)}, from the runs whose results.json
  has a `train_fit` (runs made before it existed have none, and their tables keep their old columns)."""
  out = {}
  for run in runs:
    fit = results.get(run.name, {}).get("train_fit")
    if fit is not None:
      out.setdefault((run.row, run.setting), {}).setdefault(tuple(run.ks), []).append(100.0 * fit["top1_accuracy"])
  return out


def _train_fit_text(by_ks):
  """Mean over seeds; a row whose top-K losses train one model per K shows one mean per model, in K order."""
  if not by_ks:
    return "—"
  return " / ".join(f"{np.mean(by_ks[ks]):.2f}" for ks in sorted(by_ks))


TRAIN_FIT_NOTE = ("- Train fit top-1: top-1 accuracy of each run's last-epoch model on its training split (evaluation "
                  "mode, no augmentation; a fixed subset of 10,000 examples when the split is larger), mean over "
                  "seeds; rows that train one model per K show one value per model, in K order.")


def mean_std(values):
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
  return float(values.mean()), std


def _format(values, expected_n):
  mean, std = mean_std(values)
  text = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
  if len(values) != expected_n:
    text += f" (n={len(values)})"
  return text


def _column_best(grid, cells, s, k, metric=None):
  """The row with the best mean in column (setting `s`, K `k`) (lowest error or highest accuracy), or None."""
  means = {row: mean_std(cells[(row, s, k)])[0] for row in grid.rows if (row, s, k) in cells}
  if not means:
    return None
  pick = min if METRICS[metric or grid.metric][2] else max
  return pick(means, key=means.get)


def markdown_table(grid, cells, num_seeds, metric=None, train_fit=None) -> str:
  """Rows = methods; columns = (setting, K); cells = mean ± std over seeds; best mean per column in bold. `metric`
  (default: the grid's) names the header; the papers' figures are printed beside the grid's own metric only. With
  `train_fit` (`train_fit_cells`, non-empty), a train-fit top-1 column closes each setting's columns."""
  metric = metric or grid.metric
  columns = [(s, k) for s in grid.settings for k in grid.ks + ((None,) if train_fit else ())]
  paper = grid.paper if metric == grid.metric else {}
  headers = []
  for s, k in columns:
    label = "train fit top-1 (%)" if k is None else METRICS[metric][0].replace("{K}", str(k))
    headers.append(f"{grid.settings[s]}: {label}" if len(grid.settings) > 1 else label)
  lines = ["| method | " + " | ".join(headers) + " |", "|---|" + "---|" * len(columns)]
  best = {(s, k): _column_best(grid, cells, s, k, metric) for s, k in columns if k is not None}
  for row, label in grid.rows.items():
    parts = []
    for s, k in columns:
      if k is None:
        parts.append(_train_fit_text(train_fit.get((row, s))))
        continue
      values = cells.get((row, s, k))
      text = "—" if not values else _format(values, num_seeds)
      if values and best.get((s, k)) == row:
        text = f"**{text}**"
      if (row, s, k) in paper:
        text += f" [paper {paper[(row, s, k)]:.2f}]"
      parts.append(text)
    lines.append(f"| {label} | " + " | ".join(parts) + " |")
  return "\n".join(lines)


def write_csvs(grid, runs, results, cells, output_dir, average_k_cells=None):
  """table.csv (one line per cell of the grid's metric, then of macro average-K when `average_k_cells`) and runs.csv
  (one line per run; the average-K columns only when some run has them, so older grids keep their columns)."""
  with open(os.path.join(output_dir, "table.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["grid", "row", "method", "setting", "k", "metric", "mean", "std", "num_seeds", "paper"])
    for metric, metric_cells in ((grid.metric, cells), ("macro_avgk", average_k_cells or {})):
      for row, label in grid.rows.items():
        for s in grid.settings:
          for k in grid.ks:
            if (row, s, k) in metric_cells:
              mean, std = mean_std(metric_cells[(row, s, k)])
              w.writerow([grid.name, row, label, s, k, metric, f"{mean:.4f}",
                          "" if math.isnan(std) else f"{std:.4f}", len(metric_cells[(row, s, k)]),
                          grid.paper.get((row, s, k), "") if metric == grid.metric else ""])
  eval_ks = sorted({k for r in results.values() for k in r["config"]["eval_ks"]})
  columns = [f"{p}top{k}_accuracy" for k in eval_ks for p in ("", "macro_")]
  if any(f"avg{k}_accuracy" in r["test"] for r in results.values() for k in eval_ks):
    columns += [f"{p}avg{k}_accuracy" for k in eval_ks for p in ("", "macro_")]
  fit_keys = ["top1_accuracy", "macro_top1_accuracy"] if any("train_fit" in r for r in results.values()) else []
  with open(os.path.join(output_dir, "runs.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["run", "preset", "row", "setting", "seed", "ks"] + columns
               + ["best_epoch", "train_seconds", "backend", "num_devices"] + [f"train_fit_{k}" for k in fit_keys])
    for run in runs:
      r = results.get(run.name)
      if r is None:
        continue
      metrics = [f"{r['test'][c]:.4f}" if c in r["test"] else "" for c in columns]
      fit = r.get("train_fit")
      w.writerow([run.name, run.preset, run.row, run.setting, run.seed, " ".join(map(str, run.ks))] + metrics
                 + [r["best_epoch"], f"{r['train_seconds']:.1f}", r["backend"], r["num_devices"]]
                 + [f"{fit[k]:.4f}" if fit else "" for k in fit_keys])


def per_class_means(grid, runs, results, setting, k):
  """row -> (train counts, mean per-class top-k accuracy over seeds) for one setting."""
  out = {}
  for row in grid.rows:
    accs, counts = [], None
    for run in runs:
      r = results.get(run.name)
      if r is None or run.row != row or run.setting != setting or k not in run.ks:
        continue
      counts, acc = per_class_arrays(r, k)
      accs.append(acc)
    if accs:
      out[row] = (counts, 100.0 * np.nanmean(np.asarray(accs, np.float64), axis=0))
  return out


def per_class_arrays(results: dict, k: int):
  """(training counts, test top-k accuracy, NaN for a class without test examples) per class of one run."""
  table = results["per_class"]
  counts = np.array([c["train_count"] for c in table.values()], np.float64)
  acc = np.array([np.nan if c.get(f"top{k}_accuracy") is None else c[f"top{k}_accuracy"] for c in table.values()],
                 np.float64)
  return counts, acc


def can_plot() -> bool:
  """Whether matplotlib is importable (it is optional: without it a grid's tables are written, its plots not)."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_per_class(grid, runs, results, setting, path):
  """One panel per K: per-class test top-K accuracy (mean over seeds) against the class's training images."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(grid.ks), figsize=(5.2 * len(grid.ks), 4.6), dpi=100, squeeze=False)
  colours = plt.get_cmap("tab20")
  for ax, k in zip(axes[0], grid.ks):
    for i, (row, (counts, acc)) in enumerate(per_class_means(grid, runs, results, setting, k).items()):
      order = np.argsort(counts)
      # The 10 saturated tab20 colours first, then their light shades dashed: neighbours stay distinguishable.
      ax.plot(counts[order], acc[order], marker="o", ms=3, lw=1.2, color=colours((2 * i) % 20 + (i // 10) % 2),
              ls="-" if i < 10 else "--", label=grid.rows[row])
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel(f"per-class test top-{k} accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{grid.settings[setting]}, top-{k}")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(6, max(1, len(labels))), fontsize=8)
  fig.tight_layout(rect=(0, 0.12, 1, 1))
  fig.savefig(path)
  plt.close(fig)


def plot_bars(grid, cells, setting, path):
  """Grouped bars: the table's metric by method, one bar per K, error bars = std over seeds."""
  plt = _pyplot()
  rows = [r for r in grid.rows if any((r, setting, k) in cells for k in grid.ks)]
  fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(rows) + 2), 4.6), dpi=100)
  width = 0.8 / len(grid.ks)
  x = np.arange(len(rows))
  for j, k in enumerate(grid.ks):
    stats = [mean_std(cells[(r, setting, k)]) if (r, setting, k) in cells else (np.nan, np.nan) for r in rows]
    means = [m for m, _ in stats]
    stds = [0.0 if math.isnan(s) else s for _, s in stats]
    label = "top-1 error" if grid.metric == "top1_error" else f"macro top-{k}"
    ax.bar(x + (j - (len(grid.ks) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=label)
  ax.set_xticks(x)
  ax.set_xticklabels([grid.rows[r] for r in rows], rotation=35, ha="right", fontsize=8)
  ax.set_ylabel("%")
  ax.grid(axis="y", alpha=0.3)
  values = [mean_std(v)[0] for (_, s, _), v in cells.items() if s == setting]
  if values and grid.metric == "macro_topk":
    ax.set_ylim(max(0.0, min(values) - 10), 100)
  ax.legend(fontsize=8, ncol=len(grid.ks), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
  ax.set_title(f"{grid.settings[setting]}", pad=22)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# --- Grids with a known Bayes optimum (synthetic_lt) -----------------------------------------------------------------
# Frequency buckets of the long-tail literature (Liu et al., CVPR 2019; the LDAM and Pl@ntNet papers): classes with
# more than 100 training examples, 20 to 100, fewer than 20.
BUCKETS = (("many", 101, math.inf), ("medium", 20, 101), ("few", 0, 20))
BAYES_KINDS = {"likelihood": "Bayes-optimal for macro top-K (exact class likelihood)",
               "posterior": "Bayes posterior (optimal for top-K under the training prior)"}


def bayes_cells(grid, runs, results) -> Dict[Tuple[str, str, int], float]:
  """(kind, setting, K) -> the exact Bayes scores' test macro top-K (%), read from the runs' results.json (the same
  in every run of a setting: they share the generated data)."""
  out = {}
  for run in runs:
    record = results.get(run.name, {}).get("bayes")
    if not record:
      continue
    for kind, metrics in record.items():
      for k in grid.ks:
        value = 100.0 * metrics[f"macro_top{k}_accuracy"]
        key = (kind, run.setting, k)
        if key in out and abs(out[key] - value) > 1e-9:
          raise ValueError(f"Runs of setting {run.setting} report different Bayes figures ({out[key]} vs {value} for "
                           f"{kind} top-{k}): they did not see the same generated data.")
        out[key] = value
  return out


def regret_table(grid, cells, bayes, setting, num_seeds, train_fit=None) -> str:
  """Macro top-K (mean ± std over seeds) and regret (Bayes-optimal - method, ± the same std) of every method, under
  the Bayes rows; best method mean of each column in bold (the lowest regret). With `train_fit` (`train_fit_cells`,
  non-empty), a last train-fit top-1 column."""
  ks = grid.ks
  fit_head, fit_rule = (" train fit top-1 (%) |", "---|") if train_fit else ("", "")
  lines = ["| method | " + " | ".join(f"macro top-{k} (%)" for k in ks) + " | "
           + " | ".join(f"regret top-{k}" for k in ks) + " |" + fit_head, "|---|" + "---|" * (2 * len(ks)) + fit_rule]
  optimum = {k: bayes[("likelihood", setting, k)] for k in ks}
  for kind, label in BAYES_KINDS.items():
    lines.append(f"| *{label}* | " + " | ".join(f"*{bayes[(kind, setting, k)]:.2f}*" for k in ks) + " | "
                 + " | ".join(f"*{optimum[k] - bayes[(kind, setting, k)]:.2f}*" for k in ks) + " |"
                 + (" — |" if train_fit else ""))
  best = {k: _column_best(grid, cells, setting, k) for k in ks}
  for row, label in grid.rows.items():
    values, regrets = [], []
    for k in ks:
      v = cells.get((row, setting, k))
      if not v:
        values.append("—")
        regrets.append("—")
        continue
      mean, std = mean_std(v)
      spread = "" if math.isnan(std) else f" ± {std:.2f}"
      extra = "" if len(v) == num_seeds else f" (n={len(v)})"
      bold = "**" if best.get(k) == row else ""
      values.append(f"{bold}{mean:.2f}{spread}{bold}{extra}")
      regrets.append(f"{bold}{optimum[k] - mean:.2f}{spread}{bold}")
    fit = f" {_train_fit_text(train_fit.get((row, setting)))} |" if train_fit else ""
    lines.append(f"| {label} | " + " | ".join(values) + " | " + " | ".join(regrets) + " |" + fit)
  return "\n".join(lines)


def _bucket_of(counts):
  return np.select([(counts >= lo) & (counts < hi) for _, lo, hi in BUCKETS], [b for b, _, _ in BUCKETS], "")


def bucket_values(grid, runs, results, setting, k) -> Dict[str, Dict[str, List[float]]]:
  """row -> bucket -> per-seed macro top-k (%) over the bucket's classes; row "bayes": the exact likelihood's."""
  out = {}
  for run in runs:
    r = results.get(run.name)
    if r is None or run.setting != setting or k not in run.ks:
      continue
    counts, acc = per_class_arrays(r, k)
    buckets = _bucket_of(counts)
    sources = [(run.row, acc)]
    if r.get("bayes") and "bayes" not in out:
      sources.append(("bayes", np.asarray(r["bayes"]["likelihood"]["per_class"][f"top{k}_accuracy"])))
    for row, values in sources:
      for b, _, _ in BUCKETS:
        if np.any(buckets == b):
          out.setdefault(row, {}).setdefault(b, []).append(100.0 * float(np.nanmean(values[buckets == b])))
  return out


def bucket_table(grid, runs, results, setting) -> str:
  """Macro top-K per frequency bucket (mean over seeds), the Bayes optimum first, for every K of the grid."""
  per_k = {k: bucket_values(grid, runs, results, setting, k) for k in grid.ks}
  any_k = per_k[grid.ks[0]]
  present = [b for b, _, _ in BUCKETS if any(b in v for v in any_k.values())]
  done = [results[run.name] for run in runs if run.name in results and run.setting == setting]
  sizes = {}
  if done:
    buckets = _bucket_of(per_class_arrays(done[0], grid.ks[0])[0])
    sizes = {b: int(np.sum(buckets == b)) for b in present}
  head = " | ".join(f"top-{k} {b} ({sizes.get(b, 0)})" for k in grid.ks for b in present)
  lines = [f"| method | {head} |", "|---|" + "---|" * (len(grid.ks) * len(present))]
  for row, label in [("bayes", "*Bayes-optimal (likelihood)*")] + list(grid.rows.items()):
    parts = []
    for k in grid.ks:
      for b in present:
        v = per_k[k].get(row, {}).get(b)
        parts.append("—" if not v else f"{np.mean(v):.1f}")
    lines.append(f"| {label} | " + " | ".join(parts) + " |")
  return "\n".join(lines)


def plot_buckets(grid, runs, results, setting, path):
  """One panel per K: macro top-K of each frequency bucket by method (bars), the Bayes optimum first."""
  plt = _pyplot()
  fig, axes = plt.subplots(len(grid.ks), 1, figsize=(max(8.0, 0.55 * len(grid.rows) + 3), 3.3 * len(grid.ks)),
                           dpi=100, squeeze=False)
  for ax, k in zip(axes[:, 0], grid.ks):
    values = bucket_values(grid, runs, results, setting, k)
    rows = ["bayes"] + [r for r in grid.rows if r in values]
    x = np.arange(len(rows))
    width = 0.8 / len(BUCKETS)
    for j, (b, lo, hi) in enumerate(BUCKETS):
      means = [np.mean(values[r][b]) if b in values.get(r, {}) else np.nan for r in rows]
      label = {"many": "many (> 100 train)", "medium": "medium (20-100)", "few": "few (< 20)"}[b]
      ax.bar(x + (j - 1) * width, means, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(["Bayes-optimal"] + [grid.rows[r] for r in rows[1:]], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"macro top-{k} (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{grid.settings[setting]}: macro top-{k} by class frequency", fontsize=9)
  axes[0, 0].legend(fontsize=8, ncol=3, loc="upper right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# --- Claims of the papers, checked on the Fashion-MNIST grid ----------------------------------------------------------
def seed_difference(va, vb):
  """(mean(va) - mean(vb), its standard error) of two independent samples over seeds (unpaired)."""
  va, vb = np.asarray(va, dtype=np.float64), np.asarray(vb, dtype=np.float64)
  se = math.sqrt((va.var(ddof=1) / va.size if va.size > 1 else 0.0) + (vb.var(ddof=1) / vb.size if vb.size > 1 else 0.0))
  return float(va.mean() - vb.mean()), se


def _diff(cells, a, b, s, k):
  """`seed_difference` of the cells (a, s, k) and (b, s, k)."""
  return seed_difference(cells[(a, s, k)], cells[(b, s, k)])


def verdict(delta, se):
  """A claim's verdict from a difference and its standard error: beyond twice the error, or within noise."""
  if delta > 2 * se:
    return "holds"
  if delta >= 0:
    return "holds, within noise"
  if delta >= -2 * se:
    return "fails, within noise"
  return "fails"


@dataclasses.dataclass(frozen=True)
class ClaimGroups:
  """What the claims need to know of a grid: method labels, the method groups, the settings and the K."""
  labels: Dict[str, str]
  balanced: Tuple[str, ...]
  imbalanced: Tuple[str, ...]
  logit_adjusted: Tuple[str, ...]
  settings: Tuple[str, ...]
  ks: Tuple[int, ...]


def _best(cells, group, s, k):
  present = [r for r in group if (r, s, k) in cells]
  return max(present, key=lambda r: np.mean(cells[(r, s, k)]))


def fashion_claims(cells, converged: bool = False) -> List[str]:
  """The papers' claims checked on the fashion_mnist_lt grid, or on its converged rows (see `paper_claims`)."""
  from experiments.configs import fashion_mnist_lt as fm  # pylint: disable=g-import-not-at-top
  rows = fm.CONVERGED_METHODS if converged else tuple(fm.METHODS)
  settings = fm.CONVERGED_SETTINGS if converged else tuple(s for s, _, _ in fm.SETTINGS)
  return paper_claims(cells, ClaimGroups(
      labels={m: fm.METHODS[m][0] for m in rows}, balanced=tuple(m for m in fm.BALANCED if m in rows),
      imbalanced=tuple(m for m in fm.IMBALANCED if m in rows),
      logit_adjusted=tuple(m for m in fm.LOGIT_ADJUSTED if m in rows), settings=settings, ks=fm.KS))


def paper_claims(cells, groups: ClaimGroups) -> List[str]:
  """Markdown lines: each of the papers' claims, per (setting, K), with the numbers behind the verdict.

  "within noise" = the difference of means is smaller than twice its standard error over seeds.
  """
  labels = groups.labels
  lines = []

  def have(s, k, *rows):
    return all((r, s, k) in cells for r in rows)

  lines.append("**Claim 1: imbalanced losses beat balanced ones on macro metrics.** Best loss of each group (balanced: "
               f"{', '.join(labels[m] for m in groups.balanced)}; imbalance-aware: "
               f"{', '.join(labels[m] for m in groups.imbalanced)}), and the paired comparisons.")
  lines.append("")
  lines.append("| setting | K | best balanced | best imbalance-aware | difference | verdict | noised imb. - noised bal. "
               "| LDAM - CE | CE-DRW - CE |")
  lines.append("|---|---|---|---|---|---|---|---|---|")
  for s in groups.settings:
    for k in groups.ks:
      if not all(any((r, s, k) in cells for r in g) for g in (groups.balanced, groups.imbalanced)):
        continue
      b, i = _best(cells, groups.balanced, s, k), _best(cells, groups.imbalanced, s, k)
      d, se = _diff(cells, i, b, s, k)
      pairs = []
      for a, c in (("noised_imbalanced", "noised_balanced"), ("ldam", "ce"), ("ce_drw", "ce")):
        if have(s, k, a, c):
          pd, pse = _diff(cells, a, c, s, k)
          pairs.append(f"{pd:+.2f} ± {pse:.2f} ({verdict(pd, pse)})")
        else:
          pairs.append("—")
      lines.append(f"| {s} | {k} | {labels[b]} {np.mean(cells[(b, s, k)]):.2f} | {labels[i]} "
                   f"{np.mean(cells[(i, s, k)]):.2f} | {d:+.2f} ± {se:.2f} | {verdict(d, se)} | "
                   + " | ".join(pairs) + " |")
  lines.append("")
  lines.append("**Claim 2: the imbalanced noised top-K loss is best on macro top-K.** Its rank among all "
               f"{len(labels)} methods and its difference to the best other method.")
  lines.append("")
  lines.append("| setting | K | noised imbalanced | rank | best other method | difference | verdict |")
  lines.append("|---|---|---|---|---|---|---|")
  for s in groups.settings:
    for k in groups.ks:
      if ("noised_imbalanced", s, k) not in cells:
        continue
      present = sorted((r for r in labels if (r, s, k) in cells), key=lambda r: -np.mean(cells[(r, s, k)]))
      other = next(r for r in present if r != "noised_imbalanced") if len(present) > 1 else None
      if other is None:
        continue
      d, se = _diff(cells, "noised_imbalanced", other, s, k)
      lines.append(f"| {s} | {k} | {np.mean(cells[('noised_imbalanced', s, k)]):.2f} | "
                   f"{present.index('noised_imbalanced') + 1} of {len(present)} | {labels[other]} "
                   f"{np.mean(cells[(other, s, k)]):.2f} | {d:+.2f} ± {se:.2f} | {verdict(d, se)} |")
  lines.append("")
  lines.append("**Claim 3: MM-DRW >= LDAM-DRW** (macro top-K accuracy).")
  lines.append("")
  lines.append("| setting | K | MM-DRW | LDAM-DRW | difference | verdict |")
  lines.append("|---|---|---|---|---|---|")
  for s in groups.settings:
    for k in groups.ks:
      if have(s, k, "mm_drw", "ldam_drw"):
        d, se = _diff(cells, "mm_drw", "ldam_drw", s, k)
        lines.append(f"| {s} | {k} | {np.mean(cells[('mm_drw', s, k)]):.2f} | "
                     f"{np.mean(cells[('ldam_drw', s, k)]):.2f} | {d:+.2f} ± {se:.2f} | {verdict(d, se)} |")
  lines.append("")
  lines.append("**Claim 4 (a later baseline): the imbalanced noised top-K loss beats logit adjustment** (Menon et al.; "
               f"best of {', '.join(labels[m] for m in groups.logit_adjusted)}), and what LA offsets add to the "
               "noised loss.")
  lines.append("")
  lines.append("| setting | K | noised imbalanced | best LA | difference | verdict | noised + LA offsets - noised |")
  lines.append("|---|---|---|---|---|---|---|")
  for s in groups.settings:
    for k in groups.ks:
      present = [r for r in groups.logit_adjusted if (r, s, k) in cells]
      if ("noised_imbalanced", s, k) not in cells or not present:
        continue
      la = max(present, key=lambda r: np.mean(cells[(r, s, k)]))
      d, se = _diff(cells, "noised_imbalanced", la, s, k)
      extra = "—"
      if have(s, k, "noised_imbalanced_la", "noised_imbalanced"):
        pd, pse = _diff(cells, "noised_imbalanced_la", "noised_imbalanced", s, k)
        extra = f"{pd:+.2f} ± {pse:.2f} ({verdict(pd, pse)})"
      lines.append(f"| {s} | {k} | {np.mean(cells[('noised_imbalanced', s, k)]):.2f} | {labels[la]} "
                   f"{np.mean(cells[(la, s, k)]):.2f} | {d:+.2f} ± {se:.2f} | {verdict(d, se)} | {extra} |")
  lines.append("")
  lines.append("Verdicts: \"holds\"/\"fails\" when the difference of the means exceeds twice its standard error over "
               "seeds, \"within noise\" otherwise.")
  return lines


_VERDICTS = re.compile(r"holds, within noise|fails, within noise|holds|fails")


def _claim_rows(lines) -> Dict[Tuple[str, str, str], List[str]]:
  """{(claim, setting, K): the verdicts of that row, in order} of `paper_claims`' lines."""
  rows, claim = {}, None
  for line in lines:
    if line.startswith("**Claim"):
      claim = line.split(":")[0].strip("*")
    elif claim and line.startswith("| ") and not line.startswith("| setting"):
      cells = [c.strip() for c in line.strip("|").split("|")]
      rows[(claim, cells[0], cells[1])] = _VERDICTS.findall(line)
  return rows


def verdict_changes(top_k_claims: List[str], average_k_claims: List[str]) -> List[str]:
  """Markdown list items: the claim rows (claim, setting, K) whose verdicts differ between the claims checked on
  macro top-K and the same claims checked on macro average-K (`paper_claims` of either cells)."""
  before, after = _claim_rows(top_k_claims), _claim_rows(average_k_claims)
  return [f"- {claim}, {s}, K = {k}: {'; '.join(before[key])} on top-K, {'; '.join(after[key])} on average-K"
          for key in before if key in after and before[key] != after[key] for claim, s, k in [key]]
