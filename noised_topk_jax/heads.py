"""The cosine (normalised) classification head, framework-agnostic.

The imbalanced form of the noised top-K loss, LDAM and the maximum margin loss are designed for cosine scores in
[-1, 1] to which the loss applies its `scale`: `cosine_logits(features, kernel)` computes them from a feature batch
and a kernel in the layout of a Flax `Dense` kernel (`[in_features, num_classes]`), and `cosine_head_init` is the
kernel initialiser the authors use (LDAM-DRW's `NormedLinear`), with the `jax.nn.initializers` signature. Both are
pure functions of arrays, so a head in Flax Linen, Flax NNX, Equinox or plain JAX is a parameter and one call::

  kernel = self.param("kernel", ntk.cosine_head_init, (x.shape[-1], num_classes))   # Flax Linen
  logits = ntk.cosine_logits(x, kernel)
"""
import operator
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jax.typing import DTypeLike

# torch.nn.functional.normalize's eps: a vector of norm below it is divided by it instead, so an all-zero vector maps
# to zero. Clamping the squared norm (not the norm) keeps the gradient finite at zero; 1e-24 is a normal float32.
_EPS = 1e-12


def _l2_normalize(x, axis):
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _EPS * _EPS))


def _as_floating(x, name):
  if not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"`{name}` must have a real floating dtype (float32, bfloat16, float64, ...), got {x.dtype}.")
  return jnp.asarray(x)


def _check_shape(shape):
  """`shape` as a tuple of two Python ints >= 0, or a ValueError naming it."""
  try:
    dims = tuple(operator.index(n) for n in shape if not isinstance(n, bool))
  except TypeError:
    dims = None
  if dims is None or len(dims) != 2 or len(dims) != len(tuple(shape)) or min(dims) < 0:
    raise ValueError(f"`shape` must be a pair (D, L) of non-negative ints (input features, classes), got {shape!r}.")
  return dims


def cosine_logits(features: ArrayLike, kernel: ArrayLike) -> jax.Array:
  r"""Cosine similarities between feature vectors and the columns of a kernel: the scores of a cosine head.

  .. math::
    z_{c} = \mathrm{clip}\left(\frac{x^\top w_c}{\max(\|x\|_2, \epsilon)\,\max(\|w_c\|_2, \epsilon)}, -1, 1\right),
    \qquad \epsilon = 10^{-12}

  for every feature vector `x` (the last axis of `features`) and every column `w_c` of `kernel`. There is no bias,
  and the scale is left to the loss (`scale=` of `ldam_loss`, `noised_topk_loss`, ...). As in
  `torch.nn.functional.normalize`, a vector of norm below `epsilon` is divided by `epsilon`: an all-zero feature
  vector or kernel column gives 0 logits and a finite gradient (that of `x / epsilon`), not NaN. The product is
  computed at `jax.lax.Precision.HIGHEST` (no TF32/bfloat16 passes on GPU/TPU), and the result is clipped to
  `[-1, 1]` against rounding.

  Dtypes: the result has the dtype of `jnp.result_type(features, kernel)`, JAX's usual promotion, so float32,
  bfloat16 and float64 (under x64) are preserved and mixed inputs promote (bfloat16 features with a float32 kernel,
  as in a model with a bfloat16 body and float32 parameters, give float32 logits). Half-precision inputs are
  normalised and multiplied in float32, then cast back.

  Args:
    features: floating array `[..., D]`, e.g. the penultimate layer's activations.
    kernel: floating array `[D, L]`, one column per class (the layout of a Flax `Dense` kernel).

  Returns:
    The cosine logits, shape `features.shape[:-1] + (L,)`, values in `[-1, 1]`.

  Raises:
    TypeError: `features` or `kernel` does not have a floating dtype.
    ValueError: `kernel` is not 2-D, `features` is a scalar, or `kernel.shape[0] != features.shape[-1]`.

  Example:
    >>> import jax, jax.numpy as jnp, noised_topk_jax as ntk
    >>> kernel = ntk.cosine_head_init(jax.random.key(0), (3, 4))
    >>> ntk.cosine_logits(2.0 * kernel[:, 1], kernel)[1].round(4)  # a feature aligned with class 1
    Array(1., dtype=float32)
    >>> ntk.cosine_logits(jnp.zeros((2, 3)), kernel)  # the zero-norm guard
    Array([[0., 0., 0., 0.],
           [0., 0., 0., 0.]], dtype=float32)

  References:
    Wang et al., NormFace: L2 hypersphere embedding for face verification, ACM MM 2017; the `NormedLinear` head of
    Cao et al., Learning imbalanced datasets with label-distribution-aware margin loss, NeurIPS 2019.
  """
  features = _as_floating(features, "features")
  kernel = _as_floating(kernel, "kernel")
  if kernel.ndim != 2:
    raise ValueError(f"`kernel` must be 2-D, [D, L] with one column per class, got shape {tuple(kernel.shape)}.")
  if features.ndim < 1:
    raise ValueError("`features` must have at least one axis (the feature axis, last), got a scalar.")
  if kernel.shape[0] != features.shape[-1]:
    raise ValueError(
        f"`kernel` must have shape [D, L] with D = features.shape[-1] = {features.shape[-1]}, got shape "
        f"{tuple(kernel.shape)}; `features` has shape {tuple(features.shape)}.")
  dtype = jnp.result_type(features, kernel)
  compute = jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype
  cosine = jnp.dot(_l2_normalize(features.astype(compute), axis=-1), _l2_normalize(kernel.astype(compute), axis=0),
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(cosine, -1.0, 1.0).astype(dtype)


def cosine_head_init(key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
  r"""Initialiser of a cosine-head kernel: U(-1, 1) draws, every column rescaled to unit L2 norm.

  .. math::
    w_c = u_c / \|u_c\|_2, \qquad u_{dc} \sim \mathcal{U}(-1, 1) \text{ i.i.d.}

  The init of LDAM-DRW's `NormedLinear` (`weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`), also used by the
  noised top-K authors. It has the `jax.nn.initializers` signature, so it is a Flax `kernel_init` or
  `self.param("kernel", cosine_head_init, (D, L))` as is, and is called directly in NNX, Equinox or plain JAX.

  The scale matters although `cosine_logits` only reads the columns' directions: under SGD a column of norm `r`
  turns by about `lr / r**2` per step (the gradient of a normalised column is orthogonal to it and scales as
  `1 / r`), and weight decay shrinks `r` only slowly. Unscaled U(-1, 1) columns have `r ~ sqrt(D / 3)` (~23 for
  1,568 features), so the head would learn ~500 times more slowly: in this project that mistake cost the cosine-head
  rows of the Fashion-MNIST-LT table up to 16 points of macro top-1 (imbalanced noised top-K 67.4 -> 78.9, LDAM
  66.4 -> 80.1 at exp rho=100) before it was found.

  The draws are float32 whatever `dtype` (one key gives the same directions in every dtype); the rescaling is done in
  float32, or in `dtype` where it is wider, then cast to `dtype`.

  Args:
    key: a `jax.random` key.
    shape: `(D, L)`: input features, classes.
    dtype: floating dtype of the result.

  Returns:
    The kernel, shape `shape`, dtype `dtype`, every column of unit norm (to the rounding of `dtype`).

  Raises:
    ValueError: `shape` is not a pair of non-negative ints.
    TypeError: `dtype` is not a floating dtype.

  Example:
    >>> import jax, jax.numpy as jnp, noised_topk_jax as ntk
    >>> kernel = ntk.cosine_head_init(jax.random.key(0), (64, 10))
    >>> jnp.linalg.norm(kernel, axis=0).round(5)
    Array([1., 1., 1., 1., 1., 1., 1., 1., 1., 1.], dtype=float32)

  References:
    Cao et al., Learning imbalanced datasets with label-distribution-aware margin loss, NeurIPS 2019 (`NormedLinear`
    in their `models/resnet_cifar.py`).
  """
  shape = _check_shape(shape)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"`dtype` must be a floating dtype (float32, bfloat16, float64, ...), got {jnp.dtype(dtype)}.")
  draws = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
  compute = jnp.promote_types(jnp.float32, dtype)
  return _l2_normalize(draws.astype(compute), axis=0).astype(dtype)
