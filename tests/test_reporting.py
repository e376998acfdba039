"""The run's TensorBoard summaries (experiments/reporting.py): TensorBoard reads them, TensorFlow is not needed."""
import os
import subprocess
import sys

import pytest

from experiments import reporting
from tests import optional
from tests import shared_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@optional.needs("tensorboard")
def test_tensorboard_reads_every_finite_scalar_at_its_step(tmp_path):
  writer = reporting.SummaryWriter(str(tmp_path / "tb"))
  writer.write_epoch(0, {"train": {"loss": 2.5, "top1_accuracy": 0.25}, "val": {"top1_accuracy": 0.5}})
  writer.write_epoch(1, {"train": {"loss": 1.5, "top1_accuracy": float("nan")}, "test": {"note": "not a number"}})
  writer.write_final(7, {"top1_accuracy": 0.75, "count": 3})
  writer.close()
  # TensorBoard's own reader (what its scalar dashboard loads).
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
  events.Reload()
  scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
  assert scalars == {"train/loss": [(0, 2.5), (1, 1.5)], "train/top1_accuracy": [(0, 0.25)],
                     "val/top1_accuracy": [(0, 0.5)], "final_test/top1_accuracy": [(7, 0.75)],
                     "final_test/count": [(7, 3.0)]}


@optional.needs("tensorboard")
def test_two_writers_of_one_directory_write_two_files(tmp_path):
  for _ in range(2):
    reporting.SummaryWriter(str(tmp_path)).close()
  assert len([f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents.")]) == 2


def test_without_tensorboard_nothing_is_written_and_nothing_fails(tmp_path, monkeypatch):
  for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard...` raises ImportError
  writer = reporting.SummaryWriter(str(tmp_path / "tb"))
  writer.write_epoch(1, {"train": {"loss": 0.5}})
  writer.write_final(1, {"top1_accuracy": 0.5})
  writer.close()
  assert not (tmp_path / "tb").exists()


@pytest.mark.slow
def test_writing_summaries_does_not_import_tensorflow(tmp_path):
  # TensorFlow's import took 5-6 s of every run's start when the summaries went through tf.summary.
  code = ("import sys; from experiments import reporting; w = reporting.SummaryWriter(sys.argv[1]); "
          "w.write_epoch(0, {'train': {'loss': 1.0}}); w.close(); print('tensorflow' in sys.modules)")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                        timeout=shared_runs.SUBPROCESS_TIMEOUT_S, check=True)
  assert proc.stdout.strip() == "False"
