"""Tests for the per-example losses against the NumPy float64 reference (values and gradients wrt the logits)."""
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


def _with_modes(cases, eager=(0,)):
  """Every case jitted; the cases at indices `eager` also un-jitted (eager dispatch is slow on new shapes)."""
  return [case + (use_jit,) for i, case in enumerate(cases) for use_jit in ((False, True) if i in eager else (True,))]


SHAPES = [(6, 10), (2, 3, 10), (4, 100), (8, 5), (10,)]
SPEC_SELECTIONS = ("auto", "top_k", "sort", "max_mask")
SELECTIONS = SPEC_SELECTIONS + tuple(s for s in getattr(ntk, "SELECTIONS", ()) if s not in SPEC_SELECTIONS)

# float32 library against the float64 reference.
RTOL, ATOL = 1e-5, 1e-5
# Gradients compared with central finite differences of the reference, and the smooth SVM's log-space recursion.
FD_RTOL, FD_ATOL = 1e-4, 1e-5
SVM_RTOL, SVM_ATOL = 1e-4, 1e-4


def _names(param):
  return r"\b" + re.escape(param) + r"\b"


def _inputs(shape, seed, scale=1.0, uniform=False):
  rng = np.random.default_rng(seed)
  if uniform:
    logits = rng.uniform(-1.0, 1.0, size=shape)
  else:
    logits = scale * rng.standard_normal(shape)
  labels = rng.integers(0, shape[-1], size=shape[:-1])
  return logits.astype(np.float32), labels.astype(np.int32)


def _noise(num_samples, shape, seed):
  return np.random.default_rng(seed + 500).standard_normal((num_samples,) + tuple(shape)).astype(np.float32)


def _cotangent(shape, seed=99):
  return np.random.default_rng(seed).uniform(0.5, 1.5, size=shape).astype(np.float32)


def _value_and_vjp(loss_fn, use_jit):
  """(per-example loss, cotangent-weighted gradient wrt logits) of loss_fn(logits, labels)."""

  def both(logits, labels, cotangent):
    value, pullback = jax.vjp(lambda x: loss_fn(x, labels), logits)
    return value, pullback(cotangent)[0]

  return jax.jit(both) if use_jit else both


_COMPILED = {}


def _check(loss_fn, ref_fn, logits, labels, use_jit, rtol=RTOL, atol=ATOL, grad_rtol=None, grad_atol=None,
           cache_key=None):
  """Library value and cotangent-weighted gradient against the reference.

  `cache_key` names the loss and its hyperparameters, so tests with equal hyperparameters reuse one jitted function
  (and its compilations) instead of retracing.
  """
  cot = _cotangent(labels.shape)
  if cache_key is None:
    fn = _value_and_vjp(loss_fn, use_jit)
  else:
    fn = _COMPILED.setdefault((cache_key, use_jit), _value_and_vjp(loss_fn, use_jit))
  value, grad = fn(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(cot))
  want_value, want_grad = ref_fn(logits, labels)[:2]
  chex.assert_shape(value, labels.shape)
  chex.assert_shape(grad, logits.shape)
  assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(value), want_value, rtol=rtol, atol=atol)
  np.testing.assert_allclose(np.asarray(grad), cot[..., None] * want_grad, rtol=grad_rtol or rtol,
                             atol=grad_atol or atol)


# ---------------------------------------------------------------------------------------------------------------------
# Cross-entropy, focal, LDAM.


@pytest.mark.parametrize("shape,use_jit", _with_modes([(s,) for s in SHAPES], eager=(1,)))
def test_cross_entropy(shape, use_jit):
  logits, labels = _inputs(shape, 1, scale=3.0)
  _check(ntk.cross_entropy_loss, ref.cross_entropy, logits, labels, use_jit)


@pytest.mark.parametrize("shape,gamma,use_jit", _with_modes(
    [((6, 10), 0.0), ((6, 10), 0.5), ((2, 3, 10), 2.0), ((4, 100), 5.0), ((8, 5), 2.0)], eager=(2,)))
def test_focal_loss(shape, gamma, use_jit):
  logits, labels = _inputs(shape, 2, scale=2.0)
  _check(functools.partial(ntk.focal_loss, gamma=gamma), lambda s, y: ref.focal_loss(s, y, gamma), logits, labels,
         use_jit, grad_rtol=FD_RTOL, grad_atol=FD_ATOL)


@pytest.mark.parametrize("shape,gamma,use_jit", _with_modes([((6, 10), 2.0), ((2, 3, 10), 0.5), ((8, 5), 1.0)]))
def test_focal_loss_with_weights(shape, gamma, use_jit):
  # Class-balanced focal (LDAM-DRW): the weight scales the cross-entropy inside the focusing factor.
  logits, labels = _inputs(shape, 12, scale=2.0)
  weights = np.random.default_rng(13).uniform(0.2, 3.0, size=shape[:-1]).astype(np.float32)
  _check(lambda s, y: ntk.focal_loss(s, y, gamma=gamma, weights=jnp.asarray(weights)),
         lambda s, y: ref.focal_loss(s, y, gamma, weights), logits, labels, use_jit, grad_rtol=FD_RTOL,
         grad_atol=FD_ATOL)
  chex.assert_trees_all_close(ntk.focal_loss(logits, labels, gamma=gamma, weights=jnp.ones(shape[:-1])),
                              ntk.focal_loss(logits, labels, gamma=gamma), rtol=1e-6, atol=1e-6)


def test_focal_gamma_zero_is_cross_entropy():
  logits, labels = _inputs((5, 10), 3)
  chex.assert_trees_all_close(ntk.focal_loss(logits, labels, gamma=0.0), ntk.cross_entropy_loss(logits, labels),
                              rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,scale,use_jit", _with_modes(
    [((6, 10), 1.0), ((2, 3, 10), 30.0), ((4, 100), 30.0), ((8, 5), 5.0)], eager=(1,)))
def test_ldam_loss(shape, scale, use_jit):
  logits, labels = _inputs(shape, 4, uniform=True)
  margins = np.random.default_rng(5).uniform(0.0, 0.5, size=shape[-1]).astype(np.float32)
  _check(functools.partial(ntk.ldam_loss, margins=jnp.asarray(margins), scale=scale),
         lambda s, y: ref.ldam_loss(s, y, margins, scale), logits, labels, use_jit, atol=1e-5 * scale)


def _counts(num_classes, seed=6):
  return np.random.default_rng(seed).integers(1, 5000, size=num_classes)


@pytest.mark.parametrize("shape,tau,use_jit", _with_modes(
    [((6, 10), 1.0), ((2, 3, 10), 0.5), ((4, 100), 2.0), ((8, 5), 0.0), ((10,), 1.5)], eager=(1,)))
def test_logit_adjusted_loss(shape, tau, use_jit):
  logits, labels = _inputs(shape, 7, scale=3.0)
  counts = _counts(shape[-1])
  _check(functools.partial(ntk.logit_adjusted_loss, class_counts=counts, tau=tau),
         lambda s, y: ref.logit_adjusted_loss(s, y, counts, tau), logits, labels, use_jit)


def test_balanced_softmax_is_logit_adjustment_at_tau_one_and_tau_zero_is_ce():
  logits, labels = _inputs((6, 10), 8, scale=2.0)
  counts = _counts(10)
  np.testing.assert_allclose(np.asarray(ntk.balanced_softmax_loss(logits, labels, class_counts=counts)),
                             ref.logit_adjusted_loss(logits, labels, counts, 1.0)[0], rtol=RTOL, atol=ATOL)
  # The balanced-softmax form -log(n_y e^{s_y} / sum_j n_j e^{s_j}), written out independently.
  scaled = counts[None, :] * np.exp(logits.astype(np.float64))
  direct = -np.log(scaled[np.arange(6), labels] / scaled.sum(-1))
  np.testing.assert_allclose(np.asarray(ntk.balanced_softmax_loss(logits, labels, class_counts=counts)), direct,
                             rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(ntk.logit_adjusted_loss(logits, labels, class_counts=counts, tau=0.0),
                              ntk.cross_entropy_loss(logits, labels), rtol=1e-6, atol=1e-6)


def test_logit_adjustment_composes_with_the_noised_loss():
  # Offsets added to the logits of another loss: the noised loss sees exactly the shifted scores.
  logits, labels = _inputs((6, 10), 9, uniform=True)
  counts = _counts(10)
  offsets = ntk.logit_adjustment(counts, tau=1.0)
  noise = _noise(4, (6, 10), 9)
  fn = lambda s: ntk.noised_topk_loss(s + offsets, labels, k=2, epsilon=0.5, noise=jnp.asarray(noise))
  value, grad = jax.jit(jax.vmap(jax.value_and_grad(lambda s, y, n: ntk.noised_topk_loss(
      s + offsets, y, k=2, epsilon=0.5, noise=n)), in_axes=(0, 0, 1)))(jnp.asarray(logits), labels, noise)
  want_value, want_grad = ref.noised_topk_loss(logits + offsets, labels, 2, 0.5, noise)[:2]
  np.testing.assert_allclose(np.asarray(fn(jnp.asarray(logits))), want_value, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(value), want_value, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------------------------------
# Top-k hinge and the noised top-k loss.


def _margins(kind, num_classes):
  if kind == "default":
    return None
  if kind == "scalar":
    return 0.3
  return np.random.default_rng(6).uniform(0.0, 0.8, size=num_classes).astype(np.float32)


def _margin_kwargs(margins):
  return {} if margins is None else {"margins": margins if np.isscalar(margins) else jnp.asarray(margins)}


def _ref_margins(margins):
  return 1.0 if margins is None else margins


@pytest.mark.parametrize("shape,k,margin_kind,use_jit", _with_modes(
    [((6, 10), 1, "default"), ((6, 10), 3, "per_class"), ((2, 3, 10), 2, "scalar"), ((2, 3, 10), 2, "per_class"),
     ((4, 100), 5, "per_class"), ((8, 5), 4, "scalar")], eager=(2, 3)))
def test_topk_hinge_loss(shape, k, margin_kind, use_jit):
  logits, labels = _inputs(shape, 7 + k)
  margins = _margins(margin_kind, shape[-1])
  _check(functools.partial(ntk.topk_hinge_loss, k=k, **_margin_kwargs(margins)),
         lambda s, y: ref.topk_hinge_loss(s, y, k, _ref_margins(margins)), logits, labels, use_jit)


def test_topk_hinge_loss_ties_and_zero_hinge():
  logits = np.array([[2.5, 2., 2., 0.], [1., 1., 1., 1.], [0., 2., 2., 2.], [3., 1., 0., 2.]], np.float32)
  labels = np.array([0, 2, 0, 0], np.int32)
  # Row 3: 1 + top_2 (= 2) - s_y (= 3) = 0 exactly: loss 0 and, with the 1[hinge > 0] convention, gradient 0.
  value, grad = jax.jit(jax.value_and_grad(lambda s: ntk.topk_hinge_loss(s, labels, k=1).sum()))(jnp.asarray(logits))
  per_example = ntk.topk_hinge_loss(jnp.asarray(logits), jnp.asarray(labels), k=1)
  want_value, want_grad = ref.topk_hinge_loss(logits, labels, 1)
  np.testing.assert_allclose(np.asarray(per_example), want_value, rtol=0, atol=1e-7)
  # Ties: the (k+1)-th largest is the second of the equal entries in index order (lax.top_k order).
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=0, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(grad)[3], 0.0)
  np.testing.assert_array_equal(np.asarray(grad)[:3], [[-1., 1., 0., 0.], [0., 1., -1., 0.], [-1., 0., 1., 0.]])
  # Same at a zero hinge for the noised loss with epsilon = 0.
  noised = jax.grad(lambda s: ntk.noised_topk_loss(s, labels, k=1, epsilon=0.0, noise=jnp.zeros((2,) + logits.shape),
                                                   scale=2.0).sum())(jnp.asarray(logits))
  np.testing.assert_allclose(np.asarray(noised), 2.0 * want_grad, rtol=0, atol=1e-7)


NOISED_CASES = [((6, 10), 1, 1.0, 5, "default", 1.0), ((6, 10), 3, 0.2, 1, "scalar", 2.0),
                ((2, 3, 10), 2, 0.5, 4, "per_class", 1.0), ((4, 100), 5, 1.0, 5, "default", 1.0),
                ((4, 100), 5, 0.01, 5, "per_class", 60.0), ((8, 5), 4, 1.0, 3, "scalar", 1.0)]


@pytest.mark.parametrize("shape,k,epsilon,num_samples,margin_kind,scale,use_jit", _with_modes(NOISED_CASES, eager=(2,)))
def test_noised_topk_loss_explicit_noise(shape, k, epsilon, num_samples, margin_kind, scale, use_jit):
  logits, labels = _inputs(shape, 10 + k)
  noise = _noise(num_samples, shape, k)
  margins = _margins(margin_kind, shape[-1])
  loss_fn = functools.partial(ntk.noised_topk_loss, k=k, epsilon=epsilon, noise=jnp.asarray(noise), scale=scale,
                              **_margin_kwargs(margins))
  ref_fn = lambda s, y: ref.noised_topk_loss(s, y, k, epsilon, noise, _ref_margins(margins), scale)
  _check(loss_fn, ref_fn, logits, labels, use_jit, atol=ATOL * scale, grad_atol=1e-6 * scale)


def test_noised_topk_loss_passes_antithetic_to_the_operator():
  logits, labels = _inputs((6, 10), 31, uniform=True)
  key = jax.random.key(4)
  half = np.asarray(jax.random.normal(key, (2, 6, 10)), np.float32)
  noise = np.concatenate([half, -half])
  got = ntk.noised_topk_loss(logits, labels, k=2, epsilon=0.3, num_samples=4, key=key, antithetic=True)
  want = ref.noised_topk_loss(logits, labels, 2, 0.3, noise)[0]
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)
  with pytest.raises(ValueError, match=_names("num_samples")):
    ntk.noised_topk_loss(logits, labels, k=2, epsilon=0.3, num_samples=5, key=key, antithetic=True)


def test_noised_topk_loss_is_relu_of_the_mean():
  # Per-sample hinges of both signs: relu(mean) and mean(relu) differ by a wide margin here.
  num_classes, num_samples, k, epsilon = 6, 8, 1, 2.0
  logits = np.zeros((1, num_classes), np.float32)
  logits[0, 0] = 2.0
  labels = np.zeros((1,), np.int32)
  noise = _noise(num_samples, logits.shape, 3)
  value = float(ntk.noised_topk_loss(logits, labels, k=k, epsilon=epsilon, noise=noise, margins=0.0)[0])
  want, _ = ref.noised_topk_loss(logits, labels, k, epsilon, noise, margins=0.0)
  # Per-sample hinge: (k+1)-th largest of the perturbed scores minus the unperturbed true score.
  per_sample = np.sort(logits[0].astype(np.float64) + epsilon * noise[:, 0].astype(np.float64), axis=-1)[:, -2] - 2.0
  mean_of_relus = np.mean(np.maximum(per_sample, 0.0))
  assert abs(mean_of_relus - max(per_sample.mean(), 0.0)) > 0.05  # the two readings really differ
  np.testing.assert_allclose(value, want[0], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(value, max(per_sample.mean(), 0.0), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scale,use_jit", [(1.0, True), (3.0, False)])
def test_noised_topk_loss_key_gradient_structure(scale, use_jit):
  shape, k, num_samples = (2, 8, 10), 2, 5
  logits, labels = _inputs(shape, 20)
  # Half the examples get a confidently right true score: their hinge is inactive.
  np.put_along_axis(logits[:, ::2], labels[:, ::2, None], 6.0, axis=-1)

  def value_and_grad(s, y, key):
    f = lambda x: ntk.noised_topk_loss(x, y, k=k, epsilon=1.0, num_samples=num_samples, key=key, scale=scale)
    value, pullback = jax.vjp(f, s)
    return value, pullback(jnp.ones(y.shape, s.dtype))[0]

  fn = jax.jit(value_and_grad) if use_jit else value_and_grad
  value, grad = fn(jnp.asarray(logits), jnp.asarray(labels), jax.random.key(4))
  value, grad = np.asarray(value), np.asarray(grad) / scale
  active = value > 0
  assert active.any() and (~active).any()
  onehot_y = np.eye(shape[-1])[labels]
  np.testing.assert_array_equal(grad[~active], 0.0)
  mean_onehots = grad[active] + onehot_y[active]
  np.testing.assert_allclose(mean_onehots.sum(-1), 1.0, rtol=0, atol=1e-5)
  np.testing.assert_allclose(mean_onehots * num_samples, np.round(mean_onehots * num_samples), rtol=0, atol=1e-4)
  assert np.all(mean_onehots >= -1e-6)


@pytest.mark.parametrize("mode", ["noise", "key"])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_noised_topk_loss_epsilon_zero_is_scaled_hinge(mode, scale):
  shape, k = (2, 3, 10), 3
  logits, labels = _inputs(shape, 21)
  extra = {"noise": jnp.asarray(_noise(4, shape, 1))} if mode == "noise" else {"key": jax.random.key(0),
                                                                              "num_samples": 4}
  noised = lambda s: ntk.noised_topk_loss(s, labels, k=k, epsilon=0.0, scale=scale, **extra)
  hinge = lambda s: scale * ntk.topk_hinge_loss(s, labels, k=k)
  v1, g1 = jax.jit(jax.value_and_grad(lambda s: noised(s).sum()))(jnp.asarray(logits))
  v2, g2 = jax.jit(jax.value_and_grad(lambda s: hinge(s).sum()))(jnp.asarray(logits))
  chex.assert_trees_all_close((v1, g1), (v2, g2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("epsilon", [1.0])
def test_noised_topk_loss_selection_variants_with_ties(selection, epsilon):
  # Same shapes as test_topk's tied inputs.
  rng = np.random.default_rng(22)
  logits = rng.integers(0, 3, size=(2, 4, 8)).astype(np.float32)
  labels = rng.integers(0, 8, size=(2, 4)).astype(np.int32)
  noise = rng.integers(-1, 2, size=(3, 2, 4, 8)).astype(np.float32)
  loss_fn = functools.partial(ntk.noised_topk_loss, k=2, epsilon=epsilon, noise=jnp.asarray(noise), margins=0.5,
                              selection=selection)
  _check(loss_fn, lambda s, y: ref.noised_topk_loss(s, y, 2, epsilon, noise, margins=0.5), logits, labels, True,
         rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Smooth top-k SVM (Berrada et al.): brute-force enumeration of k-subsets, hard switch included.


def _svm_inputs(shape, seed, k, tau, hard_rows):
  """Uniform(-1, 1) logits (gaps < 2, so smooth when k tau log 1000 > 2); `hard_rows` get k boosted classes."""
  logits, labels = _inputs(shape, seed, uniform=True)
  flat = logits.reshape(-1, shape[-1])
  flat_labels = labels.reshape(-1)
  rng = np.random.default_rng(seed + 1)
  boost = k * tau * np.log(1000.0) + 3.0
  for i in range(flat.shape[0]):
    if hard_rows == "all" or (hard_rows == "alternate" and i % 2 == 0):
      chosen = rng.choice(shape[-1], size=k, replace=False)
      if i % 4 == 0:  # make sure both "label among the top k" and not are covered
        chosen[0] = flat_labels[i] if flat_labels[i] not in chosen else chosen[0]
      flat[i, chosen] += boost
  return flat.reshape(shape), labels


def _assert_branches(logits, k, tau, hard_rows):
  uses_hard = np.array([ref.smooth_topk_svm_uses_hard(r, k, tau) for r in logits.reshape(-1, logits.shape[-1])])
  if hard_rows == "none":
    assert not uses_hard.any()
  elif hard_rows == "all":
    assert uses_hard.all()
  else:
    assert uses_hard.any() and (~uses_hard).any()


# The library's log-space recursion is traced per (shape, k) (log2(L) levels; a second or two to compile on CPU): few
# shapes and ks, and one cached jitted function per hyperparameter set. Every batch mixes rows in the smooth regime
# with rows past the hard switch (label among the boosted top k, or not).
SVM_CASES = [((4, 3), 1, 1.0, 1.0), ((6, 10), 3, 0.1, 1.0), ((2, 3, 10), 2, 0.5, 0.5), ((8, 5), 4, 2.0, 1.0),
             ((3, 100), 2, 0.5, 2.0)]
SVM_PARAMS = [(case, "alternate", use_jit) for i, case in enumerate(SVM_CASES)
              for use_jit in ((False, True) if i == 0 else (True,))]


@pytest.mark.parametrize("case,hard_rows,use_jit", SVM_PARAMS,
                         ids=[f"{c[0]}-k{c[1]}-tau{c[2]}-alpha{c[3]}-{'jit' if j else 'eager'}"
                              for c, _, j in SVM_PARAMS])
def test_smooth_topk_svm(case, hard_rows, use_jit):
  shape, k, tau, alpha = case
  # "alternate": every other row has its k largest scores boosted past the switch, with the label among them or not.
  logits, labels = _svm_inputs(shape, 30 + k, k, tau, hard_rows)
  _assert_branches(logits, k, tau, hard_rows)
  _check(functools.partial(ntk.smooth_topk_svm_loss, k=k, tau=tau, alpha=alpha),
         lambda s, y: ref.smooth_topk_svm_loss(s, y, k, tau, alpha), logits, labels, use_jit, rtol=SVM_RTOL,
         atol=SVM_ATOL, cache_key=("svm", k, tau, alpha))


@pytest.mark.parametrize("k", [3])
def test_smooth_topk_svm_all_rows_hard(k):
  logits, labels = _svm_inputs((6, 10), 35 + k, k, 0.1, "all")
  _assert_branches(logits, k, 0.1, "all")
  _check(functools.partial(ntk.smooth_topk_svm_loss, k=k, tau=0.1),
         lambda s, y: ref.smooth_topk_svm_loss(s, y, k, 0.1), logits, labels, True, rtol=SVM_RTOL, atol=SVM_ATOL,
         cache_key=("svm", k, 0.1, 1.0))


@pytest.mark.parametrize("k", [3])
def test_smooth_topk_svm_small_tau_either_branch(k):
  # tau = 0.1 (the Pl@ntNet setting): the reference decides the branch of every row itself.
  logits, labels = _inputs((6, 10), 40 + k, scale=1.0)
  _check(functools.partial(ntk.smooth_topk_svm_loss, k=k, tau=0.1),
         lambda s, y: ref.smooth_topk_svm_loss(s, y, k, 0.1), logits, labels, True, rtol=SVM_RTOL, atol=SVM_ATOL,
         cache_key=("svm", k, 0.1, 1.0))


@pytest.mark.parametrize("shape,k,tau,alpha", [((8, 5), 1, 1.0, 1.0), ((2, 3, 10), 2, 0.5, 0.5)])
def test_smooth_topk_svm_switch_boundary(shape, k, tau, alpha):
  # Gaps top_k - top_{k+1} on both sides of k tau log(1000) (and between k tau log(100) and it): only the exact
  # threshold of the released code puts every row on the reference's side. Near the switch the two branches differ
  # by ~tau exp(-gap / (k tau)), far above the tolerance for tau >= 0.5.
  threshold = k * tau * np.log(1000.0)
  factors = [0.5, 0.8, 0.9, 0.97, 0.995, 1.005, 1.03, 1.5]
  logits, labels = _inputs(shape, 45, uniform=True)
  flat, flat_labels = logits.reshape(-1, shape[-1]), labels.reshape(-1)
  for i in range(flat.shape[0]):
    order = np.argsort(-flat[i], kind="stable")
    flat[i, order[:k]] = flat[i, order[k]] + factors[i % len(factors)] * threshold + np.arange(k) * 0.01
    if i % 3 == 0:
      flat_labels[i] = order[0]
  logits, labels = flat.reshape(shape), flat_labels.reshape(shape[:-1])
  uses_hard = [ref.smooth_topk_svm_uses_hard(r, k, tau) for r in flat]
  assert any(uses_hard) and not all(uses_hard)
  _check(functools.partial(ntk.smooth_topk_svm_loss, k=k, tau=tau, alpha=alpha),
         lambda s, y: ref.smooth_topk_svm_loss(s, y, k, tau, alpha), logits, labels, True, rtol=SVM_RTOL,
         atol=SVM_ATOL, cache_key=("svm", k, tau, alpha))


def test_smooth_topk_svm_hard_branch_on_ties_has_the_value_and_a_subgradient():
  # x = [5, 5, 0, 0, 0], y = 4, k = 2, tau 0.1: the gap 5 between the 2nd and 3rd scores exceeds k tau log(1000), so
  # the hard loss applies: 1 + mean(5, 5) - (0 + 5) / 2 = 3.5. The two top scores tie; a subgradient puts 1/2 on one
  # of them (the two sums of the released formula cancel on the other) and -1/2 on y.
  logits = jnp.asarray([[5.0, 5.0, 0.0, 0.0, 0.0]], jnp.float32)
  labels = jnp.asarray([4])
  # Jitted (6 s op by op; test_smooth_topk_svm runs the eager path).
  value, grad = jax.jit(jax.value_and_grad(lambda s: ntk.smooth_topk_svm_loss(s, labels, k=2, tau=0.1).sum()))(
      logits)
  np.testing.assert_allclose(value, 3.5, rtol=1e-6)
  grad = np.asarray(grad)[0]
  np.testing.assert_allclose(np.sort(grad[:2]), [0.0, 0.5], atol=1e-7)
  np.testing.assert_allclose(grad[2:], [0.0, 0.0, -0.5], atol=1e-7)


def test_smooth_topk_svm_k1_closed_form():
  logits, labels = _inputs((8, 5), 41, scale=0.3)
  fn = _COMPILED.setdefault((("svm", 1, 1.0, 1.0), True), _value_and_vjp(
      functools.partial(ntk.smooth_topk_svm_loss, k=1, tau=1.0, alpha=1.0), True))
  value, _ = fn(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(labels.shape))
  np.testing.assert_allclose(np.asarray(value), ref.smooth_topk_svm_k1_closed_form(logits, labels, 1.0),
                             rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("hard_rows", ["alternate"])
@pytest.mark.parametrize("k", [3])
def test_smooth_topk_svm_float64_tight(k, hard_rows):
  with jax.enable_x64(True):
    logits, labels = _svm_inputs((6, 8), 42, k, 0.7, hard_rows)
    logits = logits.astype(np.float64) + 1e-3 * np.random.default_rng(0).standard_normal(logits.shape)
    value, grad = jax.jit(jax.value_and_grad(
        lambda s: ntk.smooth_topk_svm_loss(s, labels, k=k, tau=0.7, alpha=1.3).sum()))(jnp.asarray(logits))
    want_value, want_grad = ref.smooth_topk_svm_loss(logits, labels, k, 0.7, 1.3)
    assert grad.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(value), want_value.sum(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-7)


# Wide polynomials: k = 6 over 12 classes besides the label (levels of 12, 6, 3 + 1 padded, 2), and k = L - 1.
@pytest.mark.parametrize("shape,k", [((4, 13), 6), ((3, 7), 6)])
def test_smooth_topk_svm_float64_wide_k(shape, k):
  with jax.enable_x64(True):
    logits, labels = _svm_inputs(shape, 43, k, 0.7, "alternate")
    logits = logits.astype(np.float64) + 1e-3 * np.random.default_rng(1).standard_normal(logits.shape)
    _assert_branches(logits, k, 0.7, "alternate")
    value, grad = jax.jit(jax.value_and_grad(
        lambda s: ntk.smooth_topk_svm_loss(s, labels, k=k, tau=0.7, alpha=1.3).sum()))(jnp.asarray(logits))
    want_value, want_grad = ref.smooth_topk_svm_loss(logits, labels, k, 0.7, 1.3)
    np.testing.assert_allclose(np.asarray(value), want_value.sum(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# Max-margin loss (Kang, ICIP 2021): paper form, MM-LDAM, and the released code's behaviour.

MM_HYPER = [(1.29, 1.528, 19.0), (0.5, 10.0, 30.0)]


def _mm_inputs(shape, seed, compat):
  logits, labels = _inputs(shape, seed, uniform=True)
  logits = np.minimum(logits, 0.9)
  flat, flat_labels = logits.reshape(-1, shape[-1]), labels.reshape(-1)
  n = flat.shape[0]
  # A row whose true logit ties the best other logit: g == 0 exactly, Delta = 0.
  y = flat_labels[1]
  other = (y + 1) % shape[-1]
  flat[1, y] = 0.95
  flat[1, other] = 0.95
  # A row with a large positive gap and one with all logits negative (floor at 0 in compat mode).
  flat[0, flat_labels[0]] = 0.99
  flat[2, flat_labels[2]] = 0.99
  flat[3] = -np.abs(flat[3]) - 0.05
  if compat and n > 5:
    # Compat rows with g == 0: the first example's label column is the largest non-label logit of the row.
    y0 = flat_labels[0]
    for i in (4, 5):
      if flat_labels[i] == y0:
        flat_labels[i] = (y0 + 1) % shape[-1]
      flat[i, y0] = 0.97
      flat[i, flat_labels[i]] = 0.98
  return flat.reshape(shape), flat_labels.reshape(shape[:-1])


def _raw_ldam_margins(num_classes):
  counts = ref.long_tailed_counts(num_classes, 500, 100.0)
  return ref.class_margins(counts, 0.2).astype(np.float32)


MM_CASES = [((8, 10), "paper", MM_HYPER[0]), ((2, 4, 10), "paper", MM_HYPER[1]), ((6, 100), "ldam", MM_HYPER[0]),
            ((2, 4, 10), "ldam", MM_HYPER[1]), ((8, 10), "compat", MM_HYPER[0]), ((6, 100), "compat", MM_HYPER[1]),
            ((8, 5), "compat_ldam", MM_HYPER[0])]


@pytest.mark.parametrize("shape,mode,hyper,use_jit", _with_modes(MM_CASES, eager=(0, 4)))
def test_max_margin_loss(shape, mode, hyper, use_jit):
  compat = mode.startswith("compat")
  delta_minus, beta, scale = hyper
  logits, labels = _mm_inputs(shape, 50 + len(shape), compat)
  ldam = _raw_ldam_margins(shape[-1]) if mode.endswith("ldam") else None
  kwargs = dict(delta_minus=delta_minus, beta=beta, scale=scale, reference_code_compat=compat)
  if ldam is not None:
    kwargs["ldam_margins"] = jnp.asarray(ldam)
  ref_fn = lambda s, y: ref.max_margin_loss(s, y, delta_minus, beta, scale, ldam, compat)
  _, _, deltas, gaps = ref_fn(logits, labels)
  assert (gaps > 0).any() and (gaps < 0).any() and (gaps == 0).any()  # every branch of Delta is exercised
  _check(functools.partial(ntk.max_margin_loss, **kwargs), ref_fn, logits, labels, use_jit, atol=1e-5 * scale)


def test_max_margin_compat_reads_first_label_column_and_floors_at_zero():
  # Hand-made batch where the two released-code quirks change the answer.
  logits = np.array([[0.9, -0.2, -0.5], [-0.3, -0.4, -0.6], [-0.7, 0.8, -0.1]], np.float32)
  labels = np.array([0, 2, 1], np.int32)
  args = dict(delta_minus=0.5, beta=2.0, scale=10.0)
  compat = np.asarray(ntk.max_margin_loss(logits, labels, reference_code_compat=True, **args))
  paper = np.asarray(ntk.max_margin_loss(logits, labels, **args))
  want_compat, _, _, gaps_compat = ref.max_margin_loss(logits, labels, 0.5, 2.0, 10.0, reference_code_compat=True)
  want_paper, _, _, gaps_paper = ref.max_margin_loss(logits, labels, 0.5, 2.0, 10.0)
  # Row 1: positive read from column 0 (-0.3), negatives floored at 0 (-0.0 at the label) -> g = -0.3.
  np.testing.assert_allclose(gaps_compat, [0.9, -0.3, -0.7 - 0.0], atol=1e-7)
  np.testing.assert_allclose(gaps_paper, [1.1, -0.3, 0.9], atol=1e-7)
  np.testing.assert_allclose(compat, want_compat, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(paper, want_paper, rtol=RTOL, atol=ATOL)
  # The losses are small here (large true logits), so compare relatively: the quirks change them several-fold.
  assert np.max(np.abs(compat - paper) / paper) > 1.0


def test_max_margin_gap_carries_no_gradient():
  # With Delta held constant the gradient is scale * (softmax(scale (z - Delta e_y)) - e_y): rows sum to 0.
  logits, labels = _mm_inputs((8, 10), 55, False)
  grad = jax.jit(jax.grad(lambda s: ntk.max_margin_loss(s, labels, delta_minus=0.5, beta=10.0, scale=30.0).sum()))(
      logits)
  np.testing.assert_allclose(np.asarray(grad).sum(-1), 0.0, atol=1e-4)
  _, want_grad, _, _ = ref.max_margin_loss(logits, labels, 0.5, 10.0, 30.0)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=RTOL, atol=1e-4)


def test_max_margin_ldam_margins_are_used_as_given():
  # delta_minus_y = delta_minus - m_y with m as passed, not rescaled to a maximum of 0.5 (so that `max_margin` of
  # the trainer's mm_ldam matters): equal margins c are plain MM with delta_minus - c.
  logits, labels = _mm_inputs((8, 10), 57, False)
  args = dict(beta=1.528, scale=26.0)
  for c in (0.2, 0.5):
    with_margins = ntk.max_margin_loss(logits, labels, delta_minus=1.29, ldam_margins=jnp.full((10,), c), **args)
    shifted = ntk.max_margin_loss(logits, labels, delta_minus=1.29 - c, **args)
    np.testing.assert_allclose(with_margins, shifted, rtol=RTOL, atol=ATOL)
  # Per-class margins against the reference, for two maxima of `class_margins`: different losses.
  counts = ref.long_tailed_counts(10, 500, 100.0)
  got = {}
  for max_margin in (0.5, 0.2):
    m = ref.class_margins(counts, max_margin)
    got[max_margin] = np.asarray(ntk.max_margin_loss(logits, labels, delta_minus=1.29,
                                                     ldam_margins=jnp.asarray(m, jnp.float32), **args))
    want = ref.max_margin_loss(logits, labels, 1.29, 1.528, 26.0, m)[0]
    np.testing.assert_allclose(got[max_margin], want, rtol=RTOL, atol=1e-5 * 26.0)
  assert np.max(np.abs(got[0.5] - got[0.2])) > 1e-2


@use_jit_param
def test_max_margin_compat_reference_label(use_jit):
  # `reference_label` replaces labels[0] as the column read for every row (a data-parallel caller passes the global
  # batch's first label); a traced label works under jit.
  logits, labels = _mm_inputs((8, 10), 58, True)
  reference = (int(labels[0]) + 3) % 10
  fn = lambda s, y, r: ntk.max_margin_loss(s, y, delta_minus=0.5, beta=10.0, scale=5.0, reference_code_compat=True,
                                           reference_label=r)
  fn = jax.jit(fn) if use_jit else fn
  got = np.asarray(fn(jnp.asarray(logits), jnp.asarray(labels), jnp.int32(reference)))
  want = ref.max_margin_loss(logits, labels, 0.5, 10.0, 5.0, None, True, reference)[0]
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=5 * ATOL)
  default = ref.max_margin_loss(logits, labels, 0.5, 10.0, 5.0, None, True)[0]
  assert np.max(np.abs(want - default)) > 1e-2
  np.testing.assert_allclose(np.asarray(fn(jnp.asarray(logits), jnp.asarray(labels), labels[0])), default,
                             rtol=RTOL, atol=5 * ATOL)


# ---------------------------------------------------------------------------------------------------------------------
# weighted_mean.


@use_jit_param
@pytest.mark.parametrize("shape", [(7,), (2, 3)])
def test_weighted_mean(shape, use_jit):
  rng = np.random.default_rng(60)
  losses = rng.uniform(0, 3, size=shape).astype(np.float32)
  class_weights = rng.uniform(0.1, 2.0, size=4)
  weights = class_weights[rng.integers(0, 4, size=shape)].astype(np.float32)
  fn = jax.jit(ntk.weighted_mean) if use_jit else ntk.weighted_mean
  value, grad = jax.value_and_grad(fn)(jnp.asarray(losses), jnp.asarray(weights))
  chex.assert_shape(value, ())
  np.testing.assert_allclose(float(value), ref.weighted_mean(losses, weights), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), weights / weights.astype(np.float64).sum(), rtol=1e-5, atol=1e-7)
  # Not the plain mean divided by N.
  assert abs(float(value) - float(np.mean(weights * losses))) > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Every loss: robustness, dtypes and transformations. Factories take the logits shape and return
# (library fn(logits, labels), reference fn(logits, labels) -> (value, grad, ...), bf16 absolute tolerance).


def _loss_factories():
  def noised(shape, key_mode=False, **kw):
    if key_mode:
      return functools.partial(ntk.noised_topk_loss, k=2, epsilon=1.0, num_samples=4, key=jax.random.key(0), **kw)
    noise = _noise(4, shape, 0)
    return functools.partial(ntk.noised_topk_loss, k=2, epsilon=1.0, noise=jnp.asarray(noise), **kw), noise

  def noised_factory(shape):
    fn, noise = noised(shape)
    return fn, (lambda s, y: ref.noised_topk_loss(s, y, 2, 1.0, noise)), 3e-2

  def noised_imbalanced_factory(shape):
    margins = _raw_ldam_margins(shape[-1])
    fn, noise = noised(shape, margins=jnp.asarray(margins), scale=10.0)
    return fn, (lambda s, y: ref.noised_topk_loss(s, y, 2, 1.0, noise, margins, 10.0)), 3e-1

  ldam_m = lambda shape: _raw_ldam_margins(shape[-1])
  return {
      "cross_entropy": lambda shape: (ntk.cross_entropy_loss, ref.cross_entropy, 3e-2),
      "focal": lambda shape: (functools.partial(ntk.focal_loss, gamma=2.0),
                              lambda s, y: ref.focal_loss(s, y, 2.0), 3e-2),
      "focal_fractional": lambda shape: (functools.partial(ntk.focal_loss, gamma=0.5),
                                         lambda s, y: ref.focal_loss(s, y, 0.5), 3e-2),
      "ldam": lambda shape: (functools.partial(ntk.ldam_loss, margins=jnp.asarray(ldam_m(shape)), scale=5.0),
                             lambda s, y: ref.ldam_loss(s, y, ldam_m(shape), 5.0), 1.5e-1),
      "logit_adjusted": lambda shape: (
          functools.partial(ntk.logit_adjusted_loss, class_counts=_counts(shape[-1]), tau=1.0),
          lambda s, y: ref.logit_adjusted_loss(s, y, _counts(shape[-1]), 1.0), 3e-2),
      "topk_hinge": lambda shape: (functools.partial(ntk.topk_hinge_loss, k=2),
                                   lambda s, y: ref.topk_hinge_loss(s, y, 2), 3e-2),
      "noised_topk": noised_factory,
      "noised_topk_imbalanced": noised_imbalanced_factory,
      "smooth_svm": lambda shape: (functools.partial(ntk.smooth_topk_svm_loss, k=2, tau=0.5),
                                   lambda s, y: ref.smooth_topk_svm_loss(s, y, 2, 0.5), 5e-2),
      "max_margin": lambda shape: (
          functools.partial(ntk.max_margin_loss, delta_minus=0.5, beta=10.0, scale=5.0),
          lambda s, y: ref.max_margin_loss(s, y, 0.5, 10.0, 5.0), 1.5e-1),
      "max_margin_ldam": lambda shape: (
          functools.partial(ntk.max_margin_loss, delta_minus=1.29, beta=1.528, scale=5.0,
                            ldam_margins=jnp.asarray(ldam_m(shape))),
          lambda s, y: ref.max_margin_loss(s, y, 1.29, 1.528, 5.0, ldam_m(shape)), 1.5e-1),
      "max_margin_compat": lambda shape: (
          functools.partial(ntk.max_margin_loss, delta_minus=0.5, beta=10.0, scale=5.0, reference_code_compat=True),
          lambda s, y: ref.max_margin_loss(s, y, 0.5, 10.0, 5.0, None, True), 1.5e-1),
  }


LOSS_NAMES = sorted(_loss_factories())
CORE_LOSS_NAMES = ["cross_entropy", "focal", "ldam", "logit_adjusted", "topk_hinge", "noised_topk", "smooth_svm", "max_margin"]


def _extreme_fns(name, shape):
  """Library fns for the finiteness checks, including key-drawn noise for the noised losses."""
  fn = _loss_factories()[name](shape)[0]
  fns = [fn]
  if name.startswith("noised"):
    fns.append(functools.partial(ntk.noised_topk_loss, k=2, epsilon=1.0, num_samples=3, key=jax.random.key(1)))
  return fns


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_extreme_logits_finite(name):
  shape = (16, 10)
  logits, labels = _inputs(shape, 70, scale=1e4)
  logits[0] = 0.0  # constant row: ties everywhere
  logits[1, 3] = logits[1, 4] = logits[1].max() + 1.0  # tied maximum
  logits[2, labels[2]] = 1e4 * 50  # hugely confident and right: ce underflows to exactly 0
  logits[3] = np.sort(logits[3])  # near-tie at the top: keeps the smooth SVM in its smooth branch at huge scale
  logits[3, -4:] = logits[3, -1] - np.array([0.03, 0.02, 0.01, 0.0], np.float32)
  for fn in _extreme_fns(name, shape):
    (_, losses), grad = jax.jit(jax.value_and_grad(lambda s: (fn(s, labels).sum(), fn(s, labels)), has_aux=True))(
        jnp.asarray(logits))
    chex.assert_shape(losses, labels.shape)
    chex.assert_tree_all_finite((losses, grad))


@pytest.mark.parametrize("name", [n for n in CORE_LOSS_NAMES if n != "focal"])  # focal: see the next test
def test_extreme_logits_match_reference(name):
  # Values stay right (not merely finite) on logits of magnitude 1e2 in float32.
  shape = (6, 10)
  logits, labels = _inputs(shape, 71, scale=100.0)
  fn, ref_fn, _ = _loss_factories()[name](shape)
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(jnp.asarray(logits), labels)), ref_fn(logits, labels)[0],
                             rtol=1e-5, atol=5e-3)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_large_logits_value(gamma):
  logits, labels = _inputs((6, 10), 72, scale=100.0)
  np.testing.assert_allclose(np.asarray(jax.jit(functools.partial(ntk.focal_loss, gamma=gamma))(logits, labels)),
                             ref.focal_loss_value(logits, labels, gamma), rtol=1e-5, atol=5e-3)


# bfloat16 inputs are computed in float32 and the value and the gradient rounded once to bfloat16
# (`_checks.compute_dtype`): round-to-nearest with 8 significant bits errs by at most u = 2^-8 of the number, and
# float32's own error is below 1e-5 at these magnitudes (scale <= 5). Measured: at most 0.99 u, every loss, 4 seeds.
BF16_TOLERANCE = dict(rtol=2.0**-8, atol=1e-5)


@pytest.mark.parametrize("name", CORE_LOSS_NAMES)
def test_bfloat16_preserved(name):
  shape = (6, 10)
  logits, labels = _inputs(shape, 80, uniform=True)
  fn, ref_fn, _ = _loss_factories()[name](shape)
  x16 = jnp.asarray(logits, jnp.bfloat16)
  value, grad = jax.jit(_value_and_vjp(fn, False))(x16, jnp.asarray(labels), jnp.ones(labels.shape, jnp.bfloat16))
  assert value.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
  chex.assert_tree_all_finite((value, grad))
  # Against the float64 reference on the same (bf16-rounded) inputs, at bfloat16's rounding: *BF16_TOLERANCE.
  want_value, want_grad = ref_fn(np.asarray(x16, np.float64), labels)[:2]
  np.testing.assert_allclose(np.asarray(value, np.float32), want_value, **BF16_TOLERANCE)
  np.testing.assert_allclose(np.asarray(grad, np.float32), want_grad, **BF16_TOLERANCE)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_float64_preserved_under_x64(name):
  shape = (6, 10)
  with jax.enable_x64(True):
    logits, labels = _inputs(shape, 90, uniform=True)
    logits = logits.astype(np.float64) + 1e-3 * np.random.default_rng(1).standard_normal(shape)
    fn, ref_fn, _ = _loss_factories()[name](shape)
    if name.startswith("noised"):
      noise = np.asarray(fn.keywords["noise"], np.float64)
      fn = functools.partial(fn, noise=jnp.asarray(noise))
    value, grad = _value_and_vjp(fn, True)(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(labels.shape))
    assert value.dtype == jnp.float64 and grad.dtype == jnp.float64
    want_value, want_grad = ref_fn(logits, labels)[:2]
    np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-10, atol=1e-10)
    # Finite differences (focal, SVM) are good to ~1e-8; analytic reference gradients to rounding.
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-7)
  assert jnp.asarray(1.0).dtype == jnp.float32


@pytest.mark.parametrize("name", CORE_LOSS_NAMES)
def test_vmap_over_examples(name):
  # Mapping the loss over single examples gives the batched (reference) values and gradients.
  shape = (6, 10)
  logits, labels = _inputs(shape, 100)
  fn, ref_fn, _ = _loss_factories()[name](shape)
  if name.startswith("noised"):
    row_fn = lambda s, y, n: functools.partial(fn, noise=n)(s, y)
    in_axes, args = (0, 0, 1), (jnp.asarray(logits), jnp.asarray(labels), fn.keywords["noise"])
  else:
    row_fn, in_axes, args = fn, (0, 0), (jnp.asarray(logits), jnp.asarray(labels))
  value, grad = jax.jit(jax.vmap(jax.value_and_grad(row_fn), in_axes=in_axes))(*args)
  chex.assert_shape(value, labels.shape)
  want_value, want_grad = ref_fn(logits, labels)[:2]
  tol = SVM_ATOL if name == "smooth_svm" else 1e-5
  np.testing.assert_allclose(np.asarray(value), want_value, rtol=tol, atol=tol)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=tol, atol=tol)


def test_vmap_over_an_outer_batch_axis_for_compat_mode():
  logits, labels = _inputs((2, 5, 10), 101)
  fn = functools.partial(ntk.max_margin_loss, delta_minus=0.5, beta=10.0, scale=5.0, reference_code_compat=True)
  mapped = jax.jit(jax.vmap(fn))(jnp.asarray(logits), jnp.asarray(labels))
  for d in range(2):
    want = ref.max_margin_loss(logits[d], labels[d], 0.5, 10.0, 5.0, None, True)[0]
    np.testing.assert_allclose(np.asarray(mapped[d]), want, rtol=RTOL, atol=5 * ATOL)


@pytest.mark.parametrize("name", CORE_LOSS_NAMES + ["max_margin_compat"])
@pytest.mark.two_devices
def test_pmap_matches_reference_per_shard(name):
  assert jax.device_count() == 2
  shape = (2, 4, 10)
  logits, labels = _inputs(shape, 110)
  fn = _loss_factories()[name](shape)[0]
  if name.startswith("noised"):
    noise = np.asarray(fn.keywords["noise"])
    per_device = lambda s, y, n: jax.value_and_grad(lambda x: functools.partial(fn, noise=n)(x, y).sum())(s)
    value, grad = jax.pmap(per_device, in_axes=(0, 0, 1))(jnp.asarray(logits), jnp.asarray(labels), noise)
  else:
    per_device = lambda s, y: jax.value_and_grad(lambda x: fn(x, y).sum())(s)
    value, grad = jax.pmap(per_device)(jnp.asarray(logits), jnp.asarray(labels))
  chex.assert_shape(value, (2,))
  for d in range(2):
    # Each shard is an independent batch (in compat mode, with its own first label).
    ref_fn = _loss_factories()[name](shape[1:])[1]
    if name.startswith("noised"):
      want_value, want_grad = ref.noised_topk_loss(logits[d], labels[d], 2, 1.0, noise[:, d])
    else:
      want_value, want_grad = ref_fn(logits[d], labels[d])[:2]
    tol = SVM_ATOL if name == "smooth_svm" else 1e-5
    np.testing.assert_allclose(float(value[d]), want_value.sum(), rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(grad[d]), want_grad, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs: raised while tracing, the message naming the parameter.


def _bad_loss_calls():
  key = jax.random.key(0)
  noise = jnp.zeros((2, 3, 5))
  y = jnp.zeros((3,), jnp.int32)
  nl = ntk.noised_topk_loss
  mm = lambda s, **kwargs: ntk.max_margin_loss(s, y, delta_minus=0.5, beta=1.0, scale=1.0, **kwargs)
  return [
      ("labels", TypeError, lambda s: ntk.cross_entropy_loss(s, jnp.zeros((3,), jnp.float32))),
      ("labels", ValueError, lambda s: ntk.cross_entropy_loss(s, jnp.zeros((4,), jnp.int32))),
      ("labels", ValueError, lambda s: ntk.cross_entropy_loss(s, jnp.zeros((3, 1), jnp.int32))),
      ("labels", TypeError, lambda s: ntk.topk_hinge_loss(s, jnp.zeros((3,), jnp.float32), k=1)),
      ("labels", ValueError, lambda s: ntk.smooth_topk_svm_loss(s, jnp.zeros((2,), jnp.int32), k=1, tau=1.0)),
      ("labels", TypeError, lambda s: nl(s, jnp.zeros((3,)), k=1, epsilon=1.0, noise=noise)),
      ("labels", ValueError, lambda s: ntk.max_margin_loss(s, jnp.zeros((5,), jnp.int32), delta_minus=0.5, beta=1.0,
                                                           scale=1.0)),
      ("gamma", ValueError, lambda s: ntk.focal_loss(s, y, gamma=-0.5)),
      ("weights", ValueError, lambda s: ntk.focal_loss(s, y, gamma=2.0, weights=jnp.ones(4))),
      ("margins", ValueError, lambda s: ntk.ldam_loss(s, y, margins=jnp.zeros(4), scale=1.0)),
      ("k", ValueError, lambda s: ntk.topk_hinge_loss(s, y, k=0)),
      ("k", ValueError, lambda s: ntk.topk_hinge_loss(s, y, k=5)),
      ("margins", ValueError, lambda s: ntk.topk_hinge_loss(s, y, k=1, margins=jnp.ones(6))),
      ("k", ValueError, lambda s: nl(s, y, k=0, epsilon=1.0, noise=noise)),
      ("k", ValueError, lambda s: nl(s, y, k=5, epsilon=1.0, noise=noise)),
      ("epsilon", ValueError, lambda s: nl(s, y, k=1, epsilon=-1.0, noise=noise)),
      ("num_samples", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, num_samples=0, key=key)),
      ("key", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, num_samples=2)),
      ("noise", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, num_samples=2)),
      ("key", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, num_samples=2, key=key, noise=noise)),
      ("num_samples", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, num_samples=3, noise=noise)),
      ("noise", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, num_samples=2, key=key, noise=noise)),
      ("noise", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, noise=jnp.zeros((2, 3, 4)))),
      ("margins", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, noise=noise, margins=jnp.ones(3))),
      ("selection", ValueError, lambda s: nl(s, y, k=1, epsilon=1.0, noise=noise, selection="bogus")),
      ("k", ValueError, lambda s: ntk.smooth_topk_svm_loss(s, y, k=0, tau=1.0)),
      ("k", ValueError, lambda s: ntk.smooth_topk_svm_loss(s, y, k=5, tau=1.0)),
      ("tau", ValueError, lambda s: ntk.smooth_topk_svm_loss(s, y, k=1, tau=0.0)),
      ("tau", ValueError, lambda s: ntk.smooth_topk_svm_loss(s, y, k=1, tau=-1.0)),
      ("class_counts", ValueError, lambda s: ntk.logit_adjusted_loss(s, y, class_counts=[5, 4, 0, 2, 1])),
      ("class_counts", ValueError, lambda s: ntk.logit_adjusted_loss(s, y, class_counts=[5, 4, -3, 2, 1])),
      ("class_counts", ValueError, lambda s: ntk.logit_adjusted_loss(s, y, class_counts=[5, 4, 3, 2])),
      ("class_counts", ValueError, lambda s: ntk.balanced_softmax_loss(s, y, class_counts=[5, 4, 3, 2, 1, 1])),
      ("class_counts", ValueError, lambda s: ntk.logit_adjusted_loss(s, y, class_counts=[5, 4, np.inf, 2, 1])),
      ("tau", ValueError, lambda s: ntk.logit_adjusted_loss(s, y, class_counts=[5, 4, 3, 2, 1], tau=np.nan)),
      ("tau", ValueError, lambda s: ntk.logit_adjusted_loss(s, y, class_counts=[5, 4, 3, 2, 1], tau=np.inf)),
      ("tau", ValueError, lambda s: ntk.logit_adjusted_loss(s, y, class_counts=[5, 4, 3, 2, 1], tau=-1.0)),
      ("tau", TypeError, lambda s: ntk.logit_adjusted_loss(s, y, class_counts=[5, 4, 3, 2, 1], tau="1")),
      ("weights", ValueError, lambda s: ntk.weighted_mean(s[:, 0], jnp.ones(4))),
      ("ldam_margins", ValueError, lambda s: ntk.max_margin_loss(s, y, delta_minus=0.5, beta=1.0, scale=1.0,
                                                                 ldam_margins=jnp.ones(4))),
      ("reference_label", ValueError, lambda s: mm(s, reference_label=0)),
      ("reference_label", TypeError, lambda s: mm(s, reference_code_compat=True, reference_label=1.0)),
      ("reference_label", ValueError, lambda s: mm(s, reference_code_compat=True, reference_label=jnp.zeros(3, int))),
      ("reference_label", ValueError, lambda s: mm(s, reference_code_compat=True, reference_label=5)),
  ]


@pytest.mark.parametrize("case", range(len(_bad_loss_calls())),
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(_bad_loss_calls())])
@use_jit_param
def test_bad_inputs_raise_naming_the_parameter(case, use_jit):
  param, error, call = _bad_loss_calls()[case]
  fn = jax.jit(call) if use_jit else call
  with pytest.raises(error, match=_names(param)):
    fn(jnp.zeros((3, 5)))


def test_compat_mode_rejects_non_2d_logits():
  logits, labels = _inputs((2, 3, 5), 0)
  with pytest.raises(ValueError, match=_names("reference_code_compat")):
    ntk.max_margin_loss(jnp.asarray(logits), jnp.asarray(labels), delta_minus=0.5, beta=1.0, scale=1.0,
                        reference_code_compat=True)


def test_largest_allowed_k_is_accepted():
  logits, labels = _inputs((3, 5), 0)
  fn_svm = lambda s: ntk.smooth_topk_svm_loss(s, labels, k=4, tau=1.0)
  for fn in (lambda s: ntk.topk_hinge_loss(s, labels, k=4), fn_svm,
             lambda s: ntk.noised_topk_loss(s, labels, k=4, epsilon=1.0, num_samples=2, key=jax.random.key(0))):
    chex.assert_shape(jax.jit(fn)(logits), (3,))
  np.testing.assert_allclose(np.asarray(ntk.topk_hinge_loss(logits, labels, k=4)),
                             ref.topk_hinge_loss(logits, labels, 4)[0], rtol=RTOL, atol=ATOL)
  # Also checks the default alpha = 1.
  np.testing.assert_allclose(np.asarray(jax.jit(fn_svm)(logits)), ref.smooth_topk_svm_value(logits, labels, 4, 1.0),
                             rtol=SVM_RTOL, atol=SVM_ATOL)


# ---------------------------------------------------------------------------------------------------------------------
# VS loss (Kini et al., NeurIPS 2021): the reference follows the authors' form (logits divided by a per-class factor).

VS_CASES = [((6, 10), 0.2, 1.2), ((2, 3, 10), 0.3, 1.0), ((4, 100), 0.5, 0.0), ((8, 5), 0.0, 1.5), ((10,), 1.0, 0.5)]


def _vs(counts, gamma, tau):
  return functools.partial(ntk.vs_loss, class_counts=counts, gamma=gamma, tau=tau)


@pytest.mark.parametrize("shape,gamma,tau,use_jit", _with_modes(VS_CASES, eager=(1,)))
def test_vs_loss(shape, gamma, tau, use_jit):
  logits, labels = _inputs(shape, 120, scale=3.0)
  counts = _counts(shape[-1], seed=121)
  _check(_vs(counts, gamma, tau), lambda s, y: ref.vs_loss(s, y, counts, gamma, tau), logits, labels, use_jit)


def test_vs_loss_scales_each_logit_by_its_class_factor():
  # Counts 400 / 100 / 25 at gamma 0.5: the factors (n_j / n_max)^gamma are 1, 1/2, 1/4, applied to every logit (not
  # only the label's), and the head class keeps its logit. Written out by hand, with and without the prior term.
  logits = np.array([[2.0, 1.0, -1.0], [0.5, 3.0, 2.0], [-1.0, 0.0, 4.0]], np.float32)
  labels = np.array([0, 1, 2], np.int32)
  counts = np.array([400, 100, 25])
  for tau in (0.0, 0.7):
    z = logits.astype(np.float64) * np.array([1.0, 0.5, 0.25]) + tau * np.log(counts / 525.0)
    want = np.log(np.exp(z).sum(-1)) - z[np.arange(3), labels]
    np.testing.assert_allclose(np.asarray(ntk.vs_loss(logits, labels, class_counts=counts, gamma=0.5, tau=tau)), want,
                               rtol=RTOL, atol=ATOL)


def test_vs_loss_special_cases():
  logits, labels = _inputs((6, 10), 122, scale=2.0)
  counts = _counts(10, seed=123)
  # gamma = 0: logit adjustment; gamma = tau = 0: cross-entropy.
  chex.assert_trees_all_close(ntk.vs_loss(logits, labels, class_counts=counts, gamma=0.0, tau=1.3),
                              ntk.logit_adjusted_loss(logits, labels, class_counts=counts, tau=1.3), rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(ntk.vs_loss(logits, labels, class_counts=counts, gamma=0.0, tau=0.0),
                              ntk.cross_entropy_loss(logits, labels), rtol=1e-6, atol=1e-6)
  # Balanced counts: every factor is 1 and the offsets a constant shift, whatever gamma and tau.
  chex.assert_trees_all_close(ntk.vs_loss(logits, labels, class_counts=np.full(10, 37), gamma=0.8, tau=2.0),
                              ntk.cross_entropy_loss(logits, labels), rtol=1e-6, atol=1e-6)
  # Only the class frequencies matter: the prior is normalized and the factors are ratios to the largest count.
  chex.assert_trees_all_close(ntk.vs_loss(logits, labels, class_counts=counts, gamma=0.3, tau=1.0),
                              ntk.vs_loss(logits, labels, class_counts=7 * counts, gamma=0.3, tau=1.0),
                              rtol=1e-6, atol=1e-6)


def test_vs_loss_extreme_logits_finite():
  logits, labels = _inputs((16, 10), 124, scale=1e4)
  logits[0] = 0.0
  logits[2, labels[2]] = 5e5
  fn = _vs(_counts(10, seed=125), 0.2, 1.2)
  (_, losses), grad = jax.jit(jax.value_and_grad(lambda s: (fn(s, labels).sum(), fn(s, labels)), has_aux=True))(
      jnp.asarray(logits))
  chex.assert_tree_all_finite((losses, grad))
  np.testing.assert_allclose(np.asarray(losses), ref.vs_loss(logits, labels, _counts(10, seed=125), 0.2, 1.2)[0],
                             rtol=1e-5, atol=5e-3)


def test_vs_loss_bfloat16_preserved():
  logits, labels = _inputs((6, 10), 126, uniform=True)
  counts = _counts(10, seed=127)
  x16 = jnp.asarray(logits, jnp.bfloat16)
  value, grad = jax.jit(_value_and_vjp(_vs(counts, 0.2, 1.2), False))(x16, jnp.asarray(labels),
                                                                      jnp.ones(labels.shape, jnp.bfloat16))
  assert value.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
  want_value, want_grad = ref.vs_loss(np.asarray(x16, np.float64), labels, counts, 0.2, 1.2)
  np.testing.assert_allclose(np.asarray(value, np.float32), want_value, **BF16_TOLERANCE)
  np.testing.assert_allclose(np.asarray(grad, np.float32), want_grad, **BF16_TOLERANCE)


def test_vs_loss_float64_preserved_under_x64():
  with jax.enable_x64(True):
    logits, labels = _inputs((6, 10), 128, scale=2.0)
    logits = logits.astype(np.float64) + 1e-3 * np.random.default_rng(2).standard_normal(logits.shape)
    counts = _counts(10, seed=129)
    value, grad = _value_and_vjp(_vs(counts, 0.3, 1.0), True)(jnp.asarray(logits), jnp.asarray(labels),
                                                              jnp.ones(labels.shape))
    assert value.dtype == jnp.float64 and grad.dtype == jnp.float64
    want_value, want_grad = ref.vs_loss(logits, labels, counts, 0.3, 1.0)
    np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-12, atol=1e-12)
  assert jnp.asarray(1.0).dtype == jnp.float32


def test_vs_loss_vmap_over_examples():
  logits, labels = _inputs((6, 10), 130)
  counts = _counts(10, seed=131)
  value, grad = jax.jit(jax.vmap(jax.value_and_grad(_vs(counts, 0.2, 1.2))))(jnp.asarray(logits), jnp.asarray(labels))
  chex.assert_shape(value, labels.shape)
  want_value, want_grad = ref.vs_loss(logits, labels, counts, 0.2, 1.2)
  np.testing.assert_allclose(np.asarray(value), want_value, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=RTOL, atol=ATOL)


@pytest.mark.two_devices
def test_vs_loss_pmap_matches_reference_per_shard():
  assert jax.device_count() == 2
  logits, labels = _inputs((2, 4, 10), 132)
  counts = _counts(10, seed=133)
  fn = _vs(counts, 0.2, 1.2)
  value, grad = jax.pmap(lambda s, y: jax.value_and_grad(lambda x: fn(x, y).sum())(s))(jnp.asarray(logits),
                                                                                      jnp.asarray(labels))
  for d in range(2):
    want_value, want_grad = ref.vs_loss(logits[d], labels[d], counts, 0.2, 1.2)
    np.testing.assert_allclose(float(value[d]), want_value.sum(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(grad[d]), want_grad, rtol=RTOL, atol=ATOL)


def _bad_vs_calls():
  y = jnp.zeros((3,), jnp.int32)
  counts = [5, 4, 3, 2, 1]
  return [
      ("gamma", ValueError, lambda s: ntk.vs_loss(s, y, class_counts=counts, gamma=-0.1, tau=1.0)),
      ("gamma", ValueError, lambda s: ntk.vs_loss(s, y, class_counts=counts, gamma=np.nan, tau=1.0)),
      ("gamma", ValueError, lambda s: ntk.vs_loss(s, y, class_counts=counts, gamma=np.inf, tau=1.0)),
      ("gamma", TypeError, lambda s: ntk.vs_loss(s, y, class_counts=counts, gamma="0.2", tau=1.0)),
      ("tau", ValueError, lambda s: ntk.vs_loss(s, y, class_counts=counts, gamma=0.2, tau=-1.0)),
      ("tau", ValueError, lambda s: ntk.vs_loss(s, y, class_counts=counts, gamma=0.2, tau=np.nan)),
      ("class_counts", ValueError, lambda s: ntk.vs_loss(s, y, class_counts=[5, 4, 0, 2, 1], gamma=0.2, tau=1.0)),
      ("class_counts", ValueError, lambda s: ntk.vs_loss(s, y, class_counts=[5, 4, -3, 2, 1], gamma=0.2, tau=1.0)),
      ("class_counts", ValueError, lambda s: ntk.vs_loss(s, y, class_counts=[5, 4, 3, 2], gamma=0.2, tau=1.0)),
      ("labels", TypeError, lambda s: ntk.vs_loss(s, jnp.zeros((3,)), class_counts=counts, gamma=0.2, tau=1.0)),
  ]


@pytest.mark.parametrize("case", range(len(_bad_vs_calls())), ids=[f"{i}-{c[0]}" for i, c in enumerate(_bad_vs_calls())])
@use_jit_param
def test_vs_loss_bad_inputs_raise_naming_the_parameter(case, use_jit):
  param, error, call = _bad_vs_calls()[case]
  fn = jax.jit(call) if use_jit else call
  with pytest.raises(error, match=_names(param)):
    fn(jnp.zeros((3, 5)))
