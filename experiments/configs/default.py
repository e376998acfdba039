"""The embedded default: long-tailed Fashion-MNIST with the imbalanced noised top-K loss.

python -m experiments.train

Long-tailed Fashion-MNIST (exp profile, imbalance ratio 100: 5,500 images of class 0 down to 55 of class 9, real data
from the Debian package dataset-fashion-mnist, else from TFDS, which downloads it on first use), a small CNN with a
cosine head, and the imbalanced noised top-K loss with K = 2 (several Fashion-MNIST classes look alike: T-shirt,
shirt, pullover, coat). A balanced validation split taken from the unused training images selects the epoch; the
balanced test set is evaluated once.
Under a minute on a 2-core CPU once installed (measured: docs/results/default_job.md).

Hyperparameters: 16 epochs, batch 128, SGD momentum 0.9, lr 0.1 (no warm-up), x0.1 at epochs 10 and 14, weight
decay 5e-4; k 2, epsilon 0.1, B 5, max margin 0.2, scale 60. The learning rate and epsilon come from
`scripts/tune_default.sh` (seed 0, best-epoch validation macro top-1 / top-2 %, with the cosine head's unit-norm
init): lr 0.05 / 0.1 / 0.2 scored 75.6 / 93.4, 76.0 / 93.5, 73.6 / 91.5 with epsilon 0.1 (re-run after the noise
became keyed by example; before: 76.2 / 92.5, 77.9 / 93.0, 75.8 / 93.2). lr 0.1 is best at top-2 (the selection
metric; 0.1 point over 0.05 is within seed noise) and at top-1, so 0.1. The paper's Pl@ntNet value epsilon = 0.01
collapses here to a constant ranking (17.8 / 20.0, 17.7 / 20.0, 15.7 / 20.0 at the same three learning rates; with
the earlier noise draws it reached ~60 / ~78 at seed 0 and collapsed at seed 1). With 10 classes the cosine scores
are far apart, so a true class sitting at rank K+1 (where the hinge's gradient cancels) is rarely moved by such
small noise; with L = 1081 they are ~100 times denser.
"""
from experiments import config as config_lib


def get_config() -> config_lib.Config:
  return config_lib.Config(learning_rate=0.1)


def presets():
  return {"default": ("Long-tailed Fashion-MNIST (exp, rho 100), CNN, imbalanced noised top-2 loss.", get_config(),
                      "")}
