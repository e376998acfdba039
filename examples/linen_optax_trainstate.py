"""Flax Linen + optax + `TrainState`: the balanced noised top-K loss, with deferred class re-weighting (DRW).

    python examples/linen_optax_trainstate.py           # under a minute on a laptop CPU
    python examples/linen_optax_trainstate.py --tiny    # a few seconds (what CI runs)

(From a checkout without installing the package: `PYTHONPATH=. python examples/linen_optax_trainstate.py`.)

A Linen MLP with dropout and a plain linear head, `flax.training.train_state.TrainState` with `optax.adamw`, and

    per_example = ntk.noised_topk_loss(logits, labels, k=2, epsilon=1.0, num_samples=5, key=key)   # balanced form
    loss = ntk.weighted_mean(per_example, class_weights[labels])

The balanced form (margin 1, scale 1) suits a linear head. The data are long-tailed, so the second half of training
re-weights the classes by their effective number of samples (`ntk.drw_class_weights`, LDAM-DRW's schedule).
The data are synthetic: Gaussian clusters, with pairs of look-alike classes so that top-2 accuracy means something.
"""
import argparse
import functools
import time

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

import noised_topk_jax as ntk

NUM_CLASSES = 10


def make_long_tailed_data(*, max_count, imbalance_ratio, test_per_class, dim=32, seed=0):
  """Gaussian clusters in `dim` dimensions; classes 2j and 2j+1 share most of their mean (look-alike pairs)."""
  rng = np.random.default_rng(seed)
  pair_means = rng.normal(size=(NUM_CLASSES // 2, dim)) * 0.5
  means = np.repeat(pair_means, 2, axis=0) + rng.normal(size=(NUM_CLASSES, dim)) * 0.3
  train_counts = ntk.long_tailed_counts(NUM_CLASSES, max_count=max_count, imbalance_ratio=imbalance_ratio)

  def sample(counts):
    labels = np.repeat(np.arange(NUM_CLASSES), counts)
    x = means[labels] + rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm].astype(np.int32)

  return sample(train_counts), sample(np.full(NUM_CLASSES, test_per_class)), train_counts


class MLP(nn.Module):
  hidden: int = 128
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


@functools.partial(jax.jit, static_argnames=("k", "epsilon", "num_samples"))
def train_step(state, x, y, class_weights, key, *, k, epsilon, num_samples):
  dropout_key, noise_key = jax.random.split(jax.random.fold_in(key, state.step))

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x, train=True, rngs={"dropout": dropout_key})
    per_example = ntk.noised_topk_loss(logits, y, k=k, epsilon=epsilon, num_samples=num_samples, key=noise_key)
    return ntk.weighted_mean(per_example, class_weights[y]), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads), loss, ntk.topk_accuracy(logits, y, k=1)


@functools.partial(jax.jit, static_argnames="ks")
def test_metrics(scores, labels, ks):
  """{k: (top-k accuracy, top-k accuracy of the 3 rarest classes)} for each k in `ks`, in one compiled call."""
  return {k: (ntk.topk_accuracy(scores, labels, k=k),
              ntk.per_class_topk_accuracy(scores, labels, k=k, num_classes=NUM_CLASSES)[-3:].mean()) for k in ks}


@jax.jit
def predict(state, x):
  return state.apply_fn({"params": state.params}, x, train=False)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--k", type=int, default=2, help="K of top-K.")
  parser.add_argument("--epsilon", type=float, default=1.0, help="Noise scale (1.0 in the paper's balanced runs).")
  parser.add_argument("--num_samples", type=int, default=5, help="Monte Carlo draws B per example.")
  parser.add_argument("--drw_start", type=float, default=0.5, help="Fraction of training before re-weighting.")
  parser.add_argument("--imbalance_ratio", type=float, default=50.0)
  parser.add_argument("--tiny", action="store_true", help="Small data and 150 steps: runs in seconds (CI).")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  max_count, test_per_class = (400, 50) if args.tiny else (2000, 200)
  steps = min(args.steps, 150) if args.tiny else args.steps

  (x_train, y_train), (x_test, y_test), counts = make_long_tailed_data(
      max_count=max_count, imbalance_ratio=args.imbalance_ratio, test_per_class=test_per_class, seed=args.seed)
  print(f"train class counts {counts.tolist()} (long-tailed), test: {test_per_class} per class; "
        f"backend {jax.default_backend()}")

  model = MLP()
  params = model.init(jax.random.key(args.seed), jnp.zeros((1, x_train.shape[1])), train=False)["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=optax.adamw(args.learning_rate, weight_decay=1e-4))

  # DRW "epochs" are steps here: plain weights first, class-balanced weights from `drw_start * steps` on.
  start = int(args.drw_start * steps)
  weights_before = jnp.asarray(ntk.drw_class_weights(counts, epoch=0, start_epoch=start), jnp.float32)
  weights_after = jnp.asarray(ntk.drw_class_weights(counts, epoch=start, start_epoch=start), jnp.float32)

  data_rng = np.random.default_rng(args.seed)
  key = jax.random.key(args.seed + 1)
  log_every = max(1, steps // 10)
  losses, t0 = [], time.time()
  for step in range(steps):
    idx = data_rng.integers(0, len(x_train), args.batch_size)
    class_weights = weights_after if step >= start else weights_before
    state, loss, acc = train_step(state, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]), class_weights, key,
                                  k=args.k, epsilon=args.epsilon, num_samples=args.num_samples)
    losses.append(float(loss))
    if (step + 1) % log_every == 0:
      print(f"step {step + 1:5d}  loss {np.mean(losses[-log_every:]):.4f}  batch top-1 {float(acc):.3f}"
            + ("  (re-weighted)" if step >= start else ""))

  logits = predict(state, jnp.asarray(x_test))
  window = max(1, steps // 10)
  print(f"trained {steps} steps in {time.time() - t0:.1f}s")
  print(f"loss: first {window} steps {np.mean(losses[:window]):.4f} -> last {window} steps "
        f"{np.mean(losses[-window:]):.4f}")
  for k, (acc, tail) in test_metrics(logits, jnp.asarray(y_test), ks=tuple(sorted({1, args.k}))).items():
    print(f"test top-{k} {100 * float(acc):.1f}%  (3 rarest classes: {100 * float(tail):.1f}%)")


if __name__ == "__main__":
  main()
