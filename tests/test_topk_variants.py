"""Every selection variant of the top-k operators gives the same values, indices and gradients as "sort".

Also covers what the fast paths rely on: the library's Threefry generator reproduces `jax.random.normal` bit for bit
(so a key gives the same draws on every path), the two-level "tournament" tournament on the inputs that could break it
(ties across chunks, a short last chunk, `-inf`, the k largest all in one chunk), and what "auto" resolves to.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noised_topk_jax as ntk
from noised_topk_jax import _noise
from noised_topk_jax import _selection
from tests import reference as ref

VARIANTS = tuple(s for s in ntk.SELECTIONS if s != "auto")


def _maybe_jit(fn, use_jit):
  return jax.jit(fn) if use_jit else fn


def _random(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _tied(shape, seed, with_inf=False):
  """Small integers: many exact ties, within and across groups; optionally some -inf entries."""
  x = np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.float32)
  if with_inf:
    x[x == 0] = -np.inf
  return x


def test_selections_list_every_variant():
  assert ntk.SELECTIONS[0] == "auto"
  assert set(ntk.SELECTIONS) == {"auto", "top_k", "sort", "max_mask", "tournament", "approx_max_k"}


# Only the measured backend (CPU) gets a non-standard variant; GPU and TPU get `lax.top_k` until measured.
@pytest.mark.parametrize("backend,want", [("cpu", "tournament"), ("gpu", "top_k"), ("cuda", "top_k"),
                                          ("tpu", "top_k"), ("some_new_backend", "top_k")])
def test_auto_picks_per_backend_and_stays_overridable(monkeypatch, backend, want):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert _selection._resolve_selection("auto") == want
  for variant in VARIANTS:
    assert _selection._resolve_selection(variant) == variant


def test_auto_on_this_backend():
  backend = jax.default_backend()
  want = {"cpu": "tournament"}.get(backend, "top_k")
  assert _selection._resolve_selection("auto") == want


@pytest.mark.parametrize("backend", ["gpu", "tpu", "some_new_backend"])
def test_unmeasured_backends_draw_with_jax_random_normal(monkeypatch, backend):
  # The library's generator is used only where it was measured (CPU); elsewhere jax.random.normal itself, which gives
  # the same numbers.
  key, shape = jax.random.key(3), (4, 8, 10)
  fast = np.asarray(_noise._standard_normal(key, shape, jnp.float32))
  monkeypatch.setattr(_noise, "_threefry_normal", lambda *a: pytest.fail("the library generator was used"))
  if jax.default_backend() in _noise._FAST_GENERATOR_BACKENDS:  # the patch replaces the generator actually called
    with pytest.raises(pytest.fail.Exception):
      _noise._standard_normal(key, shape, jnp.float32)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  np.testing.assert_array_equal(np.asarray(_noise._standard_normal(key, shape, jnp.float32)), fast)
  np.testing.assert_array_equal(fast, np.asarray(jax.random.normal(key, shape, jnp.float32)))
  # The operator draws through the same function.
  scores = jnp.asarray(_random(shape[1:], 1))
  got = ntk.noised_kth_largest(scores, 2, epsilon=0.5, num_samples=shape[0], key=key)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ntk.noised_kth_largest(scores, 2, epsilon=0.5, noise=fast)))


# ---------------------------------------------------------------------------------------------------------------------
# Hard k-th largest: indices, values and gradients.

# (L, k): "tournament" ranks short rows whole, builds 1 to 3 levels for longer ones (with a short last group for most
# L), and uses chunks and passes for k > 12 (in a loop beyond 16 ranks).
HARD_CASES = [(2, 2), (10, 3), (37, 3), (100, 20), (100, 100), (257, 1), (257, 7), (1081, 6), (1081, 40)]


@pytest.mark.parametrize("kind", ["random", "tied", "tied_inf"])
@pytest.mark.parametrize("num_classes,k", HARD_CASES)
def test_select_kth_indices_identical(num_classes, k, kind):
  shape = (3, 4, num_classes)
  x = {"random": lambda: _random(shape, num_classes + k), "tied": lambda: _tied(shape, k),
       "tied_inf": lambda: _tied(shape, k, with_inf=True)}[kind]()
  want = np.argsort(-x.astype(np.float64), axis=-1, kind="stable")[..., k - 1]
  got = jax.jit(lambda s: {v: _selection._select_kth(s, k, v) for v in VARIANTS})(jnp.asarray(x))
  for variant in VARIANTS:
    assert got[variant].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got[variant]), want, err_msg=variant)


# Eager calls once, on the small shape (5 s op by op at 1081 classes); the rest under jit (the operators are the same
# functions either way).
JIT_CASES = [pytest.param(dtype, True, id=f"{jnp.dtype(dtype).name}-jit") for dtype in (jnp.float32, jnp.bfloat16)]
KTH_CASES = [pytest.param(num_classes, k, dtype, True, id=f"{num_classes}-{k}-{jnp.dtype(dtype).name}-jit")
             for num_classes, k in [(10, 3), (1081, 6)] for dtype in (jnp.float32, jnp.bfloat16)]
KTH_CASES.append(pytest.param(10, 3, jnp.float32, False, id="10-3-float32-eager"))
JIT_CASES.append(pytest.param(jnp.float32, False, id="float32-eager"))


@pytest.mark.parametrize("num_classes,k,dtype,use_jit", KTH_CASES)
def test_kth_largest_values_and_gradients_identical(num_classes, k, dtype, use_jit):
  shape = (5, num_classes)
  for scores in (_random(shape, k), _tied(shape, num_classes)):
    scores = jnp.asarray(scores, dtype)
    cot = jnp.asarray(_random(shape[:-1], 3), dtype)

    def run(variant):
      def fn(s):
        value, pullback = jax.vjp(lambda x: ntk.kth_largest(x, k, selection=variant), s)
        return value, pullback(cot)[0]
      return _maybe_jit(fn, use_jit)(scores)

    want_value, want_grad = run("sort")
    assert want_value.dtype == dtype and want_grad.dtype == dtype
    ref_value, ref_onehot = ref.kth_largest(np.asarray(scores, np.float64), k)
    np.testing.assert_array_equal(np.asarray(want_value, np.float64), ref_value)
    np.testing.assert_array_equal(np.asarray(want_grad, np.float64), np.asarray(cot, np.float64)[:, None] * ref_onehot)
    for variant in VARIANTS:
      value, grad = run(variant)
      assert value.dtype == dtype and grad.dtype == dtype, variant
      np.testing.assert_array_equal(np.asarray(value, np.float64), np.asarray(want_value, np.float64), variant)
      np.testing.assert_array_equal(np.asarray(grad, np.float64), np.asarray(want_grad, np.float64), variant)


@pytest.mark.parametrize("k", [1, 2, 6, 12, 13, 20])
def test_tournament_adversarial_rows(k):
  num_classes = 1081
  layout = _selection._tournament_layout(num_classes, k)
  size = layout[0] if layout else _selection._chunk_layout(num_classes, k)[0]
  rows = []
  row = np.zeros(num_classes, np.float32)
  row[100:100 + 20] = 5.0 + np.arange(20)  # the k largest all in one or two groups
  rows.append(row)
  row = np.zeros(num_classes, np.float32)
  row[-3:] = [7.0, 9.0, 8.0]  # the largest in the short last group
  rows.append(row)
  rows.append(np.ones(num_classes, np.float32))  # constant: the k-th is index k-1
  row = np.full(num_classes, -np.inf, np.float32)  # -inf everywhere but two entries
  row[[5, 900]] = [1.0, 2.0]
  rows.append(row)
  for offset in (0, size - 1, 1):  # every group has the same maximum, at its first / last / second entry
    row = np.zeros(num_classes, np.float32)
    row[offset::size] = 3.0
    rows.append(row)
  row = np.zeros(num_classes, np.float32)
  row[::size * size] = 3.0  # equal maxima of whole groups of groups (the second level)
  rows.append(row)
  x = np.stack(rows)
  want = np.argsort(-x.astype(np.float64), axis=-1, kind="stable")[..., k - 1]
  got = jax.jit(lambda s: _selection._select_kth(s, k, "tournament"))(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(got), want)


# Jitted: op by op, the tournament's Python loop over levels takes 2-4 s a case; the eager path is the same code.
_select_kth_jit = jax.jit(_selection._select_kth, static_argnums=(1, 2))


@pytest.mark.parametrize("num_classes,k", [(3, 1), (48, 6), (49, 6), (100, 6), (1081, 2), (1081, 6), (5000, 12)])
def test_tournament_layout(num_classes, k):
  size, levels = _selection._tournament_layout(num_classes, k)
  assert size >= 2 and k * size <= _selection._PAIRWISE_CANDIDATES
  assert levels[0] == num_classes and levels[-1] <= _selection._PAIRWISE_TOP
  assert all(b == -(-a // size) for a, b in zip(levels, levels[1:]))
  x = _random((2, num_classes), 1)
  want = np.argsort(-x, axis=-1, kind="stable")[..., k - 1]
  np.testing.assert_array_equal(np.asarray(_select_kth_jit(jnp.asarray(x), k, "tournament")), want)


@pytest.mark.parametrize("num_classes,k", [(20, 13), (100, 50), (100, 100), (1081, 40), (1081, 300)])
def test_tournament_large_k_uses_chunks_and_passes(num_classes, k):
  assert _selection._tournament_layout(num_classes, k) is None
  layout = _selection._chunk_layout(num_classes, k)
  if layout is not None:
    size, groups = layout
    assert groups > k and k * size < num_classes and groups == -(-num_classes // size)
  x = _tied((2, num_classes), k)
  want = np.argsort(-x, axis=-1, kind="stable")[..., k - 1]
  np.testing.assert_array_equal(np.asarray(_select_kth_jit(jnp.asarray(x), k, "tournament")), want)


# ---------------------------------------------------------------------------------------------------------------------
# Noised k-th largest: explicit noise and keys.

NOISED_CASES = [((6, 10), 2, 5), ((2, 3, 37), 3, 4), ((4, 1081), 6, 5), ((2, 1081), 20, 3)]


def _noised_value_and_grads(selection, scores, cot, epsilon, k, use_jit, **draws):
  def fn(s, eps):
    value, pullback = jax.vjp(lambda x, e: ntk.noised_kth_largest(x, k, epsilon=e, selection=selection, **draws),
                              s, eps)
    return (value,) + pullback(cot)
  return _maybe_jit(fn, use_jit)(scores, jnp.asarray(epsilon, jnp.float32))


def _assert_same(got, want, msg):
  value, grad, grad_eps = got
  want_value, want_grad, want_grad_eps = want
  assert value.dtype == want_value.dtype and grad.dtype == want_grad.dtype, msg
  np.testing.assert_allclose(np.asarray(value, np.float64), np.asarray(want_value, np.float64), rtol=1e-6, atol=1e-6,
                             err_msg=msg)
  # Same selected positions: the gradients are the same multiples of 1/B, exactly.
  np.testing.assert_array_equal(np.asarray(grad, np.float64), np.asarray(want_grad, np.float64), err_msg=msg)
  np.testing.assert_allclose(float(grad_eps), float(want_grad_eps), rtol=1e-5, atol=1e-5, err_msg=msg)


@pytest.mark.parametrize("dtype,use_jit", JIT_CASES)
@pytest.mark.parametrize("shape,k,num_samples", NOISED_CASES)
def test_noised_explicit_noise_identical(shape, k, num_samples, dtype, use_jit):
  scores = jnp.asarray(_random(shape, k), dtype)
  noise = jnp.asarray(_random((num_samples,) + shape, k + 1), dtype)
  cot = jnp.asarray(_random(shape[:-1], 2), dtype)
  want = _noised_value_and_grads("sort", scores, cot, 0.5, k, use_jit, noise=noise)
  assert want[0].dtype == dtype and want[1].dtype == dtype
  ref_value, ref_grad = ref.noised_kth_largest(np.asarray(scores, np.float64), k, 0.5, np.asarray(noise, np.float64))
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(want[0], np.float64), ref_value, rtol=tol, atol=tol)
  if dtype == jnp.float32:
    np.testing.assert_allclose(np.asarray(want[1]), np.asarray(cot)[..., None] * ref_grad, rtol=1e-6, atol=1e-6)
  for variant in VARIANTS:
    _assert_same(_noised_value_and_grads(variant, scores, cot, 0.5, k, use_jit, noise=noise), want, variant)


@pytest.mark.parametrize("epsilon", [0.0, 1.0])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_noised_tied_inputs_identical(k, epsilon):
  # Integer scores and integer noise keep exact ties after perturbing.
  scores = jnp.asarray(_tied((5, 4, 8), 21))
  noise = jnp.asarray(np.random.default_rng(22).integers(-1, 2, size=(3, 5, 4, 8)).astype(np.float32))
  cot = jnp.asarray(_random((5, 4), 3))
  want = _noised_value_and_grads("sort", scores, cot, epsilon, k, True, noise=noise)
  ref_value, ref_grad = ref.noised_kth_largest(np.asarray(scores), k, epsilon, np.asarray(noise))
  np.testing.assert_allclose(np.asarray(want[0]), ref_value, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(want[1]), np.asarray(cot)[..., None] * ref_grad, rtol=1e-6, atol=1e-6)
  for variant in VARIANTS:
    _assert_same(_noised_value_and_grads(variant, scores, cot, epsilon, k, True, noise=noise), want, variant)


@pytest.mark.parametrize("dtype,use_jit", JIT_CASES)
@pytest.mark.parametrize("shape,k,num_samples", NOISED_CASES)
def test_noised_key_identical_and_same_draws_as_jax_random_normal(shape, k, num_samples, dtype, use_jit):
  scores = jnp.asarray(_random(shape, 7), dtype)
  cot = jnp.asarray(_random(shape[:-1], 8), dtype)
  key = jax.random.key(k + num_samples)
  # The draws of a key are exactly jax.random.normal(key, (B, *shape)) in the compute dtype, on every path.
  noise = jax.random.normal(key, (num_samples,) + shape, jnp.float32)
  want = _noised_value_and_grads("sort", scores, cot, 0.3, k, use_jit, noise=noise)
  for variant in VARIANTS:
    got = _noised_value_and_grads(variant, scores, cot, 0.3, k, use_jit, key=key, num_samples=num_samples)
    _assert_same(got, want, variant)


def test_noised_key_under_vmap_and_fold_in():
  shape, k, num_samples = (3, 257), 4, 5
  scores = jnp.asarray(_random(shape, 9))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(4))
  for variant in ("tournament", "sort"):
    f = lambda key, v=variant: jax.value_and_grad(
        lambda s: ntk.noised_kth_largest(s, k, epsilon=0.2, num_samples=num_samples, key=key, selection=v).sum())(
            scores)
    mapped = jax.jit(jax.vmap(f))(keys)
    for i in range(4):
      noise = jax.random.normal(keys[i], (num_samples,) + shape)
      want = jax.value_and_grad(
          lambda s: ntk.noised_kth_largest(s, k, epsilon=0.2, noise=noise, selection="sort").sum())(scores)
      chex.assert_trees_all_close((mapped[0][i], mapped[1][i]), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg", "raw_uint32"])
def test_other_key_kinds_use_jax_random_normal(impl):
  shape, k, num_samples = (4, 100), 3, 4
  scores = jnp.asarray(_random(shape, 10))
  key = jax.random.PRNGKey(5) if impl == "raw_uint32" else jax.random.key(5, impl=impl)
  noise = jax.random.normal(key, (num_samples,) + shape)
  for variant in VARIANTS:
    got = ntk.noised_kth_largest(scores, k, epsilon=0.5, num_samples=num_samples, key=key, selection=variant)
    want = ntk.noised_kth_largest(scores, k, epsilon=0.5, noise=noise, selection="sort")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6, err_msg=variant)


def test_float64_key_path_identical():
  with jax.enable_x64(True):
    shape, k, num_samples = (3, 257), 5, 4
    scores = jnp.asarray(np.random.default_rng(11).standard_normal(shape))
    key = jax.random.key(12)
    noise = jax.random.normal(key, (num_samples,) + shape, jnp.float64)
    want = jax.value_and_grad(lambda s: ntk.noised_kth_largest(s, k, epsilon=0.4, noise=noise).sum())(scores)
    for variant in VARIANTS:
      got = jax.value_and_grad(lambda s, v=variant: ntk.noised_kth_largest(
          s, k, epsilon=0.4, num_samples=num_samples, key=key, selection=v).sum())(scores)
      assert got[0].dtype == jnp.float64 and got[1].dtype == jnp.float64
      chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_noised_loss_gradients_identical(variant):
  # The imbalanced loss (per-class margins, scale) as trained: value and gradient per selection.
  num_classes, k = 1081, 5
  logits = jnp.asarray(np.random.default_rng(13).uniform(-1, 1, size=(8, num_classes)).astype(np.float32))
  labels = jnp.asarray(np.random.default_rng(14).integers(0, num_classes, size=8).astype(np.int32))
  margins = ntk.class_margins(np.arange(num_classes, 0, -1) * 3, max_margin=0.2)

  def loss(s, selection):
    return jnp.mean(ntk.noised_topk_loss(s, labels, k=k, epsilon=0.01, num_samples=5, margins=margins, scale=60.0,
                                         key=jax.random.key(15), selection=selection))

  got = jax.jit(jax.value_and_grad(lambda s: loss(s, variant)))(logits)
  want = jax.jit(jax.value_and_grad(lambda s: loss(s, "sort")))(logits)
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


# ---------------------------------------------------------------------------------------------------------------------
# The generator.


@pytest.mark.parametrize("shape", [(1,), (5, 3, 7), (30, 32, 1081)])
def test_threefry_normal_is_jax_random_normal_bit_for_bit(shape):
  for key in (jax.random.key(0), jax.random.key(2**31 + 17), jax.random.fold_in(jax.random.key(5), 7),
              jax.random.split(jax.random.key(1), 3)[2], jax.random.PRNGKey(9)):
    want = np.asarray(jax.random.normal(key, shape, jnp.float32))
    key_data = _noise._threefry_key_data(key, shape, jnp.float32)
    assert key_data is not None
    np.testing.assert_array_equal(np.asarray(_noise._threefry_normal(key_data, shape)), want)
    got = jax.jit(lambda k: _noise._standard_normal(k, shape, jnp.float32))(key)
    np.testing.assert_array_equal(np.asarray(got), want)
    counts = jnp.asarray([0, want.size - 1, want.size // 2], jnp.uint32)
    np.testing.assert_array_equal(np.asarray(_noise._threefry_normal_at(key_data, counts)),
                                  want.reshape(-1)[np.asarray(counts)])


def test_threefry_normal_under_vmap_and_grad_free():
  keys = jax.random.split(jax.random.key(4), 3)
  want = jax.vmap(lambda k: jax.random.normal(k, (4, 9)))(keys)
  got = jax.jit(jax.vmap(lambda k: _noise._standard_normal(k, (4, 9), jnp.float32)))(keys)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_threefry_key_data_declines_what_it_cannot_reproduce():
  shape = (2, 3)
  assert _noise._threefry_key_data(jax.random.key(0), shape, jnp.float32) is not None
  assert _noise._threefry_key_data(jax.random.key(0, impl="rbg"), shape, jnp.float32) is None
  assert _noise._threefry_key_data(jax.random.key(0), shape, jnp.float64) is None
  assert _noise._threefry_key_data(jax.random.split(jax.random.key(0), 2), shape, jnp.float32) is None
  assert _noise._threefry_key_data(jax.random.key(0), (2**16, 2**16), jnp.float32) is None
  with jax.threefry_partitionable(False):
    assert _noise._threefry_key_data(jax.random.key(0), shape, jnp.float32) is None
    # ... and the operator then draws jax.random.normal's (non-partitionable) numbers.
    scores = jnp.asarray(_random((3, 10), 5))
    key = jax.random.key(6)
    noise = jax.random.normal(key, (4, 3, 10))
    got = ntk.noised_kth_largest(scores, 2, epsilon=0.5, num_samples=4, key=key)
    want = ntk.noised_kth_largest(scores, 2, epsilon=0.5, noise=noise)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_computed_once_is_exact_also_under_vmap():
  compute = lambda x, zero: jnp.arange(6.0).reshape(2, 3) * x + zero.astype(jnp.float32)
  once = lambda x: _noise._computed_once(functools.partial(compute, x), opaque_true=x != x + 1)
  want = lambda x: compute(x, np.uint32(0))
  np.testing.assert_array_equal(np.asarray(jax.jit(once)(jnp.float32(2.0))), np.asarray(want(2.0)))
  xs = jnp.asarray([1.0, -3.0, 0.5], jnp.float32)
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(once))(xs)), np.asarray(jax.vmap(want)(xs)))
