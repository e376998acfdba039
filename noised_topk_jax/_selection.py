"""The exact selection algorithms of the top-k operators: the index of the k-th largest entry along the last axis.

`_select_kth(scores, k, selection)` dispatches on the names of `SELECTIONS` (re-exported by `noised_topk_jax.topk`,
whose module docstring describes each); all give the same index, the lowest index ranking first among equal scores
as in `jax.lax.top_k`. `_resolve_selection` maps "auto" to the algorithm measured fastest on the backend
(`_AUTO_SELECTION`): "tournament" on CPU, `lax.top_k` elsewhere. The rest are the algorithms' parts: k passes of
max-and-mask (`_ranked_indices`), the "tournament" of group maxima and all-pairs ranking (`_select_kth_tournament`),
its two-level version with passes for k > 12 (`_select_kth_chunked_passes`), and the index of a known k-th value
(`_select_kth_from_value`, for "approx_max_k").

Measurements (benchmarks/RESULTS.md):
- "Noised top-K loss: forward + backward" (2026-12-01, Intel Xeon, 2 cores), the imbalanced noised loss's forward +
  backward with every selection, medians in ms at (N, L, B, K) = (256, 1081, 5, 5): "top_k" 176.2, "sort" 196.8,
  "approx_max_k" 142.9, "max_mask" 16.8, "tournament" 7.3; at (32, 1081, 5, 5): 22.3, 25.0, 18.0, 2.3 and 1.3; at
  (128, 10, 5, 1): 0.537, 0.542, 0.422, 0.295 and 0.228. XLA:CPU's TopK and Sort sort every row; "tournament" is the
  fastest at every shape measured, hence "auto" on CPU.
- "What the numbers rest on", Selection (2026-11-23, AMD EPYC): TopK and Sort 265-300 ms for 1,280 rows of 1,081
  floats, k passes of max-and-mask ~5 XLA operations each (27 ms); "tournament" compiles to ~4 + 2 * levels fused
  operations whatever k (k <= 12), and XLA:CPU's cost at these sizes is per operation far more than per comparison.
- benchmarks/RESULTS_GPU.md (2026-12-06, one NVIDIA H100): every selection took 0.08-0.46 ms for the loss's
  forward and backward; `top_k` was within 16 % of the fastest at four of the five shapes and 1.8x slower than
  "tournament" at (32, 1081, 30, 5), so "auto" keeps `lax.top_k` on GPU. TPU was not measured; "auto" keeps
  `lax.top_k` there too.
"""
import math

import jax
import jax.numpy as jnp
from jax import lax

# Every name `selection=` accepts, "auto" first (`noised_topk_jax.topk.SELECTIONS`).
SELECTIONS = ("auto", "top_k", "sort", "max_mask", "tournament", "approx_max_k")

# What "auto" resolves to on each backend (`jax.default_backend()`); every backend not listed gets the standard
# "top_k". Only measured choices are listed:
# - CPU: XLA:CPU's TopK and Sort are orders of magnitude slower than a few reductions (benchmarks/RESULTS.md).
# GPU and TPU have not been measured (no device so far): they get `lax.top_k`; pass `selection=` to compare
# ("tournament" and "approx_max_k" are exact there too).
_AUTO_SELECTION = {"cpu": "tournament"}


def _resolve_selection(selection):
  """The algorithm `selection` names ("auto": the one measured fastest on this backend, see `_AUTO_SELECTION`)."""
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

