#!/usr/bin/env bash
# Is the imbalanced noised loss's result on synthetic_lt a matter of epsilon? The grid's preset (the paper's
# Pl@ntNet value, epsilon 0.01) against epsilon 0.1 and 1, trained for K = 1 and K = 5, seeds 0-2; the test macro
# top-K at the K it was trained for and the regret (Bayes-optimal - model). Two runs at a time, each pinned to one
# core. Prints a table (docs/synthetic_lt.md quotes it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pinned_runs.sh
root=$(pinned_root "${1:-workdirs/synthetic_epsilon}")
for k in 1 5; do
  for eps in 0.1 1.0; do
    for seed in 0 1 2; do
      pinned_run "$root/k${k}_eps${eps}_seed${seed}" --config="synth_lt100_noised_imbalanced_k${k}" --epsilon="$eps" \
        --seed="$seed"
    done
  done
done
wait
python - "$root" <<'PY'
import collections, glob, json, os, sys
import numpy as np
cells = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*", "results.json"))):
  r = json.load(open(path))
  c = r["config"]
  k = c["k"]
  cells[(k, c["epsilon"])].append((100 * r["test"][f"macro_top{k}_accuracy"],
                                   100 * r["bayes"]["likelihood"][f"macro_top{k}_accuracy"]))
print("| K | epsilon | test macro top-K (mean ± std) | regret | seeds |")
print("|---|---|---|---|---|")
for (k, eps), v in sorted(cells.items()):
  acc, bayes = np.array(v).T
  print(f"| {k} | {eps} | {acc.mean():.2f} ± {acc.std(ddof=1):.2f} | {bayes[0] - acc.mean():.2f} | {len(v)} |")
PY
