"""The hard and the noised (Gaussian-smoothed) k-th largest score.

`noised_kth_largest` is the operator at the heart of the noised top-K loss (Garcin et al., ICML 2022): a Monte Carlo
estimate of `E[top_k(s + eps Z)]` whose gradient is the perturbed-optimizer estimate `E[argtop_k(s + eps Z)]`, computed
with the same draws as the forward pass.

Selection algorithms (`SELECTIONS`). All are exact and give the same values, indices and gradients; among equal
scores the lowest index ranks first, as in `jax.lax.top_k`:

- "top_k": `jax.lax.top_k`. Fast on GPU; a full sort of every row on XLA:CPU.
- "sort": a stable sort of every row.
- "max_mask": k passes over the row, each a max and a min-of-index reduction.
- "tournament": maxima of small groups, level by level, then all-pairs ranking of the few candidates they leave
  (`_select_kth_tournament` in `noised_topk_jax/_selection.py`). A handful of XLA operations whatever k (up to 12;
  beyond, two levels and passes).
- "approx_max_k": `jax.lax.approx_max_k` with recall 1.0 (TPU's exact mode; an exact fallback elsewhere) for the
  k-th value, then the index of that value in the order above.
- "auto": "tournament" on CPU, where it was measured faster (benchmarks/RESULTS.md); the standard `jax.lax.top_k`
  on every other backend (`jax.default_backend()`). On one NVIDIA H100 (benchmarks/RESULTS_GPU.md, 2026-12-06)
  every variant took 0.08-0.46 ms for the loss's forward and backward; `top_k` was within 16 % of the fastest at
  four of five shapes and 1.8x slower than "tournament" at B = 30, so "auto" keeps `top_k` there. No TPU has been
  measured.

This module holds the operators, the custom VJP and the resolution of `key` / `noise` into draws; the selection
algorithms are in `noised_topk_jax/_selection.py`, the noise generator in `noised_topk_jax/_noise.py`.

The B samples are a leading axis of one selection over `[B, ..., L]` (broadcasting), not `jax.vmap` of a
single-sample operator. Measured (benchmarks/RESULTS.md, "Noised operator: broadcast over the B samples against
jax.vmap", 2026-12-01, 2-core Intel Xeon CPU; value-and-grad at the five shapes of `bench_noised_topk.py`, k = K + 1):
vmap takes 2.67x, 3.55x and 3.45x the time at (N, L, B) = (32, 1081, 5), (256, 1081, 5) and (32, 1081, 30) (0.70
against 2.03 ms, 4.75 against 16.90, 3.46 against 11.95), and 1.05x and 1.10x at (128, 100, 10) and (128, 10, 5),
for the same values; compiled temporaries + outputs are equal (0.96, 7.65, 5.08 and 0.66 MiB) except at
(128, 10, 5), 0.01 MiB broadcast against 0.03. vmap's transpose adds the B per-sample gradients as floats, where the
backward pass here counts the B one-hots as integers.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from noised_topk_jax import _checks
from noised_topk_jax import _noise
from noised_topk_jax import _selection

# The names `selection=` accepts; the algorithms behind them are in `_selection`.
SELECTIONS = _selection.SELECTIONS


def kth_largest(scores: ArrayLike, k: int, *, selection: str = "auto") -> jax.Array:
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
  idx = _selection._select_kth(lax.stop_gradient(scores), k, _selection._resolve_selection(selection))
  return _selection._take_last(scores, idx)


# ---------------------------------------------------------------------------------------------------------------------
# The noised k-th largest: forward selection and custom VJP.


def _perturbed_selection(scores, noise, epsilon, k, selection):
  """k-th largest of `scores + epsilon * noise[b]` for every sample b: the values, their indices and the noise there,
  each `[B, ...]`."""
  cdtype = _checks.compute_dtype(scores.dtype)
  z = noise.astype(cdtype)
  perturbed = scores.astype(cdtype) + jnp.asarray(epsilon, cdtype) * z
  idx = _selection._select_kth(perturbed, k, selection)
  return _selection._take_last(perturbed, idx), idx, _selection._take_last(z, idx)


def _fwd_output(scores, epsilon, selected):
  values, idx, z_selected = selected
  value = jnp.mean(values, axis=0).astype(scores.dtype)
  # Only the selected positions (and the noise there, for d/d epsilon) are kept for the backward pass, not the
  # perturbed [B, ..., L] tensor.
  return value, (idx, z_selected, jnp.asarray(epsilon))


def _bwd_grads(num_classes, dtype, residuals, g):
  """Gradients for the scores (of `dtype`, `num_classes` along the last axis) and epsilon from the residuals."""
  idx, z_selected, epsilon = residuals
  num_samples = idx.shape[0]
  cdtype = _checks.compute_dtype(dtype)
  iota = lax.broadcasted_iota(jnp.int32, idx.shape[1:] + (num_classes,), idx.ndim - 1)
  # Mean over samples of the one-hot at each selected position: every row sums to 1 and is a multiple of 1/B. The
  # counts are summed as integers: XLA:CPU vectorizes an int32 reduction over the sample axis, not a float one
  # (measured 12-55x slower than the int32 sum on CPU at L = 1081, B = 5 and 30).
  counts = jnp.sum(iota == idx[..., None], axis=0, dtype=jnp.int32).astype(cdtype)
  g_c = g.astype(cdtype)
  grad_scores = (g_c[..., None] * counts * (1.0 / num_samples)).astype(dtype)
  grad_eps = jnp.sum(g_c * jnp.mean(z_selected, axis=0))
  grad_eps = jnp.broadcast_to(grad_eps, epsilon.shape).astype(epsilon.dtype) if jnp.issubdtype(
      epsilon.dtype, jnp.floating) else None
  return grad_scores, grad_eps


# The class count and the dtype of the scores are static arguments (`scores.shape[-1]`, `scores.dtype`): the backward
# pass builds the gradient of the scores from them and the selected indices.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _noised_kth(scores, noise, epsilon, k, selection, num_classes, dtype):
  return _noised_kth_fwd(scores, noise, epsilon, k, selection, num_classes, dtype)[0]


def _noised_kth_fwd(scores, noise, epsilon, k, selection, num_classes, dtype):
  del num_classes, dtype
  return _fwd_output(scores, epsilon, _perturbed_selection(scores, noise, epsilon, k, selection))


def _noised_kth_bwd(k, selection, num_classes, dtype, residuals, g):
  del k, selection
  grad_scores, grad_eps = _bwd_grads(num_classes, dtype, residuals, g)
  return grad_scores, None, grad_eps


_noised_kth.defvjp(_noised_kth_fwd, _noised_kth_bwd)


# Compiled as a whole also when called eagerly (under an outer `jit` they are inlined).
_noised_kth_jit = jax.jit(_noised_kth, static_argnums=(3, 4, 5, 6))


def noised_kth_largest(scores: ArrayLike, k: int, *, epsilon: ArrayLike, num_samples: Optional[int] = None,
                       key: Optional[jax.Array] = None, noise: Optional[ArrayLike] = None, selection: str = "auto",
                       antithetic: bool = False) -> jax.Array:
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
    key: a `jax.random` key; `num_samples` standard normals per score are drawn with it, exactly
      `jax.random.normal(key, (num_samples, *scores.shape))` in the compute dtype. On CPU, Threefry keys (JAX's
      default) use the library's own, faster implementation of the same draws; other backends and key
      implementations (e.g. `jax.random.key(seed, impl="rbg")`) go through `jax.random.normal`. Or an array of
      typed keys, one per example (shape `scores.shape[:-1]`): example `i` then draws
      `jax.random.normal(key[i], (num_samples, L))`, which depends on its key alone, so a batch split over devices
      draws the same noise as on one device when the keys come from the examples' global positions. Exactly one of
      `key` and `noise` must be given.
    noise: explicit standard-normal draws of shape `[B, *scores.shape]`, for reproducibility and tests.
    selection: the exact selection algorithm, one of `SELECTIONS` (all give identical results, see the module
      docstring); `"auto"` picks the fastest for the backend.
    antithetic: draw the B samples as B/2 antithetic pairs `Z, -Z` from `key` (B must be even): the same unbiased
      estimator, with a lower variance where `top_k(s + eps Z)` is close to linear in `Z`, i.e. `epsilon` small
      against the gaps between the scores near rank k, and half the normals to draw. Measured
      (benchmarks/RESULTS.md, B = 4, loss gradient): 1.7x lower variance at `epsilon=0.01` with well-spread scores
      (N 32, L 1081, standard-normal scores; and the Fashion-MNIST default's shapes), 1.1x at 0.1, none at 1 or
      with 1,081 dense cosine-like scores; 0.70-0.84x the time of independent draws on a 2-core CPU. With explicit
      `noise` the array is used as given (it must hold the pairs itself); B must still be even.

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
  selection = _selection._resolve_selection(selection)
  noise = _resolve_noise(scores, num_samples=num_samples, key=key, noise=noise, antithetic=antithetic)
  return _noised_kth_jit(scores, lax.stop_gradient(noise), epsilon, k, selection, num_classes, scores.dtype)


def _resolve_noise(scores, *, num_samples, key, noise, antithetic=False):
  """Returns the `[B, *scores.shape]` standard-normal draws from exactly one of `key` and `noise`."""
  if not isinstance(antithetic, bool):
    raise TypeError(f"`antithetic` must be a Python bool, got {type(antithetic).__name__}.")
  if antithetic:
    b = num_samples if noise is None or not hasattr(noise, "shape") else noise.shape[0]
    if b is not None and int(b) % 2:
      raise ValueError(f"`antithetic=True` needs an even number of samples (pairs Z, -Z): `num_samples`={b}.")
  if (key is None) == (noise is None):
    raise ValueError("Exactly one of `key` and `noise` must be given "
                     f"(got key={'None' if key is None else 'a key'}, noise={'None' if noise is None else 'an array'}).")
  if key is not None:
    if num_samples is None:
      raise ValueError("`num_samples` is required when `key` is given.")
    num_samples = _checks.check_int(num_samples, "num_samples", minimum=1)
    cdtype = _checks.compute_dtype(scores.dtype)
    draw = num_samples // 2 if antithetic else num_samples
    if _is_key_batch(key):
      half = _per_example_normal(key, scores.shape, draw, cdtype)
    else:
      half = _noise._standard_normal(key, (draw,) + tuple(scores.shape), cdtype)
    return jnp.concatenate([half, -half], axis=0) if antithetic else half
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


def _is_key_batch(key):
  """Whether `key` is an array of typed keys (one per example) rather than a single key."""
  return (hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
          and getattr(key, "ndim", 0) > 0)


def _per_example_normal(keys, scores_shape, num_samples, dtype):
  """`[B, *scores_shape]` draws whose row `[:, i]` is `jax.random.normal(keys[i], (B, L), dtype)`."""
  batch_shape, num_classes = tuple(scores_shape[:-1]), scores_shape[-1]
  if tuple(keys.shape) != batch_shape:
    raise ValueError(f"A batch of keys must have one key per example, shape scores.shape[:-1] = {batch_shape}; "
                     f"got `key` of shape {tuple(keys.shape)}.")
  flat = keys.reshape(-1)
  draws = jax.vmap(lambda k: _noise._standard_normal(k, (num_samples, num_classes), dtype))(flat)  # [M, B, L]
  return jnp.moveaxis(draws, 0, 1).reshape((num_samples,) + batch_shape + (num_classes,))
