"""Tests for the hard and the noised (perturbed) top-k operators against the NumPy float64 reference."""
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noised_topk_jax as ntk
from tests import reference as ref

SPEC_SELECTIONS = ("auto", "top_k", "sort", "max_mask")
# Any further variants the library offers must agree as well.
SELECTIONS = SPEC_SELECTIONS + tuple(s for s in getattr(ntk, "SELECTIONS", ()) if s not in SPEC_SELECTIONS)
use_jit_param = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


def _with_modes(cases, eager=(0,)):
  """Every case jitted; the cases at indices `eager` also un-jitted (eager dispatch is slow on new shapes)."""
  return [case + (use_jit,) for i, case in enumerate(cases) for use_jit in ((False, True) if i in eager else (True,))]


# float32 library against the float64 reference: the noised value is a mean of selected float32 entries.
RTOL, ATOL = 1e-5, 1e-5


def _names(param):
  return r"\b" + re.escape(param) + r"\b"


def _scores(shape, seed, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _noise(num_samples, shape, seed):
  return np.random.default_rng(seed + 1000).standard_normal((num_samples,) + tuple(shape)).astype(np.float32)


def _value_and_vjp(fn, use_jit):
  """(value, cotangent-weighted gradient wrt the first argument) of fn(scores, *rest)."""

  def both(scores, cotangent, *rest):
    value, pullback = jax.vjp(lambda s: fn(s, *rest), scores)
    return value, pullback(cotangent)[0]

  return jax.jit(both) if use_jit else both


# ---------------------------------------------------------------------------------------------------------------------
# Hard k-th largest.

HARD_CASES = [((10,), 10), ((2, 3, 10), 3), ((4, 100), 17), ((4, 100), 100), ((5, 2), 2)]


@pytest.mark.parametrize("shape,k,use_jit", _with_modes(HARD_CASES, eager=(1, 2)))
def test_kth_largest_matches_sort(shape, k, use_jit):
  scores = _scores(shape, seed=k + len(shape))
  cot = _scores(shape[:-1], seed=7)
  fn = _value_and_vjp(lambda s: ntk.kth_largest(s, k), use_jit)
  value, grad = fn(jnp.asarray(scores), jnp.asarray(cot))
  want_value, want_onehot = ref.kth_largest(scores, k)
  chex.assert_shape(value, shape[:-1])
  chex.assert_shape(grad, shape)
  assert value.dtype == jnp.float32
  # Selection is exact: the k-th largest is one of the inputs.
  np.testing.assert_array_equal(np.asarray(value), want_value.astype(np.float32))
  np.testing.assert_allclose(np.asarray(grad), cot[..., None] * want_onehot, rtol=0, atol=0)


@use_jit_param
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_kth_largest_ties_follow_lax_top_k(k, use_jit):
  # Lots of exact ties: the gradient goes to the lowest index among equal values first.
  scores = np.array([[1., 3., 3., 0., 3., 1.], [2., 2., 2., 2., 2., 2.], [0., 0., 5., 5., 0., -1.]], np.float32)
  fn = _value_and_vjp(lambda s: ntk.kth_largest(s, k), use_jit)
  value, grad = fn(jnp.asarray(scores), jnp.ones(3, jnp.float32))
  want_value, want_grad = ref.kth_largest(scores, k)
  np.testing.assert_array_equal(np.asarray(value), want_value)
  np.testing.assert_array_equal(np.asarray(grad), want_grad)
  # And the same position lax.top_k reports.
  _, idx = jax.lax.top_k(jnp.asarray(scores), k)
  np.testing.assert_array_equal(np.argmax(np.asarray(grad), axis=-1), np.asarray(idx)[:, k - 1])


# ---------------------------------------------------------------------------------------------------------------------
# Noised k-th largest with explicit noise: deterministic, compared with the reference almost exactly.

NOISED_CASES = [((10,), 1, 0.5, 3), ((6, 10), 3, 0.3, 1), ((2, 3, 10), 2, 1.0, 4), ((4, 100), 5, 0.7, 6),
                ((4, 100), 100, 2.0, 3), ((3, 2), 1, 1.0, 8)]


@pytest.mark.parametrize("shape,k,epsilon,num_samples,use_jit", _with_modes(NOISED_CASES, eager=(2,)))
def test_noised_kth_largest_explicit_noise_matches_reference(shape, k, epsilon, num_samples, use_jit):
  scores = _scores(shape, seed=k)
  noise = _noise(num_samples, shape, seed=k)
  cot = _scores(shape[:-1], seed=11)
  fn = _value_and_vjp(lambda s, n: ntk.noised_kth_largest(s, k, epsilon=epsilon, noise=n), use_jit)
  value, grad = fn(jnp.asarray(scores), jnp.asarray(cot), jnp.asarray(noise))
  want_value, want_grad = ref.noised_kth_largest(scores, k, epsilon, noise)
  chex.assert_shape(value, shape[:-1])
  chex.assert_shape(grad, shape)
  assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(value), want_value, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(grad), cot[..., None] * want_grad, rtol=1e-6, atol=1e-6)


def test_noised_gradient_rows_are_mean_of_onehots():
  shape, k, epsilon, num_samples = (5, 10), 3, 1.0, 4
  scores, noise = _scores(shape, 3), _noise(num_samples, shape, 3)
  fn = _value_and_vjp(lambda s, n: ntk.noised_kth_largest(s, k, epsilon=epsilon, noise=n), True)
  _, grad = fn(jnp.asarray(scores), jnp.ones(shape[:-1], jnp.float32), jnp.asarray(noise))
  onehots = np.zeros(shape)
  for b in range(num_samples):
    perturbed = scores.astype(np.float64) + epsilon * noise[b].astype(np.float64)
    for i in range(shape[0]):
      onehots[i, np.argsort(-perturbed[i], kind="stable")[k - 1]] += 1.0 / num_samples
  np.testing.assert_allclose(np.asarray(grad), onehots, rtol=0, atol=1e-6)


def test_noised_num_samples_may_be_given_with_noise():
  shape, num_samples = (3, 10), 5
  scores, noise = jnp.asarray(_scores(shape, 0)), jnp.asarray(_noise(num_samples, shape, 0))
  without = jax.jit(lambda s, n: ntk.noised_kth_largest(s, 2, epsilon=0.5, noise=n))(scores, noise)
  with_b = jax.jit(lambda s, n: ntk.noised_kth_largest(s, 2, epsilon=0.5, noise=n, num_samples=num_samples))(
      scores, noise)
  chex.assert_trees_all_close(without, with_b, rtol=0, atol=0)


def test_noise_gets_no_gradient():
  shape = (4, 10)
  scores, noise = jnp.asarray(_scores(shape, 1)), jnp.asarray(_noise(3, shape, 1))
  grad_noise = jax.jit(jax.grad(lambda n: ntk.noised_kth_largest(scores, 2, epsilon=1.0, noise=n).sum()))(noise)
  chex.assert_shape(grad_noise, noise.shape)
  np.testing.assert_array_equal(np.asarray(grad_noise), np.zeros(noise.shape))


@pytest.mark.parametrize("mode,use_jit", [("noise", False), ("noise", True), ("key", True)])
def test_epsilon_zero_is_hard_topk(mode, use_jit):
  shape, k, num_samples = (2, 3, 10), 4, 3
  scores = _scores(shape, 5)
  cot = _scores(shape[:-1], 6)
  if mode == "noise":
    fn = _value_and_vjp(lambda s, n: ntk.noised_kth_largest(s, k, epsilon=0.0, noise=n), use_jit)
    value, grad = fn(jnp.asarray(scores), jnp.asarray(cot), jnp.asarray(_noise(num_samples, shape, 5)))
  else:
    fn = _value_and_vjp(
        lambda s, key: ntk.noised_kth_largest(s, k, epsilon=0.0, num_samples=num_samples, key=key), use_jit)
    value, grad = fn(jnp.asarray(scores), jnp.asarray(cot), jax.random.key(0))
  want_value, want_onehot = ref.kth_largest(scores, k)
  np.testing.assert_allclose(np.asarray(value), want_value, rtol=0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad), cot[..., None] * want_onehot, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Noised k-th largest with a PRNG key: statistical checks.


@pytest.mark.parametrize("shape,k,num_samples,use_jit", [((6, 10), 1, 1, True), ((2, 3, 10), 2, 5, False),
                                                         ((4, 100), 5, 16, True)])
def test_key_gradient_rows_sum_to_one_and_are_multiples_of_one_over_b(shape, k, num_samples, use_jit):
  scores = _scores(shape, 2)

  def f(s, key):
    return ntk.noised_kth_largest(s, k, epsilon=1.0, num_samples=num_samples, key=key)

  grad_fn = jax.grad(lambda s, key: f(s, key).sum())
  if use_jit:
    grad_fn = jax.jit(grad_fn)
  grad = np.asarray(grad_fn(jnp.asarray(scores), jax.random.key(3)))
  chex.assert_shape(grad, shape)
  np.testing.assert_allclose(grad.sum(-1), np.ones(shape[:-1]), rtol=0, atol=1e-5)
  counts = grad * num_samples
  np.testing.assert_allclose(counts, np.round(counts), rtol=0, atol=1e-4)
  assert np.all(grad >= 0)
  if num_samples > 1:
    # epsilon = 1 on N(0, 1) scores: some rows must spread their mass over several positions.
    assert np.any((grad > 0) & (grad < 1))


@pytest.mark.parametrize("shape,k", [((3, 10), 2), ((3, 100), 5)])
def test_key_gradient_is_the_derivative_of_the_same_draws(shape, k):
  # In float64 the Monte Carlo value is piecewise linear; along a tiny step no argmax changes, so
  # (f(s + t v) - f(s)) / t must equal <grad, v> exactly when forward and backward use the same noise draws
  # (and the forward pass really computes in float64).
  with jax.enable_x64(True):
    num_samples, t = 6, 1e-6
    rng = np.random.default_rng(4)
    scores = jnp.asarray(rng.standard_normal(shape))
    direction = jnp.asarray(rng.standard_normal(shape))
    key = jax.random.key(9)
    f = lambda s: ntk.noised_kth_largest(s, k, epsilon=1.0, num_samples=num_samples, key=key)
    fn = _value_and_vjp(f, True)
    value, grad = fn(scores, jnp.ones(shape[:-1], jnp.float64))
    moved, _ = fn(scores + t * direction, jnp.ones(shape[:-1], jnp.float64))
    assert value.dtype == jnp.float64 and grad.dtype == jnp.float64
    np.testing.assert_allclose((np.asarray(moved) - np.asarray(value)) / t,
                               np.sum(np.asarray(grad) * np.asarray(direction), axis=-1), rtol=0, atol=1e-7)


def test_key_is_deterministic_and_keys_differ():
  scores = jnp.asarray(_scores((4, 10), 8))
  f = jax.jit(lambda key: ntk.noised_kth_largest(scores, 2, epsilon=1.0, num_samples=4, key=key))
  chex.assert_trees_all_close(f(jax.random.key(1)), f(jax.random.key(1)), rtol=0, atol=0)
  assert np.max(np.abs(np.asarray(f(jax.random.key(1)) - f(jax.random.key(2))))) > 1e-3


@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_key_small_epsilon_recovers_hard_value(epsilon):
  shape, k = (2, 3, 10), 3
  scores = _scores(shape, 12)
  value, grad = jax.jit(jax.value_and_grad(
      lambda s: ntk.noised_kth_largest(s, k, epsilon=epsilon, num_samples=8, key=jax.random.key(0)).sum()))(
          jnp.asarray(scores))
  want_value, want_grad = ref.kth_largest(scores, k)
  # The smallest gap between sorted entries is far above 1e-6, so every draw selects the hard position.
  assert np.min(np.diff(np.sort(scores, axis=-1), axis=-1)) > 1e-4
  np.testing.assert_allclose(np.asarray(value), want_value.sum(), rtol=0, atol=2e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,k,num_samples", [((4, 10), 2, 4), ((2, 3, 100), 5, 6)])
def test_antithetic_key_draws_pairs_and_matches_the_reference(shape, k, num_samples):
  # With `antithetic`, the key's draws are Z = jax.random.normal(key, (B/2, ...)) followed by -Z; the value and the
  # gradient are those of the reference with that noise.
  scores = _scores(shape, 21)
  key = jax.random.key(5)
  half = np.asarray(jax.random.normal(key, (num_samples // 2,) + shape), np.float32)
  noise = np.concatenate([half, -half])
  fn = _value_and_vjp(lambda s: ntk.noised_kth_largest(s, k, epsilon=0.7, num_samples=num_samples, key=key,
                                                       antithetic=True), True)
  cot = np.ones(shape[:-1], np.float32)
  value, grad = fn(jnp.asarray(scores), jnp.asarray(cot))
  want_value, want_grad = ref.noised_kth_largest(scores, k, 0.7, noise)
  np.testing.assert_allclose(np.asarray(value), want_value, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=RTOL, atol=ATOL)
  # Explicit noise with `antithetic` is used as given.
  explicit = ntk.noised_kth_largest(scores, k, epsilon=0.7, noise=jnp.asarray(noise), antithetic=True)
  np.testing.assert_allclose(np.asarray(explicit), want_value, rtol=RTOL, atol=ATOL)


def test_antithetic_pairs_cancel_the_noise_where_the_selection_is_linear():
  # Gaps >> epsilon: every draw selects the hard k-th entry, so top_k(s + eps Z) = s_j + eps Z_j is linear in Z and
  # each pair averages to exactly s_j: zero variance, where independent draws keep a spread of eps / sqrt(B).
  scores = jnp.asarray(np.tile(np.arange(10, dtype=np.float32), (512, 1)))
  plain = np.asarray(ntk.noised_kth_largest(scores, 3, epsilon=1e-3, num_samples=4, key=jax.random.key(0)))
  anti = np.asarray(ntk.noised_kth_largest(scores, 3, epsilon=1e-3, num_samples=4, key=jax.random.key(0),
                                           antithetic=True))
  np.testing.assert_allclose(anti, 7.0, rtol=0, atol=1e-6)
  assert 0.7 * 1e-3 / 2 < plain.std() < 1.3 * 1e-3 / 2


def test_antithetic_estimate_is_unbiased_for_two_classes():
  # E[max(s + eps Z)] in closed form; 512 rows of independent antithetic pairs average to it.
  mu1, mu2, epsilon, rows = 0.3, -0.2, 1.0, 512
  exact = ref.expected_max_of_two_gaussians(mu1, mu2, epsilon)
  sigma = math.sqrt(ref.variance_max_of_two_gaussians(mu1, mu2, epsilon))
  scores = jnp.tile(jnp.asarray([mu1, mu2], jnp.float32), (rows, 1))
  est = np.asarray(ntk.noised_kth_largest(scores, 1, epsilon=epsilon, num_samples=8, key=jax.random.key(3),
                                          antithetic=True), np.float64)
  # Pairs are not independent, but the antithetic variance per row is at most the plain one, sigma^2 / B * 2.
  assert abs(est.mean() - exact) < 4 * sigma * math.sqrt(2 / 8) / math.sqrt(rows)


def test_two_class_closed_form_and_convergence_in_num_samples():
  # 256 identical rows get independent noise, so the spread of their estimates measures the Monte Carlo error.
  mu1, mu2, epsilon, rows = 0.3, -0.2, 1.0, 256
  exact = ref.expected_max_of_two_gaussians(mu1, mu2, epsilon)
  sigma = math.sqrt(ref.variance_max_of_two_gaussians(mu1, mu2, epsilon))
  scores = jnp.tile(jnp.asarray([mu1, mu2], jnp.float32), (rows, 1))
  rms_errors = []
  for i, num_samples in enumerate([4, 64, 1024]):
    est = np.asarray(ntk.noised_kth_largest(scores, 1, epsilon=epsilon, num_samples=num_samples,
                                            key=jax.random.key(100 + i)), np.float64)
    standard_error = sigma / math.sqrt(num_samples)
    # Unbiased: the mean over rows is within 4 standard errors of the closed form.
    assert abs(est.mean() - exact) < 4 * standard_error / math.sqrt(rows), (num_samples, est.mean(), exact)
    # Spread across rows is sigma / sqrt(B) (rows independent, draws independent), within 25%.
    assert 0.75 * standard_error < est.std() < 1.25 * standard_error, (num_samples, est.std(), standard_error)
    rms_errors.append(np.sqrt(np.mean((est - exact)**2)))
  assert rms_errors[0] > 2.5 * rms_errors[1] > 6.0 * rms_errors[2], rms_errors


@pytest.mark.parametrize("num_classes,k,epsilon", [(10, 1, 0.5), (10, 3, 2.0), (100, 1, 1.0), (100, 5, 0.3)])
def test_large_b_estimate_matches_numpy_and_smoothing_bound(num_classes, k, epsilon):
  rows, num_samples = 4, 4000
  scores = _scores((rows, num_classes), num_classes + k)
  est = np.asarray(ntk.noised_kth_largest(jnp.asarray(scores), k, epsilon=epsilon, num_samples=num_samples,
                                          key=jax.random.key(5)), np.float64)
  hard, _ = ref.kth_largest(scores, k)
  # Independent NumPy Monte Carlo; top_k is 1-Lipschitz, so (Gaussian Poincare) each estimate has
  # std <= eps / sqrt(B) and the difference of the two <= eps sqrt(2 / B). Margin: 6 of those.
  z = np.random.default_rng(0).standard_normal((num_samples, rows, num_classes))
  numpy_est = np.sort(scores.astype(np.float64) + epsilon * z, axis=-1)[..., num_classes - k].mean(0)
  mc_margin = 6 * epsilon * math.sqrt(2.0 / num_samples)
  np.testing.assert_allclose(est, numpy_est, rtol=0, atol=mc_margin)
  bound = ref.smoothing_bound(k, epsilon, num_classes)
  assert np.all(np.abs(est - hard) <= bound + 6 * epsilon / math.sqrt(num_samples)), (est - hard, bound)
  if k == 1:
    # Jensen: E[max(s + eps Z)] >= max(s).
    assert np.all(est - hard >= -6 * epsilon / math.sqrt(num_samples))


# ---------------------------------------------------------------------------------------------------------------------
# Selection algorithms: identical values and gradients, ties included.


@pytest.mark.parametrize("k", [5])
def test_selection_variants_with_ties_many_classes(k):
  # L = 100 with heavy ties, so that variants which split the row into chunks meet ties across chunk borders.
  rng = np.random.default_rng(23)
  scores = rng.integers(0, 4, size=(3, 100)).astype(np.float32)
  noise = rng.integers(-1, 2, size=(2, 3, 100)).astype(np.float32)
  want_value, want_grad = ref.noised_kth_largest(scores, k, 1.0, noise)
  for selection in SELECTIONS:
    fn = _value_and_vjp(lambda s, n: ntk.noised_kth_largest(s, k, epsilon=1.0, noise=n, selection=selection), True)
    value, grad = fn(jnp.asarray(scores), jnp.ones(3, jnp.float32), jnp.asarray(noise))
    np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-6, atol=1e-6, err_msg=selection)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=0, atol=1e-6, err_msg=selection)


def _tied_inputs():
  rng = np.random.default_rng(21)
  scores = rng.integers(0, 3, size=(2, 4, 8)).astype(np.float32)
  scores[0, 0] = 1.0  # a constant row
  noise = rng.integers(-1, 2, size=(3, 2, 4, 8)).astype(np.float32)  # integer noise keeps ties after perturbing
  return scores, noise


@pytest.mark.parametrize("k,epsilon,use_jit", [(1, 0.0, True), (8, 0.0, True), (3, 1.0, False)])
def test_selection_variants_with_ties_match_reference(k, epsilon, use_jit):
  scores, noise = _tied_inputs()
  cot = _scores(scores.shape[:-1], 3)
  want_value, want_grad = ref.noised_kth_largest(scores, k, epsilon, noise)
  for selection in SELECTIONS:
    fn = _value_and_vjp(lambda s, n: ntk.noised_kth_largest(s, k, epsilon=epsilon, noise=n, selection=selection),
                        use_jit)
    value, grad = fn(jnp.asarray(scores), jnp.asarray(cot), jnp.asarray(noise))
    np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-6, atol=1e-6, err_msg=selection)
    np.testing.assert_allclose(np.asarray(grad), cot[..., None] * want_grad, rtol=1e-6, atol=1e-6, err_msg=selection)


@pytest.mark.parametrize("shape,k", [((4, 100), 5)])
def test_selection_variants_identical_with_key(shape, k):
  # Includes any variant that generates the draws itself rather than materializing them: same key, same draws.
  scores = jnp.asarray(_scores(shape, 30))

  def run(sel):
    f = lambda s: ntk.noised_kth_largest(s, k, epsilon=0.5, num_samples=5, key=jax.random.key(2), selection=sel).sum()
    return jax.jit(jax.value_and_grad(f))(scores)

  want = run("auto")
  for selection in SELECTIONS[1:]:
    chex.assert_trees_all_close(run(selection), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Transformations and dtypes.


def test_vmap_matches_batched_call():
  shape, k, num_samples = (5, 10), 3, 4
  scores, noise = jnp.asarray(_scores(shape, 40)), jnp.asarray(_noise(num_samples, shape, 40))
  f = lambda s, n: ntk.noised_kth_largest(s, k, epsilon=0.7, noise=n)
  batched = jax.jit(f)(scores, noise)
  mapped = jax.jit(jax.vmap(f, in_axes=(0, 1)))(scores, noise)
  chex.assert_trees_all_close(mapped, batched, rtol=1e-6, atol=1e-6)
  grads_batched = jax.jit(jax.grad(lambda s, n: f(s, n).sum()))(scores, noise)
  grads_mapped = jax.jit(jax.vmap(jax.grad(f), in_axes=(0, 1)))(scores, noise)
  chex.assert_trees_all_close(grads_mapped, grads_batched, rtol=1e-6, atol=1e-6)
  hard = jax.jit(jax.vmap(lambda s: ntk.kth_largest(s, k)))(scores)
  chex.assert_trees_all_close(hard, ntk.kth_largest(scores, k), rtol=0, atol=0)


def test_vmap_over_keys():
  scores = jnp.asarray(_scores((3, 10), 41))
  keys = jax.random.split(jax.random.key(0), 4)
  f = lambda key: ntk.noised_kth_largest(scores, 2, epsilon=1.0, num_samples=6, key=key)
  mapped = jax.jit(jax.vmap(f))(keys)
  f = jax.jit(f)
  chex.assert_shape(mapped, (4, 3))
  looped = jnp.stack([f(key) for key in keys])
  chex.assert_trees_all_close(mapped, looped, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("antithetic", [False, True])
def test_per_example_keys_draw_each_row_from_its_own_key(antithetic):
  # One typed key per example: row i uses jax.random.normal(keys[i], (B, L)) (B/2 of them, then their negatives,
  # with `antithetic`), so any split of the batch draws the same noise for each example as the whole batch does.
  shape, k, num_samples = (2, 3, 10), 3, 4
  scores = _scores(shape, 43)
  keys = jax.random.split(jax.random.key(7), 6).reshape(2, 3)
  draw = num_samples // 2 if antithetic else num_samples
  rows = np.stack([np.stack([np.asarray(jax.random.normal(keys[i, j], (draw, shape[-1]))) for j in range(3)], 1)
                   for i in range(2)], 1)  # [draw, 2, 3, L]
  noise = np.concatenate([rows, -rows]) if antithetic else rows
  fn = _value_and_vjp(lambda s: ntk.noised_kth_largest(s, k, epsilon=0.6, num_samples=num_samples, key=keys,
                                                       antithetic=antithetic), True)
  value, grad = fn(jnp.asarray(scores), jnp.ones(shape[:-1], jnp.float32))
  want_value, want_grad = ref.noised_kth_largest(scores, k, 0.6, noise.astype(np.float64))
  np.testing.assert_allclose(np.asarray(value), want_value, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=RTOL, atol=ATOL)
  # A slice of the batch with the slice of the keys gives the slice of the values, bit for bit.
  part = ntk.noised_kth_largest(scores[1:], k, epsilon=0.6, num_samples=num_samples, key=keys[1:],
                                antithetic=antithetic)
  np.testing.assert_array_equal(np.asarray(part), np.asarray(value)[1:])


def test_per_example_keys_must_match_the_batch_shape():
  scores = jnp.asarray(_scores((4, 10), 44))
  with pytest.raises(ValueError, match="`key` of shape \\(3,\\)"):
    ntk.noised_kth_largest(scores, 2, epsilon=1.0, num_samples=2, key=jax.random.split(jax.random.key(0), 3))


@pytest.mark.two_devices
def test_pmap_matches_reference():
  assert jax.device_count() == 2
  shape, k, num_samples = (2, 3, 10), 2, 4
  scores, noise = _scores(shape, 50), _noise(num_samples, shape, 50)

  def value_and_grad(s, n):
    return jax.value_and_grad(lambda x: ntk.noised_kth_largest(x, k, epsilon=0.5, noise=n).sum())(s)

  pv, pg = jax.pmap(value_and_grad, in_axes=(0, 1))(jnp.asarray(scores), jnp.asarray(noise))
  hard = jax.pmap(lambda s: ntk.kth_largest(s, k))(jnp.asarray(scores))
  for d in range(2):
    want_value, want_grad = ref.noised_kth_largest(scores[d], k, 0.5, noise[:, d])
    np.testing.assert_allclose(float(pv[d]), want_value.sum(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(pg[d]), want_grad, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(hard[d]), ref.kth_largest(scores[d], k)[0])
  # With keys: each device's result is the unmapped call with that device's key.
  keys = jax.random.split(jax.random.key(3), 2)
  keyed_fn = lambda s, key: ntk.noised_kth_largest(s, k, epsilon=0.5, num_samples=4, key=key)
  keyed = jax.pmap(keyed_fn)(jnp.asarray(scores), keys)
  unmapped = jax.jit(keyed_fn)
  for d in range(2):
    chex.assert_trees_all_close(keyed[d], unmapped(jnp.asarray(scores[d]), keys[d]), rtol=1e-6, atol=1e-6)


@use_jit_param
def test_bfloat16_preserved(use_jit):
  shape, k, num_samples = (4, 10), 3, 4
  scores = jnp.asarray(_scores(shape, 60), jnp.bfloat16)
  noise = jnp.asarray(_noise(num_samples, shape, 60), jnp.bfloat16)
  fn = _value_and_vjp(lambda s, n: ntk.noised_kth_largest(s, k, epsilon=0.5, noise=n), use_jit)
  value, grad = fn(scores, jnp.ones(shape[:-1], jnp.bfloat16), noise)
  assert value.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
  chex.assert_tree_all_finite((value, grad))
  want_value, want_grad = ref.noised_kth_largest(np.asarray(scores, np.float64), k, 0.5, np.asarray(noise, np.float64))
  # Computed in float32, where s + 0.5 z of bfloat16 s and z (8 significant bits each) is exact here, and rounded once
  # to bfloat16: the value errs by at most u = 2^-8 of itself (measured <= 0.84 u over 6 seeds), plus float32's mean
  # of 4 (1e-6). The gradient is the reference's: one-hots at the same positions, averaged over B = 4, multiples of
  # 1/4 that bfloat16 holds exactly.
  np.testing.assert_allclose(np.asarray(value, np.float64), want_value, rtol=2.0**-8, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad, np.float64), want_grad)
  hard = ntk.kth_largest(scores, k)
  assert hard.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(hard, np.float64), ref.kth_largest(np.asarray(scores, np.float64), k)[0])
  keyed = ntk.noised_kth_largest(scores, k, epsilon=0.5, num_samples=4, key=jax.random.key(0))
  assert keyed.dtype == jnp.bfloat16


def test_float64_preserved_under_x64():
  shape, k, num_samples = (2, 3, 10), 2, 5
  with jax.enable_x64(True):
    scores = np.random.default_rng(70).standard_normal(shape)
    noise = np.random.default_rng(71).standard_normal((num_samples,) + shape)
    cot = np.random.default_rng(72).standard_normal(shape[:-1])
    fn = _value_and_vjp(lambda s, n: ntk.noised_kth_largest(s, k, epsilon=0.3, noise=n), True)
    value, grad = fn(jnp.asarray(scores), jnp.asarray(cot), jnp.asarray(noise))
    assert value.dtype == jnp.float64 and grad.dtype == jnp.float64
    want_value, want_grad = ref.noised_kth_largest(scores, k, 0.3, noise)
    np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(grad), cot[..., None] * want_grad, rtol=1e-13, atol=1e-13)
    assert jax.jit(lambda s: ntk.kth_largest(s, k))(scores).dtype == jnp.float64
    keyed = jax.jit(lambda s: ntk.noised_kth_largest(s, k, epsilon=0.3, num_samples=3, key=jax.random.key(0)))(scores)
    assert keyed.dtype == jnp.float64
  # Nothing leaks out of the context.
  assert jnp.asarray(1.0).dtype == jnp.float32


def test_extreme_scores_finite():
  shape = (4, 10)
  scores = jnp.asarray(_scores(shape, 80, scale=1e4))
  for fn in (lambda s: ntk.kth_largest(s, 3),
             lambda s: ntk.noised_kth_largest(s, 3, epsilon=1.0, num_samples=4, key=jax.random.key(0))):
    value, grad = jax.value_and_grad(lambda s: fn(s).sum())(scores)
    chex.assert_tree_all_finite((value, grad))


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs: raised while tracing, the message naming the parameter.


def _bad_topk_calls():
  """(parameter named in the message, error type, fn of the scores [3, 5])."""
  key = jax.random.key(0)
  good_noise = jnp.zeros((2, 3, 5))
  noised = ntk.noised_kth_largest
  return [
      ("k", ValueError, lambda s: noised(s, 0, epsilon=1.0, num_samples=2, key=key)),
      ("k", ValueError, lambda s: noised(s, 6, epsilon=1.0, num_samples=2, key=key)),
      ("epsilon", ValueError, lambda s: noised(s, 1, epsilon=-0.1, num_samples=2, key=key)),
      ("num_samples", ValueError, lambda s: noised(s, 1, epsilon=1.0, num_samples=0, key=key)),
      ("num_samples", ValueError, lambda s: noised(s, 1, epsilon=1.0, num_samples=3, noise=good_noise)),
      ("key", ValueError, lambda s: noised(s, 1, epsilon=1.0, num_samples=2)),
      ("noise", ValueError, lambda s: noised(s, 1, epsilon=1.0, num_samples=2)),
      ("key", ValueError, lambda s: noised(s, 1, epsilon=1.0, num_samples=2, key=key, noise=good_noise)),
      ("noise", ValueError, lambda s: noised(s, 1, epsilon=1.0, num_samples=2, key=key, noise=good_noise)),
      ("noise", ValueError, lambda s: noised(s, 1, epsilon=1.0, noise=jnp.zeros((2, 3, 6)))),
      ("noise", ValueError, lambda s: noised(s, 1, epsilon=1.0, noise=jnp.zeros((2, 4, 5)))),
      ("noise", ValueError, lambda s: noised(s, 1, epsilon=1.0, noise=jnp.zeros((3, 5)))),
      ("selection", ValueError, lambda s: noised(s, 1, epsilon=1.0, num_samples=2, key=key, selection="heap")),
      ("k", ValueError, lambda s: ntk.kth_largest(s, 0)),
      ("k", ValueError, lambda s: ntk.kth_largest(s, 6)),
      ("num_samples", ValueError, lambda s: noised(s, 1, epsilon=1.0, num_samples=3, key=key, antithetic=True)),
      ("num_samples", ValueError, lambda s: noised(s, 1, epsilon=1.0, noise=jnp.zeros((3, 3, 5)), antithetic=True)),
      ("antithetic", TypeError, lambda s: noised(s, 1, epsilon=1.0, num_samples=2, key=key, antithetic=1)),
  ]


@pytest.mark.parametrize("case", range(len(_bad_topk_calls())),
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(_bad_topk_calls())])
@use_jit_param
def test_bad_inputs_raise_naming_the_parameter(case, use_jit):
  param, error, call = _bad_topk_calls()[case]
  fn = jax.jit(call) if use_jit else call
  with pytest.raises(error, match=_names(param)):
    fn(jnp.zeros((3, 5)))


def test_largest_allowed_k_is_accepted():
  s = jnp.asarray(_scores((3, 5), 0))
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda x: ntk.kth_largest(x, 5))(s)), np.min(np.asarray(s), axis=-1))
  v = jax.jit(lambda x: ntk.noised_kth_largest(x, 5, epsilon=0.0, num_samples=2, key=jax.random.key(0)))(s)
  np.testing.assert_allclose(np.asarray(v), np.min(np.asarray(s), axis=-1), rtol=0, atol=1e-7)
