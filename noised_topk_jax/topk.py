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
  (see `_select_kth_tournament`). A handful of XLA operations whatever k (up to 12; beyond, two levels and passes).
- "approx_max_k": `jax.lax.approx_max_k` with recall 1.0 (TPU's exact mode; an exact fallback elsewhere) for the
  k-th value, then the index of that value in the order above.
- "auto": "tournament" on CPU, where it was measured faster (benchmarks/RESULTS.md); the standard `jax.lax.top_k`
  on every other backend (`jax.default_backend()`), where no variant has been measured yet.
"""
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike
import numpy as np

from noised_topk_jax import _checks

SELECTIONS = ("auto", "top_k", "sort", "max_mask", "tournament", "approx_max_k")

# What "auto" resolves to on each backend (`jax.default_backend()`); every backend not listed gets the standard
# "top_k". Only measured choices are listed:
# - CPU: XLA:CPU's TopK and Sort are orders of magnitude slower than a few reductions (benchmarks/RESULTS.md).
# GPU and TPU have not been measured (no device so far): they get `lax.top_k`; pass `selection=` to compare
# ("tournament" and "approx_max_k" are exact there too).
_AUTO_SELECTION = {"cpu": "tournament"}


def _resolve_selection(selection, k):
  del k  # "tournament" itself falls back to passes where ranking all pairs does not pay (see `_tournament_layout`).
  if selection not in SELECTIONS:
    raise ValueError(f"`selection` must be one of {SELECTIONS}, got {selection!r}.")
  if selection != "auto":
    return selection
  return _AUTO_SELECTION.get(jax.default_backend(), "top_k")


def _last_axis_iota(shape):
  return lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)


# Up to this many passes are unrolled; more run in a loop (an unrolled pass per rank makes compile time grow with k).
_UNROLL_PASSES = 16


def _ranked_indices(x, k, *, all_ranks, index=None):
  """Indices of the k largest entries along the last axis in rank order (ties: lowest index first).

  `index` (default: the position along the last axis) gives each entry's index, distinct within a row; it breaks
  ties and is what is returned. Returns `[..., k]` (all ranks) or `[...]` (the k-th only).

  k passes; pass j finds the largest entry strictly *after* the previous one in the total order (value descending,
  index ascending) with two plain reductions: a max over the values, then a min over the indices holding that value.
  Nothing is overwritten with a sentinel, so `-inf` entries are ranked correctly too.
  """
  if index is None:
    index = _last_axis_iota(x.shape)
    none = x.shape[-1]
  else:
    none = jnp.iinfo(jnp.int32).max
  neg_inf = jnp.array(-jnp.inf, x.dtype)

  def first():
    best = jnp.max(x, axis=-1, keepdims=True)
    return best, jnp.min(jnp.where(x == best, index, none), axis=-1, keepdims=True)

  def following(best, pos):
    after = (x < best) | ((x == best) & (index > pos))
    best = jnp.max(jnp.where(after, x, neg_inf), axis=-1, keepdims=True)
    return best, jnp.min(jnp.where(after & (x == best), index, none), axis=-1, keepdims=True)

  best, pos = first()
  if k <= _UNROLL_PASSES:
    out = [pos]
    for _ in range(k - 1):
      best, pos = following(best, pos)
      out.append(pos)
    return jnp.concatenate(out, axis=-1) if all_ranks else pos[..., 0]
  ranks = jnp.zeros(x.shape[:-1] + (k if all_ranks else 1,), jnp.int32)
  ranks = lax.dynamic_update_slice_in_dim(ranks, pos, 0, axis=-1)

  def body(j, carry):
    best, pos, ranks = carry
    best, pos = following(best, pos)
    return best, pos, lax.dynamic_update_slice_in_dim(ranks, pos, j if all_ranks else 0, axis=-1)

  _, _, ranks = lax.fori_loop(1, k, body, (best, pos, ranks))
  return ranks if all_ranks else ranks[..., 0]


def _kth_index(x, k):
  # NaN scores have no place in the order; keep the index in range so that gathers with it stay defined.
  return jnp.minimum(_ranked_indices(x, k, all_ranks=False), x.shape[-1] - 1)


def _nth_lowest_index(mask, n, max_n):
  """Per row, the n-th lowest index (1-based, `n` in [1, max_n]) at which `mask` is true."""
  num = mask.shape[-1]
  iota = _last_axis_iota(mask.shape)
  pos = jnp.min(jnp.where(mask, iota, num), axis=-1, keepdims=True)
  if max_n == 1:
    return pos[..., 0]

  def body(j, carry):
    pos, found = carry
    pos = jnp.min(jnp.where(mask & (iota > pos), iota, num), axis=-1, keepdims=True)
    return pos, jnp.where(n == j, pos, found)

  _, found = lax.fori_loop(2, max_n + 1, body, (pos, pos))
  return found[..., 0]


def _select_kth_from_value(scores, kth_value, k):
  """Index of the k-th largest entry given its value: the (k - #larger)-th lowest index holding that value."""
  equal = scores == kth_value
  rank_among_equal = k - jnp.sum(scores > kth_value, axis=-1, keepdims=True, dtype=jnp.int32)
  # Without ties at the k-th value (the usual case) this is the first index holding it.
  return lax.cond(jnp.all(rank_among_equal == 1), lambda: _nth_lowest_index(equal, rank_among_equal, 1),
                  lambda: _nth_lowest_index(equal, rank_among_equal, k))


# "tournament": an exact k-th largest in a handful of fused XLA operations.
#
# Level 0 is the row; level j+1 holds the maxima of consecutive groups of C entries of level j (the last group may be
# shorter), up to a top level of at most `_PAIRWISE_TOP` entries. Ordering the entries of every level by
# (value desc, position asc) orders them as their best row entries (groups are contiguous, so positions keep the row's
# index order). Then the k largest entries of level j all lie in the k best groups of level j+1: a group ranked below
# k others has k entries ranked above its best one. So from the top down, the k best entries of each level are the
# k best of the k*C children of the level above's k best, down to the row itself. Sets this small are ranked by all
# pairwise comparisons in one fused reduction: at these sizes XLA:CPU's cost is per operation far more than per
# comparison, and the whole selection is ~4 + 2 * levels operations, against ~5 per rank for k passes of max-and-mask.

_PAIRWISE_CANDIDATES = 24  # at most k*C children are ranked at each level
_PAIRWISE_TOP = 48  # the top level is ranked whole
_MAX_TOURNAMENT_K = _PAIRWISE_CANDIDATES // 2  # with C >= 2; larger k uses chunks and passes


def _tournament_layout(num_classes, k):
  """(group size C, [L, G1, G2, ...] entries per level) of the tournament, or None above `_MAX_TOURNAMENT_K`."""
  if k > _MAX_TOURNAMENT_K:
    return None
  size = _PAIRWISE_CANDIDATES // k
  levels = [num_classes]
  while levels[-1] > _PAIRWISE_TOP:
    levels.append(-(-levels[-1] // size))
  return size, levels


def _pairwise_top(values, index, k, *, only_kth):
  """Positions (into the last axis) of the k largest entries, in rank order `[..., k]`, or of the k-th only `[...]`.

  `index` orders equal values (distinct within a row). One reduction counts, for every entry, the entries ranked above
  it; a second one reads off the positions holding ranks 0..k-1.
  """
  v_i, v_j = values[..., :, None], values[..., None, :]
  i_i, i_j = index[..., :, None], index[..., None, :]
  rank = jnp.sum((v_j > v_i) | ((v_j == v_i) & (i_j < i_i)), axis=-1, dtype=jnp.int32)
  positions = _last_axis_iota(values.shape)
  if only_kth:
    return jnp.sum(jnp.where(rank == k - 1, positions, 0), axis=-1)
  wanted = lax.broadcasted_iota(jnp.int32, (1,) * values.ndim + (k,), values.ndim)
  return jnp.sum(jnp.where(rank[..., None] == wanted, positions[..., None], 0), axis=-2)


def _group_maxima(x, size):
  """Max of every group of `size` consecutive entries along the last axis (the last group may be shorter)."""
  num = x.shape[-1]
  full = (num // size) * size
  # A reshaped block plus a short tail rather than a padded copy: XLA:CPU emits a pad or concatenate of a fused
  # producer as scalar code.
  maxima = jnp.max(x[..., :full].reshape(x.shape[:-1] + (full // size, size)), axis=-1)
  if full < num:
    maxima = jnp.concatenate([maxima, jnp.max(x[..., full:], axis=-1, keepdims=True)], axis=-1)
  return maxima


def _children(selected, size, level):
  """Indices `[..., k*size]` of the entries of `level` in the groups `selected` `[..., k]`, and their values (-inf
  past the end of the short last group)."""
  num = level.shape[-1]
  offsets = lax.broadcasted_iota(jnp.int32, selected.shape + (size,), selected.ndim)
  children = (selected[..., None] * size + offsets).reshape(selected.shape[:-1] + (selected.shape[-1] * size,))
  values = jnp.take_along_axis(level, jnp.minimum(children, num - 1), axis=-1)
  return children, jnp.where(children < num, values, jnp.array(-jnp.inf, level.dtype))


def _select_kth_tournament(x, k):
  num_classes = x.shape[-1]
  layout = _tournament_layout(num_classes, k)
  if layout is None:
    return _select_kth_chunked_passes(x, k)
  size, counts = layout
  if len(counts) == 1:  # the whole row is small enough to rank at once
    return _pairwise_top(x, _last_axis_iota(x.shape), k, only_kth=True)
  levels = [x]
  for _ in counts[1:]:
    levels.append(_group_maxima(levels[-1], size))
  top = levels[-1]
  selected = _pairwise_top(top, _last_axis_iota(top.shape), k, only_kth=False)  # the k best groups of the top level
  for level in reversed(levels[1:-1]):
    children, values = _children(selected, size, level)
    selected = jnp.take_along_axis(children, _pairwise_top(values, children, k, only_kth=False), axis=-1)
  children, values = _children(selected, size, x)
  kth = _pairwise_top(values, children, k, only_kth=True)
  # NaN scores have no place in the order; keep the index in range so that gathers with it stay defined.
  return jnp.clip(_take_last(children, jnp.minimum(kth, children.shape[-1] - 1)), 0, num_classes - 1)


def _chunk_layout(num_classes, k):
  """(chunk size C, number of chunks G) of the two-level version for large k, or None when chunking cannot beat
  plain passes. Cost in entries visited per row: one max over L, k passes over G chunk maxima and k passes over the
  k*C candidates; C ~ sqrt(L / k) balances the last two."""
  size = max(4, int(round(math.sqrt(num_classes / k))))
  groups = -(-num_classes // size)
  if groups <= k or k * size >= num_classes:
    return None
  return size, groups


def _select_kth_chunked_passes(x, k):
  """The tournament for large k: two levels, and k passes per level instead of ranking all pairs."""
  layout = _chunk_layout(x.shape[-1], k)
  if layout is None:
    return _kth_index(x, k)
  size, _ = layout
  candidates, values = _children(_ranked_indices(_group_maxima(x, size), k, all_ranks=True), size, x)
  # The candidates' own indices break ties, so their order in `values` does not matter.
  return jnp.minimum(_ranked_indices(values, k, all_ranks=False, index=candidates), x.shape[-1] - 1)


def _select_kth(scores, k, selection):
  """Index of the k-th largest entry along the last axis (ties: the lowest index ranks first)."""
  if selection == "top_k":
    _, idx = lax.top_k(scores, k)
    return idx[..., k - 1]
  if selection == "approx_max_k":
    # recall_target=1.0 makes the TPU algorithm exact (other backends run an exact fallback), but its order among
    # equal values is unspecified: keep only the k-th value and find its index in the order of `lax.top_k`.
    values, _ = lax.approx_max_k(scores, k, recall_target=1.0, aggregate_to_topk=True)
    return _select_kth_from_value(scores, values[..., k - 1:k], k)
  if selection == "sort":
    iota = _last_axis_iota(scores.shape)
    # Sorting the negated scores ascending, with the index as a tie-breaker, ranks equal scores lowest index first.
    _, idx = lax.sort((-scores, iota), dimension=scores.ndim - 1, is_stable=True, num_keys=1)
    return idx[..., k - 1]
  if selection == "max_mask":
    return _kth_index(scores, k)
  if selection == "tournament":
    return _select_kth_tournament(scores, k)
  raise ValueError(f"`selection` must be one of {SELECTIONS}, got {selection!r}.")  # pragma: no cover


def _take_last(x, idx):
  return jnp.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


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
  idx = _select_kth(lax.stop_gradient(scores), k, _resolve_selection(selection, k))
  return _take_last(scores, idx)


# ---------------------------------------------------------------------------------------------------------------------
# The noised k-th largest: forward selection and custom VJP.


def _perturbed_selection(scores, noise, epsilon, k, selection):
  """k-th largest of `scores + epsilon * noise[b]` for every sample b: the values, their indices and the noise there,
  each `[B, ...]`."""
  cdtype = _checks.compute_dtype(scores.dtype)
  z = noise.astype(cdtype)
  perturbed = scores.astype(cdtype) + jnp.asarray(epsilon, cdtype) * z
  idx = _select_kth(perturbed, k, selection)
  return _take_last(perturbed, idx), idx, _take_last(z, idx)


def _fwd_output(scores, epsilon, selected):
  values, idx, z_selected = selected
  value = jnp.mean(values, axis=0).astype(scores.dtype)
  # Only the selected positions (and the noise there, for d/d epsilon) are kept for the backward pass, not the
  # perturbed [B, ..., L] tensor.
  # `marker` carries the class count and dtype as static shape information.
  marker = jnp.zeros((scores.shape[-1],), scores.dtype)
  return value, (idx, z_selected, marker, jnp.asarray(epsilon))


def _bwd_grads(residuals, g):
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
  return grad_scores, grad_eps


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _noised_kth(scores, noise, epsilon, k, selection):
  return _noised_kth_fwd(scores, noise, epsilon, k, selection)[0]


def _noised_kth_fwd(scores, noise, epsilon, k, selection):
  return _fwd_output(scores, epsilon, _perturbed_selection(scores, noise, epsilon, k, selection))


def _noised_kth_bwd(k, selection, residuals, g):
  del k, selection
  grad_scores, grad_eps = _bwd_grads(residuals, g)
  return grad_scores, None, grad_eps


_noised_kth.defvjp(_noised_kth_fwd, _noised_kth_bwd)


# Compiled as a whole also when called eagerly (under an outer `jit` they are inlined).
_noised_kth_jit = jax.jit(_noised_kth, static_argnums=(3, 4))


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
      with 1,081 dense cosine-like scores; 0.77-0.85x the time of independent draws. With explicit `noise` the
      array is used as given (it must hold the pairs itself); B must still be even.

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
  selection = _resolve_selection(selection, k)
  noise = _resolve_noise(scores, num_samples=num_samples, key=key, noise=noise, antithetic=antithetic)
  return _noised_kth_jit(scores, lax.stop_gradient(noise), epsilon, k, selection)


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
      half = _standard_normal(key, (draw,) + tuple(scores.shape), cdtype)
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
  draws = jax.vmap(lambda k: _standard_normal(k, (num_samples, num_classes), dtype))(flat)  # [M, B, L]
  return jnp.moveaxis(draws, 0, 1).reshape((num_samples,) + batch_shape + (num_classes,))


# ---------------------------------------------------------------------------------------------------------------------
# Noise generation.
#
# `jax.random.normal` on CPU runs the Threefry hash as a loop over whole arrays (rolled, which keeps compile times
# short): several passes over memory. `_threefry_normal` computes the *same* numbers (same counters, same bits, same
# float conversion) with the 20 rounds unrolled into element-wise operations that XLA compiles into one loop,
# about 2x faster on CPU (benchmarks/RESULTS.md). It is used on the CPU backend only, where that was measured; other
# backends, keys of other implementations (`rbg`, `unsafe_rbg`), other dtypes and JAX's non-partitionable Threefry
# mode use `jax.random.normal` itself, so a key always gives exactly the draws
# `jax.random.normal(key, (B, *scores.shape), compute dtype)`.

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _rotate_left(x, bits):
  return lax.shift_left(x, np.uint32(bits)) | lax.shift_right_logical(x, np.uint32(32 - bits))


def _threefry2x32(key0, key1, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al., SC 2011) on uint32 arrays."""
  schedule = (key0, key1, key0 ^ key1 ^ np.uint32(_THREEFRY_PARITY))
  x0 = x0 + schedule[0]
  x1 = x1 + schedule[1]
  for block in range(5):
    for rotation in _THREEFRY_ROTATIONS[block % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, rotation)
    x0 = x0 + schedule[(block + 1) % 3]
    x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
  return x0, x1


def _threefry_normal_at(key_data, counts):
  """Entries `counts` (uint32, row-major positions) of `jax.random.normal(key, shape, float32)`, bit for bit, for the
  Threefry key with data `key_data` (`uint32[2]`) and any `shape` with fewer than 2**32 entries.

  JAX's partitionable Threefry draws entry i from the counter pair (hi, lo) = (i >> 32, i & 0xffffffff) and keeps the
  XOR of the two output words; the float conversion fills the mantissa of a number in [1, 2), maps it to
  [nextafter(-1, 0), 1) and applies sqrt(2) * erfinv.
  """
  bits0, bits1 = _threefry2x32(key_data[0], key_data[1], jnp.zeros_like(counts), counts)
  bits = bits0 ^ bits1
  mantissa = lax.shift_right_logical(bits, np.uint32(32 - 23)) | np.uint32(0x3F800000)
  unit = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
  low = np.nextafter(np.float32(-1.0), np.float32(0.0))
  uniform = lax.max(low, unit * (np.float32(1.0) - low) + low)
  return np.float32(np.sqrt(2.0)) * lax.erf_inv(uniform)


@functools.partial(jax.jit, static_argnums=(1,))
def _threefry_normal(key_data, shape):
  """`jax.random.normal(key, shape, float32)` for the Threefry key with data `key_data`, bit for bit."""
  # Generated flat: XLA:CPU vectorizes the inner loop, which would otherwise be only as long as the last axis.
  draw = lambda offset: _threefry_normal_at(key_data, lax.iota(jnp.uint32, math.prod(shape)) + offset).reshape(shape)
  if jax.default_backend() != "cpu":
    return draw(np.uint32(0))
  # XLA:CPU fuses cheap element-wise producers into each of their consumers, also into those that read every element
  # many times (the all-pairs ranking of "tournament", the passes of "max_mask"): the hash would be recomputed per
  # read, up to 15x slower. Computing the draws in a loop XLA cannot remove makes it store them once.
  return _computed_once(draw, opaque_true=key_data[0] != key_data[0] + np.uint32(1))


def _computed_once(compute, *, opaque_true):
  """`compute(zero)` evaluated inside a `while_loop` that runs exactly once, so that XLA stores the result instead of
  fusing the computation into its consumers.

  `opaque_true` must be true at run time without being a constant XLA can fold (it would then remove the loop:
  still correct, only slower). `zero` is a uint32 0 that changes across (non-executed) iterations; the result must
  depend on it, or XLA hoists the computation out of the loop and stores it twice.
  """
  out = jax.eval_shape(compute, np.uint32(0))

  def body(carry):
    go, zero, _ = carry
    return jnp.logical_not(go), zero + np.uint32(1), compute(zero)

  init = (opaque_true, np.uint32(0), jnp.zeros(out.shape, out.dtype))
  return lax.while_loop(lambda carry: carry[0], body, init)[2]


def _threefry_key_data(key, shape, dtype):
  """The `uint32[2]` data of `key` when `_threefry_normal` reproduces `jax.random.normal(key, shape, dtype)`, else
  None (other key implementations, dtypes other than float32, JAX's non-partitionable Threefry mode, 2**32 draws or
  more, a batch of keys)."""
  if dtype != jnp.float32 or not jax.config.jax_threefry_partitionable or not 0 < math.prod(shape) < 2**32:
    return None
  try:
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)  # a raw uint32 key: the default implementation, as in jax.random.normal
    if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
      return None
    return jax.random.key_data(key)
  except (TypeError, ValueError, AttributeError):
    return None  # not a key jax.random accepts; jax.random.normal will say why


# Backends on which the library's generator was measured faster than `jax.random.normal`.
_FAST_GENERATOR_BACKENDS = ("cpu",)


def _standard_normal(key, shape, dtype):
  """`jax.random.normal(key, shape, dtype)`, by the library's generator where it applies and was measured faster."""
  if jax.default_backend() not in _FAST_GENERATOR_BACKENDS:
    return jax.random.normal(key, shape, dtype)
  key_data = _threefry_key_data(key, tuple(shape), dtype)
  if key_data is None:
    return jax.random.normal(key, shape, dtype)
  return _threefry_normal(key_data, tuple(shape))
