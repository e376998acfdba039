"""The one-command accelerator check (scripts/device_check.sh) in its tiny CPU mode, and what it relies on."""
import argparse
import importlib.util
import os
import subprocess
import sys

import pytest

from tests import fake_data
from tests import shared_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("environment", "library tests", "train step, ResNet-32", "default job")


def _device_check_module():
  spec = importlib.util.spec_from_file_location("device_check", os.path.join(REPO, "scripts", "device_check.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("torch", [False, True])
def test_steps_keep_their_order_with_and_without_torch(torch):
  check = _device_check_module()
  args = argparse.Namespace(tiny=True, torch=torch, test_workers=4, workdir="w", data_dir=None)
  names = [name for name, _, _ in check.steps(args)]
  torch_steps = [n for n in names if n.startswith("noised loss vs PyTorch")]
  assert torch_steps and names[-1] == "default job", names
  # The speed comparison sits between the library tests and the train step, whether it runs or is skipped.
  assert names.index("library tests") < names.index(torch_steps[0])
  assert names.index(torch_steps[-1]) < names.index("train step, ResNet-32")
  skipped = [argv is None for name, argv, _ in check.steps(args) if name in torch_steps]
  assert skipped == [not torch] * len(torch_steps)


def test_without_torch_the_speed_step_is_skipped_and_the_check_passes(tmp_path, monkeypatch, capsys):
  # The check's own logic where torch is missing, its steps stubbed (each step for real: the torch test below, which
  # CI runs in .venv-torch with the same steps and torch installed).
  check = _device_check_module()
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  ran = []

  def fake_step(name, argv, timeout, env):
    ran.append(name)
    assert argv[0] == sys.executable and 0 < timeout <= 300 and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    return {"name": name, "command": " ".join(argv[1:]), "status": "ok", "seconds": 1.0, "output": "3 passed"}

  monkeypatch.setattr(check, "run_step", fake_step)
  out = tmp_path / "check.md"
  monkeypatch.setattr(sys, "argv", ["device_check.py", "--tiny", f"--output={out}"])
  assert check.main() == 0
  assert ran == ["environment", "library tests", "train step, ResNet-32", "default job"]
  report = out.read_text()
  assert f"| noised loss vs PyTorch | {check.TORCH_MISSING} | 0 |" in report, report
  lines = capsys.readouterr().out.strip().splitlines()
  table = lines[lines.index("| step | status | seconds | key figures |") + 2:]
  assert [row.split("|")[1].strip() for row in table] == [
      "environment", "library tests", "noised loss vs PyTorch", "train step, ResNet-32", "default job"], table
  assert "| library tests | ok | 1 | 3 passed |" in table


@pytest.mark.slow
@pytest.mark.torch
def test_device_check_tiny_mode_runs_every_step(tmp_path):
  # Every step for real, tiny, on this machine's CPU: CI runs it in .venv-torch (with the speed comparison's steps);
  # where torch is missing, the test above checks the check's logic.
  out = tmp_path / "check.md"
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the check runs on the machine's own devices, as on an accelerator
  env["PYTHON"] = sys.executable  # the interpreter that has the packages (install.sh may have made a .venv)
  # Generated IDX files (700 per class: the default's 500-image validation split leaves 200 for the long tail).
  data = tmp_path / "fashion"
  fake_data.write_fashion_mnist_idx(str(data), train_per_class=700, test_per_class=10)
  # The check's wall-clock budget (470 s, sized for an accelerator) lifted: on a busy CPU a step must not be skipped.
  # Two steps at a time: the other torch tests leave a core idle after their first ~20 s.
  proc = subprocess.run(["bash", "scripts/device_check.sh", "--tiny", f"--output={out}", f"--data_dir={data}",
                         "--budget_seconds=1700", "--parallel_steps=2"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=shared_runs.SUBPROCESS_TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  report = out.read_text()
  for step in STEPS:
    assert f"| {step} | ok |" in report, report
  assert "test top-1/2/3" in report and "images/s" in report
  assert "passed" in report
  # The short table is printed last, one row per step in step order, the speed comparison included.
  lines = proc.stdout.strip().splitlines()
  assert lines[-1].startswith("| default job | ok |"), proc.stdout
  table = lines[lines.index("| step | status | seconds | key figures |") + 2:]
  names = ["environment", "library tests", "noised loss vs PyTorch, float32", "noised loss vs PyTorch, bfloat16",
           "train step, ResNet-32", "default job"]
  assert table[2].startswith("| noised loss vs PyTorch, float32 | ok |"), table
  assert "torch/JAX" in table[2]
  assert [row.split("|")[1].strip() for row in table] == names, table
