"""The results index: docs/results/index.md, its summary figure (summary.png) and README.md's results table.

Presentation only: `experiments.regimes` reads the grids' runs.csv, computes each stand-in's numbers (`Summary`) and
calls the functions here, so the index, the figure, the README block and regimes.md can never disagree.

The figure's bar of (stand-in, K) is the regime table's claim 4: the imbalanced noised top-K loss minus the best
logit-adjusted method (LA loss, CE + post-hoc LA, balanced softmax: whichever has the highest mean at that K), in
points of macro top-K test accuracy, mean over seeds; its error bar is twice the standard error of that difference
(`aggregate.seed_difference`), the threshold of the verdicts.
"""
import dataclasses
import io
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

README_START = "<!-- results-index:start -->"
README_END = "<!-- results-index:end -->"
FIGURE = "summary.png"  # in docs/results/
# Paul Tol's "bright" colours (distinct for colour-blind readers), one per K of any grid, in K order.
_COLOURS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377")


@dataclasses.dataclass(frozen=True)
class Gap:
  """Imbalanced noised top-K - best logit-adjusted method at one K of a stand-in, in points of macro top-K."""
  k: int
  delta: float  # difference of the means over seeds
  se: float  # its standard error (aggregate.seed_difference)
  best_la: str  # the LA method it is compared with (label)
  best: str  # the method of highest mean macro top-K at this K (label)


@dataclasses.dataclass(frozen=True)
class Summary:
  """One stand-in (a grid's setting: a problem in one training regime), as the index shows it."""
  grid: str
  setting: Optional[str]  # named only when the grid has several settings
  problem: str
  regime: str
  figure: str  # its label under the bars
  real_images: bool
  train_fit: Optional[float]  # cross-entropy's train-fit top-1 (%), mean over seeds
  runs: int
  seeds: int
  gaps: Tuple[Gap, ...]


CAPTION = (
    "**Imbalanced noised top-K loss minus the best logit-adjusted method**, per stand-in and K. Each bar is the "
    "difference, in points of macro top-K test accuracy on the balanced test set, between the mean over seeds of the "
    "imbalanced noised top-K loss (row `noised_imbalanced`, as the paper runs it, without LA offsets; the model "
    "trained with that K) and the mean of the best logit-adjusted method at that K (LA loss, CE + post-hoc LA or "
    "balanced softmax, whichever has the highest mean, picked on the same test numbers: claim 4 of the tables and of "
    "[regimes.md](regimes.md)). Error bars: ± twice the standard error of that difference over seeds, seeds taken "
    "as independent samples (the grids' verdict threshold): a bar whose error bar does not reach 0 is a difference "
    "beyond noise. Below 0, the noised loss is worse. Under each group: the stand-in and cross-entropy's top-1 on its "
    "own training split (train fit), mean over seeds.")


def _pm(gap: Gap) -> str:
  return f"{gap.delta:+.2f} ± {gap.se:.2f}"


def _slash(items) -> str:
  return " / ".join(items)


def _fit(summary: Summary) -> str:
  return "—" if summary.train_fit is None else f"{summary.train_fit:.1f}"


def _grid_link(summary: Summary, prefix: str) -> str:
  link = f"[{summary.grid}]({prefix}{summary.grid}/table.md)"
  return f"{link} {summary.setting}" if summary.setting else link


def _best_methods(gaps: Sequence[Gap]) -> str:
  """"A (K 1); B (K 3, 5)": each best method once, with the K at which it is best, in K order."""
  ks = {}
  for gap in gaps:
    ks.setdefault(gap.best, []).append(str(gap.k))
  return "; ".join(f"{method} (K {', '.join(k)})" for method, k in ks.items())


def counts(summaries: Sequence[Summary]) -> Tuple[int, int, int, int]:
  """(cells, cells below 0, below 0 beyond twice the standard error, above 0 beyond it) over every (stand-in, K)."""
  gaps = [g for s in summaries for g in s.gaps]
  return (len(gaps), sum(g.delta < 0 for g in gaps), sum(g.delta < -2 * g.se for g in gaps),
          sum(g.delta > 2 * g.se for g in gaps))


def tuned_links(paths: Sequence[str]) -> str:
  """Markdown links to the tuned studies' tables (paths like tuned/<stand_in>/table.md), named by their stand-in."""
  return ", ".join(f"[{path.split('/')[-2]}]({path})" for path in paths)


def index_page(summaries: Sequence[Summary], tuned: Sequence[str] = ()) -> str:
  """docs/results/index.md: the figure, its caption, one row per stand-in and links to the `tuned` studies' pages
  (their paths relative to docs/results/, e.g. tuned/fashion_exp100/table.md)."""
  total, below, beyond, above = counts(summaries)
  gaps = [g for s in summaries for g in s.gaps]
  lines = [
      "# Results", "",
      "Every measured grid, one row per stand-in: a long-tailed problem (real Fashion-MNIST images or a generated "
      "problem with a known Bayes optimum) trained in one regime. Written by `python -m experiments.regimes` from "
      "the committed `runs.csv` of each grid (`python -m experiments.regimes --check` says whether this page is up "
      "to date); do not edit it by hand.", "",
      f"![Imbalanced noised top-K minus the best logit-adjusted method, per stand-in and K]({FIGURE})", "",
      CAPTION, ""]
  if gaps:
    lines += [f"Over the {total} (stand-in, K) cells the noised loss is below the best logit-adjusted method in "
              f"{below}, beyond twice the standard error in {beyond}; above it beyond noise in {above}. The "
              f"difference ranges from {min(g.delta for g in gaps):+.2f} to {max(g.delta for g in gaps):+.2f} "
              "points.", ""]
  lines += [
      "| grid | data | regime | CE train fit top-1 (%) | K | noised - best LA (points) | best method (macro top-K) "
      "| runs |",
      "|---|---|---|---|---|---|---|---|"]
  for s in summaries:
    lines.append(f"| {_grid_link(s, '')} | {s.problem}{', real images' if s.real_images else ''} | {s.regime} | "
                 f"{_fit(s)} | {_slash(str(g.k) for g in s.gaps)} | {_slash(_pm(g) for g in s.gaps)} | "
                 f"{_best_methods(s.gaps)} | {s.runs} ({s.seeds} seeds) |")
  lines += [
      "",
      "- grid: the grid's table (every method, mean ± std over seeds, the claims, plots); a grid of two settings "
      "has a row per setting.",
      "- CE train fit top-1: top-1 accuracy of cross-entropy's last-epoch model on its own training split (the "
      "grids' train fit column), mean over seeds: how well the regime lets a model fit its training data.",
      "- noised - best LA: the figure's bars, at each K of the grid in the order of the K column, ± the standard "
      "error (the figure's error bars are twice it).",
      "- best method: the method of highest mean macro top-K at each K, among all the grid's methods (ties: the "
      "first in the grid's order).",
      "- runs: runs of this setting in the grid's `runs.csv`.", "",
      "More: [regimes.md](regimes.md) (which stand-in reproduces the seed tables' baseline orderings, and claims 2 "
      "and 4 with the LA method named at each K) and [regimes_protocols.md](regimes_protocols.md) (how the fit and "
      "pretrained regimes were chosen).", ""]
  if tuned:
    links = tuned_links(tuned)
    lines += ["## Tuned", "",
              "The rows above train each method with its papers' hyperparameters. The equal-budget studies give "
              "every method of a stand-in the same Optuna budget on the validation split, then test each best "
              "configuration once on 3 seeds ([tuning](../tuning.md)), and re-check claims 2 and 4 on the tuned "
              f"runs: {links}.", ""]
  return "\n".join(lines)


def readme_block(summaries: Sequence[Summary]) -> str:
  """README.md's results block: the index table (links relative to the repository root). The README shows the
  figure itself, above, and links the index below the block."""
  lines = ["| grid | data | regime | CE train fit top-1 (%) | K | noised - best LA (points) | best method |",
           "|---|---|---|---|---|---|---|"]
  for s in summaries:
    lines.append(f"| {_grid_link(s, 'docs/results/')} | {s.problem} | {s.regime} | {_fit(s)} | "
                 f"{_slash(str(g.k) for g in s.gaps)} | {_slash(_pm(g) for g in s.gaps)} | "
                 f"{_best_methods(s.gaps)} |")
  lines += ["",
            "Noised - best LA: the imbalanced noised top-K loss minus the best of the LA loss, CE + post-hoc LA and "
            "balanced softmax at each K, in points of macro top-K test accuracy, mean over seeds ± its standard "
            "error (the figure's error bars are twice it). CE train fit: cross-entropy's top-1 on its own training "
            "split."]
  return "\n".join(lines)


def replace_block(readme: str, block: str) -> Optional[str]:
  """`readme` with the text between its results-index markers replaced by `block`; None when it lacks the markers
  (one of each, the start first), in which case the caller leaves it as it is."""
  if readme.count(README_START) != 1 or readme.count(README_END) != 1:
    return None
  start, end = readme.index(README_START), readme.index(README_END)
  if end < start:
    return None
  return readme[:start + len(README_START)] + "\n" + block + "\n" + readme[end:]


def figure_bars(summaries: Sequence[Summary]) -> List[Tuple[float, int, float, float]]:
  """(x, K, bar height, error-bar half-width) of every bar of the figure: stand-in i's bars around x = i."""
  bars = []
  width = _bar_width(summaries)
  for i, s in enumerate(summaries):
    for j, gap in enumerate(s.gaps):
      bars.append((i + (j - (len(s.gaps) - 1) / 2) * width, gap.k, gap.delta, 2 * gap.se))
  return bars


def _bar_width(summaries):
  return 0.8 / max([len(s.gaps) for s in summaries] + [1])


def summary_png(summaries: Sequence[Summary]) -> bytes:
  """The summary figure as PNG bytes, the same bytes on every call (matplotlib's defaults, no metadata)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ks = sorted({g.k for s in summaries for g in s.gaps})
  colour = {k: _COLOURS[i % len(_COLOURS)] for i, k in enumerate(ks)}
  # A user's matplotlibrc must not change the committed bytes.
  with plt.style.context("default"), matplotlib.rc_context({"font.size": 10}):
    fig, ax = plt.subplots(figsize=(10.0, 5.4), dpi=110)
    real = [i for i, s in enumerate(summaries) if s.real_images]
    lows = [g.delta - 2 * g.se for s in summaries for g in s.gaps] or [-1.0]
    highs = [g.delta + 2 * g.se for s in summaries for g in s.gaps] or [1.0]
    top = max(max(highs), 0.0) + 0.2 * (max(highs + [0.0]) - min(lows + [0.0])) + 0.5
    ax.set_ylim(min(min(lows), 0.0) - 0.5, top)
    for group, members in (("real images (Fashion-MNIST-LT), CNN", real),
                           ("generated stand-ins, MLP", [i for i in range(len(summaries)) if i not in real])):
      if members:
        lo, hi = min(members) - 0.45, max(members) + 0.45
        if group.startswith("real"):
          ax.axvspan(lo, hi, color="0.93", zorder=0, lw=0)
        ax.text((lo + hi) / 2, top - 0.04 * (top - ax.get_ylim()[0]), group, ha="center", va="top", fontsize=10,
                color="0.25")
    width = _bar_width(summaries)
    labelled = set()
    for x, k, height, err in figure_bars(summaries):
      ax.bar(x, height, width, yerr=err, color=colour[k], capsize=2.5, error_kw={"elinewidth": 1.0, "ecolor": "0.1"},
             label=None if k in labelled else f"K = {k}", zorder=2)
      labelled.add(k)
    ax.axhline(0.0, color="black", lw=1.0, zorder=3)
    ax.set_xticks(np.arange(len(summaries)))
    ax.set_xticklabels([s.figure + ("" if s.train_fit is None else f"\nCE fit {_fit(s)} %") for s in summaries],
                       fontsize=9)
    ax.set_xlim(-0.6, len(summaries) - 0.4)
    ax.set_ylabel("noised top-K (imbalanced) - best LA method\n(points of macro top-K test accuracy)")
    ax.grid(axis="y", alpha=0.35, zorder=0)
    ax.set_title("Imbalanced noised top-K minus the best logit-adjusted method (below 0: the noised loss is worse)",
                 fontsize=11, pad=26)
    # Above the axes, where no bar can be hidden by it.
    handles, labels = ax.get_legend_handles_labels()
    order = np.argsort([int(re.sub(r"\D", "", label)) for label in labels])
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=len(ks), fontsize=9, frameon=False, title=None)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
  return buffer.getvalue()
