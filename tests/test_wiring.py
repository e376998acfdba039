"""Wiring: every hyperparameter a config gives the trainer reaches the computation it names.

One parametrized test. Each case builds the trainer's own function from a config whose values are not the defaults
(`make_loss_fn` under the device axis, as `train_step` calls it; `train_step` itself for the train rules' class
weights; `eval_step` with the offsets of `logit_offsets(config, counts, config.posthoc_tau)`, as train_and_evaluate
passes them, for post-hoc adjustment; `train_batches_for_epoch` for the resampling rule's draws), runs it on a fixed
batch split over two shards of the device axis and compares it with the float64 reference of tests/reference.py,
evaluated from the same config by the `_reference_*` functions below, which share no code with
experiments/train_lib.py. Each case also evaluates the reference with its hyperparameter back at the default (or with
the wiring mistake it guards against) and checks that this value is far outside the tolerance: a trainer that drops
the hyperparameter computes that value and fails the case.

The noised losses draw their noise from per-example keys; the reference derives the same keys from their definition
(`fold_in(fold_in(rng, step), global position)`, not `train_lib.example_keys`) and the same draws with
`jax.random.normal(key_i, (B, L))` (B / 2 rows and their negatives when antithetic), which the library's noise
generator reproduces bit for bit (tests/test_topk.py), and feeds them to the float64 reference's explicit-noise loss.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import config as config_lib
from experiments import input_pipeline
from experiments import train_lib
from tests import reference as ref

NUM_CLASSES, BATCH = 6, 12
COUNTS = np.array([500, 120, 40, 9, 5, 2])
RNG, STEP = jax.random.key(7), 3
# The batch is split over two shards of the device axis (vmap with the axis name, as pmap over two devices): the
# noise keys come from global positions, the MM compat mode reads the global batch's first label (the second
# shard's first label differs from it).
SHARDS = 2
# Logits as a cosine head gives them (in [-1, 1]) and labels covering every class. Five rows are classified right, by
# 0.1 (their label's logit the largest plus 0.1), three of them of the first label's class, so that the MM losses take
# both branches of their margin with weight (gap > 0: delta_plus = mm_beta * delta_minus) in compat mode too, where
# the "positive" column is the batch's first label for every row.
_gen = np.random.default_rng(2026)
LOGITS = _gen.uniform(-1.0, 0.9, (BATCH, NUM_CLASSES)).astype(np.float32)
LABELS = np.array([0, 1, 2, 3, 4, 5, 2, 0, 0, 1, 4, 0], np.int32)
for _row in (0, 3, 7, 8, 10):
  LOGITS[_row, LABELS[_row]] = max(LOGITS[_row].max(), 0.0) + 0.1

# For each loss, a value that is not the default for every hyperparameter it reads (config.LOSS_HYPERPARAMETERS).
LOSS_SETTINGS = {
    "ce": {},
    "focal": {"gamma": 0.7},
    "ldam": {"max_margin": 0.45, "scale": 16.0},
    "mm": {"scale": 16.0, "mm_delta_minus": 1.2, "mm_beta": 1.5, "mm_reference_code_compat": True},
    "mm_ldam": {"max_margin": 0.45, "scale": 16.0, "mm_delta_minus": 1.2, "mm_beta": 1.5,
                "mm_reference_code_compat": True},
    "smooth_svm": {"k": 3, "tau": 0.5, "svm_alpha": 0.4},
    "topk_hinge": {"k": 3},
    "noised_balanced": {"k": 3, "epsilon": 0.5, "num_samples": 6, "antithetic": True},
    "noised_imbalanced": {"k": 3, "epsilon": 0.3, "num_samples": 6, "antithetic": True, "max_margin": 0.45,
                          "scale": 16.0},
    "logit_adjusted": {"tau": 1.7},
    "balanced_softmax": {},
    "vs": {"tau": 0.4, "vs_gamma": 0.8},
}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(config_lib.Config)}


def _default(hyper, loss):
  """The value the trainer uses when `hyper` is not set (`tau=None` resolves to the loss's own default)."""
  return config_lib.DEFAULT_TAU[loss] if hyper == "tau" else _DEFAULTS[hyper]


# ---------------------------------------------------------------------------------------------------------------------
# The reference: float64, from the config's fields, written from the losses' definitions.


def _reference_noise(num_samples, antithetic):
  """`[B, BATCH, L]` float64: row i of sample b is `jax.random.normal(key_i, (B', L))[b]` (B' = B, or B / 2 followed
  by the negatives when antithetic), key_i = fold_in(fold_in(RNG, STEP), i)."""
  draw = num_samples // 2 if antithetic else num_samples
  step_key = jax.random.fold_in(RNG, STEP)
  rows = [np.asarray(jax.random.normal(jax.random.fold_in(step_key, i), (draw, NUM_CLASSES), jnp.float32), np.float64)
          for i in range(BATCH)]
  half = np.stack(rows, axis=1)
  return np.concatenate([half, -half]) if antithetic else half


def _tau(cfg, default):
  return default if cfg.tau is None else cfg.tau


def _reference_losses(cfg, logits=LOGITS, labels=LABELS):
  """Per-example float64 losses of `cfg` (logit adjustment included), from tests/reference.py."""
  x = np.asarray(logits, np.float64)
  scaled = cfg.loss in ("ldam", "mm", "mm_ldam", "noised_imbalanced")
  if cfg.logit_adjustment_tau:
    # Offsets in the units of the loss: scaled losses multiply the logits by `scale`, so they get offsets / scale.
    x = x + ref.logit_adjustment(COUNTS, cfg.logit_adjustment_tau) / (cfg.scale if scaled else 1.0)
  margins = ref.class_margins(COUNTS, cfg.max_margin)
  name = cfg.loss
  if name == "ce":
    return ref.cross_entropy(x, labels)[0]
  if name == "focal":
    return ref.focal_loss_value(x, labels, cfg.gamma)
  if name == "ldam":
    return ref.ldam_loss(x, labels, margins, cfg.scale)[0]
  if name in ("mm", "mm_ldam"):
    return ref.max_margin_loss(x, labels, cfg.mm_delta_minus, cfg.mm_beta, cfg.scale,
                               margins if name == "mm_ldam" else None, cfg.mm_reference_code_compat)[0]
  if name == "smooth_svm":
    return ref.smooth_topk_svm_value(x, labels, cfg.k, _tau(cfg, 0.1), cfg.svm_alpha)
  if name == "topk_hinge":
    return ref.topk_hinge_loss(x, labels, cfg.k)[0]
  if name in ("noised_balanced", "noised_imbalanced"):
    noise = _reference_noise(cfg.num_samples, cfg.antithetic)
    if name == "noised_balanced":
      return ref.noised_topk_loss(x, labels, cfg.k, cfg.epsilon, noise)[0]
    return ref.noised_topk_loss(x, labels, cfg.k, cfg.epsilon, noise, margins=margins, scale=cfg.scale)[0]
  if name == "logit_adjusted":
    return ref.logit_adjusted_loss(x, labels, COUNTS, _tau(cfg, 1.0))[0]
  if name == "balanced_softmax":
    return ref.logit_adjusted_loss(x, labels, COUNTS, 1.0)[0]
  if name == "vs":
    return ref.vs_loss(x, labels, COUNTS, cfg.vs_gamma, _tau(cfg, 1.0))[0]
  raise AssertionError(name)


def _reference_class_weights(cfg, epoch):
  if cfg.train_rule == "reweight" or (cfg.train_rule == "drw" and epoch >= cfg.drw_start_epoch):
    return ref.class_balanced_weights(COUNTS, cfg.cb_beta)
  return np.ones(NUM_CLASSES)


def _reference_train_loss(cfg, epoch):
  """The step's loss: sum_i w_{y_i} l_i / sum_i w_{y_i}, or for focal the mean of the loss with w_{y_i} inside."""
  w = _reference_class_weights(cfg, epoch)[LABELS]
  if cfg.loss == "focal":
    return np.mean(ref.focal_loss_value(LOGITS, LABELS, cfg.gamma, weights=w))
  return ref.weighted_mean(_reference_losses(cfg), w)


def _reference_eval_counts(cfg, logits, labels):
  """Per-class top-k hits of `logits - posthoc_tau * log(prior)` (divided by the scale of scaled losses)."""
  scaled = cfg.loss in ("ldam", "mm", "mm_ldam", "noised_imbalanced")
  x = np.asarray(logits, np.float64) - ref.logit_adjustment(COUNTS, cfg.posthoc_tau) / (cfg.scale if scaled else 1.)
  return np.concatenate([ref.per_class_topk_counts(x, labels, k, NUM_CLASSES)[0] for k in cfg.eval_ks])


# ---------------------------------------------------------------------------------------------------------------------
# The trainer's functions, called as train_and_evaluate calls them.


def _shards(x):
  return jnp.asarray(x).reshape((SHARDS, -1) + x.shape[1:])


def _losses(cfg):
  loss_fn = train_lib.make_loss_fn(cfg, COUNTS)

  def shard(logits, labels):
    return loss_fn(logits, labels, train_lib.example_keys(RNG, STEP, labels.shape[0]))

  out = jax.jit(jax.vmap(shard, axis_name=train_lib.AXIS))(_shards(LOGITS), _shards(LABELS))
  return np.asarray(out, np.float64).reshape(BATCH)


def _apply(variables, x, train, mutable=None):
  """A "model" whose logits are its input plus a zero bias (train_step needs parameters to differentiate)."""
  out = x + variables["params"]["bias"]
  return (out, {"batch_stats": {}}) if mutable else out


def _train_loss(cfg, epoch):
  state = train_lib.TrainState.create(apply_fn=_apply, params={"bias": jnp.zeros(NUM_CLASSES)}, tx=optax.sgd(0.0),
                                      batch_stats={}).replace(step=STEP)  # the noise keys fold in the step
  weights = jnp.asarray(train_lib.class_weights_for_epoch(cfg, COUNTS, epoch))
  step = functools.partial(train_lib.train_step, loss_fn=train_lib.make_loss_fn(cfg, COUNTS), schedule=lambda s: 0.0,
                           weights_inside=train_lib.weights_inside_loss(cfg))
  batch = {"image": _shards(LOGITS), "label": _shards(LABELS)}
  _, metrics = jax.vmap(step, axis_name=train_lib.AXIS, in_axes=(None, 0, None, None))(state, batch, RNG, weights)
  return float(metrics["loss"][0])


EVAL_BATCH = 64
_eval_gen = np.random.default_rng(11)
EVAL_LOGITS = _eval_gen.uniform(-1.0, 1.0, (EVAL_BATCH, NUM_CLASSES)).astype(np.float32)
EVAL_LABELS = _eval_gen.integers(0, NUM_CLASSES, EVAL_BATCH).astype(np.int32)


def _eval_counts(cfg):
  # train_and_evaluate's offsets: logit_offsets(config, counts, config.posthoc_tau) when posthoc_tau > 0.
  offsets = jnp.asarray(train_lib.logit_offsets(cfg, COUNTS, cfg.posthoc_tau)) if cfg.posthoc_tau else None
  state = train_lib.TrainState.create(apply_fn=_apply, params={"bias": jnp.zeros(NUM_CLASSES)}, tx=optax.sgd(0.0),
                                      batch_stats={})
  step = functools.partial(train_lib.eval_step, ks=tuple(cfg.eval_ks), num_classes=NUM_CLASSES,
                           posthoc_offsets=offsets)
  batch = {"image": _shards(EVAL_LOGITS), "label": _shards(EVAL_LABELS), "mask": _shards(np.ones(EVAL_BATCH))}
  out = jax.vmap(step, axis_name=train_lib.AXIS, in_axes=(None, 0))(state, batch)
  return np.concatenate([np.asarray(out[k][0][0], np.float64) for k in cfg.eval_ks])


# The resampling rule: a training split of COUNTS examples per class whose feature is the example's index.
TRAIN_LABELS = np.repeat(np.arange(NUM_CLASSES), COUNTS).astype(np.int32)
RESAMPLE_BATCH, RESAMPLE_EPOCH = 64, 2


def _resample_dataset():
  n = len(TRAIN_LABELS)
  source = input_pipeline._VectorSource(np.arange(n, dtype=np.float32)[:, None], TRAIN_LABELS)
  return input_pipeline.Dataset(
      name="wiring", num_classes=NUM_CLASSES, class_names=[str(c) for c in range(NUM_CLASSES)], image_shape=(1,),
      train_class_counts=COUNTS.copy(), eval_splits=(), has_validation=False, num_train_examples=n, _train=source,
      _evals={})


def _epoch_labels(cfg):
  """The labels of the epoch's training batches, in order, as train_and_evaluate draws them."""
  batches = train_lib.train_batches_for_epoch(cfg, _resample_dataset(), RESAMPLE_EPOCH)
  return np.concatenate([b["label"] for b in batches]).astype(np.float64)


def _reference_epoch_labels(cfg):
  """The epoch's draw by its definition: `default_rng([seed, epoch, 0])`, a permutation, or with train_rule=resample
  `n` draws with replacement, example i with probability proportional to the class-balanced weight of its class."""
  n = len(TRAIN_LABELS)
  rng = np.random.default_rng([cfg.seed, RESAMPLE_EPOCH, 0])
  if cfg.train_rule == "resample":
    w = ref.class_balanced_weights(COUNTS, cfg.cb_beta)[TRAIN_LABELS]
    order = rng.choice(n, size=n, replace=True, p=w / w.sum())
  else:
    order = rng.permutation(n)
  steps = n // cfg.batch_size
  return TRAIN_LABELS[order[:steps * cfg.batch_size]].astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------------
# Tolerances.

# float32 against float64 on the same float32 inputs: each value is a few dozen float32 operations on numbers at most
# M = scale * (|logit| <= 1, + margin <= 0.45, + |tau log prior|, + epsilon |Z| with |Z| < 4) in size, each rounding
# by at most eps32 / 2 of M; the errors partly cancel. Measured: at most 0.9 eps32 M (ce, focal); 16 eps32 M leaves
# a factor 18 over it for other CPUs and XLA versions.
EPS32 = float(np.finfo(np.float32).eps)


def _loss_tolerance(cfg):
  scaled = cfg.loss in ("ldam", "mm", "mm_ldam", "noised_imbalanced")
  # The offsets of logit_adjustment_tau, or those the logit-adjusted losses add themselves (tau log prior).
  tau = {"logit_adjusted": _tau(cfg, 1.0), "balanced_softmax": 1.0, "vs": _tau(cfg, 1.0)}.get(cfg.loss, 0.0)
  tau += cfg.logit_adjustment_tau / (cfg.scale if scaled else 1.0)
  offsets = np.abs(ref.logit_adjustment(COUNTS, tau)).max()
  noise = 4 * cfg.epsilon if cfg.loss.startswith("noised") else 0.0
  return 16 * EPS32 * (cfg.scale if scaled else 1.0) * (1.0 + 0.45 + offsets + noise)


# A case that would go unnoticed must change the value by this many tolerances.
SEPARATION = 100


# ---------------------------------------------------------------------------------------------------------------------
# The cases: (id, kind, config changes, epoch, alternatives). An alternative is a dict of config changes that
# describes a wiring mistake (the hyperparameter dropped: its default); the reference of the alternative must differ.


def _loss_cases():
  cases = []
  for hyper, losses in config_lib.LOSS_HYPERPARAMETERS.items():
    for loss in losses:
      cases.append((f"{loss}-{hyper}", "loss", {"loss": loss, **LOSS_SETTINGS[loss]}, 0,
                    [{hyper: _default(hyper, loss)}]))
  # Losses without a hyperparameter: routed to their own function, not to the other one.
  cases.append(("ce-routing", "loss", {"loss": "ce"}, 0, [{"loss": "balanced_softmax"}, {"loss": "focal"}]))
  cases.append(("balanced_softmax-routing", "loss", {"loss": "balanced_softmax"}, 0,
                [{"loss": "ce"}, {"loss": "vs"}]))
  # Training-time logit adjustment: a linear-head loss, and a scaled loss whose offsets are divided by its scale
  # (the mistake of not dividing is tau * scale undivided, the alternative below).
  cases.append(("ce-logit_adjustment_tau", "loss", {"loss": "ce", "logit_adjustment_tau": 0.8}, 0,
                [{"logit_adjustment_tau": 0.0}]))
  cases.append(("ldam-logit_adjustment_tau", "loss", {"loss": "ldam", **LOSS_SETTINGS["ldam"],
                                                      "logit_adjustment_tau": 0.8}, 0,
                [{"logit_adjustment_tau": 0.0}, {"logit_adjustment_tau": 0.8 * 16.0}]))
  cases.append(("noised_imbalanced-logit_adjustment_tau", "loss",
                {"loss": "noised_imbalanced", **LOSS_SETTINGS["noised_imbalanced"], "logit_adjustment_tau": 0.8}, 0,
                [{"logit_adjustment_tau": 0.0}, {"logit_adjustment_tau": 0.8 * 16.0}]))
  return cases


CASES = _loss_cases() + [
    # Post-hoc adjustment: the evaluated logits (per-class top-1/2/3 hits), linear and scaled.
    ("ce-posthoc_tau", "eval", {"loss": "ce", "posthoc_tau": 0.7}, 0, [{"posthoc_tau": 0.0}]),
    ("ldam-posthoc_tau", "eval", {"loss": "ldam", **LOSS_SETTINGS["ldam"], "posthoc_tau": 0.7}, 0,
     [{"posthoc_tau": 0.0}, {"posthoc_tau": 0.7 * 16.0}]),
    # The train rules' class weights, through train_step's reduction.
    ("reweight-cb_beta", "train", {"loss": "ce", "train_rule": "reweight", "cb_beta": 0.99}, 0,
     [{"cb_beta": _DEFAULTS["cb_beta"]}, {"train_rule": "none"}]),
    ("drw-before_start", "train", {"loss": "ce", "train_rule": "drw", "cb_beta": 0.99, "drw_start_epoch": 3,
                                   "epochs": 10}, 2, [{"drw_start_epoch": 0}]),
    ("drw-after_start", "train", {"loss": "ce", "train_rule": "drw", "cb_beta": 0.99, "drw_start_epoch": 3,
                                  "epochs": 10}, 3,
     [{"drw_start_epoch": _DEFAULTS["drw_start_epoch"]}, {"cb_beta": _DEFAULTS["cb_beta"]}]),
    ("drw-noised_imbalanced", "train", {"loss": "noised_imbalanced", **LOSS_SETTINGS["noised_imbalanced"],
                                        "train_rule": "drw", "cb_beta": 0.99, "drw_start_epoch": 3, "epochs": 10}, 5,
     [{"train_rule": "none"}, {"cb_beta": _DEFAULTS["cb_beta"]}]),
    # focal: the weights inside the focusing factor (LDAM-DRW's CB-Focal), the reduction a plain mean.
    ("focal-reweight", "train", {"loss": "focal", "gamma": 0.7, "train_rule": "reweight", "cb_beta": 0.99}, 0,
     [{"train_rule": "none"}, {"gamma": _DEFAULTS["gamma"]}]),
    # The resampling rule's draws (CB-RS): cb_beta reaches the input pipeline; the labels drawn, exactly.
    ("resample-cb_beta", "batches", {"loss": "ce", "train_rule": "resample", "cb_beta": 0.99,
                                     "batch_size": RESAMPLE_BATCH, "seed": 3},
     0, [{"cb_beta": _DEFAULTS["cb_beta"]}, {"train_rule": "none"}, {"seed": 4}]),
]


def _value(kind, cfg, epoch):
  """(trainer's value, reference value, tolerance)."""
  if kind == "loss":
    return _losses(cfg), _reference_losses(cfg), _loss_tolerance(cfg)
  if kind == "train":
    weights = train_lib.class_weights_for_epoch(cfg, COUNTS, epoch)
    got = np.concatenate([weights, [_train_loss(cfg, epoch)]])
    want = np.concatenate([_reference_class_weights(cfg, epoch), [_reference_train_loss(cfg, epoch)]])
    # The weighted mean of the losses is off by at most their error, plus the float32 weights' rounding (eps32 / 2 of
    # each weight, and of the mean's few operations): a few eps32 of the largest entry.
    return got, want, _loss_tolerance(cfg) + 8 * EPS32 * float(np.max(want))
  if kind == "eval":
    # Integer counts, exact: no two adjusted logits of a row are closer than float32 could misorder (checked).
    scaled = cfg.loss in ("ldam", "mm", "mm_ldam", "noised_imbalanced")
    x = np.asarray(EVAL_LOGITS, np.float64) - ref.logit_adjustment(COUNTS, cfg.posthoc_tau) / (cfg.scale if scaled
                                                                                              else 1.0)
    gaps = np.diff(np.sort(x, axis=1), axis=1)
    assert gaps.min() > 1e3 * EPS32 * np.abs(x).max(), gaps.min()
    return _eval_counts(cfg), _reference_eval_counts(cfg, EVAL_LOGITS, EVAL_LABELS), 0.0
  if kind == "batches":  # integer labels, exact
    return _epoch_labels(cfg), _reference_epoch_labels(cfg), 0.0
  raise AssertionError(kind)


def _reference_only(kind, cfg, epoch):
  if kind == "loss":
    return _reference_losses(cfg)
  if kind == "batches":
    return _reference_epoch_labels(cfg)
  if kind == "train":
    return np.concatenate([_reference_class_weights(cfg, epoch), [_reference_train_loss(cfg, epoch)]])
  return _reference_eval_counts(cfg, EVAL_LOGITS, EVAL_LABELS)


def test_every_loss_and_hyperparameter_has_a_case():
  ids = [case[0] for case in CASES]
  assert len(ids) == len(set(ids))
  for loss in config_lib.LOSSES:
    read = {h for h, losses in config_lib.LOSS_HYPERPARAMETERS.items() if loss in losses}
    assert set(LOSS_SETTINGS[loss]) == read, loss
    assert all(LOSS_SETTINGS[loss][h] != _default(h, loss) for h in read), loss
    assert any(i.startswith(f"{loss}-") for i in ids), loss
  for rule in ("reweight", "drw", "resample"):
    assert any(i.startswith(f"{rule}-") for i in ids), rule


@pytest.mark.parametrize("case_id, kind, changes, epoch, alternatives", CASES, ids=[c[0] for c in CASES])
def test_trainer_computes_what_the_config_says(case_id, kind, changes, epoch, alternatives):
  cfg = config_lib.Config(**changes)
  got, want, tol = _value(kind, cfg, epoch)
  np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=case_id)
  for alternative in alternatives:
    wrong = _reference_only(kind, config_lib.Config(**{**changes, **alternative}), epoch)
    if kind == "eval":  # integer counts: at least 3 hits move
      assert np.sum(np.abs(wrong - want)) >= 3, (case_id, alternative, wrong - want)
    elif kind == "batches":  # labels drawn: at least a tenth of them differ
      assert np.mean(wrong != want) > 0.1, (case_id, alternative, np.mean(wrong != want))
    else:
      assert np.max(np.abs(wrong - want)) > SEPARATION * tol, (case_id, alternative, np.max(np.abs(wrong - want)), tol)
