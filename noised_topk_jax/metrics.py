"""Top-K and average-K accuracy, per class and macro-averaged, in one-shot and streaming forms.

A label counts as inside the top-K when it is among the indices `jax.lax.top_k(logits, K)` returns: with ties, the
lower class index ranks first. Formally, `y` is correct iff `#{j : s_j > s_y} + #{j < y : s_j = s_y} < K`. Ties are
thus broken deterministically and never in the model's favour as a whole (constant logits do not score 100%).

Average-K (Garcin et al., Pl@ntNet-300K, NeurIPS Datasets and Benchmarks 2021) returns a set of variable size,
`{j : p_j >= lambda}`, with one threshold `lambda` for all examples, chosen on held-out probabilities
(`average_k_threshold`) so that the sets hold K classes on average: ambiguous examples get larger sets, easy ones
smaller. `y` is correct iff `p_y >= lambda`.

The streaming forms, `per_class_topk_counts` and `per_class_average_k_counts`, return per-class (correct, total)
counts that can be summed over batches and devices (`lax.psum`) before `accuracies_from_counts` turns them into
accuracies.
"""
import math
import numbers
from typing import Optional, Tuple

import jax
from jax import lax
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
  return _per_class_counts(_rank_of_label(logits, labels) < k, labels, num_classes, weights)


def _per_class_counts(correct, labels, num_classes, weights):
  """Per-class sums of `weights * correct` and of `weights` (default weights: ones)."""
  num_classes = _checks.check_int(num_classes, "num_classes", minimum=1)
  if weights is None:
    weights = jnp.ones(labels.shape, jnp.float32)
  else:
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != labels.shape:
      raise ValueError(f"`weights` must have the shape of `labels` {labels.shape}, got {weights.shape}.")
  correct = correct.astype(jnp.float32) * weights
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


# ---------------------------------------------------------------------------------------------------------------------
# Average-K: one global threshold on the probabilities, sets of variable size.


def _check_probs(probs):
  return _checks.check_scores(probs, "probs")


def _check_threshold(threshold):
  """`threshold` must be a real scalar, finite when its value is known at trace time."""
  if isinstance(threshold, bool) or not (
      isinstance(threshold, numbers.Real)
      or (hasattr(threshold, "dtype") and (jnp.issubdtype(threshold.dtype, jnp.floating)
                                           or jnp.issubdtype(threshold.dtype, jnp.integer)))):
    raise TypeError(f"`threshold` must be a real number, got {threshold!r} of type {type(threshold).__name__}.")
  _checks.check_scalar(threshold, "threshold")
  value = _checks.concrete_float(threshold)
  if value is not None and not math.isfinite(value):
    raise ValueError(f"`threshold` must be finite, got {value}.")


def _compare_dtype(probs):
  """Half-precision probabilities are compared with the threshold in float32, others in their own dtype."""
  return _checks.compute_dtype(probs.dtype)


def _label_in_set(probs, labels, threshold):
  dtype = _compare_dtype(probs)
  p_y = jnp.take_along_axis(probs, labels[..., None], axis=-1)[..., 0].astype(dtype)
  return p_y >= jnp.asarray(threshold).astype(dtype)


def average_k_threshold(probs: ArrayLike, *, k: int) -> jax.Array:
  r"""The average-k threshold of held-out probabilities: sets `{j : p_j >= lambda}` then hold k classes on average.

  With `s_1 >= s_2 >= ... >= s_{NL}` the `N * L` entries of `probs` sorted in decreasing order,

  .. math::
    \lambda = \tfrac{1}{2} \left( s_{Nk} + s_{Nk+1} \right)

  so that exactly `N * k` entries are `>= lambda` when `s_{Nk} > s_{Nk+1}`. Estimate it on a validation split and
  apply it to the test split (`average_k_accuracy`, `macro_average_k_accuracy`, `average_k_set_sizes`).

  This is the definition of the dataset's released code (`val_epoch` in plantnet/PlantNet-300K's `epoch.py`: the
  softmax outputs of the whole validation split, flattened and sorted in decreasing order, `lambda = 0.5 *
  (sorted[n_val * k - 1] + sorted[n_val * k])`), computed here by an exact selection of those two entries instead
  of a full sort (same two values, ties included). Where it differs:

  - `k = L`: the released code indexes past the end of the array; here `lambda` is the smallest entry, so every
    set holds all `L` classes.
  - The midpoint is computed in the dtype of `probs` (float32, as the released code; half precision in float32).
    When `s_{Nk}` and `s_{Nk+1}` are adjacent floating-point numbers it may round to `s_{Nk+1}`, whose entries then
    enter the sets (`>=`, the released rule) as tied entries do: the mean set size then exceeds k on this split.

  Args:
    probs: floating array `[N, L]` of probabilities (softmax outputs), N >= 1 examples.
    k: a Python int in `[1, L]`, the mean set size to aim at.

  Returns:
    A scalar of the dtype of `probs` (float32 for half precision).

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> probs = jnp.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    >>> round(float(ntk.average_k_threshold(probs, k=1)), 4)  # between the 2nd (0.4) and 3rd (0.35) largest
    0.375

  References:
    Garcin et al., Pl@ntNet-300K: a plant image dataset with high label ambiguity and a long-tailed distribution,
    NeurIPS Datasets and Benchmarks 2021 (average-k accuracy, its threshold and released code).
  """
  probs = _check_probs(probs)
  if probs.ndim != 2:
    raise ValueError(f"`probs` must have shape [N, L] (examples, classes), got shape {tuple(probs.shape)}.")
  n, num_classes = probs.shape
  if n < 1:
    raise ValueError("`probs` must hold at least one example (N >= 1), got N = 0.")
  k = _checks.check_int(k, "k", minimum=1, maximum=num_classes, maximum_doc=f"the number of classes L={num_classes}")
  flat = probs.reshape(-1).astype(_compare_dtype(probs))
  if k == num_classes:
    return jnp.min(flat)
  upper, lower = _mth_and_next_largest(flat, n * k)
  return 0.5 * (upper + lower)


def _mth_and_next_largest(flat, m):
  """The m-th and (m+1)-th largest entries of a 1-D float32 / float64 array (1 <= m < size), ties counted.

  An exact radix selection: the entries are mapped to unsigned integers of the same order (the IEEE bits, sign
  folded), and the m-th largest key is built bit by bit from the top, keeping a bit when at least m keys are >= the
  prefix with it set. 32 (64) counting passes over the array instead of `lax.top_k` of m + 1 entries, whose cost on
  a CPU grows with m (6.2 s against 0.4 s for a Pl@ntNet-sized validation split, [21620, 1081] at k = 3, on a 2-core
  CPU; benchmarks/bench_average_k.py).
  """
  bits = 64 if flat.dtype == jnp.float64 else 32
  utype = jnp.uint64 if bits == 64 else jnp.uint32
  top = utype(1 << (bits - 1))
  every = utype((1 << bits) - 1)
  raw = lax.bitcast_convert_type(flat, utype)
  # Non-negative floats: set the top bit; negative ones: flip every bit (larger magnitude, smaller key).
  keys = raw ^ jnp.where(raw >= top, every, top)

  def keep_bit(i, prefix):
    candidate = prefix | jnp.left_shift(utype(1), (bits - 1 - i).astype(utype))
    return jnp.where(jnp.sum(keys >= candidate) >= m, candidate, prefix)

  mth = lax.fori_loop(0, bits, keep_bit, utype(0))
  # The (m+1)-th is the m-th again when more than m entries reach it (a tie), else the largest key below it.
  below = jnp.max(jnp.where(keys < mth, keys, utype(0)))
  next_key = jnp.where(jnp.sum(keys >= mth) > m, mth, below)

  def to_float(key):
    return lax.bitcast_convert_type(key ^ jnp.where(key >= top, top, every), flat.dtype)

  return to_float(mth), to_float(next_key)


def average_k_set_sizes(probs: ArrayLike, *, threshold: ArrayLike) -> jax.Array:
  """Per-example size of the average-k set, `#{j : p_j >= threshold}` (int32, shape `probs.shape[:-1]`).

  Its mean over a split is the realised average set size (k on the split the threshold came from, up to ties).

  Args:
    probs: floating array `[..., L]` of probabilities.
    threshold: a finite real scalar, usually `average_k_threshold` of validation probabilities.

  Returns:
    int32 array of shape `probs.shape[:-1]`.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> ntk.average_k_set_sizes(jnp.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]), threshold=0.3).tolist()
    [1, 2]
  """
  probs = _check_probs(probs)
  _check_threshold(threshold)
  dtype = _compare_dtype(probs)
  return jnp.sum(probs.astype(dtype) >= jnp.asarray(threshold).astype(dtype), axis=-1, dtype=jnp.int32)


def average_k_accuracy(probs: ArrayLike, labels: ArrayLike, *, threshold: ArrayLike) -> jax.Array:
  """Average-k accuracy: the fraction of examples whose label's probability is `>= threshold`.

  Args:
    probs: floating array `[..., L]` of probabilities.
    labels: integer array `[...]`.
    threshold: a finite real scalar, usually `average_k_threshold` of validation probabilities. It is compared in
      the dtype of `probs` (float32 for half precision).

  Returns:
    A float32 scalar.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> probs = jnp.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    >>> float(ntk.average_k_accuracy(probs, jnp.array([1, 1]), threshold=0.3))
    0.5

  References:
    Garcin et al., Pl@ntNet-300K, NeurIPS Datasets and Benchmarks 2021 (`p_y >= lambda`, as `count_correct_avgk`
    in the released utils.py).
  """
  probs, labels = _checks.check_logits_labels(probs, labels, "probs")
  _check_threshold(threshold)
  return jnp.mean(_label_in_set(probs, labels, threshold).astype(jnp.float32))


def per_class_average_k_counts(probs: ArrayLike, labels: ArrayLike, *, threshold: ArrayLike, num_classes: int,
                               weights: Optional[ArrayLike] = None) -> Tuple[jax.Array, jax.Array]:
  """Streaming average-k statistics: per-class numbers of correct and of all examples.

  Sum the results over batches (and devices) and pass them to `accuracies_from_counts`.

  Args:
    probs: floating array `[..., L]` of probabilities.
    labels: integer array `[...]`.
    threshold: a finite real scalar, usually `average_k_threshold` of validation probabilities.
    num_classes: the number of classes (a Python int, usually L).
    weights: optional per-example weights `[...]`, e.g. a 0/1 mask that drops the padding of the last batch.

  Returns:
    `(correct, total)`, two float32 arrays of shape `[num_classes]`.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> probs = jnp.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    >>> c, t = ntk.per_class_average_k_counts(probs, jnp.array([0, 1, 0]), threshold=0.3, num_classes=3)
    >>> c.tolist(), t.tolist()
    ([1.0, 1.0, 0.0], [2.0, 1.0, 0.0])
  """
  probs, labels = _checks.check_logits_labels(probs, labels, "probs")
  _check_threshold(threshold)
  return _per_class_counts(_label_in_set(probs, labels, threshold), labels, num_classes, weights)


def macro_average_k_accuracy(probs: ArrayLike, labels: ArrayLike, *, threshold: ArrayLike,
                             num_classes: int) -> jax.Array:
  """Macro-average average-k accuracy: the mean of the per-class accuracies over the classes present in `labels`.

  Classes absent from `labels` are left out of the mean, as in `macro_topk_accuracy` and in the released code
  (which averages over the classes it met in the split).

  Args:
    probs: floating array `[..., L]` of probabilities.
    labels: integer array `[...]`.
    threshold: a finite real scalar, usually `average_k_threshold` of validation probabilities.
    num_classes: the number of classes.

  Returns:
    A float32 scalar.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> probs = jnp.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    >>> float(ntk.macro_average_k_accuracy(probs, jnp.array([0, 1, 0]), threshold=0.3, num_classes=3))
    0.75

  References:
    Garcin et al., Pl@ntNet-300K, NeurIPS Datasets and Benchmarks 2021 (macro-average average-k accuracy).
  """
  counts = per_class_average_k_counts(probs, labels, threshold=threshold, num_classes=num_classes)
  return accuracies_from_counts(*counts)[1]
