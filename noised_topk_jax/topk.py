"""The hard and the noised (Gaussian-smoothed) k-th largest score.

`noised_kth_largest` is the operator at the heart of the noised top-K loss (Garcin et al., ICML 2022): a Monte Carlo
estimate of `E[top_k(s + eps Z)]` whose gradient is the perturbed-optimizer estimate `E[argtop_k(s + eps Z)]`, computed
with the same draws as the forward pass.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from noised_topk_jax import _checks

SELECTIONS = ("auto", "top_k", "sort", "max_mask")

# Above this k, k passes of max-and-mask cost more than one sort on CPU.
_MAX_MASK_LIMIT = 16


def _resolve_selection(selection, k):
  if selection not in SELECTIONS:
    raise ValueError(f"`selection` must be one of {SELECTIONS}, got {selection!r}.")
  if selection != "auto":
    return selection
  # XLA:CPU's TopK is a full sort per row and is slow; k passes of a reduction are much faster there for small k.
  # GPU and TPU have fast TopK implementations.
  if jax.default_backend() == "cpu":
    return "max_mask" if k <= _MAX_MASK_LIMIT else "sort"
  return "top_k"


def _select_kth(scores, k, selection):
  """Index of the k-th largest entry along the last axis (ties: the lowest index ranks first)."""
  if selection == "top_k":
    _, idx = lax.top_k(scores, k)
    return idx[..., k - 1]
  if selection == "sort":
    iota = lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
    # Sorting the negated scores ascending, with the index as a tie-breaker, ranks equal scores lowest index first.
    _, idx = lax.sort((-scores, iota), dimension=scores.ndim - 1, is_stable=True, num_keys=1)
    return idx[..., k - 1]
  if selection == "max_mask":
    iota = lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
    masked = scores
    idx = jnp.argmax(masked, axis=-1).astype(jnp.int32)
    for _ in range(k - 1):
      masked = jnp.where(iota == idx[..., None], -jnp.inf, masked)
      idx = jnp.argmax(masked, axis=-1).astype(jnp.int32)
    return idx
  raise ValueError(f"`selection` must be one of {SELECTIONS}, got {selection!r}.")  # pragma: no cover


def _take_last(x, idx):
  return jnp.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


def kth_largest(scores, k, *, selection="auto"):
  r"""The hard k-th largest score along the last axis.

  .. math::
    \mathrm{top}_k(s) = s_{(k)}, \qquad \nabla \mathrm{top}_k(s) = \mathrm{argtop}_k(s)

  The gradient is the one-hot vector at the position of the k-th largest entry. Among equal scores the lowest index
  ranks first (the order of `jax.lax.top_k`).

  Args:
    scores: floating array `[..., L]`.
    k: the rank, a Python int in `[1, L]` (1-indexed: `k=1` is the maximum).
    selection: selection algorithm, one of `SELECTIONS`; every choice gives the same value and gradient. `"auto"`
      picks the fastest for the backend.

  Returns:
    An array of shape `scores.shape[:-1]` and dtype `scores.dtype`.

  Example:
    >>> import jax.numpy as jnp, noised_topk_jax as ntk
    >>> float(ntk.kth_largest(jnp.array([4.0, -1.5, 2.5, 1.0]), 2))
    2.5

  References:
    Yang & Koyejo, On the consistency of top-k surrogate losses, ICML 2020.
  """
  scores = _checks.check_scores(scores)
  num_classes = scores.shape[-1]
  k = _checks.check_int(k, "k", minimum=1, maximum=num_classes, maximum_doc=f"the number of classes L={num_classes}")
  idx = _select_kth(lax.stop_gradient(scores), k, _resolve_selection(selection, k))
  return _take_last(scores, idx)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _noised_kth(scores, noise, epsilon, k, selection):
  value, _ = _noised_kth_fwd(scores, noise, epsilon, k, selection)
  return value


def _perturbed_selection(scores, noise, epsilon, k, selection):
  """Per-sample k-th largest of `scores + epsilon * noise[b]`: values and indices, each `[B, ...]`."""
  cdtype = _checks.compute_dtype(scores.dtype)
  s = scores.astype(cdtype)
  eps = jnp.asarray(epsilon, cdtype)

  def one_sample(z):
    perturbed = s + eps * z.astype(cdtype)
    idx = _select_kth(perturbed, k, selection)
    return _take_last(perturbed, idx), idx, _take_last(z.astype(cdtype), idx)

  return jax.vmap(one_sample)(noise)


def _noised_kth_fwd(scores, noise, epsilon, k, selection):
  values, idx, z_selected = _perturbed_selection(scores, noise, epsilon, k, selection)
  value = jnp.mean(values, axis=0).astype(scores.dtype)
  # Only the selected positions (and the noise there, for d/d epsilon) are kept for the backward pass, not the
  # perturbed [B, ..., L] tensor.
  # `marker` carries the class count and dtype as static shape information.
  marker = jnp.zeros((scores.shape[-1],), scores.dtype)
  return value, (idx, z_selected, marker, jnp.asarray(epsilon))


def _noised_kth_bwd(k, selection, residuals, g):
  del k, selection
  idx, z_selected, dtype_marker, epsilon = residuals
  num_samples, num_classes = idx.shape[0], dtype_marker.shape[0]
  cdtype = _checks.compute_dtype(dtype_marker.dtype)
  iota = lax.broadcasted_iota(jnp.int32, idx.shape[1:] + (num_classes,), idx.ndim - 1)
  # Mean over samples of the one-hot at each selected position: every row sums to 1 and is a multiple of 1/B.
  counts = jnp.zeros(idx.shape[1:] + (num_classes,), cdtype)
  for b in range(num_samples):
    counts = counts + (iota == idx[b][..., None]).astype(cdtype)
  g_c = g.astype(cdtype)
  grad_scores = (g_c[..., None] * counts * (1.0 / num_samples)).astype(dtype_marker.dtype)
  grad_eps = jnp.sum(g_c * jnp.mean(z_selected, axis=0))
  grad_eps = jnp.broadcast_to(grad_eps, epsilon.shape).astype(epsilon.dtype) if jnp.issubdtype(
      epsilon.dtype, jnp.floating) else None
  return grad_scores, None, grad_eps


_noised_kth.defvjp(_noised_kth_fwd, _noised_kth_bwd)


def noised_kth_largest(scores, k, *, epsilon, num_samples=None, key=None, noise=None, selection="auto"):
  r"""Gaussian-smoothed k-th largest score, estimated by Monte Carlo.

  .. math::
    \mathrm{top}_{k,\epsilon}(s) = \mathbb{E}_Z[\mathrm{top}_k(s + \epsilon Z)]
      \approx \frac{1}{B} \sum_{b=1}^B \mathrm{top}_k(s + \epsilon Z_b), \qquad
    \nabla \mathrm{top}_{k,\epsilon}(s) \approx \frac{1}{B} \sum_{b=1}^B \mathrm{argtop}_k(s + \epsilon Z_b)

  with `Z_b ~ N(0, I_L)` drawn independently for every example, class and sample. The gradient uses the same draws
  as the value (the perturbed-optimizer estimator of Berthet et al.), so each gradient row sums to 1 and is a
  multiple of `1/B`. The noise carries no gradient. `epsilon = 0` gives the hard `kth_largest`. The estimate is
  within `epsilon * k * sqrt(2 log L)` of the hard value in expectation.

  Args:
    scores: floating array `[..., L]`.
    k: the rank, a Python int in `[1, L]`.
    epsilon: noise scale, >= 0 (a Python float or a scalar array; it may be traced).
    num_samples: number of Monte Carlo draws B (a Python int >= 1). Required with `key`; optional with `noise`,
      where it must equal `noise.shape[0]`.
    key: a `jax.random` key; `num_samples` standard normals per score are drawn with it. Exactly one of `key` and
      `noise` must be given.
    noise: explicit standard-normal draws of shape `[B, *scores.shape]`, for reproducibility and tests.
    selection: the exact selection algorithm, one of `SELECTIONS` (all give identical results); `"auto"` picks the
      fastest for the backend.

  Returns:
    An array of shape `scores.shape[:-1]` and dtype `scores.dtype`.

  Example:
    >>> import jax, jax.numpy as jnp, noised_topk_jax as ntk
    >>> s = jnp.array([[4.0, -1.5, 2.5, 1.0]])
    >>> v = ntk.noised_kth_largest(s, 2, epsilon=0.1, num_samples=5, key=jax.random.key(0))
    >>> v.shape
    (1,)

  References:
    Garcin et al., Stochastic smoothing of the top-K calibrated hinge loss for deep imbalanced classification,
    ICML 2022. Berthet et al., Learning with differentiable perturbed optimizers, NeurIPS 2020.
  """
  scores = _checks.check_scores(scores)
  num_classes = scores.shape[-1]
  k = _checks.check_int(k, "k", minimum=1, maximum=num_classes, maximum_doc=f"the number of classes L={num_classes}")
  _checks.check_scalar(epsilon, "epsilon")
  _checks.check_nonnegative(epsilon, "epsilon")
  noise = _resolve_noise(scores, num_samples=num_samples, key=key, noise=noise)
  selection = _resolve_selection(selection, k)
  return _noised_kth(scores, lax.stop_gradient(noise), epsilon, k, selection)


def _resolve_noise(scores, *, num_samples, key, noise):
  """Returns the `[B, *scores.shape]` standard-normal draws from exactly one of `key` and `noise`."""
  if (key is None) == (noise is None):
    raise ValueError("Exactly one of `key` and `noise` must be given "
                     f"(got key={'None' if key is None else 'a key'}, noise={'None' if noise is None else 'an array'}).")
  if key is not None:
    if num_samples is None:
      raise ValueError("`num_samples` is required when `key` is given.")
    num_samples = _checks.check_int(num_samples, "num_samples", minimum=1)
    cdtype = _checks.compute_dtype(scores.dtype)
    return jax.random.normal(key, (num_samples,) + tuple(scores.shape), cdtype)
  if not hasattr(noise, "shape"):
    noise = jnp.asarray(noise)
  if not jnp.issubdtype(noise.dtype, jnp.floating):
    raise TypeError(f"`noise` must have a floating dtype, got {noise.dtype}.")
  if noise.ndim != scores.ndim + 1 or tuple(noise.shape[1:]) != tuple(scores.shape) or noise.shape[0] < 1:
    raise ValueError(f"`noise` must have shape [num_samples, *scores.shape] = [B, {', '.join(map(str, scores.shape))}]"
                     f", got {tuple(noise.shape)}.")
  if num_samples is not None:
    num_samples = _checks.check_int(num_samples, "num_samples", minimum=1)
    if num_samples != noise.shape[0]:
      raise ValueError(f"`num_samples`={num_samples} does not match noise.shape[0]={noise.shape[0]}.")
  return noise
