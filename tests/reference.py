"""Independent NumPy float64 references for the tests.

Deliberately naive: explicit sorts, Python loops over examples and brute-force enumeration of k-subsets, so that they
share no code path (and as few ideas as possible) with the library. Nothing here imports JAX.

Every function takes arrays of shape `[..., L]` (and integer labels of shape `[...]`), casts them to float64 and returns
float64 NumPy arrays. Gradients are with respect to the scores/logits, for an upstream cotangent of ones per example.
"""
import functools
import itertools
import math

import numpy as np


# ---------------------------------------------------------------------------------------------------------------------
# Helpers.


def _f64(x):
  return np.asarray(x, dtype=np.float64)


def _rows(scores, labels=None):
  """Flattens `[..., L]` scores (and `[...]` labels) to rows; returns the batch shape to restore."""
  scores = _f64(scores)
  batch_shape = scores.shape[:-1]
  flat = scores.reshape(-1, scores.shape[-1])
  if labels is None:
    return flat, batch_shape
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  return flat, labels, batch_shape


def onehot(index, num_classes):
  out = np.zeros(num_classes, dtype=np.float64)
  out[index] = 1.0
  return out


def descending_order(row):
  """Indices of `row` from largest to smallest; equal values keep their index order (lowest index first)."""
  return np.argsort(-_f64(row), kind="stable")


def logsumexp(v):
  v = _f64(v)
  m = np.max(v)
  if np.isinf(m):
    return m
  return m + math.log(np.sum(np.exp(v - m)))


def softmax(v):
  v = _f64(v)
  e = np.exp(v - np.max(v))
  return e / e.sum()


def rowwise_finite_difference_grad(row_fn, scores, labels, step=1e-6):
  """Central differences of a per-example loss `row_fn(row, label)` in float64, row by row."""
  flat, labels_flat, batch_shape = _rows(scores, labels)
  grad = np.zeros_like(flat)
  for i, (row, y) in enumerate(zip(flat, labels_flat)):
    row = row.copy()
    for j in range(row.shape[0]):
      orig = row[j]
      row[j] = orig + step
      plus = row_fn(row, y)
      row[j] = orig - step
      minus = row_fn(row, y)
      row[j] = orig
      grad[i, j] = (plus - minus) / (2.0 * step)
  return grad.reshape(batch_shape + (flat.shape[-1],))


# ---------------------------------------------------------------------------------------------------------------------
# Section 1: hard and noised top-k.


def kth_largest(scores, k):
  """Returns (value [...], gradient [..., L]); gradient is the one-hot at the lax.top_k tie position."""
  flat, batch_shape = _rows(scores)
  num_classes = flat.shape[-1]
  values = np.empty(flat.shape[0])
  grads = np.zeros_like(flat)
  for i, row in enumerate(flat):
    position = descending_order(row)[k - 1]
    values[i] = row[position]
    grads[i] = onehot(position, num_classes)
  return values.reshape(batch_shape), grads.reshape(batch_shape + (num_classes,))


def noised_kth_largest(scores, k, epsilon, noise):
  """Monte Carlo perturbed k-th largest with explicit noise `[B, ..., L]`; returns (value, gradient)."""
  scores = _f64(scores)
  noise = _f64(noise)
  num_samples = noise.shape[0]
  value = np.zeros(scores.shape[:-1])
  grad = np.zeros(scores.shape)
  for b in range(num_samples):
    v, g = kth_largest(scores + epsilon * noise[b], k)
    value += v
    grad += g
  return value / num_samples, grad / num_samples


def expected_max_of_two_gaussians(mu1, mu2, epsilon):
  """E[max(mu1 + eps Z1, mu2 + eps Z2)] for independent standard normals (Clark's formula)."""
  theta = epsilon * math.sqrt(2.0)
  d = mu1 - mu2
  cdf = lambda t: 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
  pdf = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
  return mu1 * cdf(d / theta) + mu2 * cdf(-d / theta) + theta * pdf(d / theta)


def variance_max_of_two_gaussians(mu1, mu2, epsilon):
  """Var[max(mu1 + eps Z1, mu2 + eps Z2)] from Clark's second moment."""
  theta = epsilon * math.sqrt(2.0)
  a = (mu1 - mu2) / theta
  cdf = lambda t: 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
  pdf = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
  second = ((mu1**2 + epsilon**2) * cdf(a) + (mu2**2 + epsilon**2) * cdf(-a) + (mu1 + mu2) * theta * pdf(a))
  return second - expected_max_of_two_gaussians(mu1, mu2, epsilon)**2


def smoothing_bound(k, epsilon, num_classes):
  """|top_{k,eps}(s) - top_k(s)| <= eps * k * sqrt(2 log L) (Garcin et al. 2022, Prop. 1)."""
  return epsilon * k * math.sqrt(2.0 * math.log(num_classes))


# ---------------------------------------------------------------------------------------------------------------------
# Section 2-3: losses. Each returns (loss [...], gradient [..., L]) unless noted.


def cross_entropy(logits, labels):
  flat, labels, batch_shape = _rows(logits, labels)
  num_classes = flat.shape[-1]
  loss = np.empty(flat.shape[0])
  grad = np.empty_like(flat)
  for i, (row, y) in enumerate(zip(flat, labels)):
    loss[i] = logsumexp(row) - row[y]
    grad[i] = softmax(row) - onehot(y, num_classes)
  return loss.reshape(batch_shape), grad.reshape(batch_shape + (num_classes,))


def _focal_row(row, y, gamma, weight=1.0):
  c = weight * (logsumexp(row) - row[y])
  return max(1.0 - math.exp(-c), 0.0)**gamma * c


def focal_loss_value(logits, labels, gamma, weights=None):
  flat, labels_flat, batch_shape = _rows(logits, labels)
  w = np.ones(len(flat)) if weights is None else _f64(weights).reshape(-1)
  return np.array([_focal_row(row, y, gamma, wi) for row, y, wi in zip(flat, labels_flat, w)]).reshape(batch_shape)


def focal_loss(logits, labels, gamma, weights=None):
  """Value, and the gradient by row-wise central finite differences on the float64 value. `weights` (one per
  example) scale the cross-entropy inside the focusing factor (LDAM-DRW's class-balanced focal loss)."""
  value = focal_loss_value(logits, labels, gamma, weights)
  if weights is None:
    return value, rowwise_finite_difference_grad(lambda r, y: _focal_row(r, y, gamma), logits, labels)
  flat, labels_flat, batch_shape = _rows(logits, labels)
  grad = np.concatenate([
      rowwise_finite_difference_grad(lambda r, y, w=w: _focal_row(r, y, gamma, w), flat[i:i + 1], labels_flat[i:i + 1])
      for i, w in enumerate(_f64(weights).reshape(-1))])
  return value, grad.reshape(batch_shape + (flat.shape[-1],))


def ldam_loss(logits, labels, margins, scale):
  flat, labels_flat, batch_shape = _rows(logits, labels)
  margins = _f64(margins)
  num_classes = flat.shape[-1]
  loss = np.empty(flat.shape[0])
  grad = np.empty_like(flat)
  for i, (row, y) in enumerate(zip(flat, labels_flat)):
    z = scale * (row - margins[y] * onehot(y, num_classes))
    loss[i] = logsumexp(z) - z[y]
    grad[i] = scale * (softmax(z) - onehot(y, num_classes))
  return loss.reshape(batch_shape), grad.reshape(batch_shape + (num_classes,))


def logit_adjustment(class_counts, tau):
  total = float(sum(float(n) for n in class_counts))
  return np.array([tau * math.log(float(n) / total) for n in class_counts], dtype=np.float64)


def logit_adjusted_loss(logits, labels, class_counts, tau):
  """CE of the logits plus tau * log(prior); gradient softmax(s + o) - e_y."""
  offsets = logit_adjustment(class_counts, tau)
  flat, labels_flat, batch_shape = _rows(logits, labels)
  num_classes = flat.shape[-1]
  loss = np.empty(flat.shape[0])
  grad = np.empty_like(flat)
  for i, (row, y) in enumerate(zip(flat, labels_flat)):
    z = row + offsets
    loss[i] = logsumexp(z) - z[y]
    grad[i] = softmax(z) - onehot(y, num_classes)
  return loss.reshape(batch_shape), grad.reshape(batch_shape + (num_classes,))


def vs_loss(logits, labels, class_counts, gamma, tau):
  """VS loss in the authors' form: each logit divided by (1/n_j)^gamma / min_i (1/n_i)^gamma, plus tau log(prior).

  With z_j = s_j / D_j + iota_j the gradient is (softmax(z) - e_y) / D, elementwise.
  """
  inverse = [(1.0 / float(n))**gamma for n in class_counts]
  divisors = np.array([v / min(inverse) for v in inverse], dtype=np.float64)
  iota = logit_adjustment(class_counts, tau)
  flat, labels_flat, batch_shape = _rows(logits, labels)
  num_classes = flat.shape[-1]
  loss = np.empty(flat.shape[0])
  grad = np.empty_like(flat)
  for i, (row, y) in enumerate(zip(flat, labels_flat)):
    z = row / divisors + iota
    loss[i] = logsumexp(z) - z[y]
    grad[i] = (softmax(z) - onehot(y, num_classes)) / divisors
  return loss.reshape(batch_shape), grad.reshape(batch_shape + (num_classes,))


def _margin_of(margins, y):
  margins = _f64(margins)
  return float(margins) if margins.ndim == 0 else float(margins[y])


def topk_hinge_loss(logits, labels, k, margins=1.0):
  """relu(m_y + top_{k+1}(s) - s_y), the (k+1)-th largest over all scores, found by sorting."""
  flat, labels_flat, batch_shape = _rows(logits, labels)
  num_classes = flat.shape[-1]
  loss = np.empty(flat.shape[0])
  grad = np.zeros_like(flat)
  for i, (row, y) in enumerate(zip(flat, labels_flat)):
    position = descending_order(row)[k]
    hinge = _margin_of(margins, y) + row[position] - row[y]
    loss[i] = max(hinge, 0.0)
    if hinge > 0:
      grad[i] = onehot(position, num_classes) - onehot(y, num_classes)
  return loss.reshape(batch_shape), grad.reshape(batch_shape + (num_classes,))


def noised_topk_loss(logits, labels, k, epsilon, noise, margins=1.0, scale=1.0):
  """scale * relu(m_y + mean_b top_{k+1}(s + eps noise_b) - s_y): relu of the Monte Carlo mean."""
  logits = _f64(logits)
  labels = np.asarray(labels)
  num_classes = logits.shape[-1]
  topk1, topk1_grad = noised_kth_largest(logits, k + 1, epsilon, noise)
  true_score = np.take_along_axis(logits, labels[..., None].astype(np.int64), axis=-1)[..., 0]
  margin = np.vectorize(lambda y: _margin_of(margins, y))(labels) if labels.size else np.zeros(labels.shape)
  hinge = margin + topk1 - true_score
  loss = scale * np.maximum(hinge, 0.0)
  active = (hinge > 0).astype(np.float64)[..., None]
  y_onehot = np.eye(num_classes)[labels.astype(np.int64)]
  grad = scale * active * (topk1_grad - y_onehot)
  return loss, grad


def smooth_topk_svm_uses_hard(row, k, tau):
  """Berrada et al.'s released switch rule: hard loss when top_k(s) - top_{k+1}(s) >= k tau log(1000)."""
  ordered = np.sort(_f64(row))[::-1]
  return ordered[k - 1] - ordered[k] >= k * tau * math.log(1000.0)


@functools.lru_cache(maxsize=None)
def _k_subsets(num_classes, k):
  return np.array(list(itertools.combinations(range(num_classes), k)), dtype=np.int64)


def _smooth_svm_row_brute_force(row, y, k, tau, alpha):
  """Smooth top-k SVM by enumerating every k-subset of the L classes (log-sum-exp over subsets)."""
  subsets = _k_subsets(row.shape[0], k)
  subset_means = row[subsets].sum(axis=1) / k
  contains_y = np.any(subsets == y, axis=1)
  all_terms = (alpha * (~contains_y) + subset_means) / tau
  with_y_terms = subset_means[contains_y] / tau
  return tau * logsumexp(all_terms) - tau * logsumexp(with_y_terms)


def _hard_svm_row(row, y, k, alpha):
  """Hard top-k SVM: max(0, mean(top_k(s_{-y} + alpha)) - (sum(top_{k-1}(s_{-y})) + s_y) / k)."""
  others = np.sort(np.delete(row, y))[::-1]
  first = np.mean(others[:k] + alpha)
  second = (np.sum(others[:k - 1]) + row[y]) / k
  return max(0.0, first - second)


def _smooth_svm_row(row, y, k, tau, alpha):
  if smooth_topk_svm_uses_hard(row, k, tau):
    return _hard_svm_row(row, y, k, alpha)
  return _smooth_svm_row_brute_force(row, y, k, tau, alpha)


def smooth_topk_svm_value(logits, labels, k, tau, alpha=1.0):
  flat, labels_flat, batch_shape = _rows(logits, labels)
  loss = np.array([_smooth_svm_row(row, y, k, tau, alpha) for row, y in zip(flat, labels_flat)])
  return loss.reshape(batch_shape)


def smooth_topk_svm_loss(logits, labels, k, tau, alpha=1.0, step=1e-6):
  """Value, and the gradient by row-wise central finite differences on the float64 value."""
  value = smooth_topk_svm_value(logits, labels, k, tau, alpha)
  grad = rowwise_finite_difference_grad(lambda r, y: _smooth_svm_row(r, y, k, tau, alpha), logits, labels, step=step)
  return value, grad


def smooth_topk_svm_k1_closed_form(logits, labels, tau, alpha=1.0):
  """For k = 1: tau * logsumexp((s + alpha (1 - onehot_y) - s_y) / tau)."""
  flat, labels_flat, batch_shape = _rows(logits, labels)
  num_classes = flat.shape[-1]
  loss = np.empty(flat.shape[0])
  for i, (row, y) in enumerate(zip(flat, labels_flat)):
    loss[i] = tau * logsumexp((row + alpha * (1.0 - onehot(y, num_classes)) - row[y]) / tau)
  return loss.reshape(batch_shape)


def max_margin_delta(gap, delta_minus, delta_plus):
  if gap > 0:
    return math.exp(-gap - delta_plus)
  if gap < 0:
    return math.exp(-abs(gap) - delta_minus)
  return 0.0


def max_margin_loss(logits, labels, delta_minus, beta, scale, ldam_margins=None, reference_code_compat=False,
                    reference_label=None):
  """Explicit loop over examples. Returns (loss, gradient with Delta held constant, Delta, gap g)."""
  logits = _f64(logits)
  labels = np.asarray(labels).astype(np.int64)
  num_classes = logits.shape[-1]
  if reference_code_compat:
    assert logits.ndim == 2
  flat, labels_flat, batch_shape = _rows(logits, labels)
  first_label = int(labels_flat[0]) if reference_label is None else int(reference_label)
  margins = None if ldam_margins is None else _f64(ldam_margins)
  loss = np.empty(flat.shape[0])
  grad = np.empty_like(flat)
  deltas = np.empty(flat.shape[0])
  gaps = np.empty(flat.shape[0])
  for i in range(flat.shape[0]):
    z = flat[i]
    y = int(labels_flat[i])
    if reference_code_compat:
      positive = z[first_label]
      masked = np.array([z[j] * (0.0 if j == y else 1.0) for j in range(num_classes)])
      negative = max(masked)
    else:
      positive = z[y]
      negative = max(z[j] for j in range(num_classes) if j != y)
    gap = positive - negative
    d_minus = delta_minus if margins is None else delta_minus - margins[y]
    d_plus = beta * d_minus
    delta = max_margin_delta(gap, d_minus, d_plus)
    shifted = scale * (z - delta * onehot(y, num_classes))
    loss[i] = logsumexp(shifted) - shifted[y]
    grad[i] = scale * (softmax(shifted) - onehot(y, num_classes))
    deltas[i] = delta
    gaps[i] = gap
  return (loss.reshape(batch_shape), grad.reshape(batch_shape + (num_classes,)), deltas.reshape(batch_shape),
          gaps.reshape(batch_shape))


def weighted_mean(losses, weights):
  losses = _f64(losses)
  weights = _f64(weights)
  total = 0.0
  norm = 0.0
  for l, w in zip(losses.reshape(-1), weights.reshape(-1)):
    total += w * l
    norm += w
  return total / norm


# ---------------------------------------------------------------------------------------------------------------------
# Section 4: class statistics (plain Python floats, exactly the published formulas).


def class_margins(class_counts, max_margin, power=0.25):
  raw = [float(n) ** (-power) for n in class_counts]
  top = max(raw)
  return np.array([r * max_margin / top for r in raw], dtype=np.float64)


def class_balanced_weights(class_counts, beta):
  num_classes = len(class_counts)
  raw = [(1.0 - beta) / (1.0 - beta ** int(n)) for n in class_counts]
  total = sum(raw)
  return np.array([w * num_classes / total for w in raw], dtype=np.float64)


def drw_class_weights(class_counts, epoch, start_epoch, beta=0.9999):
  if epoch < start_epoch:
    return np.ones(len(class_counts), dtype=np.float64)
  return class_balanced_weights(class_counts, beta)


def long_tailed_counts(num_classes, max_count, imbalance_ratio, profile="exp"):
  if profile == "exp":
    return np.array([int(max_count * (1.0 / imbalance_ratio) ** (c / (num_classes - 1.0)))
                     for c in range(num_classes)], dtype=np.int64)
  if profile == "step":
    head = num_classes // 2
    return np.array([int(max_count)] * head + [int(max_count / imbalance_ratio)] * (num_classes - head),
                    dtype=np.int64)
  raise ValueError(profile)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics. "Correct" means the label is among the first k indices of a stable descending argsort (lax.top_k's order).


def topk_correct(logits, labels, k):
  flat, labels_flat, batch_shape = _rows(logits, labels)
  correct = np.empty(flat.shape[0], dtype=bool)
  for i, (row, y) in enumerate(zip(flat, labels_flat)):
    correct[i] = y in descending_order(row)[:k]
  return correct.reshape(batch_shape)


def topk_correct_by_counting(logits, labels, k):
  """Same rule written as a rank count: #{j: s_j > s_y} + #{j < y: s_j == s_y} < k."""
  flat, labels_flat, batch_shape = _rows(logits, labels)
  out = np.empty(flat.shape[0], dtype=bool)
  for i, (row, y) in enumerate(zip(flat, labels_flat)):
    rank = sum(1 for j in range(row.shape[0]) if row[j] > row[y] or (j < y and row[j] == row[y]))
    out[i] = rank < k
  return out.reshape(batch_shape)


def topk_accuracy(logits, labels, k):
  return float(np.mean(topk_correct(logits, labels, k)))


def per_class_topk_counts(logits, labels, k, num_classes, weights=None):
  return _per_class_counts(topk_correct(logits, labels, k), labels, num_classes, weights)


def _per_class_counts(correct, labels, num_classes, weights):
  """(weighted hits, weighted totals) per class of a boolean `correct` per example."""
  correct = np.asarray(correct).reshape(-1)
  labels_flat = np.asarray(labels).reshape(-1)
  w = np.ones(labels_flat.shape) if weights is None else _f64(weights).reshape(-1)
  hits = np.zeros(num_classes)
  total = np.zeros(num_classes)
  for c, y, wi in zip(correct, labels_flat, w):
    total[y] += wi
    hits[y] += wi * c
  return hits, total


def accuracies_from_counts(correct, total):
  correct = _f64(correct)
  total = _f64(total)
  overall = correct.sum() / total.sum()
  per_class = np.full(correct.shape, np.nan)
  present = total > 0
  per_class[present] = correct[present] / total[present]
  macro = float(np.mean(per_class[present]))
  return overall, macro, per_class


def per_class_topk_accuracy(logits, labels, k, num_classes):
  return accuracies_from_counts(*per_class_topk_counts(logits, labels, k, num_classes))[2]


def macro_topk_accuracy(logits, labels, k, num_classes):
  return accuracies_from_counts(*per_class_topk_counts(logits, labels, k, num_classes))[1]


# ---------------------------------------------------------------------------------------------------------------------
# Average-k (Pl@ntNet-300K): a global threshold on the probabilities, written from the dataset paper's definition.


def average_k_threshold(probs, k):
  """Midpoint of the (N k)-th and (N k + 1)-th largest of all N * L entries (1-indexed), from a full float64 sort;
  for k = L (no (N L + 1)-th entry) the smallest entry, so that every entry is inside."""
  probs = _f64(probs)
  n, num_classes = probs.shape
  ordered = sorted(probs.reshape(-1).tolist(), reverse=True)
  if k == num_classes:
    return ordered[-1]
  return 0.5 * (ordered[n * k - 1] + ordered[n * k])


def average_k_set_sizes(probs, threshold):
  flat, batch_shape = _rows(probs)
  sizes = [sum(1 for p in row if p >= threshold) for row in flat]
  return np.asarray(sizes, np.int64).reshape(batch_shape)


def average_k_correct(probs, labels, threshold):
  flat, labels_flat, batch_shape = _rows(probs, labels)
  return np.asarray([row[y] >= threshold for row, y in zip(flat, labels_flat)], bool).reshape(batch_shape)


def average_k_accuracy(probs, labels, threshold):
  return float(np.mean(average_k_correct(probs, labels, threshold)))


def per_class_average_k_counts(probs, labels, threshold, num_classes, weights=None):
  return _per_class_counts(average_k_correct(probs, labels, threshold), labels, num_classes, weights)


def macro_average_k_accuracy(probs, labels, threshold, num_classes):
  return accuracies_from_counts(*per_class_average_k_counts(probs, labels, threshold, num_classes))[1]
