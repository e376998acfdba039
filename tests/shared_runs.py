"""Finished training runs shared by the tests that only read them, and the subprocess timeout of the tests.

A test module that reads the shared run imports its fixture explicitly:

    from tests.shared_runs import finished_fashion_run  # pylint: disable=unused-import

Session-scoped fixtures are built once per pytest-xdist worker process (each worker may build its own: a few
seconds). A test that changes a run's files works on `copy_run(...)`, never on the shared folder.
"""
import dataclasses
import shutil

import pytest

from experiments import config as config_lib
from experiments import configs
from tests import fake_data

# A guard against a hung subprocess, never a limit on a slow one: the slowest subprocess of the tests takes under a
# minute on a quiet 2-core machine, and a machine several times over-subscribed must not fail a test by its load.
SUBPROCESS_TIMEOUT_S = 1800

# The default job's flags for the tiny run, as `python -m experiments.train` takes them (`binary_flags`).
TINY_DEFAULT_JOB = {"imbalance_ratio": 10.0, "validation_per_class": 6, "epochs": 3, "batch_size": 32,
                    "eval_batch_size": 40, "lr_decay_epochs": (1,), "warmup_epochs": 1, "max_steps_per_epoch": 2,
                    "log_every_steps": 2}


def tiny_default_job(data_dir: str, **changes) -> config_lib.Config:
  """The README's default job (the `default` preset: Fashion-MNIST-LT, small CNN, cosine head, imbalanced noised
  top-K loss), cut to 3 epochs of 2 steps on the generated data in `data_dir`."""
  config = configs.get_preset("default").config.replace(data_dir=data_dir, **TINY_DEFAULT_JOB)
  return config.replace(**changes)


def binary_flags(data_dir: str) -> list[str]:
  """`experiments.train` flags that give `tiny_default_job(data_dir)` (with the default `--config=default`)."""
  fields = dict(TINY_DEFAULT_JOB, data_dir=data_dir)
  return [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in fields.items()]


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  config: config_lib.Config
  workdir: str
  results: dict  # what train_and_evaluate returned
  data_dir: str


def copy_run(run: FinishedRun, destination: str) -> FinishedRun:
  """A copy of `run`'s workdir at `destination`, for a test that changes the files (resumes, corrupts)."""
  shutil.copytree(run.workdir, destination)
  return dataclasses.replace(run, workdir=destination)


@pytest.fixture(scope="session")
def finished_fashion_run(tmp_path_factory):
  """`tiny_default_job` trained to the end in-process (2 devices) on generated Fashion-MNIST IDX files (60 training
  and 12 test images per class, as conftest's `fashion_dir`); read it, or `copy_run` it before changing it."""
  from experiments import train_lib  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("shared_fashion"))
  fake_data.write_fashion_mnist_idx(data_dir, train_per_class=60, test_per_class=12)
  config = tiny_default_job(data_dir)
  workdir = str(tmp_path_factory.mktemp("finished_fashion_run") / "run")
  results = train_lib.train_and_evaluate(config, workdir)
  return FinishedRun(config=config_lib.validate(config), workdir=workdir, results=results, data_dir=data_dir)
