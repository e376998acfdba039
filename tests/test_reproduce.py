"""Tests of the reproduction grids: their presets, the dry run, one training step of each loss and train rule of
their presets, the grid runner, aggregation."""
import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments import aggregate
from experiments import config as config_lib
from experiments import configs
from experiments import grids
from experiments import data_files
from experiments import reproduce
from experiments import train_lib
from experiments.configs import cifar_lt
from experiments.configs import logit_adjustment
from experiments.configs import fashion_mnist_lt
from experiments.configs import vs_loss
from tests import fake_data
from tests import optional
from tests import shared_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=shared_runs.SUBPROCESS_TIMEOUT_S):
  return subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, check=False)


def test_grid_sizes_cover_the_seed_tables_and_every_loss():
  seeds = (0, 1, 2)
  plant, mm, fashion = (grids.get_grid(n).runs(seeds) for n in ("plantnet_table", "mm_table1", "fashion_mnist_lt"))
  assert len(plant) == 6 * 3 * 3  # 6 losses x K = 1, 3, 5 (model selection per K) x 3 seeds
  assert len(mm) == 11 * 8 * 3
  # 2 settings x (11 K-independent methods + 5 top-K methods x K = 1, 2, 3) x 3 seeds.
  assert len(fashion) == 2 * (11 + 5 * 3) * 3
  for runs in (plant, mm, fashion):
    assert len({r.name for r in runs}) == len(runs)
  assert {r.preset for r in mm} == {n for n in configs.PRESETS if n.startswith(("cifar10_lt", "cifar100_lt"))
                                    and n not in logit_adjustment.presets() and n not in vs_loss.presets()}
  assert {r.preset for r in plant} == {n for n in configs.PRESETS if n.startswith("plantnet_")}
  # Every loss of the binaries, except balanced softmax: the same loss as logit_adjusted at tau 1 (its row).
  assert {r.config.loss for r in fashion} == set(config_lib.LOSSES) - {"balanced_softmax"}
  assert {r.config.tau for r in fashion if r.config.loss == "logit_adjusted"} == {1.0}
  assert {r.config.train_rule for r in fashion} == {"none", "drw"}
  # Pl@ntNet: each (loss, K) cell selects on validation macro top-K; the top-K losses also train with k = K.
  for run in plant:
    assert run.config.selection_k == run.ks[0] and run.config.model_selection == "val_macro_topk"
    if run.config.loss in ("smooth_svm", "noised_balanced", "noised_imbalanced"):
      assert run.config.k == run.ks[0]
  # The authors' hyperparameters of REFERENCE.md section 5.
  noised = next(r.config for r in plant if r.row == "noised_imbalanced")
  assert (noised.epsilon, noised.num_samples, noised.max_margin, noised.scale, noised.normalized_head) == (
      0.01, 5, 0.2, 60.0, True)
  balanced = next(r.config for r in plant if r.row == "noised_balanced")
  assert (balanced.epsilon, balanced.num_samples, balanced.normalized_head) == (1.0, 5, False)
  for run in mm:
    assert (run.config.epochs, run.config.drw_start_epoch, run.config.model) == (200, 160, "resnet32")
  # Fashion: shared hyperparameters identical across losses; K-independent losses fill K = 1, 2, 3.
  shared = {(r.config.epochs, r.config.learning_rate, r.config.lr_decay_epochs, r.config.batch_size) for r in fashion}
  assert shared == {(fashion_mnist_lt.EPOCHS, fashion_mnist_lt.LEARNING_RATE, fashion_mnist_lt.LR_DECAY_EPOCHS, 128)}
  assert {r.ks for r in fashion if r.row == "ce"} == {(1, 2, 3)}
  assert {r.ks for r in fashion if r.row == "noised_imbalanced"} == {(1,), (2,), (3,)}


def test_synthetic_grid_has_every_loss_and_k_1_3_5():
  runs = grids.get_grid("synthetic_lt").runs((0, 1, 2))
  assert len(runs) == (11 + 5 * 3) * 3 and len({r.name for r in runs}) == len(runs)
  assert {r.config.loss for r in runs} == set(config_lib.LOSSES)
  assert {r.config.k for r in runs if r.config.loss == "noised_imbalanced"} == {1, 3, 5}
  assert {r.ks for r in runs if r.row == "ce"} == {(1, 3, 5)}
  assert {(r.config.dataset, r.config.model, r.config.epochs) for r in runs} == {("synthetic_lt", "mlp", 30)}


@pytest.mark.slow
@pytest.mark.parametrize("grid", ["plantnet_table", "mm_table1"])
def test_dry_run_prints_every_command(grid):
  out = _cli(f"--grid={grid}", "--dry_run", "--workdir_root=/nonexistent_root")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  runs = grids.get_grid(grid).runs((0, 1, 2))
  assert lines[0] == f"# {grid}: {len(runs)} runs (0 done), seeds 0,1,2."
  commands = lines[1:]
  assert len(commands) == len(runs)
  for run, command in zip(runs, commands):
    assert command.startswith(f"python -m experiments.train --config={run.preset} --seed={run.seed}")
    assert f"--workdir=/nonexistent_root/{run.name}" in command
    assert grids.get_grid(grid).data_flags in command


def config_of_command(grid, run):
  """The config that the training binary's own flags parse from the run's printed command (machine-specific flags
  such as --workdir, --data_dir and --pretrained_weights left out)."""
  from experiments import train  # pylint: disable=g-import-not-at-top  (defines the flags)
  argv = ["train"] + [a for a in reproduce.run_command(grid, run, "root").split()[3:]
                      if not a.startswith(("--workdir", "--data_dir", "--pretrained"))]
  try:
    train.FLAGS(argv)
    config, _ = train.config_from_flags()
  finally:
    train.FLAGS.unparse_flags()
  return config


@pytest.mark.slow
def test_dry_run_commands_rebuild_the_grid_configs():
  """Each printed command, parsed by the training binary's own flags, gives exactly the run's config."""
  for grid_name in ("plantnet_table", "fashion_mnist_lt", "synthetic_lt"):
    grid = grids.get_grid(grid_name)
    for run in grid.runs((0, 4)):
      assert config_of_command(grid, run) == config_lib.validate(run.config), run.name


def _one_step(config, workdir):
  results = train_lib.train_and_evaluate(config, workdir)
  assert all(np.isfinite(r["train"]["loss"]) for r in results["history"])
  for k in config.eval_ks:
    assert 0.0 <= results["test"][f"macro_top{k}_accuracy"] <= 1.0
  # What was trained is the preset with the one-step changes only.
  assert results["config"] == config_lib.validate(config).to_dict()
  return results


@pytest.fixture
def fake_cifar(monkeypatch):
  """CIFAR-10/100 arrays without TFDS: 100 training images per class (so rho = 100 leaves 1 in the tail class) and
  1 test image per class. The TFDS path itself is covered by tests/test_train.py (tfds.testing.mock_data)."""
  def load(name, data_dir, download, looked_in):
    del data_dir, download, looked_in
    num_classes = {"cifar10_lt": 10, "cifar100_lt": 100}[name]
    rng = np.random.default_rng(0)

    def split(per_class):
      labels = np.repeat(np.arange(num_classes), per_class)
      return rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8), labels.astype(np.int64)
    return {"train": split(100), "test": split(1)}, [f"class_{c}" for c in range(num_classes)]
  monkeypatch.setattr(data_files, "tfds_arrays", load)


CIFAR_PRESETS = sorted(cifar_lt.presets()) + sorted(logit_adjustment.presets()) + sorted(vs_loss.presets())


@pytest.mark.parametrize("preset", CIFAR_PRESETS)
def test_every_cifar_preset_is_its_protocol_on_its_long_tailed_subset(preset, fake_cifar):
  # No training: the preset validates, follows its paper's protocol, and its dataset settings give the long-tailed
  # subset of its grid column (100 images per class -> 100 in the head class, 100 / rho in the tail one).
  del fake_cifar
  config = config_lib.validate(configs.get_preset(preset).config)
  counts = np.asarray(train_lib.load_dataset(config).train_class_counts)
  assert len(counts) == {"cifar10_lt": 10, "cifar100_lt": 100}[config.dataset]
  assert counts[0] == 100 and counts[-1] == 100 / config.imbalance_ratio and np.all(np.diff(counts) <= 0)
  # The LDAM-DRW/MM protocol reports the best test epoch; the logit-adjustment paper, the last one.
  assert (config.model, config.model_selection) == (
      "resnet32", "last_epoch" if preset in logit_adjustment.presets() else "best_test_epoch")
  if preset in cifar_lt.presets():
    assert (config.epochs, config.drw_start_epoch) == (200, 160)
  elif preset in logit_adjustment.presets():
    # la_ce: plain CE; la_ce_posthoc: CE evaluated with logits - log(prior); la_loss: the logit-adjusted loss.
    method = preset.split("exp100_")[1]
    assert config.imbalance_ratio == 100
    assert (config.loss, config_lib.loss_tau(config) if config.loss == "logit_adjusted" else 0.0,
            config.posthoc_tau) == {"la_ce": ("ce", 0.0, 0.0), "la_ce_posthoc": ("ce", 0.0, 1.0),
                                    "la_loss": ("logit_adjusted", 1.0, 0.0)}[method]
    assert (config.epochs, config.nesterov, config.weight_decay) == (
        (1241 if preset.startswith("cifar10_") else 1419), True, 2e-4)
  else:
    # The authors' LDAM-DRW protocol with a linear head, and the values of their README (CIFAR-10) or train.py
    # defaults.
    assert (config.loss, config.normalized_head, config.train_rule, config.epochs, config.weight_decay) == (
        "vs", False, "none", 200, 2e-4)
    assert (config.vs_gamma, config.tau) == ((0.2, 1.2) if preset.startswith("cifar10_") else (0.3, 1.0))


@pytest.fixture
def small_resnet(monkeypatch):
  """`models.create_model`'s CIFAR ResNet-32 cut to one block per stage: a ResNet-8, whose compilation is a third of
  ResNet-32's. The layers, heads and training path are the same; only the depth differs."""
  from experiments import models  # pylint: disable=g-import-not-at-top
  create_model = models.create_model

  def resnet8(name, **kwargs):
    assert name == "resnet32"
    return create_model(name, **kwargs).clone(blocks_per_stage=1)

  monkeypatch.setattr(models, "create_model", resnet8)


# One training step per CIFAR-LT dataset and head (linear, cosine), on the presets whose loss and train rule the
# Fashion-MNIST-LT runs of tests/test_train.py do not train (CB-focal: class weights inside the focal factor;
# MM-LDAM-DRW in the released code's compat mode), LDAM-DRW and VS; both imbalance profiles. The other presets differ
# from these only in their loss and train rule (trained on the small CNN) or their class counts (checked above). The
# first trains the presets' ResNet-32 itself; the others its one-block-per-stage cut (`small_resnet`), since each
# ResNet-32 compilation costs 15-20 s on the CI machine for no more coverage of the wiring.
CIFAR_ONE_STEP = ("cifar10_lt_exp100_cb_focal", "cifar10_lt_exp100_ldam_drw", "cifar100_lt_exp100_vs",
                  "cifar100_lt_step10_mm_ldam_drw")


@pytest.mark.slow
@pytest.mark.parametrize("preset", CIFAR_ONE_STEP)
def test_each_cifar_dataset_and_head_trains_one_step(preset, fake_cifar, tmp_path, monkeypatch, request):
  del fake_cifar
  if preset != CIFAR_ONE_STEP[0]:
    request.getfixturevalue("small_resnet")
  monkeypatch.setattr(train_lib, "TRAIN_FIT_MAX_EXAMPLES", 64)  # the train fit's path, not 10,000 forward passes
  config = configs.get_preset(preset).config.replace(
      epochs=1, max_steps_per_epoch=1, batch_size=4, eval_batch_size=50, drw_start_epoch=0, warmup_epochs=0,
      lr_decay_epochs=())
  results = _one_step(config, str(tmp_path))
  assert results["train_class_counts"][0] == 100 and len(results["train_class_counts"]) == len(results["per_class"])
  assert results["model_selection"].startswith(
      {"best_test_epoch": "best test top-1 epoch: the test set doubles as validation",
       "last_epoch": "last epoch: no validation split"}[config_lib.validate(config).model_selection])
  assert results["train_fit"]["examples"] == 64 and results["train_fit"]["subset"]
  assert results["logit_adjustment"]["training_tau"] == (config.tau if config.loss == "vs" else 0.0)


@pytest.fixture(scope="module")
def plantnet_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("plantnet"))
  fake_data.write_plantnet_tree(root)
  return root


PLANTNET_PRESETS = [n for n in configs.PRESETS if n.startswith("plantnet_")]


@pytest.mark.parametrize("preset", PLANTNET_PRESETS)
def test_every_plantnet_preset_is_the_resnet50_protocol(preset):
  config = config_lib.validate(configs.get_preset(preset).config)
  assert (config.dataset, config.model, config.require_pretrained, config.train_rule) == (
      "plantnet300k", "resnet50", True, "none")
  assert (config.model_selection, config.eval_ks) == ("val_macro_topk", (1, 3, 5))


@pytest.mark.slow
@pytest.mark.parametrize("preset", PLANTNET_PRESETS)
@optional.needs_tensorflow
def test_each_plantnet_loss_trains_one_step_on_a_small_resnet(preset, plantnet_root, tmp_path, small_resnet):
  # The presets' losses and heads on a ResNet-8 (`small_resnet`), 32x32 images, the folder pipeline and the selection
  # on validation macro top-K; the ResNet-50 itself: one run, tests/test_train.py. (A ResNet-18 run took 40-120 s
  # here: a ResNet-50's compilation cost for little more coverage.)
  del small_resnet
  config = configs.get_preset(preset).config.replace(
      model="resnet32", data_dir=plantnet_root, image_size=32, epochs=1, max_steps_per_epoch=1, batch_size=4,
      eval_batch_size=8, k=min(configs.get_preset(preset).config.k, 3), selection_k=3, eval_ks=(1, 3),
      require_pretrained=False)
  results = _one_step(config, str(tmp_path))
  assert results["model_selection"].startswith("best validation macro top-3")
  assert results["train_class_counts"] == list(fake_data.PLANTNET_TRAIN_COUNTS)
  assert set(results["validation"]) >= {"macro_top3_accuracy", "top1_accuracy"}


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("fashion"))
  # 110 - 6 validation = 104 training images per class: rho = 100 leaves 1 in the tail class.
  fake_data.write_fashion_mnist_idx(d, train_per_class=110, test_per_class=5)
  return d


def _tiny_fashion(config, data_dir):
  return config.replace(data_dir=data_dir, validation_per_class=6, epochs=2, max_steps_per_epoch=2, batch_size=16,
                        eval_batch_size=40, lr_decay_epochs=(1,), drw_start_epoch=1, eval_every_epochs=2)


# --- Aggregation ---------------------------------------------------------------------------------------------------
def _fake_results(run, value_of):
  """A results.json with the fields aggregation reads; accuracies from value_of(run, k) (a fraction)."""
  ks = run.config.eval_ks
  test = {}
  for k in ks:
    test[f"top{k}_accuracy"] = test[f"macro_top{k}_accuracy"] = value_of(run, k)
  counts = [100, 30, 10]
  per_class = {f"c{i}": {"train_count": n, "test_count": 10, **{f"top{k}_accuracy": value_of(run, k) for k in ks}}
               for i, n in enumerate(counts)}
  return {"test": test, "per_class": per_class, "config": run.config.to_dict(), "best_epoch": 3,
          "train_seconds": 1.5, "backend": "cpu", "num_devices": 1}


def _write_fake_grid(grid, seeds, root, value_of, skip=()):
  runs = grid.runs(seeds)
  for run in runs:
    if run.name in skip:
      continue
    os.makedirs(os.path.join(root, run.name))
    with open(os.path.join(root, run.name, "results.json"), "w") as f:
      json.dump(_fake_results(run, value_of), f)
  return runs


def _fashion_value(run, k):
  """Known accuracies: imbalanced noised best, MM-DRW 1 point above LDAM-DRW; seed adds -0.5/0/+0.5 points."""
  base = {"noised_imbalanced": 0.80, "mm_drw": 0.76, "ldam_drw": 0.75}.get(run.row, 0.70)
  return base + 0.01 * k + 0.005 * (run.seed - 1) + (0.02 if run.setting == "step10" else 0.0)


@pytest.mark.slow
def test_aggregate_only_writes_table_csv_plots_and_claims(tmp_path):
  grid = grids.get_grid("fashion_mnist_lt")
  root, out = str(tmp_path / "runs"), str(tmp_path / "out")
  runs = _write_fake_grid(grid, (0, 1, 2), root, _fashion_value)
  proc = _cli("--grid=fashion_mnist_lt", "--aggregate_only", f"--workdir_root={root}", f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr
  table = open(os.path.join(out, "table.md")).read()
  # Mean over seeds 0, 1, 2 of 0.80 + 0.01 k + (-0.005, 0, 0.005); sample std 0.5 points; best in bold.
  assert "| noised top-K, imbalanced | **81.00 ± 0.50** | **82.00 ± 0.50** | **83.00 ± 0.50** | **83.00 ± 0.50** |" in table
  assert "| CE | 71.00 ± 0.50 | 72.00 ± 0.50 | 73.00 ± 0.50 | 73.00 ± 0.50 |" in table
  with open(os.path.join(out, "table.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 16 * 2 * 3
  cell = next(r for r in rows if r["row"] == "mm_drw" and r["setting"] == "exp100" and r["k"] == "2")
  assert (float(cell["mean"]), float(cell["std"]), cell["num_seeds"]) == (78.0, 0.5, "3")
  with open(os.path.join(out, "runs.csv")) as f:
    assert len(list(csv.DictReader(f))) == len(runs)
  for name in ("macro_topk_exp100.png", "per_class_step10.png", "macro_topk_step10.png", "per_class_exp100.png"):
    if optional.available("matplotlib"):
      assert os.path.getsize(os.path.join(out, "plots", name)) > 5000
      assert f"](plots/{name})" in table
    else:  # tables without plots, and no link to a missing file
      assert not os.path.exists(os.path.join(out, "plots", name)) and "](plots/" not in table
  # Claims: MM-DRW - LDAM-DRW = +1.00 with standard error sqrt(2 * 0.5^2 / 3) = 0.41 -> holds (beyond 2 SE).
  assert "| exp100 | 1 | 77.00 | 76.00 | +1.00 ± 0.41 | holds |" in table
  assert "| step10 | 3 | 85.00 | 1 of 16 | MM-DRW 81.00 | +4.00 ± 0.41 | holds |" in table
  # Claim 4: noised imbalanced (0.80 + ...) against the LA rows (0.70 + ...), and LA offsets on the noised loss.
  assert ("| exp100 | 2 | 82.00 | LA loss (logit-adjusted CE, tau 1) 72.00 | +10.00 ± 0.41 | holds | "
          "-10.00 ± 0.41 (fails) |") in table


def test_claim_verdicts_follow_the_noise():
  cells = {("mm_drw", "exp100", 1): [75.0, 76.0, 77.0], ("ldam_drw", "exp100", 1): [75.5, 76.5, 77.5]}
  lines = "\n".join(aggregate.fashion_claims(cells))
  assert "| exp100 | 1 | 76.00 | 76.50 | -0.50 ± 0.82 | fails, within noise |" in lines
  cells = {("mm_drw", "exp100", 1): [70.0, 70.1, 69.9], ("ldam_drw", "exp100", 1): [75.0, 75.1, 74.9]}
  assert "| -5.00 ± 0.08 | fails |" in "\n".join(aggregate.fashion_claims(cells))


def test_missing_runs_are_marked(tmp_path):
  grid = grids.get_grid("mm_table1")
  runs = grid.runs((0, 1))
  skip = {r.name for r in runs if r.row == "erm" or (r.row == "mm" and r.seed == 1)}
  _write_fake_grid(grid, (0, 1), str(tmp_path), lambda run, k: 0.7 + 0.001 * run.seed, skip=skip)
  results = aggregate.load_results(runs, str(tmp_path))
  assert len(results) == len(runs) - len(skip)
  cells = aggregate.collect_cells(grid, runs, results)
  table = aggregate.markdown_table(grid, cells, 2)
  erm = next(line for line in table.splitlines() if line.startswith("| ERM |"))
  assert erm == "| ERM | " + " | ".join(["— [paper %.2f]" % e for e in cifar_lt.PAPER_TOP1_ERROR["erm"]]) + " |"
  mm = next(line for line in table.splitlines() if line.startswith("| MM |"))
  assert "30.00 (n=1) [paper 26.56]" in mm  # error = 100 - 70.0 from seed 0 only
  focal = next(line for line in table.splitlines() if line.startswith("| Focal |"))
  assert "**29.95 ± 0.07** [paper 29.62]" in focal  # best of its column (ties: first row)


@pytest.mark.slow
def test_run_all_skips_finished_runs_and_survives_a_failure(fashion_dir, tmp_path, capsys):
  grid = grids.get_grid("fashion_mnist_lt")
  runs = [r for r in grid.runs((0,)) if r.row == "ce" and r.setting == "exp100"]
  runs = [dataclasses.replace(r, config=_tiny_fashion(r.config, fashion_dir)) for r in runs]
  broken = dataclasses.replace(runs[0], name="broken", config=runs[0].config.replace(data_dir=str(tmp_path / "none"),
                                                                                    tfds_download=False))
  root = str(tmp_path / "root")
  assert reproduce.run_all(runs + [broken], root) == ["broken"]
  assert "broken FAILED: DatasetNotFoundError" in capsys.readouterr().out
  first = os.path.getmtime(os.path.join(root, runs[0].name, "results.json"))
  assert reproduce.run_all(runs, root) == []  # Done: nothing runs, nothing is rewritten.
  assert "..." not in capsys.readouterr().out
  assert os.path.getmtime(os.path.join(root, runs[0].name, "results.json")) == first
  # The trained runs are the table's: their rows hold the runs' test accuracies (one seed), the others none.
  table = reproduce.write_outputs(grid, runs, (0,), root, str(tmp_path / "out"))
  for run in runs:
    with open(os.path.join(root, run.name, "results.json")) as f:
      accuracy = 100 * json.load(f)["test"][f"macro_top{run.ks[0]}_accuracy"]
    line = next(line for line in table.splitlines() if line.startswith(f"| {grid.rows[run.row]} |"))
    assert f"{accuracy:.2f}" in line, (line, accuracy)
  assert re.search(r"^\| Focal \|( — \|)+$", table, flags=re.MULTILINE), table


@pytest.mark.slow
def test_shared_workers_skip_a_run_another_one_holds_and_take_it_once_released(fashion_dir, tmp_path, capsys):
  fcntl = pytest.importorskip("fcntl")
  grid = grids.get_grid("fashion_mnist_lt")
  runs = [r for r in grid.runs((0,)) if r.row in ("ce", "focal") and r.setting == "exp100"][:2]
  runs = [dataclasses.replace(r, config=_tiny_fashion(r.config, fashion_dir)) for r in runs]
  root = str(tmp_path / "root")
  os.makedirs(os.path.join(root, reproduce.CLAIMS_DIR))
  with open(os.path.join(root, reproduce.CLAIMS_DIR, f"{runs[0].name}.lock"), "a") as held:
    fcntl.flock(held, fcntl.LOCK_EX)  # another worker is training runs[0]
    assert reproduce.run_all(runs, root, shared=True) == []
    fcntl.flock(held, fcntl.LOCK_UN)
  out = capsys.readouterr().out
  assert runs[0].name not in out and f"[2/2] {runs[1].name} ..." in out
  assert not os.path.exists(os.path.join(root, runs[0].name))
  assert os.path.exists(os.path.join(root, runs[1].name, "results.json"))
  # Released (that worker died): the next pass takes it; the finished run is not trained again.
  assert reproduce.run_all(runs, root, shared=True) == []
  out = capsys.readouterr().out
  assert f"[1/1] {runs[0].name} ..." in out and runs[1].name not in out
  assert os.path.exists(os.path.join(root, runs[0].name, "results.json"))


@pytest.mark.parametrize("args, message", [
    (["--grid=nope"], "--grid"),
    (["--grid=mm_table1", "--seeds=1,x"], "--seeds must be comma-separated integers"),
    (["--grid=mm_table1", "--seeds=1,1"], "--seeds must be distinct"),
    (["--grid=mm_table1", "--num_workers=0"], "--num_workers must be >= 1"),
    ([], "--grid is required"),
])
@pytest.mark.slow
def test_bad_flags_fail_at_start(args, message):
  out = _cli(*args)
  assert out.returncode != 0
  assert message in out.stderr + out.stdout


def test_the_table_names_the_commands_that_trained_the_runs(tmp_path):
  grid = grids.get_grid("mm_table1")
  root, out = str(tmp_path / "runs"), str(tmp_path / "out")
  runs = _write_fake_grid(grid, (0,), root, lambda run, k: 0.75)
  with open(os.path.join(root, reproduce.INVOCATIONS_FILE), "w") as f:
    f.write(json.dumps({"command": "python -m experiments.reproduce --grid=mm_table1 --seeds=0", "date": "d",
                        "runs_trained": len(runs), "wall_seconds": 600.0}) + "\n")
    f.write(json.dumps({"command": "python -m experiments.reproduce --grid=mm_table1 --seeds=0", "date": "e",
                        "runs_trained": 0, "wall_seconds": 3.0}) + "\n")
  reproduce.write_outputs(grid, runs, (0,), root, out)
  table = open(os.path.join(out, "table.md")).read()
  assert "(d): trained 88 runs in 10.0 min wall clock." in table
  assert "(e)" not in table  # An invocation that trained nothing is not listed.
  assert "| ERM | **25.00** [paper 29.64] |" in table


def _synthetic_value(run, k):
  """Known accuracies for the synthetic grid: LA 0.60 + 0.05 k, noised imbalanced 0.55 + 0.05 k, others 0.50."""
  base = {"la": 0.60, "noised_imbalanced": 0.55}.get(run.row, 0.50)
  return base + 0.05 * k + 0.005 * (run.seed - 1)


@pytest.mark.slow
def test_synthetic_aggregate_writes_regret_and_bucket_tables(tmp_path):
  grid = grids.get_grid("synthetic_lt")
  root, out = str(tmp_path / "runs"), str(tmp_path / "out")
  runs = grid.runs((0, 1, 2))
  for run in runs:
    results = _fake_results(run, _synthetic_value)
    # Classes of 500, 50 and 5 training examples: one per bucket; the Bayes per-class accuracies 0.9, 0.8, 0.7.
    for c, n in zip(results["per_class"].values(), (500, 50, 5)):
      c["train_count"] = n
    per_class = {f"top{k}_accuracy": [0.9, 0.8, 0.7] for k in grid.ks}
    results["bayes"] = {kind: {**{f"macro_top{k}_accuracy": v + 0.01 * k for k in grid.ks}, "per_class": per_class}
                        for kind, v in (("likelihood", 0.80), ("posterior", 0.70))}
    os.makedirs(os.path.join(root, run.name))
    with open(os.path.join(root, run.name, "results.json"), "w") as f:
      json.dump(results, f)
  proc = _cli("--grid=synthetic_lt", "--aggregate_only", f"--workdir_root={root}", f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr
  table = open(os.path.join(out, "table.md")).read()
  # Bayes likelihood 81 / 83 / 85; the posterior row's regret is 10 points.
  assert ("| *Bayes-optimal for macro top-K (exact class likelihood)* | *81.00* | *83.00* | *85.00* | *0.00* | "
          "*0.00* | *0.00* |") in table
  assert "| *Bayes posterior (optimal for top-K under the training prior)* | *71.00* | *73.00* | *75.00* | *10.00* |" in table
  # LA: 0.60 + 0.05 k -> 65 / 75 / 85, regret 16 / 8 / 0, best in bold.
  assert ("| LA loss (tau 1) | **65.00 ± 0.50** | **75.00 ± 0.50** | **85.00 ± 0.50** | **16.00 ± 0.50** | "
          "**8.00 ± 0.50** | **0.00 ± 0.50** |") in table
  # Buckets: one class each; Bayes 90 / 80 / 70, a method its per-class value.
  assert "| *Bayes-optimal (likelihood)* | 90.0 | 80.0 | 70.0 | 90.0 | 80.0 | 70.0 | 90.0 | 80.0 | 70.0 |" in table
  assert "| CE | 55.0 | 55.0 | 55.0 | 65.0 | 65.0 | 65.0 | 75.0 | 75.0 | 75.0 |" in table
  assert os.path.exists(os.path.join(out, "plots", "buckets_lt100.png")) == optional.available("matplotlib")
  if optional.available("matplotlib"):
    assert os.path.getsize(os.path.join(out, "plots", "buckets_lt100.png")) > 5000
  # Claim 4 on this grid: noised imbalanced (55 + 5k) against the best logit-adjusted row (LA, 60 + 5k).
  assert "| lt100 | 1 | 60.00 | LA loss (tau 1) 65.00 | -5.00 ± 0.41 | fails |" in table
  assert len(runs) == 78

