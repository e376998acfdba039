#!/usr/bin/env bash
# The one-off tuning of the fashion_mnist_lt grid's shared hyperparameters (epochs, learning rate): cross-entropy with
# a linear head on the exp rho=100 setting, seed 0, scored on the balanced validation split (500 images per class
# carved from the unused training images) at the last epoch. Two runs at a time, each pinned to one core.
# Prints a table; the chosen values are EPOCHS / LEARNING_RATE / LR_DECAY_EPOCHS in experiments/configs/fashion_mnist_lt.py.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-workdirs/tune_fashion_mnist_lt}
source scripts/pinned_runs.sh
mkdir -p "$root"
for epochs_decay in "6:4,5" "10:6,9"; do
  epochs=${epochs_decay%%:*}; decay=${epochs_decay##*:}
  for lr in 0.025 0.05 0.1 0.2; do
    pinned_run "$root/epochs${epochs}_lr${lr}" --config=fmnist_exp100_ce --model_selection=val_macro_topk \
      --eval_every_epochs=1 --epochs="$epochs" --lr_decay_epochs="$decay" --learning_rate="$lr"
  done
done
wait
python - "$root" <<'PY'
import glob, json, os, sys
print("| epochs | lr | val macro top-1 | val macro top-2 | val macro top-3 | train s |")
print("|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*", "results.json"))):
  r = json.load(open(path))
  v = r["history"][-1]["val"]
  c = r["config"]
  print(f"| {c['epochs']} | {c['learning_rate']} | " + " | ".join(f"{100 * v[f'macro_top{k}_accuracy']:.2f}"
        for k in (1, 2, 3)) + f" | {r['train_seconds']:.0f} |")
PY
