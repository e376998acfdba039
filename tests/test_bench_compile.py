"""benchmarks/bench_compile.py's sort-based reference step is the library's loss with sorts: same values and
gradients, so its "sort / selection" ratio compares two implementations of one function."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_compile  # pylint: disable=wrong-import-position


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sorted_step_matches_the_library_in_both_branches(k):
  rng = np.random.default_rng(k)
  logits = rng.uniform(-1.0, 1.0, size=(12, 9)).astype(np.float32)
  logits[:4, :k] += 10.0  # a gap of 10 > k tau log(1000) after rank k: these rows take the hard branch
  logits[4, :] = 0.5  # ties everywhere
  labels = jnp.asarray(rng.integers(0, 9, size=12).astype(np.int32))
  value, grad = bench_compile._step(labels, k)(jnp.asarray(logits))  # pylint: disable=protected-access
  want_value, want_grad = bench_compile.sorted_step(labels, k)(jnp.asarray(logits))
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)

