"""The public API is typed as optax's is: every parameter and every return value of every public function annotated
(`jax.typing.ArrayLike` for array inputs, `jax.Array` or NumPy arrays out)."""
import inspect

import jax
import numpy as np
import pytest

import noised_topk_jax as ntk

PUBLIC_FUNCTIONS = sorted(name for name in ntk.__all__ if inspect.isfunction(getattr(ntk, name)))


def test_every_public_name_is_covered():
  # Constants aside (PROFILES, SELECTIONS), every exported name is a function checked below.
  assert set(ntk.__all__) - set(PUBLIC_FUNCTIONS) == {"PROFILES", "SELECTIONS"}


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_public_function_is_fully_annotated(name):
  signature = inspect.signature(getattr(ntk, name))
  missing = [p.name for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty]
  assert not missing, f"{name}: parameters without a type annotation: {missing}"
  assert signature.return_annotation is not inspect.Signature.empty, f"{name}: no return annotation"


@pytest.mark.parametrize("name", [n for n in PUBLIC_FUNCTIONS if n.endswith("_loss")])
def test_losses_take_array_like_and_return_jax_arrays(name):
  signature = inspect.signature(getattr(ntk, name))
  assert signature.parameters["logits"].annotation is jax.typing.ArrayLike
  assert signature.parameters["labels"].annotation is jax.typing.ArrayLike
  assert signature.return_annotation is jax.Array


@pytest.mark.parametrize("name", ["class_margins", "class_balanced_weights", "drw_class_weights", "logit_adjustment",
                                  "long_tailed_counts"])
def test_class_statistics_return_numpy(name):
  assert inspect.signature(getattr(ntk, name)).return_annotation is np.ndarray


def test_cosine_head_functions_take_array_like_and_return_jax_arrays():
  signature = inspect.signature(ntk.cosine_logits)
  assert signature.parameters["features"].annotation is jax.typing.ArrayLike
  assert signature.parameters["kernel"].annotation is jax.typing.ArrayLike
  assert signature.return_annotation is jax.Array
  # The jax.nn.initializers signature: (key, shape, dtype) -> jax.Array.
  init = inspect.signature(ntk.cosine_head_init)
  assert list(init.parameters) == ["key", "shape", "dtype"]
  assert init.return_annotation is jax.Array
