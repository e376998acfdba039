"""Class statistics for imbalanced training: margins, re-weighting, DRW and long-tailed subsets.

These functions run once on the host: NumPy in, NumPy out (float64 margins and weights, int64 counts).
"""
from jax.typing import ArrayLike
import numpy as np

from noised_topk_jax import _checks

PROFILES = ("exp", "step")


def class_margins(class_counts: ArrayLike, *, max_margin: float, power: float = 0.25) -> np.ndarray:
  r"""Per-class margins proportional to `n_y^{-power}`, the rarest class getting exactly `max_margin`.

  .. math::
    m_y = \mathrm{max\_margin} \cdot \frac{n_y^{-p}}{\max_j n_j^{-p}}

  Args:
    class_counts: per-class training counts, shape `[L]`, all > 0.
    max_margin: the margin of the rarest class (0.5 for LDAM on CIFAR, 0.2 on Pl@ntNet-300K).
    power: the exponent `p` (1/4 in LDAM and the imbalanced noised loss).

  Returns:
    float64 margins `[L]`.

  Example:
    >>> import numpy as np, noised_topk_jax as ntk
    >>> ntk.class_margins(np.array([10000, 1]), max_margin=0.5)
    array([0.05, 0.5 ])

  References:
    Cao et al., LDAM, NeurIPS 2019; Garcin et al., ICML 2022.
  """
  counts = _checks.check_class_counts(class_counts)
  max_margin = float(max_margin)
  if not np.isfinite(max_margin) or max_margin < 0:
    raise ValueError(f"`max_margin` must be a finite number >= 0, got {max_margin}.")
  power = float(power)
  if not np.isfinite(power) or power < 0:
    raise ValueError(f"`power` must be a finite number >= 0, got {power}.")
  m = counts**(-power)
  return m * (max_margin / np.max(m))


def logit_adjustment(class_counts: ArrayLike, *, tau: float = 1.0) -> np.ndarray:
  r"""Logit-adjustment offsets: `tau` times the log of the training class prior.

  .. math::
    o_y = \tau \log \frac{n_y}{\sum_j n_j}

  Add them to the logits inside a loss (`logit_adjusted_loss`, or `logits + offsets` before any other loss,
  including both noised forms) to train for the balanced error; or subtract them from a plain cross-entropy model's
  logits at prediction time (post-hoc adjustment, `logits - logit_adjustment(counts, tau=tau)`).

  Args:
    class_counts: per-class training counts, shape `[L]`, all > 0 and finite.
    tau: the temperature, a finite number >= 0 (1 in Menon et al.; 0 gives zero offsets).

  Returns:
    float32 offsets `[L]` (all <= 0).

  Example:
    >>> import numpy as np, noised_topk_jax as ntk
    >>> ntk.logit_adjustment(np.array([3, 1]), tau=1.0).round(4)
    array([-0.2877, -1.3863], dtype=float32)

  References:
    Menon et al., Long-tail learning via logit adjustment, ICLR 2021.
  """
  return _log_prior_offsets(class_counts, tau=tau).astype(np.float32)


def _log_prior_offsets(class_counts, *, tau):
  """float64 `tau * log(n_y / sum n)`: `logit_adjustment` before its float32 cast (losses cast to their dtype)."""
  counts = _checks.check_class_counts(class_counts)
  tau = _checks.check_finite_nonnegative(tau, "tau")
  return tau * np.log(counts / counts.sum())


def class_balanced_weights(class_counts: ArrayLike, *, beta: float) -> np.ndarray:
  r"""Class-balanced weights from the effective number of samples, normalized to sum to L.

  .. math::
    w_j \propto \frac{1 - \beta}{1 - \beta^{n_j}}, \qquad \sum_j w_j = L

  `beta = 0` gives all ones; `beta -> 1` approaches inverse-frequency weights.

  Args:
    class_counts: per-class training counts `[L]`, all > 0.
    beta: in `[0, 1)` (0.9999 in DRW).

  Returns:
    float64 weights `[L]`.

  Example:
    >>> import numpy as np, noised_topk_jax as ntk
    >>> ntk.class_balanced_weights(np.array([100, 10]), beta=0.0)
    array([1., 1.])

  References:
    Cui et al., Class-balanced loss based on effective number of samples, CVPR 2019.
  """
  counts = _checks.check_class_counts(class_counts)
  beta = _checks.check_beta(beta)
  if beta == 0.0:
    w = np.ones_like(counts)
  else:
    # 1 - beta^n as -expm1(n log beta) keeps its precision for beta close to 1.
    w = (1.0 - beta) / -np.expm1(counts * np.log(beta))
  return w * (counts.size / np.sum(w))


def drw_class_weights(class_counts: ArrayLike, *, epoch: int, start_epoch: int, beta: float = 0.9999) -> np.ndarray:
  """Deferred re-weighting: ones before `start_epoch`, class-balanced weights from it on.

  Args:
    class_counts: per-class training counts `[L]`.
    epoch: the current epoch (0-indexed).
    start_epoch: the first re-weighted epoch (160 of 200 in the LDAM-DRW protocol, with the first lr decay).
    beta: the class-balanced `beta` (0.9999).

  Returns:
    float64 weights `[L]`.

  Example:
    >>> import numpy as np, noised_topk_jax as ntk
    >>> ntk.drw_class_weights(np.array([100, 10]), epoch=0, start_epoch=160)
    array([1., 1.])

  References:
    Cao et al., LDAM-DRW, NeurIPS 2019.
  """
  counts = _checks.check_class_counts(class_counts)
  epoch = _checks.check_int(epoch, "epoch", minimum=0)
  start_epoch = _checks.check_int(start_epoch, "start_epoch", minimum=0)
  if epoch < start_epoch:
    _checks.check_beta(beta)
    return np.ones_like(counts)
  return class_balanced_weights(counts, beta=beta)


def long_tailed_counts(num_classes: int, *, max_count: int, imbalance_ratio: float, profile: str = "exp"
                       ) -> np.ndarray:
  r"""Per-class counts of a long-tailed subset, exactly as in the LDAM-DRW protocol.

  `"exp"`: `n_c = int(max_count * (1 / rho) ** (c / (L - 1)))`; `"step"`: the first `L // 2` classes keep
  `int(max_count)`, the others `int(max_count / rho)`. Class 0 is the head; `rho = n_max / n_min`.

  Args:
    num_classes: L, >= 2.
    max_count: per-class size of the full balanced split (5000 for CIFAR-10, 500 for CIFAR-100).
    imbalance_ratio: rho >= 1.
    profile: `"exp"` or `"step"`.

  Returns:
    int64 counts `[L]`.

  Example:
    >>> import noised_topk_jax as ntk
    >>> ntk.long_tailed_counts(10, max_count=5000, imbalance_ratio=100).tolist()
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]

  References:
    Cao et al., LDAM-DRW, NeurIPS 2019.
  """
  num_classes = _checks.check_int(num_classes, "num_classes", minimum=2)
  max_count = _checks.check_int(max_count, "max_count", minimum=1)
  rho = float(imbalance_ratio)
  if not np.isfinite(rho) or rho < 1:
    raise ValueError(f"`imbalance_ratio` must be a finite number >= 1, got {imbalance_ratio}.")
  if profile == "exp":
    counts = [int(max_count * (1.0 / rho)**(c / (num_classes - 1.0))) for c in range(num_classes)]
  elif profile == "step":
    half = num_classes // 2
    counts = [int(max_count)] * half + [int(max_count / rho)] * (num_classes - half)
  else:
    raise ValueError(f"`profile` must be one of {PROFILES}, got {profile!r}.")
  counts = np.asarray(counts, np.int64)
  if np.any(counts < 1):
    raise ValueError(f"`imbalance_ratio`={rho} leaves classes empty with max_count={max_count}: {counts.tolist()}.")
  return counts
