"""Tests for the class statistics (margins, class-balanced and DRW weights, long-tailed counts): NumPy in, NumPy out."""
import re

import numpy as np
import pytest

import noised_topk_jax as ntk
from tests import reference as ref

# Float64 NumPy on both sides: only the order of floating-point operations may differ.
RTOL = 1e-12

COUNTS = [
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
    [500, 500, 3, 1],
    [7],
    list(np.random.default_rng(0).integers(1, 20000, size=100)),
]


def _names(param):
  return r"\b" + re.escape(param) + r"\b"


def _assert_float64_array(x, length):
  assert isinstance(x, np.ndarray), type(x)
  assert x.dtype == np.float64, x.dtype
  assert x.shape == (length,), x.shape


# ---------------------------------------------------------------------------------------------------------------------
# Margins.


@pytest.mark.parametrize("max_margin", [0.5, 0.2])
@pytest.mark.parametrize("counts", COUNTS, ids=lambda c: f"L{len(c)}")
def test_class_margins(counts, max_margin):
  got = ntk.class_margins(np.asarray(counts), max_margin=max_margin)
  _assert_float64_array(got, len(counts))
  np.testing.assert_allclose(got, ref.class_margins(counts, max_margin), rtol=RTOL, atol=0)
  # The rarest class gets exactly max_margin.
  np.testing.assert_allclose(got[int(np.argmin(counts))], max_margin, rtol=RTOL)


@pytest.mark.parametrize("power", [0.25, 0.5, 1.0])
def test_class_margins_power_and_list_input(power):
  counts = [100, 10, 1000, 1]
  got = ntk.class_margins(counts, max_margin=1.0, power=power)
  _assert_float64_array(got, 4)
  np.testing.assert_allclose(got, ref.class_margins(counts, 1.0, power), rtol=RTOL)
  # m_j proportional to n_j^-power: the ratio of two margins is (n_i / n_j)^power.
  np.testing.assert_allclose(got[0] / got[2], (1000 / 100)**power, rtol=RTOL)


def test_class_margins_known_values():
  # m = n^-1/4 * 0.5 / 50^-1/4 for the CIFAR-10 rho=100 counts; head class 5000: 0.5 * (50/5000)^0.25.
  got = ntk.class_margins(np.array(COUNTS[0]), max_margin=0.5)
  np.testing.assert_allclose(got[0], 0.5 * (50 / 5000)**0.25, rtol=RTOL)
  np.testing.assert_allclose(got[-1], 0.5, rtol=RTOL)


# ---------------------------------------------------------------------------------------------------------------------
# Class-balanced and DRW weights.


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.99, 0.999, 0.9999])
@pytest.mark.parametrize("counts", COUNTS, ids=lambda c: f"L{len(c)}")
def test_class_balanced_weights(counts, beta):
  got = ntk.class_balanced_weights(np.asarray(counts, np.int64), beta=beta)
  _assert_float64_array(got, len(counts))
  np.testing.assert_allclose(got, ref.class_balanced_weights(counts, beta), rtol=1e-10, atol=0)
  np.testing.assert_allclose(got.sum(), len(counts), rtol=1e-12)


def test_class_balanced_weights_beta_zero_is_ones():
  np.testing.assert_array_equal(ntk.class_balanced_weights([5, 3, 1000], beta=0.0), np.ones(3))


def test_class_balanced_weights_known_values():
  # Two classes, beta = 0.5: raw (1 - b)/(1 - b^n) = 0.5/0.5 = 1 and 0.5/0.75 = 2/3, normalized to sum 2.
  got = ntk.class_balanced_weights([1, 2], beta=0.5)
  np.testing.assert_allclose(got, [2 * 1 / (5 / 3), 2 * (2 / 3) / (5 / 3)], rtol=RTOL)
  # Rarer classes weigh more.
  got = ntk.class_balanced_weights(np.array(COUNTS[0]), beta=0.9999)
  assert np.all(np.diff(got) > 0)


@pytest.mark.parametrize("beta", [None, 0.999])
@pytest.mark.parametrize("epoch,start_epoch", [(0, 160), (159, 160), (160, 160), (199, 160), (3, 0)])
def test_drw_class_weights(epoch, start_epoch, beta):
  counts = np.array(COUNTS[0])
  kwargs = {} if beta is None else {"beta": beta}
  got = ntk.drw_class_weights(counts, epoch=epoch, start_epoch=start_epoch, **kwargs)
  _assert_float64_array(got, len(counts))
  want = ref.drw_class_weights(counts, epoch, start_epoch, 0.9999 if beta is None else beta)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
  if epoch >= start_epoch:
    assert not np.allclose(got, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Long-tailed counts.


def test_long_tailed_counts_cifar10_exp_rho100():
  got = ntk.long_tailed_counts(10, max_count=5000, imbalance_ratio=100)
  assert isinstance(got, np.ndarray) and got.dtype == np.int64
  np.testing.assert_array_equal(got, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
  assert int(got.sum()) == 12406


@pytest.mark.parametrize("profile", ["exp", "step"])
@pytest.mark.parametrize("num_classes,max_count,rho", [(10, 5000, 100), (10, 5000, 50), (10, 5000, 10),
                                                       (100, 500, 100), (100, 500, 50), (100, 500, 10),
                                                       (7, 1000, 20), (10, 5000, 1), (2, 300, 3.5)])
def test_long_tailed_counts(num_classes, max_count, rho, profile):
  got = ntk.long_tailed_counts(num_classes, max_count=max_count, imbalance_ratio=rho, profile=profile)
  assert isinstance(got, np.ndarray) and got.dtype == np.int64
  np.testing.assert_array_equal(got, ref.long_tailed_counts(num_classes, max_count, rho, profile))
  assert got[0] == max_count and np.all(np.diff(got) <= 0)


def test_long_tailed_counts_step_profile_halves():
  got = ntk.long_tailed_counts(7, max_count=1000, imbalance_ratio=20, profile="step")
  np.testing.assert_array_equal(got, [1000, 1000, 1000, 50, 50, 50, 50])


def test_statistics_feed_each_other():
  # Counts from long_tailed_counts go straight into the margin and weight functions.
  counts = ntk.long_tailed_counts(100, max_count=500, imbalance_ratio=100)
  np.testing.assert_allclose(ntk.class_margins(counts, max_margin=0.5), ref.class_margins(counts, 0.5), rtol=RTOL)
  np.testing.assert_allclose(ntk.class_balanced_weights(counts, beta=0.9999),
                             ref.class_balanced_weights(counts, 0.9999), rtol=1e-10)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjustment(tau):
  counts = ntk.long_tailed_counts(10, max_count=5000, imbalance_ratio=100)
  got = ntk.logit_adjustment(counts, tau=tau)
  assert got.dtype == np.float32 and got.shape == (10,)
  np.testing.assert_allclose(got, ref.logit_adjustment(counts, tau), rtol=1e-6, atol=1e-7)
  # exp of the tau = 1 offsets is the class prior.
  if tau == 1.0:
    np.testing.assert_allclose(np.exp(got.astype(np.float64)).sum(), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs.

BAD_CALLS = [
    ("class_counts", lambda: ntk.class_margins([5, 0, 3], max_margin=0.5)),
    ("class_counts", lambda: ntk.class_margins(np.array([5, -2, 3]), max_margin=0.5)),
    ("class_counts", lambda: ntk.class_balanced_weights([5, 0], beta=0.9)),
    ("class_counts", lambda: ntk.class_balanced_weights(np.array([-1, 4]), beta=0.9)),
    ("class_counts", lambda: ntk.drw_class_weights([0, 4], epoch=200, start_epoch=160)),
    ("beta", lambda: ntk.class_balanced_weights([5, 3], beta=1.0)),
    ("beta", lambda: ntk.class_balanced_weights([5, 3], beta=-0.1)),
    ("beta", lambda: ntk.class_balanced_weights([5, 3], beta=1.5)),
    ("beta", lambda: ntk.drw_class_weights([5, 3], epoch=200, start_epoch=160, beta=1.0)),
    ("class_counts", lambda: ntk.logit_adjustment([5, 0, 3])),
    ("class_counts", lambda: ntk.logit_adjustment([[5, 3]])),
    ("class_counts", lambda: ntk.logit_adjustment([5, np.nan])),
    ("tau", lambda: ntk.logit_adjustment([5, 3], tau=np.nan)),
    ("tau", lambda: ntk.logit_adjustment([5, 3], tau=-0.5)),
    ("imbalance_ratio", lambda: ntk.long_tailed_counts(10, max_count=5000, imbalance_ratio=0.5)),
    ("imbalance_ratio", lambda: ntk.long_tailed_counts(10, max_count=5000, imbalance_ratio=-3.0)),
    ("profile", lambda: ntk.long_tailed_counts(10, max_count=5000, imbalance_ratio=10, profile="linear")),
]


@pytest.mark.parametrize("param,call", BAD_CALLS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD_CALLS)])
def test_bad_inputs_raise_naming_the_parameter(param, call):
  with pytest.raises(ValueError, match=_names(param)):
    call()
