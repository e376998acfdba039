"""Tests for the top-k accuracy metrics against a stable-argsort NumPy reference, ties included."""
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noised_topk_jax as ntk
from tests import reference as ref

use_jit_param = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


def _names(param):
  return r"\b" + re.escape(param) + r"\b"


def _inputs(shape, seed, kind="normal", num_classes=None):
  rng = np.random.default_rng(seed)
  if kind == "normal":
    logits = rng.standard_normal(shape)
  elif kind == "tied":
    logits = rng.integers(0, 3, size=shape).astype(np.float64)  # many exact ties
  elif kind == "constant":
    logits = np.full(shape, 0.25)
  else:
    raise ValueError(kind)
  labels = rng.integers(0, num_classes or shape[-1], size=shape[:-1])
  return logits.astype(np.float32), labels.astype(np.int32)


def _maybe_jit(fn, use_jit):
  return jax.jit(fn) if use_jit else fn


CASES = [((50, 10), 1), ((50, 10), 10), ((2, 3, 10), 2), ((40, 100), 5), ((64, 5), 4)]
KINDS = ["normal", "tied", "constant"]
# Un-jitted runs on the tied inputs only: eager dispatch costs a compile per new shape.
KIND_MODES = [("normal", True), ("tied", False), ("tied", True), ("constant", True)]


def test_reference_tie_rule_is_the_rank_count():
  # The stable-argsort reference and the rank-count statement of the rule agree, ties included.
  for kind in KINDS:
    logits, labels = _inputs((200, 6), 1, kind)
    for k in range(1, 7):
      np.testing.assert_array_equal(ref.topk_correct(logits, labels, k),
                                    ref.topk_correct_by_counting(logits, labels, k))


@pytest.mark.parametrize("kind,use_jit", KIND_MODES)
@pytest.mark.parametrize("shape,k", CASES)
def test_topk_accuracy(shape, k, kind, use_jit):
  logits, labels = _inputs(shape, k, kind)
  got = _maybe_jit(functools.partial(ntk.topk_accuracy, k=k), use_jit)(jnp.asarray(logits), jnp.asarray(labels))
  chex.assert_shape(got, ())
  np.testing.assert_allclose(float(got), ref.topk_accuracy(logits, labels, k), rtol=0, atol=1e-6)


def test_constant_logits_are_not_all_correct():
  # Equal scores rank by index: the label is "in the top k" only when it is one of the k lowest indices.
  logits = jnp.zeros((10, 10))
  labels = jnp.arange(10)
  np.testing.assert_allclose(float(ntk.topk_accuracy(logits, labels, k=3)), 0.3, atol=1e-7)
  np.testing.assert_allclose(np.asarray(ntk.per_class_topk_accuracy(logits, labels, k=3, num_classes=10)),
                             [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], atol=0)


def test_ties_hand_checked():
  logits = jnp.array([[1., 2., 2., 0.], [1., 2., 2., 0.], [5., 5., 5., 5.], [0., 3., 1., 3.]])
  labels = jnp.array([1, 2, 0, 3])
  # k = 1: row 0 wins the tie at index 1; row 1 loses it (index 2); row 2: 0 is the lowest index; row 3: loses to 1.
  np.testing.assert_allclose(float(ntk.topk_accuracy(logits, labels, k=1)), 0.5, atol=1e-7)
  # k = 2: rows 0, 1 and 3 in; row 2 in (index 0).
  np.testing.assert_allclose(float(ntk.topk_accuracy(logits, labels, k=2)), 1.0, atol=1e-7)


@pytest.mark.parametrize("kind,use_jit", [("normal", True), ("tied", False), ("constant", True)])
@pytest.mark.parametrize("shape,k", CASES[1:4])
def test_per_class_and_macro_accuracy(shape, k, kind, use_jit):
  num_classes = shape[-1] + 3  # the last three classes never occur: NaN
  logits, labels = _inputs(shape, 10 + k, kind)
  logits = np.concatenate([logits, np.full(shape[:-1] + (3,), -1e3, np.float32)], axis=-1)
  per_class = _maybe_jit(functools.partial(ntk.per_class_topk_accuracy, k=k, num_classes=num_classes), use_jit)(
      jnp.asarray(logits), jnp.asarray(labels))
  macro = _maybe_jit(functools.partial(ntk.macro_topk_accuracy, k=k, num_classes=num_classes), use_jit)(
      jnp.asarray(logits), jnp.asarray(labels))
  chex.assert_shape(per_class, (num_classes,))
  chex.assert_shape(macro, ())
  want_per_class = ref.per_class_topk_accuracy(logits, labels, k, num_classes)
  assert np.isnan(want_per_class[-3:]).all()
  np.testing.assert_allclose(np.asarray(per_class), want_per_class, rtol=0, atol=1e-6, equal_nan=True)
  np.testing.assert_allclose(float(macro), ref.macro_topk_accuracy(logits, labels, k, num_classes), rtol=0,
                             atol=1e-6)


def test_macro_differs_from_micro_on_imbalanced_labels():
  # 9 examples of class 0 all right, 1 example of class 1 wrong: micro 0.9, macro 0.5.
  logits = jnp.array([[1.0, 0.0]] * 10)
  labels = jnp.array([0] * 9 + [1])
  np.testing.assert_allclose(float(ntk.topk_accuracy(logits, labels, k=1)), 0.9, atol=1e-6)
  np.testing.assert_allclose(float(ntk.macro_topk_accuracy(logits, labels, k=1, num_classes=2)), 0.5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Streaming counts.


@pytest.mark.parametrize("kind,use_jit", KIND_MODES)
@pytest.mark.parametrize("shape,k", [((50, 10), 3), ((2, 3, 10), 2), ((40, 100), 5)])
def test_per_class_topk_counts(shape, k, kind, use_jit):
  num_classes = shape[-1]
  logits, labels = _inputs(shape, 20 + k, kind)
  fn = _maybe_jit(functools.partial(ntk.per_class_topk_counts, k=k, num_classes=num_classes), use_jit)
  correct, total = fn(jnp.asarray(logits), jnp.asarray(labels))
  assert correct.dtype == jnp.float32 and total.dtype == jnp.float32
  chex.assert_shape((correct, total), (num_classes,))
  want_correct, want_total = ref.per_class_topk_counts(logits, labels, k, num_classes)
  np.testing.assert_array_equal(np.asarray(correct), want_correct)
  np.testing.assert_array_equal(np.asarray(total), want_total)


@use_jit_param
def test_counts_with_weights_and_padding(use_jit):
  shape, k, num_classes = (30, 10), 3, 10
  logits, labels = _inputs(shape, 30, "tied")
  fn = _maybe_jit(functools.partial(ntk.per_class_topk_counts, k=k, num_classes=num_classes), use_jit)
  # Real-valued weights multiply both counts.
  weights = np.random.default_rng(0).uniform(0.0, 2.0, size=shape[:-1]).astype(np.float32)
  correct, total = fn(jnp.asarray(logits), jnp.asarray(labels), weights=jnp.asarray(weights))
  want_correct, want_total = ref.per_class_topk_counts(logits, labels, k, num_classes, weights)
  np.testing.assert_allclose(np.asarray(correct), want_correct, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(np.asarray(total), want_total, rtol=1e-6, atol=1e-5)
  # Padding: 10 junk examples with weight 0 change nothing.
  pad_logits, pad_labels = _inputs((10, 10), 31, "normal")
  padded_logits = np.concatenate([logits, pad_logits])
  padded_labels = np.concatenate([labels, pad_labels])
  mask = np.concatenate([np.ones(30), np.zeros(10)]).astype(np.float32)
  got = fn(jnp.asarray(padded_logits), jnp.asarray(padded_labels), weights=jnp.asarray(mask))
  unpadded = fn(jnp.asarray(logits), jnp.asarray(labels))
  chex.assert_trees_all_close(got, unpadded, rtol=0, atol=0)
  assert not np.array_equal(np.asarray(fn(jnp.asarray(padded_logits), jnp.asarray(padded_labels))[1]),
                            np.asarray(unpadded[1]))


def test_counts_from_two_half_batches_sum_to_full_batch():
  shape, k, num_classes = (64, 10), 2, 10
  logits, labels = _inputs(shape, 40, "tied")
  fn = jax.jit(functools.partial(ntk.per_class_topk_counts, k=k, num_classes=num_classes))
  full = fn(jnp.asarray(logits), jnp.asarray(labels))
  first = fn(jnp.asarray(logits[:32]), jnp.asarray(labels[:32]))
  second = fn(jnp.asarray(logits[32:]), jnp.asarray(labels[32:]))
  chex.assert_trees_all_close(jax.tree.map(lambda a, b: a + b, first, second), full, rtol=0, atol=0)
  # Accuracies from the summed counts equal the full-batch accuracies.
  top, macro, per_class = ntk.accuracies_from_counts(*full)
  np.testing.assert_allclose(float(top), ref.topk_accuracy(logits, labels, k), atol=1e-6)
  np.testing.assert_allclose(float(macro), ref.macro_topk_accuracy(logits, labels, k, num_classes), atol=1e-6)
  np.testing.assert_allclose(np.asarray(per_class), ref.per_class_topk_accuracy(logits, labels, k, num_classes),
                             atol=1e-6, equal_nan=True)


@pytest.mark.two_devices
def test_counts_summed_across_devices_with_pmap():
  assert jax.device_count() == 2
  shape, k, num_classes = (2, 32, 10), 3, 12
  logits, labels = _inputs(shape, 50, "tied")

  def per_device(s, y):
    counts = ntk.per_class_topk_counts(s, y, k=k, num_classes=num_classes)
    return jax.lax.psum(counts, axis_name="d")

  correct, total = jax.pmap(per_device, axis_name="d")(jnp.asarray(logits), jnp.asarray(labels))
  want_correct, want_total = ref.per_class_topk_counts(logits, labels, k, num_classes)
  for d in range(2):
    np.testing.assert_array_equal(np.asarray(correct[d]), want_correct)
    np.testing.assert_array_equal(np.asarray(total[d]), want_total)
  acc = jax.pmap(functools.partial(ntk.topk_accuracy, k=k))(jnp.asarray(logits), jnp.asarray(labels))
  for d in range(2):
    np.testing.assert_allclose(float(acc[d]), ref.topk_accuracy(logits[d], labels[d], k), atol=1e-6)


@use_jit_param
def test_accuracies_from_counts(use_jit):
  correct = np.array([3., 0., 5., 0., 1.5], np.float32)
  total = np.array([4., 2., 5., 0., 3.], np.float32)
  top, macro, per_class = _maybe_jit(ntk.accuracies_from_counts, use_jit)(jnp.asarray(correct), jnp.asarray(total))
  want_top, want_macro, want_per_class = ref.accuracies_from_counts(correct, total)
  chex.assert_shape((top, macro), ())
  chex.assert_shape(per_class, (5,))
  np.testing.assert_allclose(float(top), want_top, rtol=1e-6)
  np.testing.assert_allclose(float(macro), want_macro, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(per_class), want_per_class, rtol=1e-6, equal_nan=True)
  assert np.isnan(np.asarray(per_class)[3]) and not np.isnan(np.asarray(per_class)[1])


def test_vmap_over_an_outer_axis():
  logits, labels = _inputs((3, 20, 10), 60, "tied")
  got = jax.jit(jax.vmap(functools.partial(ntk.topk_accuracy, k=2)))(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(np.asarray(got), [ref.topk_accuracy(logits[i], labels[i], 2) for i in range(3)],
                             atol=1e-6)


def test_bfloat16_logits_use_their_own_ties():
  # bfloat16 rounding creates ties; the rule must apply to the bfloat16 values themselves.
  logits, labels = _inputs((200, 10), 70, "normal")
  x16 = jnp.asarray(logits * 1e-2 + 1.0, jnp.bfloat16)
  exact = np.asarray(x16, np.float64)
  assert any(len(np.unique(r)) < 10 for r in exact)  # there really are ties
  for k in (1, 3):
    np.testing.assert_allclose(float(ntk.topk_accuracy(x16, labels, k=k)), ref.topk_accuracy(exact, labels, k),
                               atol=1e-6)
    correct, total = ntk.per_class_topk_counts(x16, labels, k=k, num_classes=10)
    want_correct, want_total = ref.per_class_topk_counts(exact, labels, k, 10)
    np.testing.assert_array_equal(np.asarray(correct), want_correct)
    np.testing.assert_array_equal(np.asarray(total), want_total)


def test_float64_logits_under_x64():
  with jax.enable_x64(True):
    logits = np.random.default_rng(80).standard_normal((40, 10))
    logits[:, 3] = logits[:, 5] = logits.max(axis=-1) + 1e-12  # ties only float64 can see
    labels = np.random.default_rng(81).integers(0, 10, size=40)
    labels[:20] = 5
    for k in (1, 2):
      np.testing.assert_allclose(float(ntk.topk_accuracy(jnp.asarray(logits), jnp.asarray(labels), k=k)),
                                 ref.topk_accuracy(logits, labels, k), atol=1e-12)
  assert jnp.asarray(1.0).dtype == jnp.float32


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs.


def _bad_metric_calls():
  y = jnp.zeros((4,), jnp.int32)
  return [
      ("k", ValueError, lambda s: ntk.topk_accuracy(s, y, k=0)),
      ("k", ValueError, lambda s: ntk.topk_accuracy(s, y, k=6)),
      ("k", ValueError, lambda s: ntk.per_class_topk_counts(s, y, k=0, num_classes=5)),
      ("k", ValueError, lambda s: ntk.macro_topk_accuracy(s, y, k=6, num_classes=5)),
      ("labels", TypeError, lambda s: ntk.topk_accuracy(s, jnp.zeros((4,), jnp.float32), k=1)),
      ("labels", TypeError, lambda s: ntk.per_class_topk_accuracy(s, jnp.zeros((4,)), k=1, num_classes=5)),
      ("labels", ValueError, lambda s: ntk.topk_accuracy(s, jnp.zeros((3,), jnp.int32), k=1)),
      ("labels", ValueError, lambda s: ntk.per_class_topk_counts(s, jnp.zeros((4, 1), jnp.int32), k=1,
                                                                 num_classes=5)),
      ("weights", ValueError, lambda s: ntk.per_class_topk_counts(s, y, k=1, num_classes=5, weights=jnp.ones(3))),
  ]


@pytest.mark.parametrize("case", range(len(_bad_metric_calls())),
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(_bad_metric_calls())])
@use_jit_param
def test_bad_inputs_raise_naming_the_parameter(case, use_jit):
  param, error, call = _bad_metric_calls()[case]
  fn = jax.jit(call) if use_jit else call
  with pytest.raises(error, match=_names(param)):
    fn(jnp.zeros((4, 5)))


# ---------------------------------------------------------------------------------------------------------------------
# Average-k (Pl@ntNet-300K): threshold on validation probabilities, sets {j : p_j >= threshold}.


def _probs(shape, seed, kind="softmax", extra_classes=0):
  """Probabilities `[..., L + extra_classes]` (the extra classes get probability 0 and never occur as labels)."""
  rng = np.random.default_rng(seed)
  if kind == "softmax":
    x = 2.0 * rng.standard_normal(shape)
    p = np.exp(x - x.max(-1, keepdims=True))
  elif kind == "tied":  # few distinct values: ties everywhere, at the threshold too
    p = rng.integers(1, 4, size=shape).astype(np.float64)
  else:
    raise ValueError(kind)
  p /= p.sum(-1, keepdims=True)
  p = np.concatenate([p, np.zeros(shape[:-1] + (extra_classes,))], axis=-1)
  labels = rng.integers(0, shape[-1], size=shape[:-1])
  return p.astype(np.float32), labels.astype(np.int32)


def _released_threshold(probs, k):
  """The released code's formula on the float32 values, in float32: `0.5 * (sorted[n*k - 1] + sorted[n*k])`."""
  ordered = np.sort(probs.reshape(-1))[::-1]
  n = probs.shape[0]
  return np.float32(0.5) * (ordered[n * k - 1] + ordered[n * k])


AVGK_CASES = [((60, 10), 1), ((60, 10), 3), ((37, 10), 9), ((60, 10), 10), ((25, 100), 5), ((1, 7), 2)]


@pytest.mark.parametrize("kind", ["softmax", "tied"])
@use_jit_param
@pytest.mark.parametrize("shape,k", AVGK_CASES)
def test_average_k_threshold(shape, k, use_jit, kind):
  probs, _ = _probs(shape, 100 + k, kind)
  got = _maybe_jit(functools.partial(ntk.average_k_threshold, k=k), use_jit)(jnp.asarray(probs))
  chex.assert_shape(got, ())
  assert got.dtype == jnp.float32
  want = ref.average_k_threshold(probs, k)
  np.testing.assert_allclose(float(got), want, rtol=2e-7, atol=0)
  if k < shape[-1]:
    # Bit for bit the released code's float32 arithmetic.
    assert np.float32(got) == _released_threshold(probs, k)
  # The sets it gives hold k classes on average on these probabilities, more only through ties at the threshold.
  sizes = np.asarray(ntk.average_k_set_sizes(jnp.asarray(probs), threshold=got))
  np.testing.assert_array_equal(sizes, ref.average_k_set_sizes(probs, float(got)))
  if kind == "softmax":
    assert sizes.sum() == shape[0] * k
  else:
    assert sizes.sum() >= shape[0] * k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_selection_behind_the_threshold_matches_a_sort(dtype):
  """The radix selection gives the m-th and (m+1)-th largest entries of any floats: signs, zeros, ties, infinities."""
  from noised_topk_jax import metrics  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(7)
  values = np.concatenate([rng.standard_normal(300) * 10.0 ** rng.integers(-30, 30, 300),
                           rng.choice([0.0, -0.0, 1.5, -1.5, np.inf, -np.inf], 100), np.full(40, 0.125)])
  values = rng.permutation(values).astype(dtype)
  ordered = np.sort(values)[::-1]
  with jax.enable_x64(dtype == np.float64):
    select = jax.jit(metrics._mth_and_next_largest, static_argnums=1)  # pylint: disable=protected-access
    # Inside and at the last entry of tied blocks, and spread over the rest.
    tied = [int(np.argmax(ordered == v)) + j for v in (0.125, 1.5, np.inf) for j in (1, 3)]
    tied.append(int(np.argmax(ordered == 0.125)) + 40)
    for m in [1, 2, 50, 99, 100, 101, 200, 250, 399, 400, 438, values.size - 1] + tied:
      upper, lower = select(jnp.asarray(values), m)
      assert upper.dtype == dtype and lower.dtype == dtype
      # == also equates -0.0 with 0.0, which a sort may order either way.
      assert upper == ordered[m - 1] and lower == ordered[m], m


def test_average_k_threshold_ties_hand_checked():
  probs = jnp.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
  # k = 1: sorted 0.5, 0.5 | 0.25 ...: lambda = 0.375, one class per set.
  assert float(ntk.average_k_threshold(probs, k=1)) == 0.375
  np.testing.assert_array_equal(ntk.average_k_set_sizes(probs, threshold=0.375), [1, 1])
  # k = 2: the 4th and 5th largest are both 0.25: lambda = 0.25 and the tied entries all enter: sets of 3, not 2.
  assert float(ntk.average_k_threshold(probs, k=2)) == 0.25
  np.testing.assert_array_equal(ntk.average_k_set_sizes(probs, threshold=0.25), [3, 3])
  assert float(ntk.average_k_accuracy(probs, jnp.array([1, 2]), threshold=0.25)) == 1.0
  # k = L: the smallest entry (the released code would index past the end).
  assert float(ntk.average_k_threshold(probs, k=3)) == 0.25


def test_average_k_sets_adapt_to_ambiguity():
  # One global threshold: a confident example gets a set of 1, an ambiguous one a set of 3 (mean 2 = k).
  probs = jnp.array([[0.97, 0.01, 0.01, 0.01], [0.32, 0.32, 0.3, 0.06]])
  threshold = ntk.average_k_threshold(probs, k=2)
  np.testing.assert_array_equal(ntk.average_k_set_sizes(probs, threshold=threshold), [1, 3])
  # Top-2 would hold the label 2 of the ambiguous example out; its average-2 set holds it.
  labels = jnp.array([0, 2])
  assert float(ntk.topk_accuracy(probs, labels, k=2)) == 0.5
  assert float(ntk.average_k_accuracy(probs, labels, threshold=threshold)) == 1.0


@pytest.mark.parametrize("kind,use_jit", [("softmax", True), ("softmax", False), ("tied", True)])
@pytest.mark.parametrize("shape,k", [((80, 10), 1), ((80, 10), 3), ((2, 30, 20), 5), ((80, 10), 10)])
def test_average_k_accuracies_match_reference(shape, k, kind, use_jit):
  num_classes = shape[-1] + 3  # the last three classes never occur: left out of the macro average
  val, _ = _probs(shape, 200 + k, kind, extra_classes=3)
  test, labels = _probs(shape, 300 + k, kind, extra_classes=3)
  threshold = ntk.average_k_threshold(jnp.asarray(val.reshape(-1, num_classes)), k=k)
  t = float(threshold)
  acc = _maybe_jit(ntk.average_k_accuracy, use_jit)(jnp.asarray(test), jnp.asarray(labels), threshold=threshold)
  macro = _maybe_jit(functools.partial(ntk.macro_average_k_accuracy, num_classes=num_classes), use_jit)(
      jnp.asarray(test), jnp.asarray(labels), threshold=threshold)
  correct, total = _maybe_jit(functools.partial(ntk.per_class_average_k_counts, num_classes=num_classes), use_jit)(
      jnp.asarray(test), jnp.asarray(labels), threshold=threshold)
  sizes = _maybe_jit(ntk.average_k_set_sizes, use_jit)(jnp.asarray(test), threshold=threshold)
  chex.assert_shape((acc, macro), ())
  chex.assert_shape((correct, total), (num_classes,))
  chex.assert_shape(sizes, shape[:-1])
  assert sizes.dtype == jnp.int32
  np.testing.assert_allclose(float(acc), ref.average_k_accuracy(test, labels, t), rtol=0, atol=1e-6)
  want_macro = ref.macro_average_k_accuracy(test, labels, t, num_classes)
  np.testing.assert_allclose(float(macro), want_macro, rtol=0, atol=1e-6)
  want_correct, want_total = ref.per_class_average_k_counts(test, labels, t, num_classes)
  np.testing.assert_array_equal(np.asarray(correct), want_correct)
  np.testing.assert_array_equal(np.asarray(total), want_total)
  assert (want_total[-3:] == 0).all()
  np.testing.assert_array_equal(np.asarray(sizes), ref.average_k_set_sizes(test, t))
  # The (N k + 1)-th largest validation entry is at least 0: lambda > 0 keeps the never-seen classes (p = 0) out.
  assert t > 0 and (np.asarray(sizes) <= shape[-1]).all()


def test_average_k_accuracy_traced_threshold():
  probs, labels = _probs((50, 10), 400)
  threshold = ntk.average_k_threshold(jnp.asarray(probs), k=2)
  fn = jax.jit(lambda p, y, t: (ntk.average_k_accuracy(p, y, threshold=t),
                                ntk.macro_average_k_accuracy(p, y, threshold=t, num_classes=10)))
  acc, macro = fn(jnp.asarray(probs), jnp.asarray(labels), threshold)
  np.testing.assert_allclose(float(acc), ref.average_k_accuracy(probs, labels, float(threshold)), atol=1e-6)
  np.testing.assert_allclose(float(macro), ref.macro_average_k_accuracy(probs, labels, float(threshold), 10),
                             atol=1e-6)


@pytest.mark.two_devices
def test_average_k_counts_stream_over_batches_padding_and_devices():
  assert jax.device_count() == 2
  probs, labels = _probs((2, 32, 10), 500, "tied")
  threshold = float(ntk.average_k_threshold(jnp.asarray(probs.reshape(-1, 10)), k=3))
  fn = jax.jit(functools.partial(ntk.per_class_average_k_counts, threshold=threshold, num_classes=12))
  full = fn(jnp.asarray(probs.reshape(-1, 10)), jnp.asarray(labels.reshape(-1)))
  want = ref.per_class_average_k_counts(probs, labels, threshold, 12)
  chex.assert_trees_all_close(full, tuple(np.float32(w) for w in want), rtol=0, atol=0)
  halves = jax.tree.map(lambda a, b: a + b, fn(jnp.asarray(probs[0]), jnp.asarray(labels[0])),
                        fn(jnp.asarray(probs[1]), jnp.asarray(labels[1])))
  chex.assert_trees_all_close(halves, full, rtol=0, atol=0)
  # Padding with weight 0 changes nothing; without the mask it does.
  junk, junk_labels = _probs((8, 10), 501)
  padded = (jnp.asarray(np.concatenate([probs[0], junk])), jnp.asarray(np.concatenate([labels[0], junk_labels])))
  mask = jnp.asarray(np.concatenate([np.ones(32), np.zeros(8)]), jnp.float32)
  chex.assert_trees_all_close(fn(*padded, weights=mask), fn(jnp.asarray(probs[0]), jnp.asarray(labels[0])),
                              rtol=0, atol=0)
  assert float(fn(*padded)[1].sum()) == 40.0
  # Summed over two devices with psum.
  per_device = jax.pmap(lambda p, y: jax.lax.psum(ntk.per_class_average_k_counts(
      p, y, threshold=threshold, num_classes=12), "d"), axis_name="d")
  correct, total = per_device(jnp.asarray(probs), jnp.asarray(labels))
  for d in range(2):
    np.testing.assert_array_equal(np.asarray(correct[d]), want[0])
    np.testing.assert_array_equal(np.asarray(total[d]), want[1])


def test_average_k_bfloat16_and_float64():
  probs, labels = _probs((40, 10), 600)
  p16 = jnp.asarray(probs, jnp.bfloat16)
  exact = np.asarray(p16, np.float64)
  t16 = ntk.average_k_threshold(p16, k=2)
  assert t16.dtype == jnp.float32  # half precision: threshold and comparisons in float32
  np.testing.assert_allclose(float(t16), ref.average_k_threshold(exact, 2), rtol=1e-7)
  np.testing.assert_array_equal(np.asarray(ntk.average_k_set_sizes(p16, threshold=t16)),
                                ref.average_k_set_sizes(exact, float(t16)))
  np.testing.assert_allclose(float(ntk.average_k_accuracy(p16, labels, threshold=t16)),
                             ref.average_k_accuracy(exact, labels, float(t16)), atol=1e-6)
  with jax.enable_x64(True):
    p64 = np.random.default_rng(601).dirichlet(np.ones(10), size=40)
    t64 = ntk.average_k_threshold(jnp.asarray(p64), k=3)
    assert t64.dtype == jnp.float64
    assert float(t64) == ref.average_k_threshold(p64, 3)
    # The threshold and comparisons stay in float64; the accuracies are float32 (accuracies_from_counts), and the
    # mean of ten per-class ratios may round differently by backend (GPU: 1.4e-7 relative): two float32 ulps.
    np.testing.assert_allclose(float(ntk.macro_average_k_accuracy(jnp.asarray(p64), labels, threshold=t64,
                                                                  num_classes=10)),
                               ref.macro_average_k_accuracy(p64, labels, float(t64), 10), rtol=2.0**-22, atol=0)


def _bad_average_k_calls():
  y = jnp.zeros((4,), jnp.int32)
  return [
      ("k", ValueError, lambda p: ntk.average_k_threshold(p, k=0)),
      ("k", ValueError, lambda p: ntk.average_k_threshold(p, k=6)),
      ("k", TypeError, lambda p: ntk.average_k_threshold(p, k=2.0)),
      ("probs", ValueError, lambda p: ntk.average_k_threshold(p[0], k=1)),
      ("probs", ValueError, lambda p: ntk.average_k_threshold(p[None], k=1)),
      ("probs", ValueError, lambda p: ntk.average_k_threshold(p[:0], k=1)),
      ("probs", TypeError, lambda p: ntk.average_k_threshold(p.astype(jnp.int32), k=1)),
      ("probs", TypeError, lambda p: ntk.average_k_accuracy(p.astype(jnp.int32), y, threshold=0.1)),
      ("threshold", ValueError, lambda p: ntk.average_k_accuracy(p, y, threshold=float("nan"))),
      ("threshold", ValueError, lambda p: ntk.average_k_set_sizes(p, threshold=float("inf"))),
      ("threshold", ValueError, lambda p: ntk.macro_average_k_accuracy(p, y, threshold=-np.inf, num_classes=5)),
      ("threshold", ValueError, lambda p: ntk.per_class_average_k_counts(p, y, threshold=jnp.array([0.1, 0.2]),
                                                                         num_classes=5)),
      ("threshold", TypeError, lambda p: ntk.average_k_accuracy(p, y, threshold="0.1")),
      ("labels", ValueError, lambda p: ntk.average_k_accuracy(p, jnp.zeros((3,), jnp.int32), threshold=0.1)),
      ("labels", TypeError, lambda p: ntk.macro_average_k_accuracy(p, jnp.zeros(4), threshold=0.1, num_classes=5)),
      ("num_classes", ValueError, lambda p: ntk.per_class_average_k_counts(p, y, threshold=0.1, num_classes=0)),
      ("weights", ValueError, lambda p: ntk.per_class_average_k_counts(p, y, threshold=0.1, num_classes=5,
                                                                       weights=jnp.ones(3))),
  ]


@pytest.mark.parametrize("case", range(len(_bad_average_k_calls())),
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(_bad_average_k_calls())])
@use_jit_param
def test_average_k_bad_inputs_raise_naming_the_parameter(case, use_jit):
  param, error, call = _bad_average_k_calls()[case]
  fn = jax.jit(call) if use_jit else call
  with pytest.raises(error, match=_names(param)):
    fn(jnp.full((4, 5), 0.2))
