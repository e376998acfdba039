"""The embedded default: long-tailed Fashion-MNIST with the imbalanced noised top-K loss.

python -m experiments.train

Long-tailed Fashion-MNIST (exp profile, imbalance ratio 100: 6000 images of class 0 down to 60 of class 9, real data
from the Debian package dataset-fashion-mnist or TFDS), a small CNN with a cosine head, and the imbalanced noised
top-K loss with K = 2 (several Fashion-MNIST classes look alike: T-shirt, shirt, pullover, coat). A balanced
validation split taken from the unused training images selects the epoch; the balanced test set is evaluated once.
It finishes in a few minutes on a 2-core CPU.

Hyperparameters (16 epochs, batch 128, SGD momentum 0.9, lr 0.2 with a 1-epoch warm-up, x0.1 at epochs 10 and 14,
weight decay 5e-4; k 2, epsilon 0.1, B 5, max margin 0.2, scale 60) were picked with a few single-seed runs of this loss,
reading validation top-1 and top-2 (lr 0.4 scored 92.3 vs 91.9 % validation top-2 but 74.1 vs 77.6 % top-1). The paper's Pl@ntNet value epsilon = 0.01 stalls here: with 10 classes the cosine
scores are far apart, so a true class sitting at rank K+1 (where the hinge's gradient cancels) is almost never moved
by the noise; at lr 0.05 and 12 epochs validation top-1 was 47.5 % with epsilon 0.01, 71.3 % with 0.1, 59.5 % with 0.3.
"""
from experiments import config as config_lib


def get_config() -> config_lib.Config:
  return config_lib.Config()


def presets():
  return {"default": ("Long-tailed Fashion-MNIST (exp, rho 100), CNN, imbalanced noised top-2 loss.", get_config(),
                      "")}
