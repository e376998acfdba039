"""CIFAR-10/100-LT rho = 100 (exp profile) presets of the VS loss (Kini et al., NeurIPS 2021), ResNet-32.

python -m experiments.train --config=cifar10_lt_exp100_vs --data_dir=TFDS_DATA_DIR

The authors' code (`orparask/VS-Loss`, `class_imbalance/{train.py, losses.py, models.py}`) is LDAM-DRW's CIFAR
trainer with the VS loss added, so the protocol is the MM Table 1 presets' (experiments/configs/cifar_lt.py):
ResNet-32 with a linear head (`use_norm` only for LDAM), 200 epochs, batch 128, SGD momentum 0.9, weight decay 2e-4,
lr 0.1 with a 5-epoch linear warm-up, x0.01 from epoch 160 and x0.0001 from epoch 180, crop + flip, the best test
top-1 over epochs reported ("Best Prec@1"; the run also logs the final epoch's). No DRW: the README's VS command
leaves `--train_rule` at its default `None` (DRW is available with `--train_rule=drw`).

Loss values: CIFAR-10-LT gamma 0.2, tau 1.2, the command of the authors' README (`--dataset cifar10 --loss_type VS
--imb_type exp --imb_factor 0.01 --gamma 0.2 --tau 1.2`). The repository gives no CIFAR-100-LT command: that preset
uses the defaults of their `train.py` (gamma 0.3, tau 1.0), which are not a tuned CIFAR-100 value; the paper's own
CIFAR-100 values could not be read here (docs/presets_vs_authors.md).
"""
from experiments.configs import cifar_lt

# dataset -> (vs_gamma, tau, where the values come from).
VALUES = {
    "cifar10_lt": (0.2, 1.2, "the authors' README command for CIFAR-10 exp rho=100"),
    "cifar100_lt": (0.3, 1.0, "the defaults of the authors' train.py; no CIFAR-100 command is released"),
}


def presets():
  out = {}
  for dataset, (gamma, tau, source) in VALUES.items():
    config = cifar_lt.base_config(dataset, "exp", 100).replace(loss="vs", vs_gamma=gamma, tau=tau)
    out[f"{dataset}_exp100_vs"] = (
        f"VS loss (Kini et al.), {dataset} exp rho=100, ResNet-32: gamma {gamma}, tau {tau} ({source}).", config,
        "--data_dir=TFDS_DATA_DIR")
  return out
