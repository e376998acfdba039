"""Average-K accuracy in the binaries (experiments/set_eval.py): threshold from validation, applied to test."""
import csv
import json
import os
import types

import numpy as np
import pytest

from experiments import aggregate
from experiments import checkpointing
from experiments import config as config_lib
from experiments import grids
from experiments import input_pipeline
from experiments import reporting
from experiments import reproduce
from experiments import set_eval
from experiments import train_lib
import noised_topk_jax as ntk
from tests import reference as ref
from tests import test_reproduce
from tests.test_train import tiny_fashion_config



def _host_probs(variables, apply_fn, dataset, split, scale, offsets):
  """float64 `softmax(scale * (logits - offsets))` of every example of `split`, computed here on the host."""
  probs, labels = [], []
  for batch in dataset.eval_batches(split, batch_size=40):
    logits = np.asarray(apply_fn(variables, batch["image"], train=False), np.float64)
    keep = batch["mask"] > 0
    probs += [ref.softmax(scale * (row - offsets)) for row in logits[keep]]
    labels.append(batch["label"][keep])
  return np.asarray(probs), np.concatenate(labels)


@pytest.mark.slow
def test_threshold_comes_from_validation_and_applies_to_test(fashion_dir, tmp_path):
  # A cosine-head loss (probabilities of scale * cosine) with post-hoc adjustment: both enter the probabilities.
  config = tiny_fashion_config(fashion_dir, loss="ldam", max_margin=0.5, scale=30.0, posthoc_tau=1.0,
                               max_steps_per_epoch=4)
  results = train_lib.train_and_evaluate(config, str(tmp_path))
  with open(os.path.join(tmp_path, "results.json")) as f:
    saved = json.load(f)
  assert saved["test"] == results["test"] and saved["average_k"] == results["average_k"]
  record, test = saved["average_k"], saved["test"]
  assert record["threshold_split"] == "val" and "scale 30" in record["probabilities"]
  assert results["model_selection"].startswith("best validation macro top-")
  # The model the test metrics come from (the selected one), evaluated again here, on one device, in float64.
  dataset = input_pipeline.get_dataset("fashion_mnist_lt", data_dir=fashion_dir, imbalance_ratio=10.0,
                                       validation_per_class=6)
  state, _ = train_lib.create_train_state(config, dataset, steps_per_epoch=4)
  _, best, _ = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), config).restore_latest(
      state, {"params": state.params, "batch_stats": state.batch_stats})
  offsets = ntk.logit_adjustment(dataset.train_class_counts, tau=1.0) / 30.0
  val, _ = _host_probs(best, state.apply_fn, dataset, "val", 30.0, offsets)
  test_probs, test_labels = _host_probs(best, state.apply_fn, dataset, "test", 30.0, offsets)
  assert record["num_val_examples"] == len(val) == 60  # every validation example once, from both devices
  for k in config.eval_ks:
    threshold = record["thresholds"][str(k)]
    from_val, from_test = ref.average_k_threshold(val, k), ref.average_k_threshold(test_probs, k)
    # float32 on 2 devices against float64 here: the logits agree to ~1e-7, the probabilities (scale 30) to ~1e-5.
    np.testing.assert_allclose(threshold, from_val, rtol=1e-5)
    assert abs(from_test - from_val) > 1e-4 * from_val  # the check above tells the two splits apart
    assert record["val_mean_set_size"][str(k)] == k  # no ties in continuous probabilities
    n = len(test_labels)
    # Only a probability within the float32-vs-float64 difference (1e-5 relative, as above) of the threshold can be
    # on the other side of it in the run: each such label probability moves the accuracy by 1 / n and, with 12 test
    # examples per class, the 10-class macro accuracy by 1 / 120; each such entry moves the mean set size by 1 / n.
    # Usually there is none, and the metrics agree exactly (up to the 1e-6 of their float32 counts' ratios).
    near = np.abs(test_probs - threshold) <= 1e-5 * threshold
    near_label = int(near[np.arange(n), test_labels].sum())
    np.testing.assert_allclose(test[f"avg{k}_accuracy"], ref.average_k_accuracy(test_probs, test_labels, threshold),
                               rtol=0, atol=near_label / n + 1e-6)
    assert np.bincount(test_labels, minlength=10).tolist() == [12] * 10
    np.testing.assert_allclose(test[f"macro_avg{k}_accuracy"],
                               ref.macro_average_k_accuracy(test_probs, test_labels, threshold, 10),
                               rtol=0, atol=near_label / 120 + 1e-6)
    np.testing.assert_allclose(test[f"avg{k}_mean_set_size"],
                               ref.average_k_set_sizes(test_probs, threshold).mean(), rtol=0,
                               atol=int(near.sum()) / n + 1e-6)
    assert abs(test[f"avg{k}_mean_set_size"] - k) < 1.0
  # The existing keys are still there, and the run's printed summary shows both metrics.
  assert all(f"{p}top{k}_accuracy" in test for k in config.eval_ks for p in ("", "macro_"))
  table = reporting.results_table(results, config.eval_ks)
  assert "| macro top-K accuracy (%) |" in table and "| macro average-K accuracy (%) |" in table
  assert "| average-K threshold (from validation) |" in table


def test_without_a_validation_split_nothing_is_estimated_on_test():
  dataset = types.SimpleNamespace(has_validation=False, name="cifar10_lt")
  record, metrics = set_eval.average_k_metrics(None, dataset, config=None, num_local_devices=1, axis_name="batch")
  assert metrics == {}
  assert record["threshold_split"] is None and record["thresholds"] is None
  assert "no validation split" in record["note"]
  results = {"test": {"top1_accuracy": 0.5, "macro_top1_accuracy": 0.4}, "average_k": record}
  table = reporting.results_table(results, (1,))
  assert "average-K accuracy (%)" not in table
  assert table.endswith(f"Average-K accuracy: {record['note']}.")


@pytest.mark.slow
def test_a_run_without_validation_split_says_why_it_has_no_average_k(fashion_dir, tmp_path):
  config = tiny_fashion_config(fashion_dir, loss="ce", normalized_head=False, validation_per_class=0, epochs=1,
                               max_steps_per_epoch=2)
  results = train_lib.train_and_evaluate(config, str(tmp_path))
  assert results["model_selection"].startswith("best test top-1 epoch")
  assert results["average_k"]["threshold_split"] is None and "no validation split" in results["average_k"]["note"]
  assert not any("avg" in key for key in results["test"])


def test_probabilities_are_described_in_the_loss_units():
  assert set_eval.describe_probabilities(config_lib.Config(loss="ce")) == "softmax of the evaluated logits"
  text = set_eval.describe_probabilities(config_lib.Config(loss="noised_imbalanced", scale=60.0))
  assert text.startswith("softmax of the evaluated logits times the loss's scale 60 (a hinge loss")
  assert "hinge" in set_eval.describe_probabilities(config_lib.Config(loss="smooth_svm"))


def _with_average_k(value_of, shift):
  def write(grid, seeds, root, skip=()):
    runs = test_reproduce._write_fake_grid(grid, seeds, root, value_of, skip=skip)  # pylint: disable=protected-access
    for run in runs:
      path = os.path.join(root, run.name, "results.json")
      with open(path) as f:
        results = json.load(f)
      for k in run.config.eval_ks:
        results["test"][f"avg{k}_accuracy"] = results["test"][f"macro_avg{k}_accuracy"] = value_of(run, k) + shift
      with open(path, "w") as f:
        json.dump(results, f)
    return runs
  return write


def _header(path):
  with open(path) as f:
    return next(csv.reader(f))


def test_tables_gain_macro_average_k_only_for_runs_that_report_it(tmp_path):
  grid = grids.get_grid("fashion_mnist_lt")
  seeds = (0, 1, 2)
  value_of = test_reproduce._fashion_value  # pylint: disable=protected-access
  # Runs of an older version (no average-K): the files keep their layout, runs.csv the columns it had then.
  old_root, old_out = str(tmp_path / "old"), str(tmp_path / "old_out")
  runs = test_reproduce._write_fake_grid(grid, seeds, old_root, value_of)  # pylint: disable=protected-access
  reproduce.write_outputs(grid, runs, seeds, old_root, old_out)
  old_table = open(os.path.join(old_out, "table.md")).read()
  assert "average-K" not in old_table
  assert _header(os.path.join(old_out, "runs.csv")) == (
      ["run", "preset", "row", "setting", "seed", "ks"]
      + [f"{p}top{k}_accuracy" for k in (1, 2, 3) for p in ("", "macro_")]
      + ["best_epoch", "train_seconds", "backend", "num_devices"])
  with open(os.path.join(old_out, "table.csv")) as f:
    assert {r["metric"] for r in csv.DictReader(f)} == {"macro_topk"}
  # Runs that report it: a macro average-K table under the top-K one, same rows, its own best in bold.
  root, out = str(tmp_path / "new"), str(tmp_path / "new_out")
  _with_average_k(value_of, 0.05)(grid, seeds, root)
  reproduce.write_outputs(grid, runs, seeds, root, out)
  table = open(os.path.join(out, "table.md")).read()
  top_k, average_k = table.split("### Macro average-K accuracy (%)")
  average_k = average_k.split("## ")[0]
  assert "| noised top-K, imbalanced | **81.00 ± 0.50** | **82.00 ± 0.50** | **83.00 ± 0.50** |" in top_k
  assert "| noised top-K, imbalanced | **86.00 ± 0.50** | **87.00 ± 0.50** | **88.00 ± 0.50** |" in average_k
  assert "| CE | 76.00 ± 0.50 | 77.00 ± 0.50 | 78.00 ± 0.50 |" in average_k
  assert "exp rho=100: macro average-1 (%)" in average_k
  # The claims checked again on average-K: the same shift for every row changes no verdict.
  claims_start = table.index("### The same claims on macro average-K")
  claims_end = table.index("## How this was made")
  assert "Verdicts that differ from macro top-K: none." in table[claims_start:claims_end]
  assert "| exp100 | 1 | 82.00 | 81.00 | +1.00 ± 0.41 | holds |" in table[claims_start:claims_end]  # MM-DRW - LDAM-DRW
  # Everything else is the older runs' table.md, byte for byte: the sections are inserted after the top-K table
  # and after the claims.
  start = table.index("### Macro average-K accuracy (%)")
  end = table.index("\n\n", table.index("| method |", start)) + 2
  assert table[:start] + table[end:claims_start] + table[claims_end:] == old_table
  with open(os.path.join(out, "table.csv")) as f:
    rows = list(csv.DictReader(f))
  avg_rows = [r for r in rows if r["metric"] == "macro_avgk"]
  assert len(avg_rows) == len(rows) - len(avg_rows) == 16 * 2 * 3
  cell = next(r for r in avg_rows if r["row"] == "mm_drw" and r["setting"] == "exp100" and r["k"] == "2")
  assert (float(cell["mean"]), float(cell["std"]), cell["paper"]) == (83.0, 0.5, "")
  header = _header(os.path.join(out, "runs.csv"))
  old_header = _header(os.path.join(old_out, "runs.csv"))
  assert header[:len(old_header) - 4] == old_header[:-4] and header[-4:] == old_header[-4:]
  assert header[len(old_header) - 4:-4] == [f"{p}avg{k}_accuracy" for k in (1, 2, 3) for p in ("", "macro_")]


@pytest.mark.slow
def test_a_finished_run_gains_average_k_from_its_checkpoint_without_training(fashion_dir, tmp_path):
  # How a grid trained before average-K gets it: remove the runs' results.json and rerun the grid's command; each
  # run resumes from its last checkpoint (the final epoch), trains nothing and evaluates the selected model again.
  config = tiny_fashion_config(fashion_dir, loss="ce", normalized_head=False, epochs=1, max_steps_per_epoch=2)
  first = train_lib.train_and_evaluate(config, str(tmp_path))
  os.remove(os.path.join(tmp_path, "results.json"))
  again = train_lib.train_and_evaluate(config, str(tmp_path))
  assert again["train_seconds"] == first["train_seconds"] and again["history"] == first["history"]
  assert again["test"] == first["test"] and again["average_k"] == first["average_k"]
  assert "macro_avg1_accuracy" in again["test"]


def test_verdict_changes_lists_the_claim_rows_whose_verdict_flips_under_average_k():
  groups = aggregate.ClaimGroups(labels={"ce": "CE", "ldam": "LDAM", "ce_drw": "CE-DRW", "noised_imbalanced": "NI",
                                         "noised_balanced": "NB"},
                                 balanced=("ce", "noised_balanced"), imbalanced=("ldam", "ce_drw", "noised_imbalanced"),
                                 logit_adjusted=(), settings=("s",), ks=(1, 2))
  base = {"ce": 70.0, "noised_balanced": 71.0, "ldam": 75.0, "ce_drw": 74.0, "noised_imbalanced": 80.0}
  seeds = (-0.5, 0.0, 0.5)
  top_k = {(r, "s", k): [v + k + d for d in seeds] for r, v in base.items() for k in (1, 2)}
  average_k = dict(top_k)
  # At K = 2 on average-K, LDAM falls 8 points: LDAM - CE turns from "holds" (+5) to "fails" (-3).
  average_k[("ldam", "s", 2)] = [v - 8.0 for v in top_k[("ldam", "s", 2)]]
  changes = aggregate.verdict_changes(aggregate.paper_claims(top_k, groups), aggregate.paper_claims(average_k, groups))
  assert changes == ["- Claim 1, s, K = 2: holds; holds; holds; holds on top-K, holds; holds; fails; holds on "
                     "average-K"]
  assert aggregate.verdict_changes(aggregate.paper_claims(top_k, groups), aggregate.paper_claims(top_k, groups)) == []
