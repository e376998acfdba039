"""What a run shows a person: log lines, TensorBoard summaries, the results table and the per-class plot."""
from importlib import metadata
import math
import os
import platform
import socket
import time

from absl import logging
import numpy as np


class SummaryWriter:
  """TensorBoard scalars, written as an event file with the `tensorboard` package's record writer and protos.

  TensorFlow is not imported (it added 5-6 s to the start of every run); TensorBoard reads the file as it reads
  `tf.summary` scalars. Without the `tensorboard` package the writer logs one warning and writes nothing: the run's
  results.json, log and plot do not depend on it.
  """

  _count = 0  # writers made by this process

  def __init__(self, logdir):
    try:
      # pylint: disable=g-import-not-at-top
      from tensorboard.compat.proto import event_pb2
      from tensorboard.compat.proto import summary_pb2
      from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
      logging.warning("tensorboard is not installed: no TensorBoard summaries in %s (results.json is written).",
                      logdir)
      self._writer = None
      return
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    os.makedirs(logdir, exist_ok=True)
    # TensorBoard's file name pattern; the process id and a counter keep two writers of one directory apart.
    SummaryWriter._count += 1
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
            f"{SummaryWriter._count}")
    self._writer = RecordWriter(open(os.path.join(logdir, name), "wb"))  # pylint: disable=consider-using-with
    self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event):
    self._writer.write(event.SerializeToString())

  def _scalars(self, step, prefix, values):
    if self._writer is None:
      return
    now = time.time()
    for name, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        summary = self._summary(value=[self._summary.Value(tag=f"{prefix}/{name}", simple_value=float(value))])
        self._write(self._event(wall_time=now, step=int(step), summary=summary))

  def write_epoch(self, epoch, record):
    for split in ("train", "val", "test"):
      if split in record:
        self._scalars(epoch, split, record[split])
    if self._writer is not None:
      self._writer.flush()

  def write_final(self, step, test_metrics):
    self._scalars(step, "final_test", test_metrics)
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def format_record(record):
  parts = [f"train loss {record['train']['loss']:.4f}, train top-1 {record['train']['top1_accuracy']:.3f}"]
  for split in ("val", "test"):
    if split in record:
      m = record[split]
      # The smallest K evaluated (eval_ks need not contain 1).
      k = min(int(key[3:-len("_accuracy")]) for key in m if key.startswith("top") and key.endswith("_accuracy"))
      parts.append(f"{split} top-{k} {m[f'top{k}_accuracy']:.4f}, "
                   f"{split} macro top-{k} {m[f'macro_top{k}_accuracy']:.4f}")
  return "; ".join(parts)


def describe_selection(selection, sel_k, best, *, has_validation=True):
  """results.json's `model_selection`: which epoch's model the test split reports, and why."""
  if selection == "val_macro_topk":
    return f"best validation macro top-{sel_k} accuracy (epoch {best['epoch'] + 1}); test evaluated once"
  if selection == "best_test_epoch":
    return ("best test top-1 epoch: the test set doubles as validation, as in the LDAM-DRW/MM CIFAR-LT protocol "
            f"(epoch {best['epoch'] + 1}); optimistic by construction")
  if not has_validation:
    return "last epoch: no validation split, so no model selection on validation"
  return "last epoch"


def per_class_table(dataset, per_class):
  counts = np.asarray(dataset.train_class_counts)
  table = {}
  for c, name in enumerate(dataset.class_names):
    row = {"train_count": int(counts[c]), "test_count": int(per_class["num_examples"][c])}
    for key, values in per_class.items():
      if key != "num_examples":
        v = float(values[c])
        row[key] = None if math.isnan(v) else v
    table[str(name)] = row
  return table


def results_table(results, ks):
  """Markdown table of the test top-K and macro top-K accuracies (in %), and average-K when the run has it."""
  test = results["test"]
  lines = ["| metric | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
  lines.append("| top-K accuracy (%) | " + " | ".join(f"{100 * test[f'top{k}_accuracy']:.2f}" for k in ks) + " |")
  lines.append("| macro top-K accuracy (%) | "
               + " | ".join(f"{100 * test[f'macro_top{k}_accuracy']:.2f}" for k in ks) + " |")
  bayes = results.get("bayes")
  if bayes:
    lines.append("| Bayes-optimal macro top-K (%), exact class likelihood | "
                 + " | ".join(f"{100 * bayes['likelihood'][f'macro_top{k}_accuracy']:.2f}" for k in ks) + " |")
    lines.append("| regret: Bayes - this model (points) | " + " | ".join(
        f"{100 * (bayes['likelihood'][f'macro_top{k}_accuracy'] - test[f'macro_top{k}_accuracy']):.2f}" for k in ks)
                 + " |")
  if all(f"avg{k}_accuracy" in test for k in ks):
    lambdas = results["average_k"]["thresholds"]
    lines.append("| average-K accuracy (%) | "
                 + " | ".join(f"{100 * test[f'avg{k}_accuracy']:.2f}" for k in ks) + " |")
    lines.append("| macro average-K accuracy (%) | "
                 + " | ".join(f"{100 * test[f'macro_avg{k}_accuracy']:.2f}" for k in ks) + " |")
    lines.append("| average-K threshold (from validation) | " + " | ".join(f"{lambdas[str(k)]:.4g}" for k in ks)
                 + " |")
    lines.append("| average-K mean set size on test | "
                 + " | ".join(f"{test[f'avg{k}_mean_set_size']:.2f}" for k in ks) + " |")
  note = (results.get("average_k") or {}).get("note")
  if note:
    lines += ["", f"Average-K accuracy: {note}."]
  return "\n".join(lines)


def train_fit_line(train_fit):
  """One line: the train fit of `results["train_fit"]` (top-1 and macro top-1 on the training split)."""
  read = (f"a fixed subset of {train_fit['examples']:,} of its {train_fit['train_examples']:,} examples"
          if train_fit["subset"] else f"all {train_fit['examples']:,} examples")
  return (f"Train fit ({train_fit['model']} model, training split in evaluation mode, {read}): top-1 "
          f"{100 * train_fit['top1_accuracy']:.2f} %, macro top-1 {100 * train_fit['macro_top1_accuracy']:.2f} %")


# The packages whose versions decide a run's numbers (results.json["environment"]).
RECORDED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")


def environment():
  """What, beside the code and the config, a run's figures depend on: package versions, the cores it may use, XLA flags.

  Two runs of one commit and config agree to the last digit on the same environment; across core counts or package
  versions they may differ within seed noise (a run pinned to one core differs from one on two), so results.json
  records it.
  """
  def version(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"python": platform.python_version(), "platform": platform.platform(),
          "packages": {name: version(name) for name in RECORDED_PACKAGES},
          "usable_cores": cores, "xla_flags": os.environ.get("XLA_FLAGS", "")}


# Up to this many classes every point of the per-class plot is labelled with its class name; above it, only the
# classes of lowest top-1 accuracy (LABELLED_WORST of them).
LABEL_ALL_UP_TO = 20
LABELLED_WORST = 8


def classes_to_label(top1: np.ndarray) -> np.ndarray:
  """Indices of the classes whose names the per-class plot writes next to their top-1 point."""
  if len(top1) <= LABEL_ALL_UP_TO:
    return np.arange(len(top1))
  order = np.argsort(np.where(np.isnan(top1), np.inf, top1), kind="stable")
  return np.sort(order[:LABELLED_WORST])


def plot_per_class(results, path):
  """PNG: per-class test accuracy against the class's training frequency (log scale), the top-1 points labelled
  with the class names (all of them up to `LABEL_ALL_UP_TO` classes, else the `LABELLED_WORST` worst).

  Returns whether the plot was written: without matplotlib (optional, e.g. on a bare CUDA machine) it logs a
  warning and writes nothing.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("matplotlib is not installed: no per-class plot %s (results.json is written).", path)
    return False
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = results["per_class"]
  names = list(rows)
  counts = np.array([r["train_count"] for r in rows.values()], np.float64)
  keys = sorted({k for r in rows.values() for k in r if k.endswith("_accuracy")},
                key=lambda s: int(s[3:s.index("_")]))
  fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=110)
  for i, key in enumerate(keys):
    acc = np.array([np.nan if r[key] is None else r[key] for r in rows.values()], np.float64)
    ax.scatter(counts, 100 * acc, label=key.replace("_accuracy", "").replace("top", "top-"), s=22, alpha=0.8)
    if i == 0:
      for c in classes_to_label(acc):
        if np.isfinite(acc[c]):
          ax.annotate(names[c], (counts[c], 100 * acc[c]), xytext=(4, -3), textcoords="offset points", fontsize=6.5,
                      alpha=0.9)
  ax.set_xscale("log")
  ax.set_xlabel("training images of the class (log scale)")
  ax.set_ylabel("test accuracy of the class (%)")
  ax.set_ylim(-2, 102)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(f"{results['dataset']}, loss {results['loss']}, rule {results['train_rule']}")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return True
