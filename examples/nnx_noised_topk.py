"""Flax NNX: train a classifier with the imbalanced noised top-K loss and `nnx.Optimizer`.

    python examples/nnx_noised_topk.py            # under a minute on a laptop CPU
    python examples/nnx_noised_topk.py --tiny     # a few seconds (what CI runs)

(From a checkout without installing the package: `PYTHONPATH=. python examples/nnx_noised_topk.py`.)

The data is synthetic and long-tailed (class 0 has `--imbalance_ratio` times the examples of class 9) and made of
pairs of look-alike classes, so that top-2 accuracy means something (as T-shirt/shirt or pullover/coat do on
Fashion-MNIST). The model is an MLP with a cosine classifier; the loss is

    ntk.noised_topk_loss(scores, labels, k=2, epsilon=0.1, num_samples=5, margins=margins, scale=60.0, key=key)

with per-class margins `m_y ∝ n_y^(-1/4)` from the training class counts (rare classes get larger margins).
The only things the loss needs beyond cross-entropy are the class counts (once) and a fresh PRNG key per step.
"""
import argparse
import functools
import time

from flax import nnx
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


@functools.partial(jax.jit, static_argnames="ks")
def test_metrics(scores, labels, ks):
  """{k: (top-k accuracy, top-k accuracy of the 3 rarest classes)} for each k in `ks`, in one compiled call."""
  return {k: (ntk.topk_accuracy(scores, labels, k=k),
              ntk.per_class_topk_accuracy(scores, labels, k=k, num_classes=NUM_CLASSES)[-3:].mean()) for k in ks}


class CosineLinear(nnx.Module):
  """Cosine classifier: `<x / |x|, w_c / |w_c|>` in [-1, 1], the scores the imbalanced loss expects."""

  def __init__(self, in_features, num_classes, *, rngs: nnx.Rngs):
    # Unit-norm columns (LDAM's NormedLinear init): the columns' norm sets the head's effective learning rate.
    self.kernel = nnx.Param(ntk.cosine_head_init(rngs.params(), (in_features, num_classes)))

  def __call__(self, x):
    return ntk.cosine_logits(x, self.kernel[...])


class MLP(nnx.Module):

  def __init__(self, in_features, hidden, num_classes, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_features, hidden, rngs=rngs)
    self.head = CosineLinear(hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.hidden(x)))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--learning_rate", type=float, default=0.05)
  parser.add_argument("--k", type=int, default=2, help="K of top-K.")
  parser.add_argument("--epsilon", type=float, default=0.1, help="Noise scale of the smoothing.")
  parser.add_argument("--num_samples", type=int, default=5, help="Monte Carlo draws B per example.")
  parser.add_argument("--max_margin", type=float, default=0.2, help="Margin of the rarest class.")
  parser.add_argument("--scale", type=float, default=60.0)
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

  # 1. Per-class margins from the training counts: computed once, on the host.
  margins = jnp.asarray(ntk.class_margins(counts, max_margin=args.max_margin), jnp.float32)

  model = MLP(x_train.shape[1], 128, NUM_CLASSES, rngs=nnx.Rngs(args.seed))
  optimizer = nnx.Optimizer(model, optax.sgd(args.learning_rate, momentum=0.9), wrt=nnx.Param)

  def loss_fn(model, x, y, key):
    scores = model(x)
    # 2. The loss: unreduced per-example values; reduce them yourself.
    per_example = ntk.noised_topk_loss(scores, y, k=args.k, epsilon=args.epsilon, num_samples=args.num_samples,
                                       margins=margins, scale=args.scale, key=key)
    return per_example.mean(), scores

  @nnx.jit
  def train_step(model, optimizer, x, y, key):
    (loss, scores), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y, key)
    optimizer.update(model, grads)
    return loss, ntk.topk_accuracy(scores, y, k=1)

  @nnx.jit
  def predict(model, x):
    return model(x)

  data_rng = np.random.default_rng(args.seed)
  base_key = jax.random.key(args.seed + 1)  # not the model's init seed
  log_every = max(1, steps // 10)
  losses, t0 = [], time.time()
  for step in range(steps):
    idx = data_rng.integers(0, len(x_train), args.batch_size)
    # 3. A fresh key per step for the loss noise (fold in the step number).
    key = jax.random.fold_in(base_key, step)
    loss, acc = train_step(model, optimizer, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]), key)
    losses.append(float(loss))
    if (step + 1) % log_every == 0:
      print(f"step {step + 1:5d}  loss {np.mean(losses[-log_every:]):.4f}  batch top-1 {float(acc):.3f}")

  scores = predict(model, jnp.asarray(x_test))
  window = max(1, steps // 10)
  print(f"trained {steps} steps in {time.time() - t0:.1f}s")
  print(f"loss: first {window} steps {np.mean(losses[:window]):.4f} -> last {window} steps "
        f"{np.mean(losses[-window:]):.4f}")
  for k, (acc, tail) in test_metrics(scores, jnp.asarray(y_test), ks=tuple(sorted({1, args.k}))).items():
    print(f"test top-{k} {100 * float(acc):.1f}%  (3 rarest classes: {100 * float(tail):.1f}%)")


if __name__ == "__main__":
  main()
