"""The standard-normal draws of the noised operator: `jax.random.normal`'s numbers, generated faster on CPU.

`_standard_normal(key, shape, dtype)` always returns exactly `jax.random.normal(key, shape, dtype)`. On CPU, for a
Threefry key (JAX's default, partitionable mode) and float32, it computes those numbers itself (`_threefry_normal`:
the same counters, bits and float conversion, tested bit for bit) with the 20 Threefry-2x32 rounds unrolled into
element-wise operations that XLA compiles into one vectorized loop; `jax.random.normal` runs the hash on CPU as a
rolled loop over whole arrays (short compiles, several passes over memory). Every other case (backends not in
`_FAST_GENERATOR_BACKENDS`, `rbg` / `unsafe_rbg` keys, other dtypes, the non-partitionable mode, 2**32 draws or more)
goes through `jax.random.normal` itself.

Measurements (benchmarks/RESULTS.md):
- "Noised top-K loss: forward + backward" (2026-12-01, Intel Xeon, 2 cores): `jax.random.normal` of `[B, N, L]`
  ("floor") against this generator ("own generator"), medians in ms: 1.467 vs 0.671 at (N, L, B) = (32, 1081, 5),
  8.573 vs 4.144 at (256, 1081, 5), 5.987 vs 2.944 at (32, 1081, 30), 1.086 vs 0.835 at (128, 100, 10), 0.328 vs
  0.278 at (128, 10, 5).
- "What the numbers rest on", Noise (2026-11-23, AMD EPYC): 6.97 ms instead of 16.3 ms for `[5, 256, 1081]`
  (1.6-2.3x across the shapes); `rbg` / `unsafe_rbg` keys are slower there (49 ms for the same draws), so no
  faster-but-different generator is used.
- Same list, Fusion: XLA:CPU fuses cheap element-wise producers into every consumer, also into those that read each
  element many times (the all-pairs ranking of "tournament", the passes of "max_mask"), and the hash was then
  recomputed per read, 12-15x slower. `_computed_once` makes XLA store the draws once.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

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
