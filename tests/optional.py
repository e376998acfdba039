"""Which optional packages the tests can use: absent from this environment, or hidden by `pytest --without`.

Decided without importing them (TensorFlow and torch take seconds to import in every test process).
"""
import importlib.util
import os

import pytest

# Set by tests/conftest.py from `--without`, inherited by the processes the tests start.
HIDDEN_ENV = "NTK_TEST_WITHOUT"


def available(name: str) -> bool:
  if name in os.environ.get(HIDDEN_ENV, "").split(","):
    return False
  return importlib.util.find_spec(name) is not None


def needs(*names: str):
  """Skips a test, naming what is missing, unless every one of `names` can be imported."""
  missing = [n for n in names if not available(n)]
  return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (optional, not installed here)")


# TFDS datasets (CIFAR through tfds.testing.mock_data) and Pl@ntNet-300K's image decoding use TensorFlow.
needs_tensorflow = needs("tensorflow")
