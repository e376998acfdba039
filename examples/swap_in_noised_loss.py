"""Swap the loss of an existing training loop from cross-entropy to the imbalanced noised top-K loss.

    python examples/swap_in_noised_loss.py              # trains twice (before / after the swap) and compares
    python examples/swap_in_noised_loss.py --tiny       # a few seconds (what CI runs)
    python examples/swap_in_noised_loss.py --loss=noised

(From a checkout without installing the package: `PYTHONPATH=. python examples/swap_in_noised_loss.py`.)

`train()` below stands for the training loop you already have: a Linen model, optax, a jitted step, a per-step PRNG
key (here for dropout). Adopting the loss takes three lines, marked `# 1.`, `# 2.`, `# 3.` in `make_loss`:

    class_counts = np.bincount(train_labels, minlength=num_classes)                        # 1. class counts
    margins = ntk.class_margins(class_counts, max_margin=0.2)                              # 2. margins
    loss = ntk.noised_topk_loss(logits, labels, k=2, epsilon=0.1, num_samples=5,           # 3. the loss
                                margins=margins, scale=60.0, key=key).mean()

Nothing else changes: same model, optimizer and data. The loss needs a fresh key every step; a loop with dropout
already has one (derive a separate key from it, as below); otherwise use `jax.random.fold_in(key, step)`.
The imbalanced form was designed for cosine scores in [-1, 1] (a normalized head, then `scale`); with a plain
linear head as here it still trains, and `--cosine_head` shows the designed pairing (cross-entropy on cosine
scores would need a scale of its own, so compare the two losses with the linear head).
The data are synthetic and long-tailed, with pairs of look-alike classes so that top-2 accuracy means something;
the comparison printed at the end is a demonstration, not a benchmark (see docs/which_loss.md).
"""
import argparse
import functools
import time

import flax.linen as nn
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


class CosineDense(nn.Module):
  """`<x / |x|, w_c / |w_c|>`: cosine scores in [-1, 1]."""
  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", ntk.cosine_head_init, (x.shape[-1], self.features))
    return ntk.cosine_logits(x, kernel)


class Model(nn.Module):
  cosine_head: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(nn.Dense(128)(x))
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return CosineDense(NUM_CLASSES)(x) if self.cosine_head else nn.Dense(NUM_CLASSES)(x)


def make_loss(name, train_labels, args):
  """Returns `loss_fn(logits, labels, key) -> scalar`."""
  if name == "ce":
    # Before: what the existing loop used.
    return lambda logits, labels, key: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  # After: the swap.
  class_counts = np.bincount(train_labels, minlength=NUM_CLASSES)                                   # 1.
  margins = ntk.class_margins(class_counts, max_margin=args.max_margin)                             # 2.
  return lambda logits, labels, key: ntk.noised_topk_loss(                                          # 3.
      logits, labels, k=args.k, epsilon=args.epsilon, num_samples=5, margins=margins, scale=args.scale,
      key=jax.random.fold_in(key, 1)).mean()  # a key of its own, derived from the step's dropout key


def train(loss_fn, data, args):
  """The existing training loop (unchanged by the swap). Returns the loss history and the test logits."""
  (x_train, y_train), (x_test, _) = data
  model = Model(cosine_head=args.cosine_head)
  params = model.init(jax.random.key(args.seed), jnp.zeros((1, x_train.shape[1])), train=False)["params"]
  tx = optax.adam(args.learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def step_fn(params, opt_state, x, y, key):
    def objective(params):
      logits = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
      return loss_fn(logits, y, key)

    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  data_rng = np.random.default_rng(args.seed)
  rng = jax.random.key(args.seed + 1)
  log_every = max(1, args.steps // 5)
  losses = []
  for step in range(args.steps):
    idx = data_rng.integers(0, len(x_train), args.batch_size)
    key = jax.random.fold_in(rng, step)
    params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]), key)
    losses.append(float(loss))
    if (step + 1) % log_every == 0:
      print(f"  step {step + 1:5d}  loss {np.mean(losses[-log_every:]):.4f}")
  return losses, model.apply({"params": params}, jnp.asarray(x_test), train=False)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--loss", choices=("ce", "noised", "both"), default="both")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--epsilon", type=float, default=0.1)
  parser.add_argument("--max_margin", type=float, default=0.2)
  parser.add_argument("--scale", type=float, default=60.0)
  parser.add_argument("--cosine_head", action="store_true", help="Cosine classifier instead of a linear head.")
  parser.add_argument("--imbalance_ratio", type=float, default=50.0)
  parser.add_argument("--tiny", action="store_true", help="Small data and 150 steps: runs in seconds (CI).")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  max_count, test_per_class = (400, 50) if args.tiny else (2000, 200)
  if args.tiny:
    args.steps = min(args.steps, 150)

  train_split, test_split, counts = make_long_tailed_data(
      max_count=max_count, imbalance_ratio=args.imbalance_ratio, test_per_class=test_per_class, seed=args.seed)
  print(f"train class counts {counts.tolist()} (long-tailed), test: {test_per_class} per class; "
        f"{'cosine' if args.cosine_head else 'linear'} head; backend {jax.default_backend()}")
  for name in (("ce", "noised") if args.loss == "both" else (args.loss,)):
    print(f"loss {name}:")
    t0 = time.time()
    losses, logits = train(make_loss(name, train_split[1], args), (train_split, test_split), args)
    window = max(1, args.steps // 10)
    print(f"  trained {args.steps} steps in {time.time() - t0:.1f}s; loss: first {window} steps "
          f"{np.mean(losses[:window]):.4f} -> last {window} steps {np.mean(losses[-window:]):.4f}")
    for k, (acc, tail) in test_metrics(logits, jnp.asarray(test_split[1]), ks=tuple(sorted({1, args.k}))).items():
      print(f"  test top-{k} {100 * float(acc):.1f}%  (3 rarest classes: {100 * float(tail):.1f}%)")


if __name__ == "__main__":
  main()
