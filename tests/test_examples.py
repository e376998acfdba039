"""The examples in examples/ run with `--tiny` (synthetic data, seconds on CPU) and show learning.

Each example is run as a user would run it from a checkout (`PYTHONPATH=. python examples/NAME.py --tiny`), in a
subprocess; the test parses what it prints: the mean loss of the last steps must be below that of the first steps,
and the test top-k accuracies must beat chance (10 classes) by a wide margin.
"""
import os
import re
import subprocess
import sys

import pytest

from tests import shared_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ("nnx_noised_topk", "linen_optax_trainstate", "swap_in_noised_loss")
LOSS_LINE = re.compile(r"loss: first \d+ steps ([\d.]+) -> last \d+ steps ([\d.]+)")
ACCURACY_LINE = re.compile(r"test top-(\d) ([\d.]+)%")


def run_example(name, *args, python=sys.executable, cwd=REPO, env=None, timeout=shared_runs.SUBPROCESS_TIMEOUT_S):
  """Runs examples/NAME.py with `args`; returns its stdout (fails the test with the output on error)."""
  if env is None:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([python, os.path.join(REPO, "examples", f"{name}.py"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
  return proc.stdout


def check_learning(output, *, runs=1):
  """The printed loss goes down and the test accuracies are far above chance, for each of `runs` trainings."""
  losses = LOSS_LINE.findall(output)
  assert len(losses) == runs, output
  for first, last in losses:
    assert float(last) < 0.7 * float(first), output
  accuracies = ACCURACY_LINE.findall(output)
  assert len(accuracies) == 2 * runs, output
  for i in range(runs):
    (k1, top1), (k2, top2) = accuracies[2 * i], accuracies[2 * i + 1]
    assert (k1, k2) == ("1", "2"), output
    assert float(top1) > 30.0 and float(top2) > 50.0, output  # chance: 10 % and 20 %
    assert float(top2) >= float(top1), output


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_learns(name):
  output = run_example(name, "--tiny")
  # swap_in_noised_loss trains twice by default: before (cross-entropy) and after the swap.
  check_learning(output, runs=2 if name == "swap_in_noised_loss" else 1)
  if name == "swap_in_noised_loss":
    assert "loss ce:" in output and "loss noised:" in output


def test_examples_are_self_contained():
  """Drop-in examples import only the library and public packages, never the repository's other code."""
  for name in EXAMPLES:
    with open(os.path.join(REPO, "examples", f"{name}.py"), encoding="utf-8") as f:
      source = f.read()
    imports = re.findall(r"^(?:from|import) ([\w.]+)", source, flags=re.MULTILINE)
    assert not [m for m in imports if m.split(".")[0] in ("experiments", "tests")], (name, imports)
    assert "--tiny" in source and "--steps" in source
