"""Pretraining of synthetic_lt's MLP: hidden layers first trained with cross-entropy on a balanced draw of the same
generator, then fine-tuned with each run's loss and a fresh head (the `pretrained` regime of docs/synthetic_lt.md).

Pl@ntNet-300K's models fine-tune a ResNet-50 whose features were learned on ImageNet, where no class is rare; here
the features are learned on `pretrain_examples_per_class` examples of every class of the generated problem.

- **The draw.** `synthetic_lt.balanced_draw` with the generator's own spec (same classes, genera, means and
  observation map `f`, standardization included) and its own random streams: `TRAIN_STREAM` for the
  `pretrain_examples_per_class` training examples per class, `VALIDATION_STREAM` for `VALIDATION_PER_CLASS`
  held-out ones. The generator draws its splits from streams 0-9 of `np.random.default_rng([subset_seed, stream])`,
  so the pretraining examples are independent of the train / val / test examples (no example is shared; the test's
  Bayes rows are untouched).
- **The protocol** (fixed, recorded in results.json): `model=mlp` with the run's `mlp_widths` and a linear head,
  mean cross-entropy, SGD momentum `MOMENTUM`, coupled weight decay `WEIGHT_DECAY`, batch `BATCH_SIZE` (the last
  incomplete batch of an epoch dropped), `pretrain_epochs` epochs at `pretrain_learning_rate` times 0.1 from epoch
  `int(2/3 E)` and 0.01 from epoch `int(5/6 E)` (0-indexed; the lt100 protocol's 20 and 25 of 30), no
  augmentation. Initialization key `fold_in(key(seed), INIT_TAG)`, the epoch's order
  `default_rng([seed, ORDER_TAG, epoch]).permutation`: a deterministic function of the run's `seed`, computed on one
  device with `jit` (no `pmap`), so the same on any number of devices.
- **What the fine-tuning takes**: every dense kernel and BatchNorm parameter and statistic of the hidden layers;
  the head (linear or cosine) keeps the run's own initialization, as when a new classifier replaces ImageNet's.
  The cosine head needs nothing more: it reads the directions of the features (non-negative after the last relu,
  as a ResNet's pooled features).
- **The cache.** One pretraining per seed serves every loss of that seed: the hidden layers are stored in
  `<pretrain_cache_dir>/mlp_<key>.npz` (default `pretrained/` beside the run's workdir, so the runs of a grid under
  one workdir root share it), `key` the SHA-256 (first 16 hex digits) of `settings(config)`: everything that
  determines the weights (the generator spec, the widths, the dtype, the seed, the draw sizes, the protocol's values
  and `FORMAT_VERSION`). The file holds the arrays, the settings and a checksum of the arrays; it is written to a
  temporary file in the same directory and renamed into place, so a reader never sees a partial file. Processes
  take an exclusive `fcntl.flock` on `<file>.lock` around the check-compute-write, so a second worker waits for the
  first one's file instead of computing it again (without `fcntl`, both may compute it; they write identical
  files). A file that does not load, whose settings differ or whose checksum fails is not used: the weights are
  recomputed and the file replaced, with a warning and `cache: "recomputed (...)"` in the record. Since the
  computation is deterministic, the cache only saves time (tests/test_regimes.py compares a hit with a fresh run).
"""
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from typing import Dict, NamedTuple, Optional, Tuple

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

import noised_topk_jax as ntk
from experiments import config as config_lib
from experiments import models
from experiments import synthetic_lt

try:
  import fcntl  # POSIX; elsewhere two processes may compute the same file (harmless, see the module docstring)
except ImportError:  # pragma: no cover
  fcntl = None

FORMAT_VERSION = 1
TRAIN_STREAM = 100
VALIDATION_STREAM = 101
VALIDATION_PER_CLASS = 20
BATCH_SIZE = 128
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
DECAY_FRACTIONS = (2 / 3, 5 / 6)
INIT_TAG = 0x5072  # "Pr": keys of the pretraining, apart from the fine-tuning's key(seed)
ORDER_TAG = 0x5072
EVAL_CHUNK = 10_000
META_KEY = "__meta__"
DEFAULT_CACHE_DIR = "pretrained"


class Pretrained(NamedTuple):
  """The hidden layers (flat "collection/module/leaf" -> array, no head) and what results.json records of them."""
  arrays: Dict[str, np.ndarray]
  record: dict


class CorruptCacheError(ValueError):
  """A cache file that cannot be used (unreadable, other settings, checksum mismatch)."""


def decay_epochs(epochs: int) -> Tuple[int, int]:
  """The 0-indexed epochs from which the pretraining's learning rate is divided by 10 and by 100."""
  return tuple(int(f * epochs) for f in DECAY_FRACTIONS)


def settings(config: config_lib.Config) -> dict:
  """Everything that determines the pretrained hidden layers of `config` (JSON-serializable); its hash is the key."""
  return {
      "format_version": FORMAT_VERSION,
      "generator": dataclasses.asdict(config_lib.synthetic_spec(config)),
      "mlp_widths": [int(w) for w in config.mlp_widths],
      "half_precision": bool(config.half_precision),
      "seed": int(config.seed),
      "examples_per_class": int(config.pretrain_examples_per_class),
      "validation_per_class": VALIDATION_PER_CLASS,
      "streams": [TRAIN_STREAM, VALIDATION_STREAM],
      "epochs": int(config.pretrain_epochs),
      "learning_rate": float(config.pretrain_learning_rate),
      "decay_epochs": list(decay_epochs(int(config.pretrain_epochs))),
      "batch_size": BATCH_SIZE, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "loss": "ce", "head": "linear",
  }


def cache_key(config: config_lib.Config) -> str:
  return hashlib.sha256(json.dumps(settings(config), sort_keys=True).encode()).hexdigest()[:16]


def cache_path(config: config_lib.Config, workdir: str) -> str:
  """`<pretrain_cache_dir>/mlp_<key>.npz`; the default directory is `pretrained/` beside `workdir`."""
  directory = config.pretrain_cache_dir or os.path.join(os.path.dirname(os.path.abspath(workdir)),
                                                        DEFAULT_CACHE_DIR)
  return os.path.join(directory, f"mlp_{cache_key(config)}.npz")


def _checksum(arrays: Dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for key in sorted(arrays):
    a = np.ascontiguousarray(arrays[key])
    h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The computation.


def _model(config, num_classes):
  return models.create_model("mlp", num_classes=num_classes, normalized_head=False,
                             dtype=jnp.bfloat16 if config.half_precision else jnp.float32, axis_name=None,
                             mlp_widths=config.mlp_widths)


def _top1(model, variables, x, labels):
  apply = jax.jit(functools.partial(model.apply, train=False))
  hits = []
  for start in range(0, len(labels), EVAL_CHUNK):
    logits = apply(variables, jnp.asarray(x[start:start + EVAL_CHUNK]))
    hits.append(np.asarray(ntk.topk_correct(logits, jnp.asarray(labels[start:start + EVAL_CHUNK]), k=1)))
  return float(np.concatenate(hits).mean())


def pretrain_hidden_layers(config: config_lib.Config, data: synthetic_lt.Synthetic) -> Pretrained:
  """Trains the MLP of `config` with cross-entropy on the balanced draw of `data`'s generator (module docstring)
  and returns its hidden layers, with the training top-1 ("train fit", evaluation mode) and the held-out top-1 of
  the balanced validation draw (equal to its macro top-1) in the record. Deterministic given `config`."""
  t0 = time.time()
  num_classes = data.spec.num_classes
  x, y, _ = synthetic_lt.balanced_draw(data, config.pretrain_examples_per_class, stream=TRAIN_STREAM)
  x_val, y_val, _ = synthetic_lt.balanced_draw(data, VALIDATION_PER_CLASS, stream=VALIDATION_STREAM)
  model = _model(config, num_classes)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.fold_in(jax.random.key(config.seed), INIT_TAG), jnp.zeros((1, x.shape[1]), jnp.float32))
  params, batch_stats = variables["params"], variables["batch_stats"]
  batch_size = min(BATCH_SIZE, len(y))
  steps = len(y) // batch_size
  boundaries = [e * steps for e in decay_epochs(config.pretrain_epochs)]

  def schedule(step):
    return config.pretrain_learning_rate * 0.1 ** sum((step >= b).astype(jnp.float32) for b in boundaries)

  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(schedule, momentum=MOMENTUM))
  opt_state = tx.init(params)

  def step_fn(carry, batch):
    params, batch_stats, opt_state = carry

    def objective(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, batch[0], train=True,
                                    mutable=["batch_stats"])
      return jnp.mean(ntk.cross_entropy_loss(logits.astype(jnp.float32), batch[1])), updates

    (loss, updates), grads = jax.value_and_grad(objective, has_aux=True)(params)
    changes, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, changes), updates["batch_stats"], opt_state), loss

  @jax.jit
  def epoch_fn(carry, xs, ys):
    return jax.lax.scan(step_fn, carry, (xs, ys))

  carry, losses = (params, batch_stats, opt_state), []
  for epoch in range(config.pretrain_epochs):
    order = np.random.default_rng([config.seed, ORDER_TAG, epoch]).permutation(len(y))[:steps * batch_size]
    order = order.reshape(steps, batch_size)
    carry, epoch_losses = epoch_fn(carry, jnp.asarray(x[order]), jnp.asarray(y[order]))
    losses.append(float(np.mean(epoch_losses)))
    if not np.isfinite(losses[-1]):
      raise FloatingPointError(f"The pretraining loss became {losses[-1]} in epoch {epoch + 1}; lower "
                               "`pretrain_learning_rate`.")
    logging.info("pretraining epoch %d/%d: train loss %.4f", epoch + 1, config.pretrain_epochs, losses[-1])
  params, batch_stats, _ = carry
  final = {"params": params, "batch_stats": batch_stats}
  flat = {key: np.asarray(leaf) for key, leaf in traverse_util.flatten_dict(jax.device_get(final), sep="/").items()
          if key.split("/")[1] != models.HEAD_NAME}
  record = {"train_fit_top1": _top1(model, final, x, y), "val_top1": _top1(model, final, x_val, y_val),
            "train_examples": int(len(y)), "val_examples": int(len(y_val)), "final_train_loss": losses[-1],
            "seconds": time.time() - t0}
  logging.info("Pretrained the hidden layers on %d balanced examples in %.1fs: train fit top-1 %.4f, held-out "
               "top-1 %.4f.", len(y), record["seconds"], record["train_fit_top1"], record["val_top1"])
  return Pretrained(flat, record)


# ----------------------------------------------------------------------------------------------------------------
# The cache.


def write_cache(path: str, pretrained: Pretrained, config_settings: dict) -> None:
  """Writes `pretrained` to `path` atomically: a temporary file in the same directory, then `os.replace`."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  meta = {"settings": config_settings, "record": pretrained.record, "checksum": _checksum(pretrained.arrays)}
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **pretrained.arrays, **{META_KEY: np.asarray(json.dumps(meta))})
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_cache(path: str, config_settings: dict) -> Pretrained:
  """The pretrained hidden layers stored at `path`; raises CorruptCacheError (saying why) when the file does not
  load, was written for other settings, or its arrays do not match their checksum."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(str(arrays.pop(META_KEY)))
    stored_settings, record, checksum = meta["settings"], meta["record"], meta["checksum"]
  except Exception as e:  # pylint: disable=broad-except
    # A truncated or damaged zip surfaces as BadZipFile, EOFError, ValueError, OSError, KeyError, ...
    raise CorruptCacheError(f"{path} does not load ({type(e).__name__}: {e})") from e
  if stored_settings != config_settings:
    changed = sorted(k for k in set(stored_settings) | set(config_settings)
                     if stored_settings.get(k) != config_settings.get(k))
    raise CorruptCacheError(f"{path} was written for other settings ({', '.join(changed)} differ)")
  if _checksum(arrays) != checksum:
    raise CorruptCacheError(f"{path}: the arrays do not match their checksum")
  return Pretrained(arrays, record)


@contextlib.contextmanager
def _exclusive(path):
  if fcntl is None:
    yield
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def hidden_layers(config: config_lib.Config, data: synthetic_lt.Synthetic, workdir: str) -> Optional[Pretrained]:
  """The pretrained hidden layers of `config` (None when `pretrain_examples_per_class` is 0): read from the cache
  when a valid file is there, else computed and written to it. The record says which (`cache`: "hit", "computed"
  or "recomputed (why)"), with the file's path and key, the settings, and the pretraining's train fit, held-out
  top-1 and computing time."""
  if not config.pretrain_examples_per_class:
    return None
  path, config_settings = cache_path(config, workdir), settings(config)
  with _exclusive(path):
    status = "computed"
    if os.path.exists(path):
      try:
        pretrained = read_cache(path, config_settings)
        status = "hit"
      except CorruptCacheError as e:
        logging.warning("Pretrained hidden layers not taken from the cache: %s. Recomputing them.", e)
        status = f"recomputed ({e})"
    if status != "hit":
      pretrained = pretrain_hidden_layers(config, data)
      write_cache(path, pretrained, config_settings)
  record = {"path": path, "key": cache_key(config), "cache": status, **pretrained.record,
            "settings": config_settings}
  logging.info("%s", summary_line(record))
  return Pretrained(pretrained.arrays, record)


def summary_line(record: dict) -> str:
  """One line on the pretraining of a run, from its `results.json["pretraining"]`."""
  cache = "read from the cache" if record["cache"] == "hit" else record["cache"]
  return (f"Pretrained hidden layers {record['path']} ({cache}): CE on {record['train_examples']:,} balanced "
          f"examples, train fit top-1 {100 * record['train_fit_top1']:.2f} %, held-out top-1 "
          f"{100 * record['val_top1']:.2f} %, {record['seconds']:.0f} s to compute.")


def initialize_from(variables, pretrained: Pretrained):
  """`variables` of the fine-tuning MLP with its hidden layers replaced by `pretrained`'s; the head is untouched.
  Raises ValueError naming the keys or shapes that do not match (other widths, another input dimension)."""
  return models.replace_except_head(variables, pretrained.arrays, source="the pretrained hidden layers", name="mlp")
