"""The train fit (each run's last-epoch model on its own training split) and the VS loss in the binaries.

That `python -m experiments.train` prints the train fit: tests/test_train.py (the resume test's uninterrupted run)."""
import csv
import json
import os

import flax
import jax
import numpy as np
import pytest

from experiments import aggregate
from experiments import checkpointing
from experiments import config as config_lib
from experiments import grids
from experiments import input_pipeline
from experiments import reporting
from experiments import reproduce
from experiments import train_lib
import noised_topk_jax as ntk



def _tiny(data_dir, **changes):
  base = config_lib.Config(
      dataset="fashion_mnist_lt", data_dir=data_dir, imbalance_ratio=10.0, validation_per_class=6, model="cnn",
      normalized_head=False, loss="vs", vs_gamma=0.2, tau=1.2, epochs=3, batch_size=32, eval_batch_size=40,
      learning_rate=0.05, lr_decay_epochs=(2,), log_every_steps=100, max_steps_per_epoch=3)
  return base.replace(**changes)


def _dataset(data_dir):
  return input_pipeline.get_dataset("fashion_mnist_lt", data_dir=data_dir, imbalance_ratio=10.0,
                                    validation_per_class=6)


# --- Which examples, and how they are read -----------------------------------------------------------------------


def test_train_fit_indices_are_all_examples_or_a_fixed_sorted_subset():
  np.testing.assert_array_equal(train_lib.train_fit_indices(37, max_examples=37), np.arange(37))
  subset = train_lib.train_fit_indices(25_000)
  assert train_lib.TRAIN_FIT_MAX_EXAMPLES == 10_000 and len(subset) == 10_000
  assert np.all(np.diff(subset) > 0) and subset[0] >= 0 and subset[-1] < 25_000  # sorted, distinct, in range
  np.testing.assert_array_equal(subset, train_lib.train_fit_indices(25_000))  # the same subset in every run
  assert not np.array_equal(subset, train_lib.train_fit_indices(25_000, seed=1))
  # The aggregate table's note states the same size.
  assert f"{train_lib.TRAIN_FIT_MAX_EXAMPLES:,}" in aggregate.TRAIN_FIT_NOTE


def test_train_eval_batches_are_the_unaugmented_training_images_in_order(fashion_dir):
  ds = _dataset(fashion_dir)
  n = ds.num_train_examples
  # One unaugmented batch of the whole epoch (train_batches' own path): the images of `order`, in that order.
  order = ds.epoch_indices(epoch=0, seed=3)
  plain = next(ds.train_batches(epoch=0, batch_size=n, seed=3, augment=False))
  indices = order[:37]
  batches = list(ds.train_eval_batches(batch_size=16, indices=indices))
  assert len(batches) == 3
  mask = np.concatenate([b["mask"] for b in batches]) > 0
  assert mask.sum() == 37 and mask[:37].all()
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[mask], plain["image"][:37])
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], plain["label"][:37])
  # Not the augmented images (the test above would see a crop or a flip).
  augmented = next(ds.train_batches(epoch=0, batch_size=n, seed=3, augment=True))
  assert not np.array_equal(augmented["image"][:37], plain["image"][:37])
  # Two processes: their shards of each batch, concatenated, are the single process's batch.
  shards = [list(ds.train_eval_batches(batch_size=16, indices=indices, process_index=p, process_count=2))
            for p in (0, 1)]
  for j, batch in enumerate(batches):
    np.testing.assert_array_equal(np.concatenate([shards[0][j]["image"], shards[1][j]["image"]]), batch["image"])
  # Default: every training example, in order.
  every = list(ds.train_eval_batches(batch_size=64))
  assert sum(int(b["mask"].sum()) for b in every) == n
  with pytest.raises(ValueError, match="`indices`"):
    ds.train_eval_batches(batch_size=16, indices=np.array([0, n]))


# --- A run ----------------------------------------------------------------------------------------------------------


def _apply(state, images):
  return np.asarray(state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images, train=False))


@pytest.mark.slow
def test_train_fit_is_the_last_epoch_model_on_the_training_split(fashion_dir, tmp_path, monkeypatch):
  # A VS run whose test split reports the best validation epoch; the train fit must be the last epoch's model,
  # on a fixed subset (made smaller than the split here), and without k = 1 among eval_ks (its own eval step).
  monkeypatch.setattr(train_lib, "TRAIN_FIT_MAX_EXAMPLES", 100)
  seen = []
  original = train_lib.evaluate_train_fit

  def spy(p_eval_step, state, dataset, **kwargs):
    seen.append(jax.device_get(train_lib.unreplicate(state).params))
    return original(p_eval_step, state, dataset, **kwargs)
  monkeypatch.setattr(train_lib, "evaluate_train_fit", spy)
  # eval_ks without 1: the epoch log line reports the smallest K evaluated (it read top-1 and crashed).

  config = _tiny(fashion_dir, eval_ks=(2, 3))
  workdir = str(tmp_path)
  results = train_lib.train_and_evaluate(config, workdir)
  fit = results["train_fit"]
  ds = _dataset(fashion_dir)
  n = ds.num_train_examples
  assert n > 100
  assert {k: fit[k] for k in ("model", "examples", "train_examples", "subset", "subset_seed")} == {
      "model": "last epoch", "examples": 100, "train_examples": n, "subset": True, "subset_seed": 0}
  assert results["model_selection"].startswith("best validation macro top-3")
  assert results["logit_adjustment"]["training_tau"] == 1.2
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["train_fit"] == fit

  # The last epoch's model, restored from the run's final checkpoint: the one the train fit read.
  config = config_lib.validate(config)
  template, _ = train_lib.create_train_state(config, ds, ds.steps_per_epoch(config.batch_size))
  best = {"params": template.params, "batch_stats": template.batch_stats}
  state, _, meta = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config).restore_latest(template,
                                                                                                          best)
  assert meta["epoch"] == config.epochs - 1 and len(seen) == 1
  jax.tree.map(np.testing.assert_array_equal, seen[0], jax.device_get(flax.core.unfreeze(state.params)))

  # Independent evaluation: the unaugmented training images of the subset, argmax, per-class recall.
  everything = next(ds.train_batches(epoch=0, batch_size=n, seed=0, augment=False))
  position = np.argsort(ds.epoch_indices(epoch=0, seed=0))  # example i sits at position[i] of that batch
  rows = position[train_lib.train_fit_indices(n, max_examples=100)]
  labels = everything["label"][rows]
  predicted = _apply(state, everything["image"][rows]).argmax(-1)
  recall = [np.mean(predicted[labels == c] == c) for c in np.unique(labels)]
  assert fit["top1_accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1e-9)
  assert fit["macro_top1_accuracy"] == pytest.approx(np.mean(recall), abs=1e-6)


def test_train_fit_line():
  fit = {"model": "last epoch", "top1_accuracy": 0.98125, "macro_top1_accuracy": 0.9, "examples": 10_000,
         "train_examples": 243_916, "subset": True}
  assert reporting.train_fit_line(fit) == (
      "Train fit (last epoch model, training split in evaluation mode, a fixed subset of 10,000 of its 243,916 "
      "examples): top-1 98.12 %, macro top-1 90.00 %")
  assert "all 500 examples)" in reporting.train_fit_line(dict(fit, examples=500, train_examples=500, subset=False))


# --- Configuration --------------------------------------------------------------------------------------------------


def test_vs_hyperparameters_are_checked():
  config = config_lib.Config(loss="vs", normalized_head=False)
  assert config_lib.loss_tau(config) == 1.0 and config.vs_gamma == 0.3  # the authors' train.py defaults
  config_lib.validate(config.replace(vs_gamma=0.2, tau=1.2), explicitly_set={"vs_gamma", "tau"})
  with pytest.raises(ValueError, match="`vs_gamma` is not used by `loss=ce`"):
    config_lib.validate(config.replace(loss="ce"), explicitly_set={"vs_gamma"})
  with pytest.raises(ValueError, match="`vs_gamma` is not used by `loss=logit_adjusted`"):
    config_lib.validate(config.replace(loss="logit_adjusted"), explicitly_set={"vs_gamma"})
  for bad in (-0.1, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="`vs_gamma` must be a finite number >= 0"):
      config_lib.validate(config.replace(vs_gamma=bad))
  with pytest.raises(ValueError, match="`tau` must be a finite number >= 0 for loss=vs"):
    config_lib.validate(config.replace(tau=-1.0))
  with pytest.raises(ValueError, match="`logit_adjustment_tau` adds the offsets that loss=vs already adds"):
    config_lib.validate(config.replace(logit_adjustment_tau=1.0))


def test_vs_loss_fn_is_the_library_loss():
  counts = np.array([50, 20, 5])
  config = config_lib.Config(loss="vs", vs_gamma=0.4, tau=0.7, normalized_head=False)
  loss_fn = train_lib.make_loss_fn(config, counts)
  logits = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 2])
  keys = jax.random.split(jax.random.key(0), 4)
  np.testing.assert_array_equal(np.asarray(loss_fn(logits, labels, keys)),
                                np.asarray(ntk.vs_loss(logits, labels, class_counts=counts, gamma=0.4, tau=0.7)))


# --- Aggregation ----------------------------------------------------------------------------------------------------


def _results(run, fit):
  ks = run.config.eval_ks
  test = {f"{p}top{k}_accuracy": 0.5 for k in ks for p in ("", "macro_")}
  per_class = {"c0": {"train_count": 10, "test_count": 5, **{f"top{k}_accuracy": 0.5 for k in ks}}}
  out = {"test": test, "per_class": per_class,
         "config": run.config.to_dict(), "best_epoch": 3, "train_seconds": 1.0, "backend": "cpu", "num_devices": 1}
  if fit is not None:
    out["train_fit"] = {"top1_accuracy": fit, "macro_top1_accuracy": fit - 0.1, "examples": 100,
                        "train_examples": 100, "subset": False, "model": "last epoch"}
  return out


def _write(grid, runs, root, fit_of):
  for run in runs:
    os.makedirs(os.path.join(root, run.name))
    with open(os.path.join(root, run.name, "results.json"), "w") as f:
      json.dump(_results(run, fit_of(run)), f)


def test_tables_gain_a_train_fit_column_only_when_runs_carry_it(tmp_path):
  grid = grids.get_grid("fashion_mnist_lt")
  runs = grid.runs((0, 1))
  old_root, new_root = str(tmp_path / "old"), str(tmp_path / "new")
  _write(grid, runs, old_root, lambda run: None)
  # Train fit 0.90 + 0.01 * seed, + 0.001 * K for the models trained per K.
  _write(grid, runs, new_root, lambda run: 0.90 + 0.01 * run.seed + (0.001 * run.ks[0] if len(run.ks) == 1 else 0))
  old_out, new_out = str(tmp_path / "old_out"), str(tmp_path / "new_out")
  old_table = reproduce.write_outputs(grid, runs, (0, 1), old_root, old_out)
  new_table = reproduce.write_outputs(grid, runs, (0, 1), new_root, new_out)

  # Without train_fit: the table, its note and runs.csv are those of before (no column, no note).
  results = aggregate.load_results(runs, old_root)
  cells = aggregate.collect_cells(grid, runs, results)
  assert aggregate.train_fit_cells(runs, results) == {}
  assert old_table == aggregate.markdown_table(grid, cells, 2)
  assert "train fit" not in old_table and aggregate.TRAIN_FIT_NOTE not in open(os.path.join(old_out, "table.md")).read()
  with open(os.path.join(old_out, "runs.csv")) as f:
    assert not any(h.startswith("train_fit") for h in next(csv.reader(f)))

  # With it: a column per setting (mean over the two seeds), one value per K model for the top-K losses.
  header = new_table.splitlines()[0]
  assert header.count("train fit top-1 (%)") == 2
  assert header.endswith("| step rho=10: macro top-3 (%) | step rho=10: train fit top-1 (%) |")
  ce = next(line for line in new_table.splitlines() if line.startswith("| CE |"))
  best = "**50.00 ± 0.00**"  # every method ties at 50 %: the first row is bold
  assert ce.endswith(f"| {best} | 90.50 | {best} | {best} | {best} | 90.50 |")
  hinge = next(line for line in new_table.splitlines() if line.startswith("| top-K hinge |"))
  assert hinge.endswith("| 90.60 / 90.70 / 90.80 |")
  assert aggregate.TRAIN_FIT_NOTE in open(os.path.join(new_out, "table.md")).read()
  with open(os.path.join(new_out, "runs.csv")) as f:
    rows = list(csv.DictReader(f))
  assert {r["train_fit_top1_accuracy"] for r in rows if r["row"] == "ce" and r["seed"] == "1"} == {"0.9100"}
  assert {r["train_fit_macro_top1_accuracy"] for r in rows if r["row"] == "ce" and r["seed"] == "1"} == {"0.8100"}


def test_regret_table_gains_a_train_fit_column():
  grid = grids.get_grid("synthetic_lt")
  runs = [r for r in grid.runs((0, 1)) if r.row in ("ce", "smooth_svm")]
  results = {r.name: _results(r, 0.8 + 0.1 * r.seed) for r in runs}
  cells = {(row, "lt100", k): [60.0, 62.0] for row in ("ce", "smooth_svm") for k in grid.ks}
  bayes = {(kind, "lt100", k): 70.0 for kind in aggregate.BAYES_KINDS for k in grid.ks}
  plain = aggregate.regret_table(grid, cells, bayes, "lt100", 2)
  assert plain == aggregate.regret_table(grid, cells, bayes, "lt100", 2, train_fit={})
  table = aggregate.regret_table(grid, cells, bayes, "lt100", 2, train_fit=aggregate.train_fit_cells(runs, results))
  lines = table.splitlines()
  assert lines[0] == plain.splitlines()[0] + " train fit top-1 (%) |"
  assert lines[2].endswith("| — |")  # a Bayes row
  assert next(line for line in lines if line.startswith("| CE |")).endswith("| 85.00 |")
  assert next(line for line in lines if line.startswith("| smooth top-K SVM |")).endswith("| 85.00 / 85.00 / 85.00 |")
