"""The embedded default: long-tailed Fashion-MNIST with the imbalanced noised top-K loss.

python -m experiments.train

Long-tailed Fashion-MNIST (exp profile, imbalance ratio 100: 6000 images of class 0 down to 60 of class 9, real data
from the Debian package dataset-fashion-mnist or TFDS), a small CNN with a cosine head, and the imbalanced noised
top-K loss with K = 2 (several Fashion-MNIST classes look alike: T-shirt, shirt, pullover, coat). A balanced
validation split taken from the unused training images selects the epoch; the balanced test set is evaluated once.
It finishes in a few minutes on a 2-core CPU.
"""
from experiments import config as config_lib


def get_config() -> config_lib.Config:
  return config_lib.Config()


def presets():
  return {"default": ("Long-tailed Fashion-MNIST (exp, rho 100), CNN, imbalanced noised top-2 loss.", get_config(),
                      "")}
