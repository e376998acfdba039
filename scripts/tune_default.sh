#!/usr/bin/env bash
# The search behind the embedded default's learning rate and epsilon (experiments/configs/default.py): the default
# job (imbalanced noised top-2 loss, cosine head, long-tailed Fashion-MNIST exp rho=100) at seed 0 for each
# (learning rate, epsilon), scored on the balanced validation split at the selected epoch (best validation macro
# top-2, the default's own model selection). Two runs at a time, each pinned to one core. Prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pinned_runs.sh
root=$(pinned_root "${1:-workdirs/tune_default}")
for eps in 0.01 0.1; do
  for lr in 0.05 0.1 0.2; do
    pinned_run "$root/lr${lr}_eps${eps}" --learning_rate="$lr" --epsilon="$eps"
  done
done
wait
python - "$root" <<'PY'
import glob, json, os, sys
print("| lr | epsilon | best epoch | val macro top-1 | val macro top-2 | val macro top-3 | train s |")
print("|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*", "results.json"))):
  r = json.load(open(path))
  v, c = r["validation"], r["config"]
  print(f"| {c['learning_rate']} | {c['epsilon']} | {r['best_epoch']} | " + " | ".join(
        f"{100 * v[f'macro_top{k}_accuracy']:.2f}" for k in (1, 2, 3)) + f" | {r['train_seconds']:.0f} |")
PY
