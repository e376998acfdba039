"""Training and evaluation: `train_and_evaluate(config, workdir)`.

The train step is a pure function of `(state, batch, rng)` (plus the current class weights), `jax.pmap`-ed over the
local devices: gradients are summed with `lax.psum` over the global batch, batch-norm statistics are synchronized
with `lax.pmean` inside the model, the loss noise of each example is drawn from a key that folds in the step and
the example's position in the global batch (`example_keys`), not the device, and the MM losses' compat mode reads
the global batch's first label (`first_of_global_batch`), not the shard's. 1 device, n devices and several hosts
therefore train the same model, up to the floating-point order of the reductions (tested for one step and one
epoch, with and without noise, in tests/test_train.py). A single CPU device is the degenerate case of the same code.
"""
import functools
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import flax
from flax.training import train_state as flax_train_state
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

import noised_topk_jax as ntk
from experiments import checkpointing
from experiments import config as config_lib
from experiments import input_pipeline
from experiments import models
from experiments import pretraining
from experiments import reporting
from experiments import set_eval
from experiments import synthetic_lt

AXIS = "batch"


class TrainState(flax_train_state.TrainState):
  batch_stats: Any = None


# ----------------------------------------------------------------------------------------------------------------
# Loss, class weights, optimizer.


def logit_offsets(config: config_lib.Config, class_counts: np.ndarray, tau: float) -> np.ndarray:
  """`tau * log(prior)` in the units of the model's logits: divided by the loss's scale for scaled losses (LDAM, MM,
  imbalanced noised), whose logits are cosines multiplied by `scale` inside the loss, so that the offsets act on the
  scaled logits as logit adjustment prescribes."""
  return ntk.logit_adjustment(class_counts, tau=tau) / np.float32(config_lib.logit_scale(config))


def make_loss_fn(config: config_lib.Config, class_counts: np.ndarray) -> Callable:
  """Returns `loss_fn(logits, labels, keys) -> per-example losses` for `config.loss` (`keys`: one typed key per
  example, see `example_keys`; only the noised losses use them), with the logit-adjustment
  offsets of `config.logit_adjustment_tau` added to the logits first when it is > 0. When
  `weights_inside_loss(config)` (focal), it also takes the per-example class weights, `weights=`.
  Call it on a device's shard under `pmap(axis_name=AXIS)`, as `train_step` does: the MM losses with
  `mm_reference_code_compat` read the first label of the global batch (`first_of_global_batch`)."""
  loss_fn = _base_loss_fn(config, class_counts)
  if not config.logit_adjustment_tau:
    return loss_fn
  offsets = jnp.asarray(logit_offsets(config, class_counts, config.logit_adjustment_tau))
  return lambda logits, labels, key, **weights: loss_fn(logits + offsets, labels, key, **weights)


def _base_loss_fn(config: config_lib.Config, class_counts: np.ndarray) -> Callable:
  name = config.loss
  if name == "ce":
    return lambda logits, labels, key: ntk.cross_entropy_loss(logits, labels)
  if name == "focal":
    return lambda logits, labels, key, weights=None: ntk.focal_loss(logits, labels, gamma=config.gamma,
                                                                     weights=weights)
  if name == "ldam":
    margins = ntk.class_margins(class_counts, max_margin=config.max_margin)
    return lambda logits, labels, key: ntk.ldam_loss(logits, labels, margins=margins, scale=config.scale)
  if name in ("mm", "mm_ldam"):
    # MM-LDAM: the rarest class's LDAM margin is `max_margin` (0.5 in the authors' code and in every preset).
    ldam_margins = ntk.class_margins(class_counts, max_margin=config.max_margin) if name == "mm_ldam" else None

    def mm_loss(logits, labels, key):
      # The released code reads every row's "positive" column from its batch's first label, the whole batch's:
      # under pmap, the global batch's first label, not each shard's (the same update on 1 and n devices).
      first = first_of_global_batch(labels) if config.mm_reference_code_compat else None
      return ntk.max_margin_loss(
          logits, labels, delta_minus=config.mm_delta_minus, beta=config.mm_beta, scale=config.scale,
          ldam_margins=ldam_margins, reference_code_compat=config.mm_reference_code_compat, reference_label=first)
    return mm_loss
  if name == "smooth_svm":
    return lambda logits, labels, key: ntk.smooth_topk_svm_loss(
        logits, labels, k=config.k, tau=config_lib.loss_tau(config), alpha=config.svm_alpha)
  if name == "topk_hinge":
    return lambda logits, labels, key: ntk.topk_hinge_loss(logits, labels, k=config.k)
  if name in ("noised_balanced", "noised_imbalanced"):
    if name == "noised_imbalanced":
      margins, scale = ntk.class_margins(class_counts, max_margin=config.max_margin), config.scale
    else:
      margins, scale = 1.0, 1.0
    return lambda logits, labels, key: ntk.noised_topk_loss(
        logits, labels, k=config.k, epsilon=config.epsilon, num_samples=config.num_samples, margins=margins,
        scale=scale, key=key, antithetic=config.antithetic)
  if name == "logit_adjusted":
    tau = config_lib.loss_tau(config)
    return lambda logits, labels, key: ntk.logit_adjusted_loss(logits, labels, class_counts=class_counts, tau=tau)
  if name == "balanced_softmax":
    return lambda logits, labels, key: ntk.balanced_softmax_loss(logits, labels, class_counts=class_counts)
  if name == "vs":
    gamma, tau = config.vs_gamma, config_lib.loss_tau(config)
    return lambda logits, labels, key: ntk.vs_loss(logits, labels, class_counts=class_counts, gamma=gamma, tau=tau)
  raise ValueError(f"`loss` must be one of {config_lib.LOSSES}, got {name!r}.")


def train_batches_for_epoch(config: config_lib.Config, dataset: input_pipeline.Dataset, epoch: int, *,
                            process_index: int = 0, process_count: int = 1):
  """The training batches of `epoch` as `config` asks: a permutation of the training split, or with
  `train_rule="resample"` class-balanced draws with the weights of `cb_beta` (CB-RS); `seed`, `batch_size` and
  `augment` from the config."""
  return dataset.train_batches(epoch=epoch, batch_size=config.batch_size, seed=config.seed,
                               resample=config.train_rule == "resample", resample_beta=config.cb_beta,
                               augment=config.augment, process_index=process_index, process_count=process_count)


def class_weights_for_epoch(config: config_lib.Config, class_counts: np.ndarray, epoch: int) -> np.ndarray:
  """Per-class loss weights of `epoch` under `config.train_rule` (float32 `[L]`)."""
  if config.train_rule == "reweight":
    w = ntk.class_balanced_weights(class_counts, beta=config.cb_beta)
  elif config.train_rule == "drw":
    w = ntk.drw_class_weights(class_counts, epoch=epoch, start_epoch=config.drw_start_epoch, beta=config.cb_beta)
  else:
    w = np.ones(len(class_counts))
  return w.astype(np.float32)


def learning_rate_at_epoch(config: config_lib.Config, epoch):
  """Epoch-wise schedule of the LDAM-DRW / Pl@ntNet protocols: linear warm-up, then step decay.

  Warm-up: `lr * (epoch + 1) / warmup_epochs` for the first `warmup_epochs` epochs (0-indexed), then `lr` times
  `lr_decay_factor` for every decay epoch reached.
  """
  lr = config.learning_rate
  epoch = jnp.asarray(epoch)
  decays = sum((epoch >= e).astype(jnp.float32) for e in config.lr_decay_epochs) if config.lr_decay_epochs else 0.0
  lr_epoch = lr * jnp.power(config.lr_decay_factor, decays)
  if config.warmup_epochs > 0:
    warm = lr * (epoch + 1).astype(jnp.float32) / config.warmup_epochs
    lr_epoch = jnp.where(epoch < config.warmup_epochs, warm, lr_epoch)
  return lr_epoch


def make_optimizer(config: config_lib.Config, steps_per_epoch: int):
  def schedule(step):
    return learning_rate_at_epoch(config, step // steps_per_epoch)

  # Coupled weight decay (added to the gradient before momentum), as torch.optim.SGD(weight_decay=...).
  tx = optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum if config.momentum > 0 else None, nesterov=config.nesterov))
  return tx, schedule


# ----------------------------------------------------------------------------------------------------------------
# Steps.


def weights_inside_loss(config: config_lib.Config) -> bool:
  """Whether the class weights enter the loss itself (focal: `ntk.focal_loss(weights=...)`, as LDAM-DRW's CB-Focal)
  instead of the reduction."""
  return config.loss == "focal"


def example_keys(rng, step, num_local_examples):
  """One key per example of the device's shard: `fold_in(fold_in(rng, step), global position)`, where the global
  position of the shard's `i`-th example is `axis_index * num_local_examples + i`, its row in the global batch
  (shards are consecutive blocks of it, across hosts too). Call under `pmap(axis_name=AXIS)`."""
  step_key = jax.random.fold_in(rng, step)
  positions = lax.axis_index(AXIS) * num_local_examples + jnp.arange(num_local_examples)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, positions)


def first_of_global_batch(x):
  """`x[0]` of the first device's shard, i.e. the first entry of the global batch (shards are consecutive blocks
  of it, across hosts too), on every device. Call under `pmap(axis_name=AXIS)`."""
  return lax.all_gather(x[0], AXIS)[0]


def train_step(state: TrainState, batch, rng, class_weights, *, loss_fn, schedule, weights_inside=False):
  """One SGD step on the device's shard of the global batch; call under `pmap(axis_name=AXIS)`.

  The loss is the class-weighted mean over the *global* batch, `sum_i w_{y_i} l_i / sum_i w_{y_i}` (PyTorch's
  weighted cross-entropy reduction), and each example's loss noise comes from its own key (`example_keys`), so 1
  and n devices give the same update up to reduction order, for the noised losses too. With `weights_inside`
  (focal) the weights are applied inside the loss instead, `loss_fn(..., weights=w)`, and the reduction is the
  plain mean over the global batch (LDAM-DRW's CB-Focal).
  """
  labels = batch["label"]
  step_key = example_keys(rng, state.step, labels.shape[0])
  weights = class_weights[labels]
  denominator = lax.psum(jnp.float32(labels.shape[0]) if weights_inside else jnp.sum(weights), AXIS)

  def objective(params):
    logits, new_model_state = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"])
    logits = logits.astype(jnp.float32)
    if weights_inside:
      total = jnp.sum(loss_fn(logits, labels, step_key, weights=weights))
    else:
      total = jnp.sum(weights * loss_fn(logits, labels, step_key))
    return total / denominator, (logits, new_model_state)

  (loss, (logits, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  grads = lax.psum(grads, AXIS)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_model_state["batch_stats"])
  correct = ntk.topk_correct(logits, labels, k=1).astype(jnp.float32)
  metrics = {
      "loss": lax.psum(loss, AXIS),
      "top1_accuracy": lax.psum(jnp.sum(correct), AXIS) / lax.psum(jnp.float32(labels.shape[0]), AXIS),
      "learning_rate": schedule(state.step),
  }
  return new_state, metrics


def eval_step(state: TrainState, batch, *, ks, num_classes, posthoc_offsets=None):
  """Per-class top-k counts for every k in `ks`, summed over the devices (padding masked out). `posthoc_offsets`
  (`[L]`) are subtracted from the logits first (post-hoc logit adjustment)."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False)
  logits = logits.astype(jnp.float32)
  if posthoc_offsets is not None:
    logits = logits - posthoc_offsets
  out = {}
  for k in ks:
    correct, total = ntk.per_class_topk_counts(logits, batch["label"], k=k, num_classes=num_classes,
                                               weights=batch["mask"])
    out[k] = (lax.psum(correct, AXIS), lax.psum(total, AXIS))
  return out


def unreplicate(tree):
  """The first local device's copy of a pmapped tree, as host NumPy arrays.

  Reads each leaf's first addressable shard instead of indexing `x[0]` (what flax.jax_utils.unreplicate does): that
  would compile and run one gather per leaf shape (hundreds for a ResNet-50), and every compiled executable keeps
  memory mappings alive for the life of the process.
  """
  def first(x):
    if isinstance(x, jax.Array) and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return np.asarray(x.addressable_shards[0].data)[0]
    return x[0]
  return jax.tree.map(first, tree)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation over a split.


def evaluate(p_eval_step, state, dataset, split, *, config, num_local_devices):
  counts = None
  for batch in dataset.eval_batches(split, batch_size=config.eval_batch_size,
                                    process_index=jax.process_index(), process_count=jax.process_count()):
    input_pipeline.check_labels(batch["label"][batch["mask"] > 0], dataset.num_classes)
    out = p_eval_step(state, input_pipeline.shard(batch, num_local_devices))
    out = jax.tree.map(lambda x: np.asarray(x[0], np.float64), out)
    counts = out if counts is None else jax.tree.map(np.add, counts, out)
  metrics, per_class = {}, {}
  for k, (correct, total) in counts.items():
    acc, macro, pc = ntk.accuracies_from_counts(correct, total)
    metrics[f"top{k}_accuracy"] = float(acc)
    metrics[f"macro_top{k}_accuracy"] = float(macro)
    per_class[f"top{k}_accuracy"] = np.asarray(pc, np.float64)
    per_class["num_examples"] = total
  return metrics, per_class


# ----------------------------------------------------------------------------------------------------------------
# Train fit: the final model on its own training split.

# The train fit reads at most this many training examples: a fixed subset (seed `TRAIN_FIT_SEED`, the same for every
# run of a dataset) when the split is larger, so that Pl@ntNet-300K's 243k images do not cost an epoch.
TRAIN_FIT_MAX_EXAMPLES = 10_000
TRAIN_FIT_SEED = 0


def train_fit_indices(num_examples: int, *, max_examples: int = TRAIN_FIT_MAX_EXAMPLES,
                      seed: int = TRAIN_FIT_SEED) -> np.ndarray:
  """The training examples the train fit reads, in increasing order: all of them, or `max_examples` drawn without
  replacement by `np.random.default_rng(seed)` when there are more."""
  if num_examples <= max_examples:
    return np.arange(num_examples)
  return np.sort(np.random.default_rng(seed).choice(num_examples, size=max_examples, replace=False))


def evaluate_train_fit(p_eval_step, state, dataset: input_pipeline.Dataset, *, config: config_lib.Config,
                       num_local_devices: int) -> dict:
  """Top-1 and macro top-1 accuracy of `state` on its training split (`train_fit_indices` of it), read as the test
  split is: evaluation mode, no augmentation, the same `p_eval_step` (which must count k = 1; post-hoc offsets
  included when the run uses them). How well the model fits what it was trained on, next to its test accuracy."""
  indices = train_fit_indices(dataset.num_train_examples, max_examples=TRAIN_FIT_MAX_EXAMPLES, seed=TRAIN_FIT_SEED)
  correct = total = None
  for batch in dataset.train_eval_batches(batch_size=config.eval_batch_size, indices=indices,
                                          process_index=jax.process_index(), process_count=jax.process_count()):
    out = p_eval_step(state, input_pipeline.shard(batch, num_local_devices))[1]
    c, t = (np.asarray(x[0], np.float64) for x in out)
    correct, total = (c, t) if correct is None else (correct + c, total + t)
  accuracy, macro, _ = ntk.accuracies_from_counts(correct, total)
  return {"top1_accuracy": float(accuracy), "macro_top1_accuracy": float(macro), "examples": int(len(indices)),
          "train_examples": int(dataset.num_train_examples), "subset": bool(len(indices) < dataset.num_train_examples),
          "subset_seed": TRAIN_FIT_SEED}


# ----------------------------------------------------------------------------------------------------------------
# The job.


def _maybe_initialize_distributed(config):
  """Joins the processes of a multi-host job; must run before anything touches a JAX backend."""
  if not config.distributed or jax.distributed.is_initialized():
    return
  kwargs = {}
  if config.coordinator_address:
    kwargs["coordinator_address"] = config.coordinator_address
  if config.num_processes is not None:
    kwargs.update(num_processes=config.num_processes, process_id=config.process_id)
  # CPU processes exchange collectives through gloo (GPU uses NCCL and TPU its interconnect, chosen by JAX).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def create_train_state(config, dataset, steps_per_epoch, pretrained=None):
  """The initial train state; with `pretrained` (`pretraining.hidden_layers`), the hidden layers start from it."""
  model = models.create_model(config.model, num_classes=dataset.num_classes, normalized_head=config.normalized_head,
                              dtype=jnp.bfloat16 if config.half_precision else jnp.float32, axis_name=AXIS,
                              mlp_widths=config.mlp_widths)
  init_rng = jax.random.key(config.seed)
  dummy = jnp.zeros((1,) + tuple(dataset.image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(init_rng, dummy)
  if config.pretrained_weights:
    variables = models.load_pretrained(variables, config.pretrained_weights, name=config.model)
  if pretrained is not None:
    variables = pretraining.initialize_from(variables, pretrained)
  tx, schedule = make_optimizer(config, steps_per_epoch)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", flax.core.FrozenDict()))
  return state, schedule


def _logit_adjustment_record(config):
  """What results.json says about logit adjustment: the tau used in training and the logits evaluated."""
  if config.loss in ("logit_adjusted", "vs"):
    training_tau = config_lib.loss_tau(config)
  elif config.loss == "balanced_softmax":
    training_tau = 1.0
  else:
    training_tau = config.logit_adjustment_tau
  evaluated = "logits"
  if config.posthoc_tau:
    evaluated = "logits - posthoc_tau * log(prior)" + (" / scale" if config_lib.logit_scale(config) != 1 else "")
  return {"training_tau": training_tau, "posthoc_tau": config.posthoc_tau, "evaluated_logits": evaluated}


def _check_against_dataset(config, dataset, loss_fn, num_devices):
  num_classes = dataset.num_classes
  bad = [k for k in config.eval_ks if k > num_classes]
  if bad:
    raise ValueError(f"`eval_ks` {bad} exceed the number of classes {num_classes} of {dataset.name}.")
  if config.batch_size % num_devices:
    raise ValueError(f"`batch_size`={config.batch_size} must be divisible by the number of devices ({num_devices}).")
  # Trace the loss once on abstract inputs, under the device axis as train_step runs it: a bad hyperparameter
  # (k >= L, ...) fails now, not after data loading.
  jax.eval_shape(jax.vmap(loss_fn, axis_name=AXIS), jax.ShapeDtypeStruct((1, 2, num_classes), jnp.float32),
                 jax.ShapeDtypeStruct((1, 2), jnp.int32), jax.random.split(jax.random.key(0), (1, 2)))


def bayes_record(dataset: input_pipeline.Dataset, ks) -> dict | None:
  """synthetic_lt: the test metrics of the exact Bayes-optimal scores, `{"likelihood": ..., "posterior": ...}` with
  the keys of `results["test"]` (top-k and macro top-k accuracies) and the per-class top-k accuracies; else None."""
  data = dataset.synthetic
  if data is None:
    return None
  labels, num_classes, prior = data.labels["test"], dataset.num_classes, data.prior
  out = {}
  for kind in ("likelihood", "posterior"):
    scores = data.bayes_scores("test", kind)
    record = {"per_class": {}}
    for k in ks:
      per_class = synthetic_lt.per_class_topk(scores, labels, k, num_classes)
      record[f"top{k}_accuracy"] = float(synthetic_lt.topk_hits(scores, labels, k).mean())
      record[f"macro_top{k}_accuracy"] = float(per_class.mean())
      record[f"prior_weighted_top{k}_accuracy"] = float(np.dot(prior, per_class))
      record["per_class"][f"top{k}_accuracy"] = per_class.tolist()
    out[kind] = record
  return out


def load_dataset(config: config_lib.Config) -> input_pipeline.Dataset:
  """The dataset of `config` (its data fields, or the generator settings of synthetic_lt)."""
  return input_pipeline.get_dataset(
      config.dataset, data_dir=config.data_dir, imbalance_profile=config.imbalance_profile,
      imbalance_ratio=config.imbalance_ratio, subset_seed=config.subset_seed,
      validation_per_class=config.validation_per_class, image_size=config.image_size, download=config.tfds_download,
      synthetic=config_lib.synthetic_spec(config) if config.dataset == "synthetic_lt" else None)


def train_and_evaluate(config: config_lib.Config, workdir: str, *, read_test: bool = True,
                       on_epoch: Optional[Callable[[dict], None]] = None, posthoc_taus: Sequence[float] = ()) -> dict:
  """Trains `config`, evaluates it, writes results to `workdir`, and returns the results dictionary.

  Interrupted runs resume from the last checkpoint in `workdir/checkpoints` and end with the same results.

  Tuning (experiments/tune.py) uses the keywords:
    read_test: False never evaluates the test split: every evaluation epoch reads the validation split (which the
      dataset must have), the model the config reports (last epoch, or best validation epoch) is described by
      `results["validation"]`, and `results["test"]` is None. The default evaluates as documented above.
    on_epoch: called with each epoch's record (`{"epoch": ..., "train": ..., "val": ...}`) once it is complete,
      those of a resumed run's earlier epochs included; an exception it raises (e.g. a pruned trial) stops training.
    posthoc_taus: with `read_test=False`, the reported model's validation metrics with post-hoc logit adjustment at
      each of these tau, in `results["posthoc_validation"]` (a list of {"tau": ..., "metrics": ...}): tau chosen on
      validation after training, with one training.
  """
  config = config_lib.validate(config)
  if posthoc_taus and read_test:
    raise ValueError("`posthoc_taus` chooses tau on validation, for tuning: it needs `read_test=False`.")
  if not read_test and config.model_selection == "best_test_epoch":
    raise ValueError("`model_selection=best_test_epoch` selects on the test split; without reading it, select with "
                     "`val_macro_topk` or `last_epoch`.")
  config_lib.check_pretrained(config)
  _maybe_initialize_distributed(config)
  devices = jax.local_device_count() * jax.process_count()
  if config.eval_batch_size % devices:
    # Evaluation pads its last batch anyway: round up instead of failing (500 on an 8-device TPU becomes 504).
    rounded = -(-config.eval_batch_size // devices) * devices
    logging.info("eval_batch_size %d rounded up to %d, a multiple of the %d devices.", config.eval_batch_size,
                 rounded, devices)
    config = config.replace(eval_batch_size=rounded)
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0
  num_local_devices = jax.local_device_count()

  dataset = load_dataset(config)
  class_counts = np.asarray(dataset.train_class_counts)
  loss_fn = make_loss_fn(config, class_counts)
  _check_against_dataset(config, dataset, loss_fn, devices)
  selection, sel_k = config.model_selection, config.selection_k  # resolved by config_lib.validate
  if selection == "val_macro_topk" and not dataset.has_validation:
    raise ValueError(f"`model_selection=val_macro_topk` needs a validation split; {dataset.name} has none here.")
  if not read_test and not dataset.has_validation:
    raise ValueError(f"Without the test split, evaluation needs a validation split; {dataset.name} has none here.")
  steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
  logging.info("Dataset %s: %d classes, %d training images (head %d, tail %d), eval splits %s.", dataset.name,
               dataset.num_classes, dataset.num_train_examples, class_counts.max(), class_counts.min(),
               dataset.eval_splits)

  pretrained = pretraining.hidden_layers(config, dataset.synthetic, workdir)
  state, schedule = create_train_state(config, dataset, steps_per_epoch, pretrained)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config)
  meta = {"epoch": -1, "history": [], "best": None, "train_seconds": 0.0}
  best_variables = {"params": state.params, "batch_stats": state.batch_stats}
  restored = ckpt.restore_latest(state, best_variables)
  if restored is not None:
    state, best_variables, meta = restored
    logging.info("Resumed from the checkpoint of epoch %d.", meta["epoch"])
    if on_epoch is not None:
      for record in meta["history"]:
        on_epoch(record)

  rng = jax.random.key(config.seed + 1)
  p_train_step = jax.pmap(functools.partial(train_step, loss_fn=loss_fn, schedule=schedule,
                                            weights_inside=weights_inside_loss(config)), axis_name=AXIS,
                          in_axes=(0, 0, None, None), donate_argnums=(0,))
  posthoc = (jnp.asarray(logit_offsets(config, class_counts, config.posthoc_tau)) if config.posthoc_tau else None)
  p_eval_step = jax.pmap(functools.partial(eval_step, ks=tuple(config.eval_ks), num_classes=dataset.num_classes,
                                           posthoc_offsets=posthoc), axis_name=AXIS)
  writer = reporting.SummaryWriter(os.path.join(workdir, "tensorboard")) if is_chief else None
  rstate = flax.jax_utils.replicate(state)

  for epoch in range(meta["epoch"] + 1, config.epochs):
    t0 = time.time()
    class_weights = jnp.asarray(class_weights_for_epoch(config, class_counts, epoch))
    batches = train_batches_for_epoch(config, dataset, epoch, process_index=jax.process_index(),
                                      process_count=jax.process_count())
    train_metrics = []
    for i, batch in enumerate(batches):
      if i >= steps_per_epoch:
        break
      input_pipeline.check_labels(batch["label"], dataset.num_classes)
      rstate, metrics = p_train_step(rstate, input_pipeline.shard(batch, num_local_devices), rng, class_weights)
      train_metrics.append(metrics)
      if (i + 1) % config.log_every_steps == 0:
        m = jax.tree.map(lambda x: float(x[0]), metrics)
        logging.info("epoch %d step %d/%d: loss %.4f, top-1 %.3f, lr %.5f", epoch + 1, i + 1, steps_per_epoch,
                     m["loss"], m["top1_accuracy"], m["learning_rate"])
    train_summary = {k: float(np.mean([float(m[k][0]) for m in train_metrics])) for k in train_metrics[0]}
    if not np.isfinite(train_summary["loss"]):
      raise FloatingPointError(f"The training loss became {train_summary['loss']} in epoch {epoch + 1}; "
                               "lower the learning rate or the loss scale.")
    record = {"epoch": epoch, "train": train_summary}
    last_epoch = epoch == config.epochs - 1
    if (epoch + 1) % config.eval_every_epochs == 0 or last_epoch:
      split = "val" if selection == "val_macro_topk" or not read_test else "test"
      eval_metrics, _ = evaluate(p_eval_step, rstate, dataset, split, config=config,
                                 num_local_devices=num_local_devices)
      record[split] = eval_metrics
      score = (eval_metrics[f"macro_top{sel_k}_accuracy"] if split == "val" else eval_metrics["top1_accuracy"])
      if selection != "last_epoch" and (meta["best"] is None or score > meta["best"]["score"]):
        meta["best"] = {"epoch": epoch, "score": score, "split": split, "metrics": eval_metrics}
        host_state = unreplicate(rstate)
        best_variables = {"params": host_state.params, "batch_stats": host_state.batch_stats}
    meta["train_seconds"] += time.time() - t0
    meta["history"].append(record)
    meta["epoch"] = epoch
    if writer:
      writer.write_epoch(epoch + 1, record)
    logging.info("epoch %d/%d done in %.1fs: %s", epoch + 1, config.epochs, time.time() - t0,
                 reporting.format_record(record))
    if (epoch + 1) % config.checkpoint_every_epochs == 0 or last_epoch:
      ckpt.save(epoch, unreplicate(rstate), best_variables, meta)
    if on_epoch is not None:
      on_epoch(record)
  ckpt.wait()

  # The train fit is the last epoch's model's, whichever epoch the test split reports.
  fit_step = p_eval_step if 1 in config.eval_ks else jax.pmap(functools.partial(
      eval_step, ks=(1,), num_classes=dataset.num_classes, posthoc_offsets=posthoc), axis_name=AXIS)
  train_fit = {"model": "last epoch", **evaluate_train_fit(fit_step, rstate, dataset, config=config,
                                                           num_local_devices=num_local_devices)}
  logging.info("%s", reporting.train_fit_line(train_fit))
  final_state = unreplicate(rstate)
  if selection in ("val_macro_topk", "best_test_epoch") and meta["best"] is not None:
    final_state = final_state.replace(params=best_variables["params"], batch_stats=best_variables["batch_stats"])
  rfinal = flax.jax_utils.replicate(final_state)
  if read_test:
    test_metrics, per_class = evaluate(p_eval_step, rfinal, dataset, "test", config=config,
                                       num_local_devices=num_local_devices)
    average_k, average_k_test = set_eval.average_k_metrics(rfinal, dataset, config=config, axis_name=AXIS,
                                                           num_local_devices=num_local_devices, posthoc_offsets=posthoc)
    test_metrics.update(average_k_test)
    validation = meta["best"]["metrics"] if meta["best"] and meta["best"]["split"] == "val" else None
  else:
    test_metrics = per_class = average_k = None
    # The reported model's validation metrics: the best validation epoch's, or the last epoch's.
    evaluated = [r for r in meta["history"] if "val" in r]
    validation = (meta["best"]["metrics"] if selection == "val_macro_topk" and meta["best"]
                  else evaluated[-1]["val"])
  results = {
      "dataset": config.dataset,
      "loss": config.loss,
      "train_rule": config.train_rule,
      "config": config.to_dict(),
      "model_selection": reporting.describe_selection(selection, sel_k, meta["best"],
                                                      has_validation=dataset.has_validation),
      "logit_adjustment": _logit_adjustment_record(config),
      "best_epoch": None if meta["best"] is None else meta["best"]["epoch"] + 1,
      "test": test_metrics,
      "train_fit": train_fit,
      "pretraining": None if pretrained is None else pretrained.record,
      "validation": validation,
      "average_k": average_k,
      "class_names": list(dataset.class_names),
      "per_class": None if per_class is None else reporting.per_class_table(dataset, per_class),
      "bayes": bayes_record(dataset, config.eval_ks),
      "train_class_counts": class_counts.tolist(),
      "history": meta["history"],
      "train_seconds": meta["train_seconds"],
      "num_devices": jax.device_count(),
      "num_processes": jax.process_count(),
      "backend": jax.default_backend(),
      "environment": reporting.environment(),
  }
  if posthoc_taus:
    results["posthoc_validation"] = _posthoc_validation(config, dataset, rfinal, class_counts, posthoc_taus,
                                                        num_local_devices=num_local_devices)
  if is_chief:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2, allow_nan=True)
    if per_class is not None:
      reporting.plot_per_class(results, os.path.join(workdir, "per_class_accuracy.png"))
    if writer:
      if test_metrics is not None:
        writer.write_final(config.epochs, test_metrics)
      writer.close()
  return results


def _posthoc_validation(config, dataset, rstate, class_counts, taus, *, num_local_devices):
  """Validation metrics of `rstate` with post-hoc logit adjustment at each tau (one compiled step for all)."""
  p_step = jax.pmap(lambda state, batch, offsets: eval_step(state, batch, ks=tuple(config.eval_ks),
                                                            num_classes=dataset.num_classes,
                                                            posthoc_offsets=offsets),
                    axis_name=AXIS, in_axes=(0, 0, None))
  out = []
  for tau in taus:
    offsets = jnp.asarray(logit_offsets(config, class_counts, float(tau)))
    metrics, _ = evaluate(lambda state, batch, o=offsets: p_step(state, batch, o), rstate, dataset, "val",
                          config=config, num_local_devices=num_local_devices)
    out.append({"tau": float(tau), "metrics": metrics})
  return out
