"""End-to-end tests of the training binaries on tiny generated data (CPU, 2 forced host devices)."""
import json
import os
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpointing
from experiments import config as config_lib
from experiments import configs
from experiments import input_pipeline
from experiments import reporting
from experiments import train_lib
from experiments.configs import fashion_mnist_lt
import noised_topk_jax as ntk
from tests import fake_data
from tests import optional
from tests import reference as ref
from tests import shared_runs
from tests.shared_runs import finished_fashion_run  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_fashion_config(data_dir, **changes):
  base = config_lib.Config(
      dataset="fashion_mnist_lt", data_dir=data_dir, imbalance_ratio=10.0, validation_per_class=6, epochs=2,
      batch_size=32, eval_batch_size=40, learning_rate=0.05, warmup_epochs=1, lr_decay_epochs=(1,),
      log_every_steps=2, model="cnn")
  return base.replace(**changes)


def _check_outputs(workdir, results, config):
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["dataset"] == config.dataset and saved["loss"] == config.loss
  for k in config.eval_ks:
    for key in (f"top{k}_accuracy", f"macro_top{k}_accuracy"):
      assert 0.0 <= saved["test"][key] <= 1.0
  # Top-K accuracy cannot decrease with K.
  accs = [saved["test"][f"top{k}_accuracy"] for k in sorted(config.eval_ks)]
  assert accs == sorted(accs)
  assert len(saved["per_class"]) == len(saved["train_class_counts"])
  assert all(np.isfinite(r["train"]["loss"]) for r in saved["history"])
  # The plot and the TensorBoard summaries need optional packages; without them the run still writes results.json.
  plot = os.path.join(workdir, "per_class_accuracy.png")
  if optional.available("matplotlib"):
    assert os.path.getsize(plot) > 1000
  else:
    assert not os.path.exists(plot)
  events = os.path.join(workdir, "tensorboard")
  if optional.available("tensorboard"):
    assert any(f.startswith("events") for f in os.listdir(events))
  else:
    assert not os.path.exists(events) or not os.listdir(events)
  assert os.path.isdir(os.path.join(workdir, "checkpoints"))
  assert saved["test"] == results["test"]


def _fashion_families():
  """One preset of the Fashion-MNIST-LT grid (exp100, K = 2) per distinct (loss, train rule), plus the loss and the
  train rules that the grid does not use (balanced softmax; CB reweighting and resampling, with cross-entropy). The
  imbalanced noised loss without a train rule is the default job's: `test_the_default_job_writes_every_output`."""
  families = {}
  for method, (_, _, topk) in fashion_mnist_lt.METHODS.items():
    config = configs.get_preset(fashion_mnist_lt.preset_name("exp100", method, 2 if topk else None)).config
    families.setdefault(f"{config.loss}-{config.train_rule}", config)
  ce = families["ce-none"]
  families.update({"balanced_softmax-none": ce.replace(loss="balanced_softmax"),
                   "ce-reweight": ce.replace(train_rule="reweight"), "ce-resample": ce.replace(train_rule="resample")})
  del families["noised_imbalanced-none"]
  return families


FASHION_FAMILIES = _fashion_families()


def _tiny_fashion(config, data_dir):
  """A preset cut to 2 epochs of 2 steps on `fashion_dir`'s generated data; DRW, where used, from the second."""
  return config.replace(data_dir=data_dir, imbalance_ratio=10.0, validation_per_class=6, epochs=2,
                        max_steps_per_epoch=2, batch_size=32, eval_batch_size=40, warmup_epochs=0,
                        lr_decay_epochs=(1,), drw_start_epoch=1, eval_every_epochs=1, log_every_steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FASHION_FAMILIES))
def test_every_loss_and_train_rule_trains_end_to_end(family, fashion_dir, tmp_path):
  # The tiny CNN on Fashion-MNIST-LT (the data, model and head of the grid's presets), through the whole job.
  config = _tiny_fashion(FASHION_FAMILIES[family], fashion_dir)
  results = train_lib.train_and_evaluate(config, str(tmp_path))
  _check_outputs(str(tmp_path), results, config)
  # What was trained is the preset with the tiny changes only.
  assert results["config"] == config_lib.validate(config).to_dict()
  assert (results["loss"], results["train_rule"]) == (config.loss, config.train_rule)
  # The grid's protocol reports the last epoch's model: the test accuracies that its last epoch logged.
  assert results["model_selection"] == "last epoch" and results["best_epoch"] is None
  last = results["history"][-1]["test"]
  assert {k: results["test"][k] for k in last} == last


@pytest.mark.slow
def test_the_default_job_writes_every_output(finished_fashion_run):
  run = finished_fashion_run
  _check_outputs(run.workdir, run.results, run.config)
  assert run.config.loss == "noised_imbalanced" and run.config.normalized_head
  assert run.results["model_selection"].startswith("best validation macro top-2")
  assert [r["epoch"] for r in run.results["history"]] == [0, 1, 2]
  assert sorted(os.listdir(os.path.join(run.workdir, "checkpoints"))) == ["1", "2", "config.json"]
  # The environment its figures depend on: this process's packages and the cores it may use.
  env = run.results["environment"]
  assert env["packages"]["jax"] == jax.__version__ and env["packages"]["numpy"] == np.__version__
  assert env["packages"]["flax"] == flax.__version__ and env["usable_cores"] == len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_drw_changes_the_class_weights_at_its_epoch(finished_fashion_run, tmp_path):
  # The default job with DRW from its second epoch: the first epoch is the plain run's, bit for bit (unit weights);
  # from the second on, the class-balanced weights change every step.
  run = finished_fashion_run
  drw = train_lib.train_and_evaluate(run.config.replace(train_rule="drw", drw_start_epoch=1), str(tmp_path))
  plain = run.results["history"]
  assert drw["history"][0] == plain[0]
  for epoch in (1, 2):
    assert drw["history"][epoch]["train"]["loss"] != plain[epoch]["train"]["loss"], epoch


def test_class_weights_follow_the_rule():
  counts = np.array([100, 30, 10, 3])
  cfg = config_lib.Config(epochs=10, drw_start_epoch=5)
  np.testing.assert_array_equal(train_lib.class_weights_for_epoch(cfg.replace(train_rule="none"), counts, 7),
                                np.ones(4, np.float32))
  drw = cfg.replace(train_rule="drw")
  np.testing.assert_array_equal(train_lib.class_weights_for_epoch(drw, counts, 4), np.ones(4, np.float32))
  after = train_lib.class_weights_for_epoch(drw, counts, 5)
  expected = (1 - 0.9999) / (1 - 0.9999**counts.astype(np.float64))
  np.testing.assert_allclose(after, expected * 4 / expected.sum(), rtol=1e-6)
  assert after[-1] > after[0]


def test_learning_rate_schedule_matches_the_ldam_drw_protocol():
  cfg = configs.get_preset("cifar10_lt_exp100_ldam_drw").config
  lr = lambda e: float(train_lib.learning_rate_at_epoch(cfg, e))
  np.testing.assert_allclose([lr(0), lr(1), lr(4), lr(5), lr(159), lr(160), lr(179), lr(180), lr(199)],
                             [0.02, 0.04, 0.1, 0.1, 0.1, 1e-3, 1e-3, 1e-5, 1e-5], rtol=1e-5)
  plant = configs.get_preset("plantnet_ce").config
  lr = lambda e: float(train_lib.learning_rate_at_epoch(plant, e))
  np.testing.assert_allclose([lr(0), lr(19), lr(20), lr(24), lr(25), lr(29)],
                             [0.002, 0.002, 2e-4, 2e-4, 2e-5, 2e-5], rtol=1e-5)


@optional.needs_tensorflow
def test_cifar_lt_reads_its_tfds_dataset():
  # The TFDS path of CIFAR-LT (tfds.load mocked: 300 random examples, the same in both splits). Training on CIFAR-LT
  # is tests/test_reproduce.py's: one step of each loss and train rule of its presets, ResNet-32 included.
  config = config_lib.Config(dataset="cifar10_lt", imbalance_ratio=10.0, model="resnet32")
  with fake_data.mock_cifar(num_examples=300):
    dataset = train_lib.load_dataset(config)
    test = list(dataset.eval_batches("test", batch_size=50))
  counts = np.asarray(dataset.train_class_counts)
  assert len(counts) == 10 and np.all(np.diff(counts) <= 0) and counts[-1] >= 1
  assert counts[0] / counts[-1] == pytest.approx(10.0, rel=0.35)
  assert dataset.num_train_examples == counts.sum() and not dataset.has_validation
  assert sum(int(b["mask"].sum()) for b in test) == 300
  assert test[0]["image"].shape == (50, 32, 32, 3) and test[0]["image"].dtype == np.float32


@pytest.mark.slow
@optional.needs_tensorflow
def test_plantnet_end_to_end_with_resnet50(tmp_path):
  # The suite's one ResNet-50 run (the Pl@ntNet presets' model); each Pl@ntNet loss trains on a ResNet-18 in
  # tests/test_reproduce.py.
  root = str(tmp_path / "plantnet")
  tree = fake_data.write_plantnet_tree(root)
  config = configs.get_preset("plantnet_noised_imbalanced").config.replace(
      data_dir=root, image_size=32, epochs=1, batch_size=8, eval_batch_size=8, max_steps_per_epoch=2,
      eval_ks=(1, 3), selection_k=3, k=3, require_pretrained=False)
  assert config.model == "resnet50"
  workdir = str(tmp_path / "run")
  results = train_lib.train_and_evaluate(config, workdir)
  _check_outputs(workdir, results, config)
  assert results["class_names"] == tree["class_ids"] and results["train_class_counts"] == tree["train"]
  # Selected on the validation split (one class has no validation image), reported on the test split.
  assert results["model_selection"].startswith("best validation macro top-3")
  assert set(results["validation"]) >= {"top1_accuracy", "macro_top3_accuracy"}
  assert sum(row["test_count"] for row in results["per_class"].values()) == sum(tree["test"])


def _train_steps(num_devices, batches, config, dataset):
  """Runs `train_lib.train_step` pmapped over the first `num_devices` devices on `batches`; returns the final host
  state and the per-step metrics."""
  state, schedule = train_lib.create_train_state(config, dataset, steps_per_epoch=10)
  loss_fn = train_lib.make_loss_fn(config, dataset.train_class_counts)
  devices = jax.local_devices()[:num_devices]
  step = jax.pmap(lambda s, b, r, w: train_lib.train_step(s, b, r, w, loss_fn=loss_fn, schedule=schedule),
                  axis_name=train_lib.AXIS, in_axes=(0, 0, None, None), devices=devices)
  rstate = flax.jax_utils.replicate(state, devices=devices)
  weights = jnp.asarray(np.linspace(0.5, 2.0, dataset.num_classes), jnp.float32)
  history = []
  for batch in batches:
    rstate, metrics = step(rstate, input_pipeline.shard(batch, num_devices), jax.random.key(0), weights)
    history.append(jax.tree.map(lambda x: float(x[0]), metrics))
  return train_lib.unreplicate(rstate), history


# The Fashion-MNIST-LT preset's imbalanced noised loss (cosine head), and cross-entropy with a linear head.
DEVICE_CASES = {"ce": dict(loss="ce", normalized_head=False),
                "noised_imbalanced": configs.get_preset("fmnist_exp100_noised_imbalanced_k2").config.replace(
                    dataset="fashion_mnist_lt").__dict__}


def _device_case(fashion_dir, name):
  fields = DEVICE_CASES[name]
  keep = ("loss", "normalized_head", "k", "epsilon", "num_samples", "max_margin", "scale", "antithetic")
  return tiny_fashion_config(fashion_dir, **{f: fields[f] for f in keep if f in fields})


def _tiny_dataset(fashion_dir):
  return input_pipeline.get_dataset("fashion_mnist_lt", data_dir=fashion_dir, imbalance_ratio=10.0,
                                    validation_per_class=6)


@pytest.mark.two_devices
@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(DEVICE_CASES))
def test_two_devices_match_one_device(loss, fashion_dir):
  # Same global batch, synchronized batch norm, class-weighted mean over the global batch, and loss noise keyed by
  # each example's global position: the same update on 1 and 2 devices, for the noised loss too.
  assert jax.local_device_count() == 2
  config = _device_case(fashion_dir, loss)
  dataset = _tiny_dataset(fashion_dir)
  batches = list(dataset.train_batches(epoch=0, batch_size=32, seed=0))[:3]
  one, m1 = _train_steps(1, batches, config, dataset)
  two, m2 = _train_steps(2, batches, config, dataset)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one.params, two.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one.batch_stats,
               two.batch_stats)
  np.testing.assert_allclose([m["loss"] for m in m1], [m["loss"] for m in m2], rtol=1e-5)
  # And the steps did something: parameters moved away from the initialization.
  init, _ = train_lib.create_train_state(config, dataset, steps_per_epoch=10)
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(init.params),
                                                              jax.tree.leaves(one.params)))
  assert moved > 1e-3


@pytest.mark.two_devices
@pytest.mark.slow
def test_noised_first_epoch_loss_differs_across_device_counts_no_more_than_cross_entropy(fashion_dir):
  # A whole epoch: reduction order alone makes 1 and 2 devices drift apart a little (cross-entropy); the noised
  # loss must not add a drift of its own (before the noise was keyed by example, it differed by ~10x CE's drift).
  dataset = _tiny_dataset(fashion_dir)
  batches = list(dataset.train_batches(epoch=0, batch_size=32, seed=0))
  drift = {}
  for loss in ("ce", "noised_imbalanced"):
    config = _device_case(fashion_dir, loss)
    means = [np.mean([m["loss"] for m in _train_steps(n, batches, config, dataset)[1]]) for n in (1, 2)]
    drift[loss] = abs(means[0] - means[1]) / abs(means[0])
  assert drift["noised_imbalanced"] <= max(drift["ce"], 1e-6), drift


@pytest.mark.two_devices
@pytest.mark.slow
def test_train_step_keys_each_example_by_step_and_global_position(fashion_dir):
  # A loss that is a uniform draw from each example's key: train_step's loss is then the class-weighted mean of
  # u_i = uniform(fold_in(fold_in(rng, step), i)) over the global positions i, on 1 and on 2 devices, step after step.
  config = tiny_fashion_config(fashion_dir, loss="ce", normalized_head=False)
  dataset = _tiny_dataset(fashion_dir)
  state, schedule = train_lib.create_train_state(config, dataset, steps_per_epoch=10)
  uniform = lambda logits, labels, keys: jax.vmap(jax.random.uniform)(keys) + 0.0 * jnp.sum(logits, -1)
  batch = next(iter(dataset.train_batches(epoch=0, batch_size=32, seed=0)))
  weights = np.linspace(0.5, 2.0, dataset.num_classes).astype(np.float32)
  w = weights[batch["label"]]
  rng = jax.random.key(3)
  for n in (1, 2):
    devices = jax.local_devices()[:n]
    step = jax.pmap(lambda s, b, r, cw: train_lib.train_step(s, b, r, cw, loss_fn=uniform, schedule=schedule),
                    axis_name=train_lib.AXIS, in_axes=(0, 0, None, None), devices=devices)
    rstate = flax.jax_utils.replicate(state, devices=devices)
    for t in range(2):
      rstate, metrics = step(rstate, input_pipeline.shard(batch, n), rng, jnp.asarray(weights))
      u = np.array([float(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(rng, t), i))) for i in range(32)])
      assert len(set(u)) == 32  # every example its own draw
      np.testing.assert_allclose(float(metrics["loss"][0]), np.sum(w * u) / np.sum(w), rtol=1e-6)


def test_logit_adjustment_offsets_reach_the_loss_in_scaled_units():
  counts = np.array([500, 120, 40, 9])
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.uniform(-1, 1, (6, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 6))
  key = jax.random.key(3)
  prior = np.log(counts / counts.sum())
  # Unscaled loss: CE + offsets tau * log(prior) is the logit-adjusted loss.
  ce = train_lib.make_loss_fn(config_lib.Config(loss="ce", logit_adjustment_tau=0.5), counts)
  np.testing.assert_allclose(ce(logits, labels, key), ntk.logit_adjusted_loss(logits, labels, class_counts=counts,
                                                                              tau=0.5), rtol=1e-6)
  # Scaled loss: the cosines get tau * log(prior) / scale, i.e. the offsets act on scale * cosine.
  cfg = config_lib.Config(loss="noised_imbalanced", k=1, epsilon=0.1, num_samples=3, max_margin=0.2, scale=60.0,
                          logit_adjustment_tau=1.0)
  got = train_lib.make_loss_fn(cfg, counts)(logits, labels, key)
  want = ntk.noised_topk_loss(logits + jnp.asarray(prior / 60.0, jnp.float32), labels, k=1, epsilon=0.1,
                              num_samples=3, margins=ntk.class_margins(counts, max_margin=0.2), scale=60.0, key=key)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  plain = train_lib.make_loss_fn(cfg.replace(logit_adjustment_tau=0.0), counts)(logits, labels, key)
  assert not np.allclose(got, plain)


@pytest.mark.slow
def test_posthoc_adjustment_changes_only_the_evaluated_logits(finished_fashion_run, tmp_path):
  # The default job (cosine head, loss scale 60) evaluated with post-hoc logit adjustment, against the plain run.
  run = finished_fashion_run
  config = run.config.replace(posthoc_tau=1.0)
  plain = run.results
  adjusted = train_lib.train_and_evaluate(config, str(tmp_path))
  assert plain["logit_adjustment"]["posthoc_tau"] == 0.0 and plain["logit_adjustment"]["evaluated_logits"] == "logits"
  assert adjusted["logit_adjustment"] == {"training_tau": 0.0, "posthoc_tau": 1.0,
                                          "evaluated_logits": "logits - posthoc_tau * log(prior) / scale"}
  # Same training (same seed, same batches): the losses match; the evaluation differs.
  assert [r["train"]["loss"] for r in plain["history"]] == [r["train"]["loss"] for r in adjusted["history"]]
  # Recompute the adjusted test top-1 from the reported (best validation) model's logits on the test set: the
  # cosines minus log(prior) / scale, i.e. the scaled logits minus log(prior).
  dataset = train_lib.load_dataset(config)
  state, _ = train_lib.create_train_state(config, dataset, steps_per_epoch=2)
  _, best, _ = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), config).restore_latest(
      state, {"params": state.params, "batch_stats": state.batch_stats})
  offsets = ntk.logit_adjustment(dataset.train_class_counts, tau=1.0) / config.scale
  correct = total = 0
  for batch in dataset.eval_batches("test", batch_size=40):
    logits = state.apply_fn(best, batch["image"], train=False)
    pred = np.argmax(np.asarray(logits) - offsets, axis=-1)
    correct += float(np.sum((pred == batch["label"]) * batch["mask"]))
    total += float(np.sum(batch["mask"]))
  np.testing.assert_allclose(adjusted["test"]["top1_accuracy"], correct / total, atol=1e-6)


def test_focal_loss_fn_puts_the_class_weight_inside_the_factor():
  # The binaries' focal loss with class weights is LDAM-DRW's CB-Focal: weighted CE inside the focusing factor.
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((8, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 8)
  weights = rng.uniform(0.2, 3.0, 8).astype(np.float32)
  cfg = config_lib.Config(loss="focal", gamma=2.0)
  got = train_lib.make_loss_fn(cfg, np.array([50, 20, 9, 4, 2]))(jnp.asarray(logits), jnp.asarray(labels), None,
                                                                weights=jnp.asarray(weights))
  x = logits.astype(np.float64)
  ce = np.log(np.exp(x).sum(-1)) - x[np.arange(8), labels]
  c = weights * ce
  np.testing.assert_allclose(got, (1 - np.exp(-c))**2 * c, rtol=1e-5)
  assert train_lib.weights_inside_loss(cfg)
  assert not train_lib.weights_inside_loss(config_lib.Config(loss="ce"))


def test_pretrained_weights_are_required_where_the_preset_says_so():
  config = configs.get_preset("plantnet_noised_imbalanced").config
  with pytest.raises(ValueError, match="`pretrained_weights`"):
    config_lib.check_pretrained(config)
  config_lib.check_pretrained(config.replace(require_pretrained=False))
  config_lib.check_pretrained(config.replace(pretrained_weights="weights.npz"))


def test_per_class_plot_labels_the_classes():
  # Fashion-MNIST's 10 classes are all named on the plot; of 100 classes, the 8 of lowest top-1 accuracy.
  np.testing.assert_array_equal(reporting.classes_to_label(np.linspace(0, 1, 10)), np.arange(10))
  acc = np.random.default_rng(0).uniform(size=100)
  acc[3] = np.nan
  np.testing.assert_array_equal(reporting.classes_to_label(acc), np.sort(np.argsort(acc)[:8]))


def test_host_side_label_check():
  with pytest.raises(ValueError, match=r"this batch: labels must lie in \[0, 10\)"):
    input_pipeline.check_labels(np.array([0, 3, 10]), 10)
  input_pipeline.check_labels(np.array([0, 9]), 10)


def _cli(*args, env=None, timeout=shared_runs.SUBPROCESS_TIMEOUT_S):
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, capture_output=True, text=True,
                        env=env, timeout=timeout)


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return env


def _saved_after_epoch_2(ckpt):  # checkpoint directories are named by epoch (0-based); only the last 2 are kept
  return os.path.isdir(ckpt) and any(d.isdigit() and int(d) >= 1 for d in os.listdir(ckpt))


def _start_and_kill_after_epoch_2(args, workdir):
  """Starts the binary, SIGKILLs it once a checkpoint after epoch 2 exists; True if it was killed before it ended."""
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args, f"--workdir={workdir}"], cwd=REPO,
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = os.path.join(workdir, "checkpoints")
  deadline = time.monotonic() + shared_runs.SUBPROCESS_TIMEOUT_S  # a guard against a hang only
  while time.monotonic() < deadline and proc.poll() is None and not _saved_after_epoch_2(ckpt):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _saved_after_epoch_2(ckpt), "the run never wrote a checkpoint after epoch 2"
  return not os.path.exists(os.path.join(workdir, "results.json"))


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_results(fashion_dir, tmp_path):
  args = [f"--data_dir={fashion_dir}", "--imbalance_ratio=10", "--validation_per_class=6", "--epochs=8",
          "--batch_size=32", "--eval_batch_size=40", "--lr_decay_epochs=4", "--warmup_epochs=1"]
  straight = str(tmp_path / "straight")
  done = _cli(*args, f"--workdir={straight}", env=_env())
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(straight, "results.json")) as f:
    assert reporting.train_fit_line(json.load(f)["train_fit"]) in done.stdout  # the binary prints the train fit

  # On a busy machine this process may poll too late and find the run finished: then it starts another one.
  for attempt in range(3):
    killed = str(tmp_path / f"killed{attempt}")
    if _start_and_kill_after_epoch_2(args, killed):
      break
  else:
    pytest.fail("the run finished before it was killed, 3 times")

  resumed = _cli(*args, f"--workdir={killed}", env=_env())
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from the checkpoint of epoch" in resumed.stderr
  with open(os.path.join(straight, "results.json")) as f:
    a = json.load(f)
  with open(os.path.join(killed, "results.json")) as f:
    b = json.load(f)
  assert a["test"] == b["test"]
  assert a["per_class"] == b["per_class"]
  assert a["best_epoch"] == b["best_epoch"]
  assert [r["train"]["loss"] for r in a["history"]] == [r["train"]["loss"] for r in b["history"]]


@pytest.mark.slow
def test_a_workdir_of_another_config_is_refused(finished_fashion_run, tmp_path):
  run = shared_runs.copy_run(finished_fashion_run, str(tmp_path / "run"))
  with pytest.raises(ValueError, match="different configuration"):
    train_lib.train_and_evaluate(run.config.replace(learning_rate=0.2), run.workdir)


def test_every_preset_validates_and_names_its_command():
  # default, Pl@ntNet, MM Table 1, Fashion-MNIST-LT grid, logit-adjustment CIFAR presets, synthetic_lt (2 settings),
  # VS CIFAR presets, synthetic_lt's fit and pretrained regimes (2 settings each), Fashion-MNIST-LT converged.
  assert len(configs.PRESETS) == (1 + 6 + 8 * 11 + 2 * (11 + 5 * 3) + 2 * 3 + 2 * (11 + 5 * 3) + 2 + 4 * (11 + 5 * 3)
                                  + (8 + 3))
  for name, preset in configs.PRESETS.items():
    config_lib.validate(preset.config)
    assert preset.command.startswith(f"python -m experiments.train --config={name}")


def _main_in_process(capsys, *args):
  """Runs the binary's main() with `args` in this process (a subprocess costs 2 s of imports); returns its exit
  status (None when it returns) and the captured output. The real command line, the flag parser's own errors
  included: test_bad_flags_fail_at_start_on_the_command_line."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from experiments import train  # pylint: disable=g-import-not-at-top  (defines the flags)
  capsys.readouterr()
  code = None
  verbosity, filters = logging.get_verbosity(), list(logging.get_absl_handler().filters)
  try:
    train.FLAGS(["experiments.train", *args])
    try:
      train.main(["experiments.train"])
    except SystemExit as e:
      code = e.code
  finally:  # main() sets the flags, the log level and a log filter of the process: restored for the next test
    train.FLAGS.unparse_flags()
    logging.set_verbosity(verbosity)
    logging.get_absl_handler().filters[:] = filters
  return code, capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["--loss=ce", "--epsilon=0.5"], "`epsilon` is not used by `loss=ce`"),
    (["--loss=nope"], "`loss` must be one of"),
    (["--train_rule=drw", "--drw_start_epoch=50"], "drw_start_epoch"),
    (["--config=no_such_preset"], "Unknown `config` preset"),
    (["--loss=ce", "--tau=1"], "`tau` is not used by `loss=ce`"),
    (["--loss=smooth_svm", "--tau=0"], "`tau` must be a finite number > 0"),
    (["--loss=logit_adjusted", "--tau=-1"], "`tau` must be a finite number >= 0"),
    (["--loss=logit_adjusted", "--logit_adjustment_tau=1"], "`logit_adjustment_tau` adds the offsets"),
    (["--posthoc_tau=-0.5"], "`posthoc_tau` must be >= 0"),
    (["--config=plantnet_ce"], "pass `pretrained_weights`"),
    (["--antithetic", "--num_samples=5"], "`num_samples` must be even"),
    (["--loss=ce", "--antithetic"], "`antithetic` is not used by `loss=ce`"),
    (["--config=synth_lt100_ce", "--synthetic_dim=-1"], "`synthetic_dim` must be an int >= 1"),
    (["--config=synth_lt100_ce", "--synthetic_max_count=20"], "`synthetic_max_count`=20 leaves the rarest classes"),
    (["--config=synth_lt100_noised_imbalanced_k5", "--k=100"], "`k` must be < `synthetic_num_classes`=100"),
    (["--synthetic_dim=4"], "`synthetic_dim` is a setting of `dataset=synthetic_lt`"),
    (["--dataset=image_folder", "--data_dir=x", "--imbalance_ratio=10"],
     "`imbalance_ratio` is not used by dataset=image_folder"),
])
def test_bad_flags_fail_at_start(args, message, tmp_path, capsys):
  code, out = _main_in_process(capsys, f"--workdir={tmp_path / 'run'}", *args)
  assert code in (1, 2)  # 2: the flags contradict each other; 1: found when the run starts
  # The one message that matters, on one line, not a traceback or the whole flag listing.
  error = [line for line in out.err.splitlines() if line.startswith("experiments.train: error: ")]
  assert len(error) == 1 and message in error[0], out
  assert "--weight_decay" not in out.err + out.out


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--eval_ks=1,x"], "eval_ks"),  # the flag parser's error (an unknown flag takes the same path)
    (["--loss=ce", "--epsilon=0.5"], "`epsilon` is not used by `loss=ce`"),  # the config's (the others: above)
])
def test_bad_flags_fail_at_start_on_the_command_line(args, message):
  out = _cli(*args)
  assert out.returncode != 0
  assert message in out.stderr + out.stdout
  assert "Traceback" not in out.stderr and "--weight_decay" not in out.stderr + out.stdout


def test_missing_dataset_prints_one_message(tmp_path, capsys):
  # Without the download (on by default; tests/test_quickstart_download.py covers a failing one).
  code, out = _main_in_process(capsys, "--dataset=cifar10_lt", f"--data_dir={tmp_path / 'nonexistent'}", "--loss=ce",
                               "--normalized_head=false", "--model=resnet32", "--tfds_download=false",
                               f"--workdir={tmp_path / 'run'}")
  assert code == 1
  error = [line for line in out.err.splitlines() if line.startswith("experiments.train: error:")]
  assert len(error) == 1 and "Dataset 'cifar10_lt' not found" in error[0] and "How to get it" in error[0]


def test_config_list_prints_every_preset(capsys):
  code, out = _main_in_process(capsys, "--config=list")
  assert code is None
  assert out.out.count("python -m experiments.train --config=") == len(configs.PRESETS)


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.two_devices
@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(fashion_dir, tmp_path):
  """Multi-host path: 2 processes x 1 CPU device (jax.distributed over localhost, gloo collectives), each reading
  its own half of every global batch, train the same model as 1 process x 2 devices, with the noised loss (its
  noise keyed by each example's global position)."""
  args = [f"--data_dir={fashion_dir}", "--imbalance_ratio=10", "--validation_per_class=6", "--epochs=2",
          "--batch_size=32", "--eval_batch_size=40", "--lr_decay_epochs=1", "--warmup_epochs=1",
          "--loss=noised_imbalanced", "--k=2", "--epsilon=0.1", "--num_samples=5", "--max_margin=0.2", "--scale=60"]
  # The 1 process x 2 devices run is this process's (two forced host devices): the same config as `args` give.
  single = str(tmp_path / "single")
  train_lib.train_and_evaluate(configs.get_preset("default").config.replace(
      data_dir=fashion_dir, imbalance_ratio=10.0, validation_per_class=6, epochs=2, batch_size=32, eval_batch_size=40,
      lr_decay_epochs=(1,), warmup_epochs=1, loss="noised_imbalanced", k=2, epsilon=0.1, num_samples=5,
      max_margin=0.2, scale=60.0), single)

  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.train", *args, f"--workdir={multi}", "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=shared_runs.SUBPROCESS_TIMEOUT_S) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  with open(os.path.join(single, "results.json")) as f:
    a = json.load(f)
  with open(os.path.join(multi, "results.json")) as f:
    b = json.load(f)
  assert b["num_processes"] == 2 and b["num_devices"] == 2 and a["num_devices"] == 2
  np.testing.assert_allclose([r["train"]["loss"] for r in a["history"]],
                             [r["train"]["loss"] for r in b["history"]], rtol=1e-4)
  # The losses agree to 1e-4 (the reductions' order), the models' scores to about as much: only a test example whose
  # top scores (or whose probability and the average-K threshold) lie that close can be called differently, fewer
  # than one expected among 120. Allow one: 1 / 120 of the accuracy, of the 10-class macro accuracy (12 examples per
  # class: 1 / 12 of one class), of the mean set size (one entry).
  assert [row["test_count"] for row in b["per_class"].values()] == [12] * 10
  for key in a["test"]:
    assert abs(a["test"][key] - b["test"][key]) <= 1 / 120 + 1e-6, key


def _mm_batch(num_classes, size, seed):
  """Cosine-like logits in [-1, 1] and labels, with the gaps of the MM loss on both sides of 0."""
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.uniform(-1, 1, (size, num_classes)), jnp.float32),
          jnp.asarray(rng.integers(0, num_classes, size), jnp.int32))


def _loss_on_one_device(loss_fn, logits, labels):
  """`loss_fn` as train_step runs it: under the device axis (here a single device)."""
  return np.asarray(jax.vmap(loss_fn, axis_name=train_lib.AXIS, in_axes=(0, 0, None))(logits[None], labels[None],
                                                                                          None)[0])


def test_mm_ldam_loss_reads_max_margin():
  # `max_margin` is the rarest class's LDAM margin of mm_ldam (it used to be ignored, fixed at 0.5).
  counts = np.array([500, 120, 40, 9])
  logits, labels = _mm_batch(4, 16, 2)
  cfg = config_lib.validate(config_lib.Config(loss="mm_ldam", mm_delta_minus=1.29, mm_beta=1.528, scale=26.0),
                            explicitly_set={"max_margin"})
  got = {}
  for max_margin in (0.5, 0.3):
    got[max_margin] = _loss_on_one_device(train_lib.make_loss_fn(cfg.replace(max_margin=max_margin), counts),
                                          logits, labels)
    want = ref.max_margin_loss(logits, labels, 1.29, 1.528, 26.0, ref.class_margins(counts, max_margin))[0]
    np.testing.assert_allclose(got[max_margin], want, rtol=1e-5, atol=1e-4)
  assert np.max(np.abs(got[0.5] - got[0.3])) > 1e-2


def test_mm_ldam_presets_keep_the_margins_they_trained_with():
  # Every MM-LDAM preset (MM Table 1: 8 columns; Fashion-MNIST-LT and synthetic_lt: 2 settings each; the
  # synthetic_lt fit and pretrained regimes: 2 settings each) sets max_margin 0.5, the authors' constant and the value
  # the trainer used before it read the field: same loss.
  names = sorted(n for n, p in configs.PRESETS.items() if p.config.loss == "mm_ldam")
  assert len(names) == 8 + 2 + 2 + 4, names
  counts = np.array([5000, 1200, 400, 90, 50])
  logits, labels = _mm_batch(5, 32, 3)
  for name in names:
    cfg = configs.get_preset(name).config
    assert cfg.max_margin == 0.5, name
    got = _loss_on_one_device(train_lib.make_loss_fn(cfg, counts), logits, labels)
    want = ref.max_margin_loss(logits, labels, cfg.mm_delta_minus, cfg.mm_beta, cfg.scale,
                               ref.class_margins(counts, 0.5), cfg.mm_reference_code_compat)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.two_devices
def test_mm_compat_loss_reads_the_first_label_of_the_global_batch():
  # The released code's "positive" column is its batch's first label; with the batch split over 2 devices, both
  # shards read the global batch's first label (the second shard's own first label differs here).
  counts = np.array([5000, 1200, 400, 90, 50])
  logits, labels = _mm_batch(5, 16, 4)
  labels = labels.at[8].set((labels[0] + 1) % 5)
  cfg = config_lib.Config(loss="mm_ldam", max_margin=0.5, mm_delta_minus=0.6, mm_beta=1.5, scale=30.0,
                          mm_reference_code_compat=True)
  loss_fn = train_lib.make_loss_fn(cfg, counts)
  got = jax.pmap(loss_fn, axis_name=train_lib.AXIS, in_axes=(0, 0, None))(
      logits.reshape(2, 8, 5), labels.reshape(2, 8), None)
  margins = ref.class_margins(counts, 0.5)
  want = ref.max_margin_loss(logits, labels, 0.6, 1.5, 30.0, margins, True, int(labels[0]))[0]
  np.testing.assert_allclose(np.asarray(got).reshape(-1), want, rtol=1e-5, atol=1e-4)
  per_shard = ref.max_margin_loss(logits[8:], labels[8:], 0.6, 1.5, 30.0, margins, True)[0]
  assert np.max(np.abs(want[8:] - per_shard)) > 1e-2


@pytest.mark.two_devices
@pytest.mark.slow
def test_mm_compat_two_devices_match_one_device(fashion_dir):
  # A compat-mode MM-LDAM preset's train steps on 1 and 2 devices give the same parameters (each shard used to
  # read its own first label, so the split changed the update).
  preset = configs.get_preset("cifar10_lt_exp100_mm_ldam_drw").config
  mm_fields = ("loss", "normalized_head", "max_margin", "scale", "mm_delta_minus", "mm_beta",
               "mm_reference_code_compat")
  config = tiny_fashion_config(fashion_dir, **{f: getattr(preset, f) for f in mm_fields})
  assert config.mm_reference_code_compat
  dataset = _tiny_dataset(fashion_dir)
  batches = list(dataset.train_batches(epoch=0, batch_size=32, seed=0))[:3]
  assert all(b["label"][0] != b["label"][16] for b in batches)  # the two shards' first labels differ
  one, m1 = _train_steps(1, batches, config, dataset)
  two, m2 = _train_steps(2, batches, config, dataset)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one.params, two.params)
  np.testing.assert_allclose([m["loss"] for m in m1], [m["loss"] for m in m2], rtol=1e-5)
