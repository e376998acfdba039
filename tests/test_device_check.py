"""The one-command accelerator check (scripts/device_check.sh) in its tiny CPU mode, and what it relies on."""
import os
import subprocess
import sys

from experiments import reporting
from tests import fake_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_check_tiny_mode_runs_every_step(tmp_path):
  out = tmp_path / "check.md"
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the check runs on the machine's own devices, as on an accelerator
  env["PYTHON"] = sys.executable  # the interpreter that has the packages (install.sh may have made a .venv)
  # Generated IDX files (700 per class: the default's 500-image validation split leaves 200 for the long tail).
  data = tmp_path / "fashion"
  fake_data.write_fashion_mnist_idx(str(data), train_per_class=700, test_per_class=10)
  proc = subprocess.run(["bash", "scripts/device_check.sh", "--tiny", f"--output={out}", f"--data_dir={data}"],
                        cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  report = out.read_text()
  for step in ("environment", "library tests", "train step, ResNet-32", "default job"):
    assert f"| {step} | ok |" in report, report
  assert "test top-1/2/3" in report and "images/s" in report
  assert "passed" in report
  # The short table is printed last.
  assert proc.stdout.strip().splitlines()[-1].startswith("| default job | ok |")


def test_summary_writer_without_tensorflow_writes_nothing_and_does_not_fail(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
  writer = reporting.SummaryWriter(str(tmp_path / "tb"))
  writer.write_epoch(1, {"train": {"loss": 0.5}})
  writer.write_final(1, {"top1_accuracy": 0.5})
  writer.close()
  assert not (tmp_path / "tb").exists()
