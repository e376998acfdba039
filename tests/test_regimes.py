"""Regimes of synthetic_lt (issue 19): the balanced draw, the pretraining stage and its cache, the fine-tuning's
initialization, and the `fit` / `pretrained` presets and grids."""
import dataclasses
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import config as config_lib
from experiments import configs
from experiments import grids
from experiments import pretraining
from experiments import reproduce
from experiments import synthetic_lt as S
from experiments import train_lib
from experiments.configs import fashion_mnist_lt as fashion_configs
from experiments.configs import synthetic_lt as synth_configs
from tests import shared_runs
from tests import test_reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**changes):
  """10 classes in 2 genera, 97 long-tailed training examples, a 16 x 16 MLP pretrained on 30 per class."""
  base = config_lib.Config(
      dataset="synthetic_lt", model="mlp", normalized_head=False, loss="ce", augment=False, synthetic_num_classes=10,
      synthetic_num_genera=2, synthetic_max_count=30, imbalance_ratio=10.0, synthetic_test_per_class=10,
      validation_per_class=4, mlp_widths=(16, 16), epochs=1, batch_size=16, eval_batch_size=50, lr_decay_epochs=(),
      eval_ks=(1, 3), model_selection="last_epoch", log_every_steps=1000, pretrain_examples_per_class=30,
      pretrain_epochs=2, pretrain_learning_rate=0.1)
  return config_lib.validate(base.replace(**changes))


@pytest.fixture(scope="module")
def data():
  return S.generate(config_lib.synthetic_spec(_tiny()))


# --- The balanced draw --------------------------------------------------------------------------------------------


def test_balanced_draw_is_balanced_and_independent_of_the_splits():
  spec = dataclasses.replace(S.SyntheticSpec(), test_per_class=30)
  gen = S.generate(spec)
  x, y, z = S.balanced_draw(gen, 200, stream=pretraining.TRAIN_STREAM)
  assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (100 * 200, 8)
  np.testing.assert_array_equal(np.bincount(y, minlength=100), np.full(100, 200))
  assert not np.array_equal(y[:1000], np.sort(y[:1000]))  # shuffled, not grouped by class
  # The same classes and map as the splits: x = f(z), and each class's latents scatter around its mean with unit
  # variance (the mean of 200 draws within 5 standard errors, 1/sqrt(200), in every coordinate).
  np.testing.assert_allclose(x, S.apply_map(gen.observation_map, z).astype(np.float32))
  class_means = np.stack([z[y == c].mean(0) for c in range(100)])
  assert np.abs(class_means - gen.means).max() < 5 / np.sqrt(200)
  # Independent of the train / val / test examples: no observation is shared, and no latent either.
  drawn = {row.tobytes() for row in x}
  for split in S.SPLITS:
    assert not drawn & {row.tobytes() for row in gen.x[split]}, split
    assert not np.isin(z, gen.latents[split]).any(), split
  # Deterministic per stream; another stream gives other examples.
  x2, y2, _ = S.balanced_draw(gen, 200, stream=pretraining.TRAIN_STREAM)
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  x3, _, _ = S.balanced_draw(gen, 200, stream=pretraining.VALIDATION_STREAM)
  assert not {row.tobytes() for row in x3} & drawn


@pytest.mark.parametrize("kwargs, name", [(dict(per_class=0, stream=100), "per_class"),
                                          (dict(per_class=5, stream=3), "stream"),
                                          (dict(per_class=2.5, stream=100), "per_class")])
def test_balanced_draw_rejects_bad_arguments(data, kwargs, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    S.balanced_draw(data, **kwargs)


# --- The pretraining and its cache -------------------------------------------------------------------------------


@pytest.mark.slow
def test_pretraining_is_deterministic_and_a_cache_hit_returns_the_same_weights(data, tmp_path):
  config = _tiny()
  first = pretraining.hidden_layers(config, data, str(tmp_path / "a" / "run"))
  fresh = pretraining.hidden_layers(config, data, str(tmp_path / "b" / "run"))  # another cache dir: computed again
  hit = pretraining.hidden_layers(config, data, str(tmp_path / "a" / "other_run"))  # same root: shared
  assert (first.record["cache"], fresh.record["cache"], hit.record["cache"]) == ("computed", "computed", "hit")
  assert first.record["path"] == str(tmp_path / "a" / "pretrained" / f"mlp_{pretraining.cache_key(config)}.npz")
  assert hit.record["path"] == first.record["path"] and os.path.isfile(first.record["path"])
  assert sorted(first.arrays) == ["batch_stats/bn1/mean", "batch_stats/bn1/var", "batch_stats/bn2/mean",
                                  "batch_stats/bn2/var", "params/bn1/bias", "params/bn1/scale", "params/bn2/bias",
                                  "params/bn2/scale", "params/dense1/kernel", "params/dense2/kernel"]  # no head
  for other in (fresh, hit):
    assert sorted(other.arrays) == sorted(first.arrays)
    for key in first.arrays:
      np.testing.assert_array_equal(other.arrays[key], first.arrays[key], err_msg=key)
    for key in ("train_fit_top1", "val_top1", "final_train_loss", "train_examples", "val_examples"):
      assert other.record[key] == first.record[key], key
  assert first.record["train_examples"] == 10 * 30 and first.record["val_examples"] == 10 * 20
  assert first.record["settings"] == pretraining.settings(config)
  # Not the initialization: training moved the weights.
  again = pretraining.pretrain_hidden_layers(config.replace(pretrain_epochs=1), data)
  assert not np.array_equal(again.arrays["params/dense1/kernel"], first.arrays["params/dense1/kernel"])


@pytest.mark.slow
def test_pretraining_learns_the_classes():
  # Separable classes (far-apart genera of one class each): the balanced draw is learned, far above chance (10 %).
  config = _tiny(synthetic_num_genera=10, synthetic_genus_spread=4.0, pretrain_examples_per_class=50,
                 pretrain_epochs=8, mlp_widths=(32, 32))
  pretrained = pretraining.pretrain_hidden_layers(config, S.generate(config_lib.synthetic_spec(config)))
  assert pretrained.record["train_fit_top1"] > 0.8 and pretrained.record["val_top1"] > 0.7, pretrained.record


def _corrupt(path, how, config, data, tmp_path):
  if how == "truncated":
    with open(path, "rb") as f:
      raw = f.read()
    with open(path, "wb") as f:
      f.write(raw[:len(raw) // 2])
  elif how == "garbage":
    with open(path, "wb") as f:
      f.write(np.random.default_rng(0).bytes(4000))
  elif how == "altered_array":
    with np.load(path) as npz:
      arrays = {k: npz[k] for k in npz.files}
    arrays["params/dense1/kernel"] = arrays["params/dense1/kernel"] + 1e-3
    with open(path, "wb") as f:
      np.savez(f, **arrays)
  elif how == "other_settings":  # a file of another pretraining moved to this name
    other = pretraining.hidden_layers(config.replace(pretrain_learning_rate=0.05), data, str(tmp_path / "o" / "r"))
    os.replace(other.record["path"], path)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "garbage", "altered_array", "other_settings"])
def test_a_damaged_cache_file_is_recomputed_not_used(data, tmp_path, how):
  config = _tiny()
  fresh = pretraining.hidden_layers(config, data, str(tmp_path / "run"))
  _corrupt(fresh.record["path"], how, config, data, tmp_path)
  with pytest.raises(pretraining.CorruptCacheError):
    pretraining.read_cache(fresh.record["path"], pretraining.settings(config))
  again = pretraining.hidden_layers(config, data, str(tmp_path / "run"))
  assert again.record["cache"].startswith("recomputed ("), again.record["cache"]
  for key in fresh.arrays:
    np.testing.assert_array_equal(again.arrays[key], fresh.arrays[key], err_msg=key)
  # The file was replaced by a valid one.
  assert pretraining.hidden_layers(config, data, str(tmp_path / "run")).record["cache"] == "hit"
  assert not [f for f in os.listdir(os.path.dirname(fresh.record["path"])) if f.endswith(".tmp")]


_WAITER = """
import sys
from experiments import pretraining, synthetic_lt, config as config_lib
from tests.test_regimes import _tiny
config = _tiny()
data = synthetic_lt.generate(config_lib.synthetic_spec(config))
print("ready", flush=True)
print(pretraining.hidden_layers(config, data, sys.argv[1]).record["cache"], flush=True)
"""


def _wait_until_blocked_on_a_lock(pid):
  """Returns once process `pid` waits for a file lock (Linux: a blocked request in /proc/locks reads `-> FLOCK ...
  pid ...`). Elsewhere, or if the kernel does not show it, waits 2 s: the test then holds without proving the wait."""
  deadline = time.monotonic() + shared_runs.SUBPROCESS_TIMEOUT_S  # a guard against a hang only
  while time.monotonic() < deadline:
    try:
      with open("/proc/locks") as f:
        if any(line.split()[1:2] == ["->"] and str(pid) in line.split() for line in f):
          return
    except OSError:
      break
    time.sleep(0.05)
  time.sleep(2.0)


@pytest.mark.slow
def test_a_second_process_waits_for_the_first_ones_file(data, tmp_path):
  config = _tiny()
  workdir = str(tmp_path / "run")
  path = pretraining.cache_path(config, workdir)
  with pretraining._exclusive(path):  # pylint: disable=protected-access  (this process is the first worker)
    proc = subprocess.Popen([sys.executable, "-c", _WAITER, workdir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
      assert proc.stdout.readline().strip() == "ready"
      _wait_until_blocked_on_a_lock(proc.pid)  # the other process now waits for this one's lock
      assert proc.poll() is None and not os.path.exists(path)
      pretraining.write_cache(path, pretraining.pretrain_hidden_layers(config, data), pretraining.settings(config))
    except BaseException:
      proc.kill()
      raise
  out, _ = proc.communicate(timeout=shared_runs.SUBPROCESS_TIMEOUT_S)
  assert proc.returncode == 0 and out.strip() == "hit"  # it read this process's file instead of computing its own


def test_cache_key_holds_what_determines_the_weights_and_nothing_else():
  config = _tiny()
  key = pretraining.cache_key(config)
  for change in (dict(seed=1), dict(mlp_widths=(16, 8)), dict(pretrain_epochs=3), dict(pretrain_learning_rate=0.2),
                 dict(pretrain_examples_per_class=31), dict(subset_seed=1), dict(synthetic_genus_spread=1.5),
                 dict(imbalance_ratio=5.0), dict(half_precision=True)):
    assert pretraining.cache_key(config.replace(**change)) != key, change
  # Shared by every loss, head and fine-tuning schedule of the seed, and wherever the cache lives.
  for change in (dict(loss="ldam", normalized_head=True), dict(learning_rate=0.01), dict(epochs=3),
                 dict(train_rule="drw", drw_start_epoch=0), dict(pretrain_cache_dir="/elsewhere"),
                 dict(weight_decay=0.0)):
    assert pretraining.cache_key(config.replace(**change)) == key, change


def test_writing_the_cache_is_atomic(data, tmp_path, monkeypatch):
  config = _tiny()
  pretrained = pretraining.pretrain_hidden_layers(config, data)
  path = str(tmp_path / "c" / "mlp_x.npz")

  seen = []

  def fail(fd):  # the write is done, not yet on disk: is the final name already taken?
    seen.append(os.path.exists(path))
    raise OSError("disk full")
  monkeypatch.setattr(pretraining.os, "fsync", fail)
  with pytest.raises(OSError, match="disk full"):
    pretraining.write_cache(path, pretrained, pretraining.settings(config))
  assert seen == [False]  # the data went to another name
  assert os.listdir(tmp_path / "c") == []  # and no partial or temporary file is left
  monkeypatch.undo()
  pretraining.write_cache(path, pretrained, pretraining.settings(config))
  assert os.listdir(tmp_path / "c") == ["mlp_x.npz"]


# --- Fine-tuning from the pretrained hidden layers ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("normalized_head", [False, True])
def test_fine_tuning_starts_from_the_pretrained_hidden_layers_and_a_fresh_head(data, tmp_path, normalized_head):
  config = _tiny(normalized_head=normalized_head)
  dataset = train_lib.load_dataset(config)
  pretrained = pretraining.hidden_layers(config, dataset.synthetic, str(tmp_path / "run"))
  scratch, _ = train_lib.create_train_state(config, dataset, 4)
  state, _ = train_lib.create_train_state(config, dataset, 4, pretrained)
  flat = {f"{c}/{'/'.join(k)}": np.asarray(v) for c, tree in (("params", state.params),
                                                               ("batch_stats", state.batch_stats))
          for k, v in _flatten(tree).items()}
  for key, value in pretrained.arrays.items():
    np.testing.assert_array_equal(flat[key], value, err_msg=key)
    assert not np.array_equal(flat[key], np.asarray(_get(scratch, key))), key  # not what the seed's init gives
  # The head is the run's own initialization (the same as from scratch), never the pretraining's linear head.
  head = sorted(k for k in flat if k.split("/")[1] == "head")
  assert head == (["params/head/kernel"] if normalized_head else ["params/head/bias", "params/head/kernel"])
  for key in head:
    np.testing.assert_array_equal(flat[key], np.asarray(_get(scratch, key)), err_msg=key)
  if normalized_head:  # unit-norm columns, as the cosine head's init draws them
    np.testing.assert_allclose(np.linalg.norm(flat["params/head/kernel"], axis=0), 1.0, rtol=1e-5)


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if hasattr(v, "items"):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _get(state, key):
  collection, *path = key.split("/")
  node = state.params if collection == "params" else state.batch_stats
  for p in path:
    node = node[p]
  return node


def test_pretrained_layers_of_other_widths_fail_naming_the_keys(data, tmp_path):
  config = _tiny()
  pretrained = pretraining.hidden_layers(config, data, str(tmp_path / "run"))
  other = config.replace(mlp_widths=(16, 8))
  with pytest.raises(ValueError, match="shape mismatches.*dense2/kernel"):
    train_lib.create_train_state(other, train_lib.load_dataset(other), 4, pretrained)


@pytest.mark.slow
def test_runs_record_the_pretraining_and_a_cached_run_equals_a_fresh_one(tmp_path):
  config = _tiny(epochs=2)
  first = train_lib.train_and_evaluate(config, str(tmp_path / "a" / "ce"))
  # Another loss of the same seed under the same root: the same pretraining, read from the cache.
  other = train_lib.train_and_evaluate(config.replace(loss="focal"), str(tmp_path / "a" / "focal"))
  cached = train_lib.train_and_evaluate(config, str(tmp_path / "a" / "ce_again"))
  fresh = train_lib.train_and_evaluate(config, str(tmp_path / "b" / "ce"))
  assert [r["pretraining"]["cache"] for r in (first, other, cached, fresh)] == ["computed", "hit", "hit", "computed"]
  assert other["pretraining"]["key"] == first["pretraining"]["key"]
  assert cached["test"] == fresh["test"] == first["test"]
  assert cached["history"] == fresh["history"]
  record = json.load(open(tmp_path / "a" / "ce" / "results.json"))["pretraining"]
  assert record["path"] == str(tmp_path / "a" / "pretrained" / f"mlp_{record['key']}.npz")
  for key in ("train_fit_top1", "val_top1", "seconds"):
    assert 0 <= record[key] and (key == "seconds" or record[key] <= 1), key
  assert record["settings"]["examples_per_class"] == 30 and record["settings"]["seed"] == 0
  # Without pretraining, nothing is recorded and the run differs.
  scratch = train_lib.train_and_evaluate(config.replace(pretrain_examples_per_class=0), str(tmp_path / "c" / "ce"))
  assert scratch["pretraining"] is None and scratch["history"] != first["history"]


@pytest.mark.slow
def test_an_explicit_cache_dir_is_used_and_a_restart_may_change_it(tmp_path):
  config = _tiny(pretrain_cache_dir=str(tmp_path / "cache"))
  results = train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert os.path.dirname(results["pretraining"]["path"]) == str(tmp_path / "cache")
  # Resuming (here: nothing left to train) under another cache directory is allowed: it changes nothing trained.
  moved = train_lib.train_and_evaluate(config.replace(pretrain_cache_dir=str(tmp_path / "cache2")),
                                       str(tmp_path / "run"))
  assert moved["pretraining"]["cache"] == "computed" and moved["test"] == results["test"]


@pytest.mark.slow
def test_the_binary_pretrains_from_its_flags_and_prints_the_pretraining_and_the_regret(tmp_path):
  # A tiny generated problem end to end, pretrained: results.json carries the pretraining record and the exact Bayes
  # figures; the summary prints both, and the regret.
  args = ["--config=synth_lt100_pre_ldam_drw", "--synthetic_num_classes=12", "--synthetic_num_genera=3",
          "--synthetic_max_count=60", "--imbalance_ratio=10", "--synthetic_test_per_class=10",
          "--validation_per_class=4", "--mlp_widths=32", "--epochs=2", "--lr_decay_epochs=1", "--drw_start_epoch=1",
          "--eval_batch_size=40", "--pretrain_examples_per_class=10", "--pretrain_epochs=2",
          f"--workdir={tmp_path / 'root' / 'run'}"]
  out = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=shared_runs.SUBPROCESS_TIMEOUT_S, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "root" / "run" / "results.json") as f:
    record = json.load(f)["pretraining"]
  assert record["path"].startswith(str(tmp_path / "root" / "pretrained" / "mlp_")) and record["cache"] == "computed"
  assert (record["train_examples"], record["settings"]["epochs"], record["settings"]["mlp_widths"]) == (120, 2, [32])
  assert pretraining.summary_line(record) in out.stdout
  assert "| regret: Bayes - this model (points) |" in out.stdout
  with open(tmp_path / "root" / "run" / "results.json") as f:
    results = json.load(f)
  assert results["config"]["synthetic_num_classes"] == 12 and len(results["per_class"]) == 12
  bayes = results["bayes"]
  for kind in ("likelihood", "posterior"):
    assert [bayes[kind][f"macro_top{k}_accuracy"] for k in (1, 3, 5)] == sorted(
        bayes[kind][f"macro_top{k}_accuracy"] for k in (1, 3, 5))
  # The likelihood is optimal for macro top-K, the posterior for prior-weighted top-K (on the same test examples).
  assert bayes["likelihood"]["macro_top1_accuracy"] >= bayes["posterior"]["macro_top1_accuracy"]
  assert bayes["posterior"]["prior_weighted_top1_accuracy"] >= bayes["likelihood"]["prior_weighted_top1_accuracy"]


# --- Configuration errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, explicit, message", [
    (dict(pretrain_examples_per_class=-1), (), "`pretrain_examples_per_class` must be an int >= 0"),
    (dict(pretrain_examples_per_class=2.5), (), "`pretrain_examples_per_class` must be an int >= 0"),
    (dict(pretrain_epochs=0), (), "`pretrain_epochs` must be >= 1"),
    (dict(pretrain_learning_rate=0.0), (), "`pretrain_learning_rate` must be a finite number > 0"),
    (dict(pretrain_learning_rate=float("nan")), (), "`pretrain_learning_rate` must be a finite number > 0"),
    (dict(pretrain_examples_per_class=0, pretrain_epochs=5), ("pretrain_epochs",),
     "`pretrain_epochs` is only used with `pretrain_examples_per_class` > 0"),
    (dict(pretrain_examples_per_class=0, pretrain_cache_dir="x"), ("pretrain_cache_dir",),
     "`pretrain_cache_dir` is only used with `pretrain_examples_per_class` > 0"),
])
def test_bad_pretraining_settings_fail_naming_the_field(changes, explicit, message):
  config = configs.get_preset("synth_lt100_pre_ce").config.replace(**changes)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config, explicitly_set=set(explicit))


@pytest.mark.parametrize("preset, changes", [("fmnist_exp100_ce", {}), ("cifar10_lt_exp100_erm", {}),
                                             ("synth_lt100_ce", dict(model="cnn"))])
def test_pretraining_needs_synthetic_lt_and_the_mlp(preset, changes):
  config = configs.get_preset(preset).config.replace(pretrain_examples_per_class=100, **changes)
  with pytest.raises(ValueError, match="`pretrain_examples_per_class` pretrains the mlp of `dataset=synthetic_lt`"):
    config_lib.validate(config, explicitly_set={"pretrain_examples_per_class"})


# --- Presets and grids -------------------------------------------------------------------------------------------

# The fields a regime changes (pretrain_epochs and pretrain_learning_rate are also set, at the Config defaults).
_REGIME_FIELDS = {"fit": {"mlp_widths", "weight_decay", "epochs", "lr_decay_epochs", "drw_start_epoch",
                          "eval_every_epochs", "checkpoint_every_epochs"},
                  "pretrained": {"pretrain_examples_per_class", "learning_rate"}}


@pytest.mark.parametrize("regime, infix, settings", [("fit", "fit", ("lt100", "plantnet1081")),
                                                     ("pretrained", "pre", ("lt100", "plantnet1081"))])
def test_regime_presets_are_the_underfit_presets_with_the_regime_protocol(regime, infix, settings):
  names = {n for n in configs.PRESETS if n.startswith(tuple(f"synth_{s}_{infix}_" for s in settings))}
  assert len(names) == 26 * len(settings)
  for _, setting, method, k in synth_configs.runs(settings):
    underfit = configs.get_preset(synth_configs.preset_name(setting, method, k)).config
    preset = configs.get_preset(f"synth_{setting}_{infix}_{method}" + (f"_k{k}" if k else ""))
    config = config_lib.validate(preset.config)
    assert preset.command == f"python -m experiments.train --config={preset.name}"
    changed = {f for f, v in config.to_dict().items() if v != config_lib.validate(underfit).to_dict()[f]}
    expected = set(_REGIME_FIELDS[regime])
    if (setting, regime) == ("plantnet1081", "pretrained"):
      # Fine-tuned at the from-scratch lr, chosen on validation (synth_configs.SETTING_REGIME_CHANGES).
      expected.discard("learning_rate")
      assert config.learning_rate == synth_configs.PLANTNET1081_FINETUNE_LEARNING_RATE == underfit.learning_rate
    if (setting, regime) == ("plantnet1081", "fit"):
      # Twice lt100's examples, fitted in 60 epochs (synth_configs.SETTING_REGIME_CHANGES): 96.5 % for CE, seed 0.
      assert (config.epochs, config.lr_decay_epochs) == (synth_configs.PLANTNET1081_FIT_EPOCHS,
                                                         synth_configs.PLANTNET1081_FIT_LR_DECAY_EPOCHS)
      assert config.drw_start_epoch == config.lr_decay_epochs[0] and config.eval_every_epochs == config.epochs
    assert changed == expected, (preset.name, changed)
  if regime == "fit":
    fit = configs.get_preset("synth_lt100_fit_ce_drw").config
    assert (fit.weight_decay, fit.epochs, fit.mlp_widths) == (0.0, synth_configs.FIT_EPOCHS, synth_configs.FIT_WIDTHS)
    assert fit.drw_start_epoch == fit.lr_decay_epochs[0] and max(fit.lr_decay_epochs) < fit.epochs
    # The decays at the underfit protocol's fractions of training (20 and 25 of 30).
    np.testing.assert_allclose(np.array(fit.lr_decay_epochs) / fit.epochs,
                               np.array(synth_configs.LR_DECAY_EPOCHS) / synth_configs.EPOCHS, atol=0.01)
  else:
    pre = configs.get_preset("synth_lt100_pre_ldam").config
    assert pre.pretrain_examples_per_class == synth_configs.PRETRAIN_EXAMPLES_PER_CLASS > 0
    assert (pre.pretrain_epochs, pre.pretrain_learning_rate) == (synth_configs.PRETRAIN_EPOCHS,
                                                                 synth_configs.PRETRAIN_LEARNING_RATE)
    assert pre.learning_rate == synth_configs.FINETUNE_LEARNING_RATE < synth_configs.LEARNING_RATE


@pytest.mark.parametrize("grid_name, infix", [("synthetic_lt_fit", "fit"), ("synthetic_lt_pretrained", "pre")])
def test_regime_grids_list_every_method_and_reuse_the_synthetic_table(grid_name, infix):
  grid, base = grids.get_grid(grid_name), grids.get_grid("synthetic_lt")
  runs = grid.runs((0, 1, 2))
  base_runs = base.runs((0, 1, 2))
  assert len(runs) == len(base_runs) == 78 and len({r.name for r in runs}) == 78
  for run, base_run in zip(runs, base_runs):
    assert run.preset == base_run.preset.replace("synth_lt100_", f"synth_lt100_{infix}_")
    assert (run.seed, run.row, run.setting, run.ks) == (base_run.seed, base_run.row, base_run.setting, base_run.ks)
  assert {r.config.loss for r in runs} == set(config_lib.LOSSES)
  assert (grid.rows, grid.ks, grid.metric, grid.bayes, grid.claims) == (base.rows, base.ks, base.metric, True,
                                                                         base.claims)
  regime = grid_name.split("_")[-1]
  assert f"{regime} regime" in grid.description and list(grid.settings) == list(base.settings)
  assert grid.notes[0].startswith(f"- Protocol ({regime} regime)") and grid.notes[1:] == base.notes[1:]


@pytest.mark.slow
@pytest.mark.parametrize("grid_name", ["synthetic_lt_fit", "synthetic_lt_pretrained"])
def test_dry_run_lists_the_regime_grid_and_its_commands_rebuild_the_configs(grid_name):
  proc = subprocess.run([sys.executable, "-m", "experiments.reproduce", f"--grid={grid_name}", "--dry_run",
                         "--workdir_root=/nonexistent_root"], cwd=REPO, capture_output=True, text=True,
                        timeout=shared_runs.SUBPROCESS_TIMEOUT_S,
                        check=False)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  grid = grids.get_grid(grid_name)
  runs = grid.runs((0, 1, 2))
  assert lines[0] == f"# {grid_name}: 78 runs (0 done), seeds 0,1,2."
  assert lines[1:] == [reproduce.run_command(grid, r, "/nonexistent_root") for r in runs]
  for run in grid.runs((0,)):
    assert test_reproduce.config_of_command(grid, run) == config_lib.validate(run.config), run.name


def test_fashion_converged_presets_are_the_grid_presets_trained_ten_times_longer():
  runs = fashion_configs.runs(converged=True)
  assert [m for _, _, m, k in runs if k in (None, 1)] == list(fashion_configs.CONVERGED_METHODS)
  assert len(runs) == 11 and {s for _, s, _, _ in runs} == {"exp100"}
  for name, setting, method, k in runs:
    preset = configs.get_preset(name)
    assert name == f"fmnist_exp100_conv_{method}" + (f"_k{k}" if k else "")
    config = config_lib.validate(preset.config)
    short = config_lib.validate(configs.get_preset(fashion_configs.preset_name(setting, method, k)).config)
    changed = {f for f, v in config.to_dict().items() if v != short.to_dict()[f]}
    assert changed == {"epochs", "lr_decay_epochs", "drw_start_epoch", "eval_every_epochs",
                       "checkpoint_every_epochs"}, (name, changed)
    assert config.epochs >= 10 * short.epochs
    # Decays and DRW at the same fractions of training.
    np.testing.assert_allclose(np.array(config.lr_decay_epochs) / config.epochs,
                               np.array(short.lr_decay_epochs) / short.epochs)
    assert config.drw_start_epoch == config.lr_decay_epochs[0] and config.eval_every_epochs == config.epochs


def test_fashion_converged_grid_reuses_the_fashion_table_and_its_commands_rebuild_the_configs():
  grid, base = grids.get_grid("fashion_mnist_lt_converged"), grids.get_grid("fashion_mnist_lt")
  runs = grid.runs((0, 1, 2))
  assert len(runs) == 33 and len({r.name for r in runs}) == 33
  assert list(grid.rows) == list(fashion_configs.CONVERGED_METHODS)
  assert all(grid.rows[m] == base.rows[m] for m in grid.rows)
  assert (grid.ks, grid.metric, list(grid.settings)) == (base.ks, base.metric, ["exp100"])
  cells = {(m, "exp100", k): [80.0, 81.0] for m in grid.rows for k in grid.ks}
  assert "Its rank among all 9 methods" in "\n".join(grid.claims(cells))
  assert grid.notes[0].startswith("- Protocol (convergence)") and grid.notes[1:] == base.notes[1:]
  for run in grid.runs((0,)):
    assert test_reproduce.config_of_command(grid, run) == config_lib.validate(run.config), run.name


@pytest.mark.parametrize("regime, infix", [("pretrained", "pre"), ("fit", "fit")])
def test_plantnet1081_grids_run_every_method_on_the_pl_at_ntnet_sized_setting(regime, infix):
  grid, base = grids.get_grid(f"synthetic_plantnet1081_{regime}"), grids.get_grid(f"synthetic_lt_{regime}")
  runs = grid.runs((0, 1, 2))
  assert len(runs) == 78 and len({r.name for r in runs}) == 78
  for run, base_run in zip(runs, base.runs((0, 1, 2))):
    assert run.preset == base_run.preset.replace(f"synth_lt100_{infix}_", f"synth_plantnet1081_{infix}_")
    assert (run.seed, run.row, run.ks, run.setting) == (base_run.seed, base_run.row, base_run.ks, "plantnet1081")
    assert run.config.synthetic_num_classes == 1081 and run.config.imbalance_profile == "plantnet"
  assert {r.config.loss for r in runs} == set(config_lib.LOSSES)
  assert (grid.rows, grid.ks, grid.metric, grid.bayes) == (base.rows, base.ks, base.metric, True)
  assert list(grid.settings) == ["plantnet1081"] and "1,081-class" in grid.description
  assert f"{regime} regime" in grid.description
  if regime == "pretrained":
    assert grid.notes[0].replace("lr 0.1 ", "lr 0.01 ").replace("chosen on the validation split", "set once, not "
                                                                 "searched") == base.notes[0]
    assert {r.config.learning_rate for r in runs} == {synth_configs.PLANTNET1081_FINETUNE_LEARNING_RATE}
  else:
    # lt100's fit protocol in 60 epochs instead of 100, decays and DRW at the same fractions.
    assert grid.notes[0] == base.notes[0].replace("100 epochs", "60 epochs").replace("66, 83", "40, 50").replace(
        "epoch 66", "epoch 40")
    assert {(r.config.mlp_widths, r.config.epochs, r.config.weight_decay) for r in runs} == {
        (synth_configs.FIT_WIDTHS, synth_configs.PLANTNET1081_FIT_EPOCHS, 0.0)}
    np.testing.assert_allclose(np.array(synth_configs.PLANTNET1081_FIT_LR_DECAY_EPOCHS)
                               / synth_configs.PLANTNET1081_FIT_EPOCHS,
                               np.array(synth_configs.FIT_LR_DECAY_EPOCHS) / synth_configs.FIT_EPOCHS, atol=0.01)
  assert grid.notes[1].startswith("- Data: 1,081 classes")
  # The claims are checked on this grid's setting.
  cells = {(m, "plantnet1081", k): [50.0, 51.0] for m in grid.rows for k in grid.ks}
  cells[("noised_imbalanced", "plantnet1081", 1)] = [60.0, 61.0]
  claims = "\n".join(grid.claims(cells))
  assert "| plantnet1081 | 1 | 60.50 | 1 of 16 |" in claims
