"""Top-K accuracy, per class and macro-averaged, in one-shot and streaming forms.

A label counts as inside the top-K when it is among the indices `jax.lax.top_k(logits, K)` returns: with ties, the
lower class index ranks first. Formally, `y` is correct iff `#{j : s_j > s_y} + #{j < y : s_j = s_y} < K`. Ties are
thus broken deterministically and never in the model's favour as a whole (constant logits do not score 100%).

The streaming form, `per_class_topk_counts`, returns per-class (correct, total) counts that can be summed over
batches and devices (`lax.psum`) before `accuracies_from_counts` turns them into accuracies.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from noised_topk_jax import _checks


def _rank_of_label(logits, labels):
  """0-based rank of the true class under the stable descending order (ties: lower index first)."""
  s_y = jnp.take_along_axis(logits, labels[..., None], axis=-1)
  idx = jnp.arange(logits.shape[-1])
  above = (logits > s_y) | ((logits == s_y) & (idx < labels[..., None]))
  return jnp.sum(above, axis=-1)


def _check(logits, labels, k):
  logits, labels = _checks.check_logits_labels(logits, labels)
  k = _checks.check_int(k, "k", minimum=1, maximum=logits.shape[-1],
                        maximum_doc=f"the number of classes L={logits.shape[-1]}")
  return logits, labels, k


def topk_correct(logits: ArrayLike, labels: ArrayLike, *, k: int) -> jax.Array:
  """Per-example top-k correctness (bool, shape `labels.shape`).

  Args:
    logits: floating array `[..., L]`.
    labels: integer array `[...]`.
    k: a Python int in `[1, L]`.

  Returns:
    Boolean array of shape `labels.shape`.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> ntk.topk_correct(jnp.array([[0.1, 0.7, 0.2]]), jnp.array([2]), k=2).tolist()
    [True]
  """
  logits, labels, k = _check(logits, labels, k)
  return _rank_of_label(logits, labels) < k


def topk_accuracy(logits: ArrayLike, labels: ArrayLike, *, k: int) -> jax.Array:
  """Top-k accuracy: the fraction of examples whose label is among the k highest scores.

  Args:
    logits: floating array `[..., L]`.
    labels: integer array `[...]`.
    k: a Python int in `[1, L]`.

  Returns:
    A float32 scalar.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> float(ntk.topk_accuracy(jnp.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]), jnp.array([2, 2]), k=2))
    0.5
  """
  return jnp.mean(topk_correct(logits, labels, k=k).astype(jnp.float32))


def per_class_topk_counts(logits: ArrayLike, labels: ArrayLike, *, k: int, num_classes: int,
                          weights: Optional[ArrayLike] = None) -> Tuple[jax.Array, jax.Array]:
  """Streaming top-k statistics: per-class numbers of correct and of all examples.

  Sum the results over batches (and devices) and pass them to `accuracies_from_counts`.

  Args:
    logits: floating array `[..., L]`.
    labels: integer array `[...]`.
    k: a Python int in `[1, L]`.
    num_classes: the number of classes (a Python int, usually L).
    weights: optional per-example weights `[...]`, e.g. a 0/1 mask that drops the padding of the last batch.

  Returns:
    `(correct, total)`, two float32 arrays of shape `[num_classes]`.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> c, t = ntk.per_class_topk_counts(jnp.eye(3), jnp.array([0, 1, 0]), k=1, num_classes=3)
    >>> c.tolist(), t.tolist()
    ([1.0, 1.0, 0.0], [2.0, 1.0, 0.0])
  """
  logits, labels, k = _check(logits, labels, k)
  num_classes = _checks.check_int(num_classes, "num_classes", minimum=1)
  if weights is None:
    weights = jnp.ones(labels.shape, jnp.float32)
  else:
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != labels.shape:
      raise ValueError(f"`weights` must have the shape of `labels` {labels.shape}, got {weights.shape}.")
  correct = (_rank_of_label(logits, labels) < k).astype(jnp.float32) * weights
  flat_labels = labels.reshape(-1)
  total = jnp.zeros((num_classes,), jnp.float32).at[flat_labels].add(weights.reshape(-1), mode="drop")
  correct = jnp.zeros((num_classes,), jnp.float32).at[flat_labels].add(correct.reshape(-1), mode="drop")
  return correct, total


def accuracies_from_counts(correct: ArrayLike, total: ArrayLike) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Accuracies from summed streaming counts.

  Args:
    correct: per-class correct counts `[C]`.
    total: per-class example counts `[C]`.

  Returns:
    `(accuracy, macro_accuracy, per_class)`: the overall accuracy `sum(correct) / sum(total)`, the mean of the
    per-class accuracies over classes with `total > 0`, and the per-class accuracies `[C]` (NaN where `total == 0`).

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> acc, macro, per_class = ntk.accuracies_from_counts(jnp.array([1., 1., 0.]), jnp.array([2., 1., 0.]))
    >>> round(float(acc), 4), float(macro)
    (0.6667, 0.75)
  """
  correct = jnp.asarray(correct, jnp.float32)
  total = jnp.asarray(total, jnp.float32)
  if correct.shape != total.shape or correct.ndim != 1:
    raise ValueError(f"`correct` and `total` must be 1-D of equal shape, got {correct.shape} and {total.shape}.")
  present = total > 0
  per_class = jnp.where(present, correct / jnp.where(present, total, 1.0), jnp.nan)
  accuracy = jnp.sum(correct) / jnp.sum(total)
  macro = jnp.sum(jnp.where(present, per_class, 0.0)) / jnp.sum(present)
  return accuracy, macro, per_class


def per_class_topk_accuracy(logits: ArrayLike, labels: ArrayLike, *, k: int, num_classes: int) -> jax.Array:
  """Per-class top-k accuracy (recall), NaN for a class absent from `labels`.

  Args:
    logits: floating array `[..., L]`.
    labels: integer array `[...]`.
    k: a Python int in `[1, L]`.
    num_classes: the number of classes.

  Returns:
    float32 array `[num_classes]`.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> ntk.per_class_topk_accuracy(jnp.eye(3), jnp.array([0, 1, 0]), k=1, num_classes=3).tolist()
    [0.5, 1.0, nan]
  """
  return accuracies_from_counts(*per_class_topk_counts(logits, labels, k=k, num_classes=num_classes))[2]


def macro_topk_accuracy(logits: ArrayLike, labels: ArrayLike, *, k: int, num_classes: int) -> jax.Array:
  """Macro-average top-k accuracy: the mean of the per-class accuracies over the classes present in `labels`.

  Args:
    logits: floating array `[..., L]`.
    labels: integer array `[...]`.
    k: a Python int in `[1, L]`.
    num_classes: the number of classes.

  Returns:
    A float32 scalar.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> float(ntk.macro_topk_accuracy(jnp.eye(3), jnp.array([0, 1, 0]), k=1, num_classes=3))
    0.75

  References:
    Garcin et al., Pl@ntNet-300K, NeurIPS Datasets and Benchmarks 2021 (macro-average top-K accuracy).
  """
  return accuracies_from_counts(*per_class_topk_counts(logits, labels, k=k, num_classes=num_classes))[1]
