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
