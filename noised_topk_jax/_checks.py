"""Argument validation shared by the public functions.

Every check runs at trace time on static information (shapes, dtypes, Python numbers), so a bad argument raises a
`ValueError`/`TypeError` naming the parameter instead of surfacing later as an XLA shape error.
"""
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def check_int(value, name, *, minimum=None, maximum=None, maximum_doc=None):
  """Checks that `value` is a Python/NumPy integer in [minimum, maximum] and returns it as an int."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"`{name}` must be a Python int, got {value!r} of type {type(value).__name__}.")
  value = int(value)
  if minimum is not None and value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
  if maximum is not None and value > maximum:
    bound = maximum_doc or str(maximum)
    raise ValueError(f"`{name}` must be <= {bound}, got {value}.")
  return value


def concrete_float(value):
  """Returns `value` as a Python float when it is known at trace time, else None (a tracer)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    arr = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return None
  if arr.ndim != 0:
    return None
  return float(arr)


def check_nonnegative(value, name):
  v = concrete_float(value)
  if v is not None and not v >= 0:
    raise ValueError(f"`{name}` must be >= 0, got {v}.")


def check_positive(value, name):
  v = concrete_float(value)
  if v is not None and not v > 0:
    raise ValueError(f"`{name}` must be > 0, got {v}.")


def check_scalar(value, name):
  if isinstance(value, (numbers.Number, np.number)):
    return
  if np.ndim(value) != 0:
    raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}.")


def check_scores(scores, name="scores"):
  """Checks that `scores` is a floating array with at least one axis; returns it as a jnp array."""
  if not hasattr(scores, "dtype"):
    scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    raise TypeError(f"`{name}` must have a floating dtype, got {scores.dtype}.")
  if scores.ndim < 1:
    raise ValueError(f"`{name}` must have at least one axis (the class axis), got a scalar.")
  if scores.shape[-1] < 1:
    raise ValueError(f"`{name}` must have at least one class along its last axis.")
  return jnp.asarray(scores)


def check_logits_labels(logits, labels, name="logits"):
  """Validates a `(logits [..., L], labels [...])` pair and returns them as jnp arrays (`name`: the first's)."""
  logits = check_scores(logits, name)
  if not hasattr(labels, "dtype"):
    labels = np.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"`labels` must have an integer dtype, got {labels.dtype}.")
  if tuple(labels.shape) != tuple(logits.shape[:-1]):
    raise ValueError(
        f"`labels` must have shape {name}.shape[:-1] = {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}.")
  return logits, jnp.asarray(labels)


def per_class_array(values, num_classes, name, *, allow_scalar):
  """Checks a per-class hyperparameter: a scalar (if allowed) or a vector of length `num_classes`."""
  if np.ndim(values) == 0:
    if not allow_scalar:
      raise ValueError(f"`{name}` must be an array of shape [{num_classes}] (one value per class), got a scalar.")
    return values
  shape = np.shape(values)
  if len(shape) != 1 or shape[0] != num_classes:
    raise ValueError(
        f"`{name}` must be {'a scalar or ' if allow_scalar else ''}an array of shape [{num_classes}] "
        f"(one value per class), got shape {tuple(shape)}.")
  return values


def compute_dtype(dtype):
  """Half-precision inputs are computed in float32 and cast back: their reductions lose too much otherwise."""
  if jnp.dtype(dtype).itemsize < 4:
    return jnp.float32
  return dtype


def check_class_counts(class_counts, name="class_counts"):
  """NumPy validation of a per-class count vector: 1-D, integer-valued, every count >= 1."""
  counts = np.asarray(class_counts)
  if counts.ndim != 1 or counts.size == 0:
    raise ValueError(f"`{name}` must be a non-empty 1-D array of per-class counts, got shape {counts.shape}.")
  if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
    raise TypeError(f"`{name}` must be numeric, got dtype {counts.dtype}.")
  if not np.all(np.isfinite(counts)):
    raise ValueError(f"`{name}` must be finite, got {counts}.")
  if np.any(counts <= 0):
    bad = np.flatnonzero(counts <= 0)
    raise ValueError(f"`{name}` must be > 0 for every class; classes {bad.tolist()} have counts "
                     f"{counts[bad].tolist()}. Drop empty classes or fix the counts.")
  return counts.astype(np.float64)


def check_beta(beta, name="beta"):
  b = float(beta)
  if not 0.0 <= b < 1.0:
    raise ValueError(f"`{name}` must be in [0, 1), got {beta}.")
  return b


def check_finite_nonnegative(value, name):
  """A static Python/NumPy real >= 0 and finite, returned as a float."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    if not (isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0):
      raise TypeError(f"`{name}` must be a Python number, got {type(value).__name__}.")
  v = float(value)
  if not np.isfinite(v) or v < 0:
    raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
  return v
