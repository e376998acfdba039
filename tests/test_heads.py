"""Tests of noised_topk_jax/heads.py (the cosine head) against an independent NumPy float64 reference.

Tolerances are first-order rounding bounds, in units of the unit roundoff u (2**-24 in float32, 2**-53 in float64,
2**-8 in bfloat16). A cosine is a dot product of two normalised D-vectors: the sums of squares carry <= D u relative
error, so each normalised vector <= (D/2 + 2) u per element, and the dot of two unit vectors adds <= D u absolute
(Cauchy-Schwarz bounds the sum of |products| by 1). Hence |error| <= (2 D + 5) u on every logit, whatever the
summation order the backend uses. These bounds hold for any correct implementation and still fail by orders of
magnitude on a wrong one (a missing normalisation or a transposed kernel is an O(1) error).
"""
import re

import chex
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import noised_topk_jax as ntk

U32, U64, UBF16 = 2.0**-24, 2.0**-53, 2.0**-8
EPS = 1e-12  # torch.nn.functional.normalize's: a vector of norm below it is divided by it

use_jit_param = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


def _names(param):
  return r"\b" + re.escape(param) + r"\b"


# --------------------------------------------------------------------------------------------------------------------
# The reference: explicit loops over rows and columns, norms by np.linalg.norm, the formula as written.


def _ref_cosine(features, kernel):
  """float64 `clip(<x, w_c> / (max(|x|, eps) max(|w_c|, eps)), -1, 1)` for every row x and column w_c."""
  x = np.asarray(features, np.float64)
  w = np.asarray(kernel, np.float64)
  rows = x.reshape(-1, x.shape[-1])
  out = np.zeros((len(rows), w.shape[1]))
  for i, row in enumerate(rows):
    for c in range(w.shape[1]):
      out[i, c] = np.dot(row, w[:, c]) / max(np.linalg.norm(row), EPS) / max(np.linalg.norm(w[:, c]), EPS)
  return np.clip(out, -1.0, 1.0).reshape(x.shape[:-1] + (w.shape[1],))


def _ref_grads(features, kernel, cotangent):
  """Analytic float64 gradients of `sum(cotangent * cosine)` wrt features and kernel (off the clip), and
  the magnitudes |terms| summed, which scale the rounding error of a float computation of the same gradient.

  With a = |x|, n_x = max(a, eps), b = |w_c|, n_w = max(b, eps) and z = <x, w_c> / (n_x n_w):
  dz/dx = w_c / (n_x n_w) - [a > eps] z x / a**2 and dz/dw_c = x / (n_x n_w) - [b > eps] z w_c / b**2.
  """
  x = np.asarray(features, np.float64)
  w = np.asarray(kernel, np.float64)
  g = np.asarray(cotangent, np.float64)
  rows, grows = x.reshape(-1, x.shape[-1]), g.reshape(-1, w.shape[1])
  gx, mx = np.zeros_like(rows), np.zeros_like(rows)
  gw, mw = np.zeros_like(w), np.zeros_like(w)
  for i, row in enumerate(rows):
    a = np.linalg.norm(row)
    for c in range(w.shape[1]):
      col = w[:, c]
      b = np.linalg.norm(col)
      n_x, n_w = max(a, EPS), max(b, EPS)
      z = np.dot(row, col) / (n_x * n_w)
      # |z| = 1 (x parallel to w_c, always when D = 1) is the clip's edge, where the unclipped derivative is 0
      # anyway; beyond it the reference would be wrong.
      assert abs(z) <= 1.0 + 1e-12
      dx_terms = (col / (n_x * n_w), (z * row / a**2) if a > EPS else 0.0 * row)
      dw_terms = (row / (n_x * n_w), (z * col / b**2) if b > EPS else 0.0 * col)
      gx[i] += grows[i, c] * (dx_terms[0] - dx_terms[1])
      mx[i] += abs(grows[i, c]) * (np.abs(dx_terms[0]) + np.abs(dx_terms[1]))
      gw[:, c] += grows[i, c] * (dw_terms[0] - dw_terms[1])
      mw[:, c] += abs(grows[i, c]) * (np.abs(dw_terms[0]) + np.abs(dw_terms[1]))
  return gx.reshape(x.shape), gw, mx.reshape(x.shape), mw


# --------------------------------------------------------------------------------------------------------------------
# Helpers.


def _inputs(batch_shape, d, num_classes, seed, dtype=np.float32):
  """Features of varied norms (1e-3 to 1e3, one row of norm 1e-14 < eps and one all-zero row when there are
  enough rows) and a kernel of varied column norms (one all-zero column when there are enough columns)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(batch_shape + (d,)) * 10.0 ** rng.uniform(-3, 3, batch_shape + (1,))
  w = rng.standard_normal((d, num_classes)) * 10.0 ** rng.uniform(-2, 2, (1, num_classes))
  flat = x.reshape(-1, d)
  if len(flat) >= 4:
    flat[1] = 0.0
    flat[2] *= 1e-14 / np.linalg.norm(flat[2])
  if num_classes >= 3:
    w[:, 1] = 0.0
  return flat.reshape(x.shape).astype(dtype), w.astype(dtype)


def _value_and_grads(use_jit):

  def fn(features, kernel, cotangent):
    value, pullback = jax.vjp(ntk.cosine_logits, features, kernel)
    return (value,) + pullback(cotangent)

  return jax.jit(fn) if use_jit else fn


def _check_against_reference(features, kernel, seed, u, use_jit=True):
  d, num_classes = kernel.shape
  cot = np.random.default_rng(seed + 100).uniform(-1.5, 1.5, features.shape[:-1] + (num_classes,))
  cot = cot.astype(features.dtype)
  value, gx, gw = _value_and_grads(use_jit)(jnp.asarray(features), jnp.asarray(kernel), jnp.asarray(cot))
  chex.assert_shape(value, features.shape[:-1] + (num_classes,))
  chex.assert_shape((gx, gw), (features.shape, kernel.shape))
  assert value.dtype == gx.dtype == gw.dtype == features.dtype
  np.testing.assert_allclose(np.asarray(value), _ref_cosine(features, kernel), rtol=0, atol=(2 * d + 5) * u)
  want_gx, want_gw, mag_x, mag_w = _ref_grads(features, kernel, cot)
  # Each gradient is a sum over the L classes (features) or the batch (kernel) of terms with the (2 D + 5) u
  # relative error of a cosine: bounded by that times the summed |terms|, plus u per addition.
  batch = int(np.prod(features.shape[:-1]))
  bound = (2 * d + 5 + batch + num_classes) * u
  np.testing.assert_array_less(np.abs(np.asarray(gx, np.float64) - want_gx), bound * mag_x + 1e-300)
  np.testing.assert_array_less(np.abs(np.asarray(gw, np.float64) - want_gw), bound * mag_w + 1e-300)
  return value, gx, gw


# --------------------------------------------------------------------------------------------------------------------
# cosine_logits: values and gradients.

SHAPES = [((6,), 8, 5), ((2, 3), 16, 7), ((), 4, 3), ((5,), 1, 4), ((0,), 3, 2), ((8,), 1568, 10)]


@pytest.mark.parametrize("batch_shape,d,num_classes", SHAPES)
@use_jit_param
def test_values_and_gradients_match_reference(batch_shape, d, num_classes, use_jit):
  features, kernel = _inputs(batch_shape, d, num_classes, seed=d + num_classes)
  _check_against_reference(features, kernel, seed=1, u=U32, use_jit=use_jit)


@pytest.mark.parametrize("batch_shape,d,num_classes", [((6,), 8, 5), ((2, 3), 16, 7), ((8,), 300, 10)])
def test_float64_preserved_and_tight_under_x64(batch_shape, d, num_classes):
  with jax.enable_x64(True):
    features, kernel = _inputs(batch_shape, d, num_classes, seed=3, dtype=np.float64)
    value, gx, gw = _check_against_reference(features, kernel, seed=2, u=U64)
    assert value.dtype == gx.dtype == gw.dtype == jnp.float64
  assert jnp.asarray(1.0).dtype == jnp.float32  # nothing leaks out of the context


def test_derivatives_agree_with_finite_differences_under_x64():
  # The library's own derivatives are consistent with its finite differences (JVP, VJP, second order) at a point
  # away from the guard and the clip. One small shape: the first-order derivatives of every shape above are checked
  # against the analytic reference already; this adds the second order. Jitted: op by op it took 6-9 s per shape.
  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 3, 6)), rng.standard_normal((6, 4))
    jax.test_util.check_grads(jax.jit(ntk.cosine_logits), (x, w), order=2, modes=("fwd", "rev"))


def test_scale_invariant_and_one_dimensional_features():
  rng = np.random.default_rng(5)
  features = rng.standard_normal((6, 8)).astype(np.float32)
  kernel = rng.standard_normal((8, 5)).astype(np.float32)
  out = ntk.cosine_logits(features, kernel)
  # Scalings by powers of two are exact, so only the product's summation may differ: within the cosine bound.
  tol = 2 * (2 * 8 + 5) * U32
  np.testing.assert_allclose(ntk.cosine_logits(features * 8.0, kernel * 0.25), out, rtol=0, atol=tol)
  np.testing.assert_allclose(ntk.cosine_logits(features[0], kernel), out[0], rtol=0, atol=tol)
  # Python lists are arrays like any other.
  np.testing.assert_allclose(ntk.cosine_logits([[3.0, 4.0]], [[1.0, 0.0], [0.0, 2.0]]), [[0.6, 0.8]], atol=9 * U32)


# --------------------------------------------------------------------------------------------------------------------
# The zero-norm guard and the clip.


@use_jit_param
def test_zero_vectors_give_zero_logits_and_finite_gradients(use_jit):
  features, kernel = _inputs((6,), 8, 5, seed=6)
  features[1] = 0.0
  kernel[:, 1] = 0.0
  value, gx, gw = _check_against_reference(features, kernel, seed=6, u=U32, use_jit=use_jit)
  chex.assert_tree_all_finite((value, gx, gw))
  assert np.all(np.asarray(value)[1] == 0.0) and np.all(np.asarray(value)[:, 1] == 0.0)
  # At a zero vector the function is that of x / eps (torch.nn.functional.normalize's), which the reference's
  # gradient checked above follows: the zero row's feature gradient is sum_c g_c w_c / (eps |w_c|), ~1e12 here, and
  # the zero column's kernel gradient likewise; finite, not NaN.
  assert 1e10 < np.abs(np.asarray(gx)[1]).max() < 1e14
  assert 1e10 < np.abs(np.asarray(gw)[:, 1]).max() < 1e16


def test_all_zero_inputs_give_zeros_with_zero_gradients():
  # Both zero: every cosine is 0 and every gradient term has a zero factor.
  value, gx, gw = _value_and_grads(True)(jnp.zeros((3, 4)), jnp.zeros((4, 2)), jnp.ones((3, 2)))
  for a in (value, gx, gw):
    np.testing.assert_array_equal(a, np.zeros(a.shape))


@use_jit_param
def test_output_clipped_to_unit_interval(use_jit):
  # Features parallel and antiparallel to the kernel's columns: the cosines are +-1 up to rounding, and for a good
  # share of them the float32 rounding lands outside [-1, 1] before the clip (asserted, so that this test would fail
  # without it).
  rng = np.random.default_rng(7)
  kernel = rng.standard_normal((16, 64)).astype(np.float32)
  scales = rng.uniform(0.1, 10.0, (64, 1)) * np.where(rng.random((64, 1)) < 0.5, -1.0, 1.0)
  features = (kernel.T * scales).astype(np.float32)
  fn = jax.jit(ntk.cosine_logits) if use_jit else ntk.cosine_logits
  diagonal = np.diagonal(np.asarray(fn(features, kernel)))
  assert np.all(np.abs(diagonal) <= 1.0)
  np.testing.assert_allclose(diagonal, np.sign(scales[:, 0]), rtol=0, atol=(2 * 16 + 5) * U32)

  def normalize(a, axis):  # the unclipped product, in the same float32 arithmetic
    return a * jax.lax.rsqrt(jnp.sum(jnp.square(a), axis=axis, keepdims=True))

  unclipped = np.diagonal(np.asarray(jnp.dot(normalize(jnp.asarray(features), -1), normalize(jnp.asarray(kernel), 0),
                                             precision=jax.lax.Precision.HIGHEST)))
  assert np.sum(np.abs(unclipped) > 1.0) >= 5, unclipped


# --------------------------------------------------------------------------------------------------------------------
# Transformations and dtypes.


def test_vmap_matches_batched_call():
  features, kernel = _inputs((4, 6), 8, 5, seed=8)
  batched = ntk.cosine_logits(features, kernel)
  mapped = jax.vmap(ntk.cosine_logits, in_axes=(0, None))(features, kernel)
  # vmap may batch the product differently (another summation order): the cosine bound, not bitwise equality.
  np.testing.assert_allclose(mapped, batched, rtol=0, atol=2 * (2 * 8 + 5) * U32)
  kernels = np.stack([kernel, kernel[::-1], 2.0 * kernel])
  per_kernel = jax.jit(jax.vmap(ntk.cosine_logits, in_axes=(None, 0)))(features, kernels)
  for i, k in enumerate(kernels):
    np.testing.assert_allclose(per_kernel[i], _ref_cosine(features, k), rtol=0, atol=(2 * 8 + 5) * U32)


@use_jit_param
def test_bfloat16_preserved(use_jit):
  features, kernel = _inputs((6,), 8, 5, seed=9)
  features, kernel = jnp.asarray(features, jnp.bfloat16), jnp.asarray(kernel, jnp.bfloat16)
  cot = jnp.ones((6, 5), jnp.bfloat16)
  value, gx, gw = _value_and_grads(use_jit)(features, kernel, cot)
  assert value.dtype == gx.dtype == gw.dtype == jnp.bfloat16
  chex.assert_tree_all_finite((value, gx, gw))
  # Computed in float32 on the bfloat16 values (exact in float64), then rounded once to bfloat16: |z| <= 1, so at
  # most UBF16 absolute on top of the float32 bound.
  want = _ref_cosine(np.asarray(features, np.float64), np.asarray(kernel, np.float64))
  np.testing.assert_allclose(np.asarray(value, np.float64), want, rtol=0, atol=UBF16 + (2 * 8 + 5) * U32)


def test_mixed_dtypes_promote():
  features, kernel = _inputs((6,), 8, 5, seed=10)
  bf16_features = jnp.asarray(features, jnp.bfloat16)
  mixed = ntk.cosine_logits(bf16_features, kernel)
  # JAX's promotion: bfloat16 features and a float32 kernel give float32, the float32 computation on the upcast.
  assert mixed.dtype == jnp.float32
  np.testing.assert_array_equal(mixed, ntk.cosine_logits(bf16_features.astype(jnp.float32), kernel))
  with jax.enable_x64(True):
    wide = ntk.cosine_logits(features, kernel.astype(np.float64))
    assert wide.dtype == jnp.float64
    np.testing.assert_allclose(wide, _ref_cosine(features, kernel), rtol=0, atol=(2 * 8 + 5) * U64)


# --------------------------------------------------------------------------------------------------------------------
# cosine_head_init.


@pytest.mark.parametrize("shape", [(1568, 10), (64, 1081), (3, 2), (1, 5)])
def test_init_columns_are_unit_norm_rescaled_uniform_draws(shape):
  key = jax.random.key(0)
  kernel = ntk.cosine_head_init(key, shape)
  assert kernel.shape == shape and kernel.dtype == jnp.float32
  # The contract that keeps checkpoints and runs reproducible: float32 U(-1, 1) draws of `key` at `shape`, each
  # column divided by its norm. Per element: <= D u from the sum of squares, ~2 u from rsqrt and the product.
  draws = np.asarray(jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0), np.float64)
  want = draws / np.linalg.norm(draws, axis=0, keepdims=True)
  np.testing.assert_allclose(np.asarray(kernel), want, rtol=(shape[0] + 4) * U32, atol=0)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(kernel, np.float64), axis=0), 1.0, rtol=(shape[0] + 4) * U32)
  assert np.linalg.matrix_rank(np.asarray(kernel, np.float64)) == min(shape)


def test_init_is_rescaled_uniform_not_normal():
  # The distribution (not only the norms): a column of D U(-1, 1) draws has norm sqrt(D / 3) (1 +- ~0.008 at
  # D = 3000, so within +-0.03 for all 20 columns), hence w * sqrt(D / 3) is U(-1, 1) up to that factor. Over 60,000
  # entries: the largest |.| is within 3 % of 1 (a normal init gives ~4.4), the mean |.| is 0.5 (std of the mean
  # 0.0012, plus the column factor; a normal of the same variance gives 0.46) and the mean is 0 (std 0.0024).
  d, num_classes = 3000, 20
  scaled = np.asarray(ntk.cosine_head_init(jax.random.key(1), (d, num_classes)), np.float64) * np.sqrt(d / 3)
  assert 0.95 < np.abs(scaled).max() < 1.05
  assert abs(np.abs(scaled).mean() - 0.5) < 0.01
  assert abs(scaled.mean()) < 0.012


def test_init_dtypes_keys_and_jit():
  shape = (64, 10)
  key = jax.random.key(2)
  f32 = ntk.cosine_head_init(key, shape)
  # One key, one set of directions in every dtype: the float32 draws are rescaled in float32 (or wider), then cast.
  bf16 = ntk.cosine_head_init(key, shape, jnp.bfloat16)
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(bf16, f32.astype(jnp.bfloat16))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(bf16, np.float64), axis=0), 1.0, rtol=UBF16 + 70 * U32)
  with jax.enable_x64(True):
    f64 = ntk.cosine_head_init(key, shape, jnp.float64)
    assert f64.dtype == jnp.float64
    np.testing.assert_allclose(np.linalg.norm(np.asarray(f64), axis=0), 1.0, rtol=(64 + 4) * U64)
    np.testing.assert_allclose(f64, f32, rtol=(64 + 4) * U32)
  # The jax.nn.initializers protocol: jitted with a static shape and dtype, and a raw uint32 key works too.
  np.testing.assert_array_equal(jax.jit(ntk.cosine_head_init, static_argnums=(1, 2))(key, shape, jnp.float32), f32)
  raw = ntk.cosine_head_init(jax.random.PRNGKey(2), shape)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(raw, np.float64), axis=0), 1.0, rtol=(64 + 4) * U32)


def test_init_then_logits_in_plain_jax():
  key = jax.random.key(3)
  kernel = ntk.cosine_head_init(key, (32, 10))
  features = jax.random.normal(jax.random.key(4), (5, 32))
  np.testing.assert_allclose(ntk.cosine_logits(features, kernel), _ref_cosine(features, kernel), rtol=0,
                             atol=(2 * 32 + 5) * U32)


# --------------------------------------------------------------------------------------------------------------------
# Bad inputs: raised while tracing, the message naming the parameter.


def _bad_logits_calls():
  """(parameter named in the message, error type, features, kernel)."""
  x, w = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
  return [
      ("features", TypeError, np.ones((3, 4), np.int32), w),
      ("kernel", TypeError, x, np.ones((4, 5), np.int32)),
      ("features", TypeError, x.astype(np.complex64), w),
      ("kernel", ValueError, x, np.ones((4,), np.float32)),
      ("kernel", ValueError, x, np.ones((4, 5, 1), np.float32)),
      ("features", ValueError, np.float32(1.0), np.ones((1, 5), np.float32)),
      ("kernel", ValueError, x, np.ones((5, 4), np.float32)),  # transposed: D mismatch
      ("features", ValueError, np.ones((3, 5), np.float32), w),  # the mismatch message names both
  ]


@pytest.mark.parametrize("case", range(len(_bad_logits_calls())),
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(_bad_logits_calls())])
@use_jit_param
def test_cosine_logits_bad_inputs_raise_naming_the_parameter(case, use_jit):
  param, error, features, kernel = _bad_logits_calls()[case]
  fn = jax.jit(ntk.cosine_logits) if use_jit else ntk.cosine_logits
  with pytest.raises(error, match=_names(param)):
    fn(features, kernel)


@pytest.mark.parametrize("param,error,shape,dtype", [
    ("shape", ValueError, (4,), jnp.float32),
    ("shape", ValueError, (4, 5, 6), jnp.float32),
    ("shape", ValueError, (4, -1), jnp.float32),
    ("shape", ValueError, (4.0, 5), jnp.float32),
    ("shape", ValueError, (True, 5), jnp.float32),
    ("shape", ValueError, 4, jnp.float32),
    ("dtype", TypeError, (4, 5), jnp.int32),
])
def test_cosine_head_init_bad_inputs_raise_naming_the_parameter(param, error, shape, dtype):
  with pytest.raises(error, match=_names(param)):
    ntk.cosine_head_init(jax.random.key(0), shape, dtype)


def test_init_accepts_numpy_ints_and_empty_shapes():
  assert ntk.cosine_head_init(jax.random.key(0), (np.int64(4), np.int32(3))).shape == (4, 3)
  assert ntk.cosine_head_init(jax.random.key(0), [4, 0]).shape == (4, 0)
