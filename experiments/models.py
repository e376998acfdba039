"""Flax (Linen) models of the training binaries.

`create_model(name, num_classes=..., normalized_head=..., dtype=..., axis_name=...)` builds one of `MODELS`:

- `cnn`: a small CNN for 28x28x1 Fashion-MNIST that trains fast on a CPU (conv-BN-relu blocks, max pooling, flatten).
- `resnet32`: the CIFAR ResNet-32 of LDAM-DRW: a 3x3 conv with 16 channels, 3 stages of 5 basic blocks (widths
  16/32/64, strides 1/2/2) with the parameter-free "option A" shortcut, global average pool, head. Convolutions and
  the linear head use the untruncated Kaiming-normal (fan_in) initialisation.
- `mlp`: for the feature vectors of `synthetic_lt`: `mlp_widths` hidden layers (dense - BN - relu), then the head.
- `resnet18`, `resnet50`: the torchvision layout (7x7/2 stem, 3x3/2 max pool, [2, 2, 2, 2] basic blocks or
  [3, 4, 6, 3] bottlenecks with the stride on the 3x3 conv, "v1.5"), with PyTorch's symmetric explicit padding so that
  converted torchvision ImageNet weights (`experiments/convert_torchvision_weights.py`, `load_pretrained`) reproduce
  torchvision's outputs.

Every model takes a normalised float32 NHWC batch (`mlp`: `[B, D]` vectors) and returns float32 logits `[B, num_classes]`, also when `dtype`
(the compute dtype of convolutions and BatchNorm outputs) is bfloat16; parameters stay float32. The head is a linear
layer with bias, or with `normalized_head=True` the cosine head `normalize(features) @ normalize(W)` (no bias, outputs
in [-1, 1]; the loss applies the scale). Both heads are the submodule named `HEAD_NAME`, which `load_pretrained` skips.

BatchNorm follows PyTorch's hyper-parameters (PyTorch momentum 0.1 is Flax momentum 0.9, epsilon 1e-5). Its running
variance is updated with the biased batch variance (Flax) where PyTorch uses the unbiased one; the difference is a
factor n / (n - 1) with n = batch x height x width, negligible here. Usage:

  model = create_model("resnet32", num_classes=10)
  variables = model.init(rng, x, train=False)          # init in eval mode (no cross-device reduction needed)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  logits = model.apply(variables, x, train=False)

With `axis_name="batch"` the train-mode batch statistics are averaged over that axis with `lax.pmean` (apply inside
`jax.pmap(..., axis_name="batch")`); a model built with an axis name must be applied in train mode only under such a
map.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import FrozenDict

import noised_topk_jax as ntk

from experiments import config as config_lib
from experiments import weights_format

MODELS = config_lib.MODELS
PRETRAINABLE = weights_format.PRETRAINABLE
HEAD_NAME = weights_format.HEAD_NAME  # the classifier submodule of every model; `load_pretrained` never loads it
ARCH_KEY = weights_format.ARCH_KEY  # the architecture name stored in converted .npz files

# PyTorch's BatchNorm2d defaults: running = (1 - 0.1) * running + 0.1 * batch, eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Kaiming (He) normal, untruncated ("normal" is a plain normal in jax.nn.initializers.variance_scaling): std =
# sqrt(2 / fan_in), fan_in = kh * kw * in_channels for an HWIO kernel -- torch.nn.init.kaiming_normal_ defaults.
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# torchvision's ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu").
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default weight init (kaiming_uniform_ with a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

Initializer = Callable[..., jax.Array]


def _symmetric(pad: int):
  return ((pad, pad), (pad, pad))


def global_average_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes of an NHWC batch, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class LinearHead(nn.Module):
  """`x @ kernel + bias` in float32 (full-precision matmul); kernel `[in, out]` and bias like nn.Dense, bias init
  U(+-1/sqrt(in)) as in PyTorch."""
  num_classes: int
  kernel_init: Initializer = torch_linear_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    fan_in = x.shape[-1]
    bound = 1.0 / np.sqrt(fan_in)
    kernel = self.param("kernel", self.kernel_init, (fan_in, self.num_classes), jnp.float32)
    bias = self.param("bias", lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound),
                      (self.num_classes,))
    return jnp.dot(x, kernel, precision=jax.lax.Precision.HIGHEST) + bias


class CosineHead(nn.Module):
  """Normalised (cosine) head: `ntk.cosine_logits(x, W)`, i.e. `normalize(x) @ normalize(W)`, no bias, in [-1, 1].

  W (`[in, num_classes]`, parameter "kernel") starts with unit-norm columns (`ntk.cosine_head_init`, as LDAM's
  NormedLinear); its norm is not a free choice under SGD, see that function.
  """
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    kernel = self.param("kernel", ntk.cosine_head_init, (x.shape[-1], self.num_classes), jnp.float32)
    return ntk.cosine_logits(x, kernel)


def _head(num_classes: int, normalized: bool, kernel_init: Initializer = torch_linear_init) -> nn.Module:
  if normalized:
    return CosineHead(num_classes, name=HEAD_NAME)
  return LinearHead(num_classes, kernel_init=kernel_init, name=HEAD_NAME)


class _Base(nn.Module):
  """Fields shared by every model."""
  num_classes: int
  normalized_head: bool = False
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  def _norm(self, train: bool):
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype, axis_name=self.axis_name)


# --------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST CNN.


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
  """[B, H, W, C] -> [B, H / block, W / block, block * block * C]: each block x block patch becomes one pixel."""
  b, h, w, c = x.shape
  if h % block or w % block:
    raise ValueError(f"space_to_depth needs a height and width divisible by {block}, got {(h, w)}.")
  x = x.reshape(b, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // block, w // block, block * block * c)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 / stride-2 max pooling as a reshape and a max reduction. Same values as `nn.max_pool(x, (2, 2), (2, 2))`,
  but its gradient is elementwise (ties share it) where XLA:CPU's select-and-scatter gradient is several times
  slower."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_2x2 needs an even height and width, got {(h, w)}.")
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class FashionCNN(_Base):
  """Small CNN for 28x28x1 Fashion-MNIST, sized for a 2-core CPU.

  space-to-depth 2x2 (28x28x1 -> 14x14x4) - conv3x3 16 - BN - relu - max pool 2x2 (-> 7x7) - 2 x (conv3x3 32 - BN -
  relu) - flatten (1568) - head. The first two layers amount to a 6x6 stride-2 convolution; written this way they
  avoid full-resolution activations and XLA:CPU's slow strided-convolution gradients. A jitted batch-128 train step
  takes ~10-20 ms on 2 CPU cores, and 10 epochs on 15k balanced Fashion-MNIST images reach ~88% test accuracy
  (wider "conv32 x 2, conv64 x 2 at full resolution" designs cost ~0.1-0.8 s per step there for a similar accuracy).
  Input height and width must be divisible by 4.
  """
  stem_width: int = 16
  widths: Sequence[int] = (32, 32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self._norm(train)
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=_symmetric(1), use_bias=False, dtype=self.dtype,
                             kernel_init=kaiming_normal_fan_in)
    x = space_to_depth(x, 2)
    x = nn.relu(norm(name="bn1")(conv(self.stem_width, name="conv1")(x)))
    x = max_pool_2x2(x)
    for i, width in enumerate(self.widths):
      x = nn.relu(norm(name=f"bn{i + 2}")(conv(width, name=f"conv{i + 2}")(x)))
    x = x.reshape(x.shape[0], -1)
    return _head(self.num_classes, self.normalized_head, kaiming_normal_fan_in)(x)


# --------------------------------------------------------------------------------------------------------------------
# MLP (synthetic_lt).


class MLP(_Base):
  """`[B, D]` vectors - `widths` x (dense - BN - relu) - head. Dense layers use the Kaiming-normal (fan_in) init
  of the convolutions above; the head is the shared linear / cosine head."""
  widths: Sequence[int] = (512, 512)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self._norm(train)
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.widths):
      x = nn.Dense(width, use_bias=False, dtype=self.dtype, kernel_init=kaiming_normal_fan_in, name=f"dense{i + 1}")(x)
      x = nn.relu(norm(name=f"bn{i + 1}")(x))
    return _head(self.num_classes, self.normalized_head, kaiming_normal_fan_in)(x)


# --------------------------------------------------------------------------------------------------------------------
# CIFAR ResNet-32 (LDAM-DRW).


def option_a_shortcut(x: jax.Array, planes: int) -> jax.Array:
  """Parameter-free "option A" shortcut of the CIFAR ResNets: `x[:, ::2, ::2]` (stride-2 subsample) and `planes // 4`
  zero channels on each side, so that C input channels become C + 2 * (planes // 4) (= planes when C = planes / 2)."""
  pad = planes // 4
  return jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))


class CifarBasicBlock(nn.Module):
  """conv3x3(stride) - BN - relu - conv3x3 - BN, plus identity or option-A shortcut, relu."""
  planes: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=_symmetric(1), use_bias=False, dtype=self.dtype,
                             kernel_init=kaiming_normal_fan_in)
    out = conv(self.planes, strides=(self.stride, self.stride), name="conv1")(x)
    out = nn.relu(self.norm(name="bn1")(out))
    out = conv(self.planes, name="conv2")(out)
    out = self.norm(name="bn2")(out)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = option_a_shortcut(x, self.planes)
      if shortcut.shape != out.shape:
        raise ValueError(f"option-A shortcut gives {shortcut.shape}, the block output is {out.shape}")
    return nn.relu(out + shortcut.astype(out.dtype))


class CifarResNet(_Base):
  """CIFAR ResNet (6n + 2 layers; n = 5 is ResNet-32) with option-A shortcuts, as in LDAM-DRW."""
  blocks_per_stage: int = 5
  widths: Sequence[int] = (16, 32, 64)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self._norm(train)
    x = nn.Conv(self.widths[0], (3, 3), padding=_symmetric(1), use_bias=False, dtype=self.dtype,
                kernel_init=kaiming_normal_fan_in, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        x = CifarBasicBlock(width, stride, norm, self.dtype, name=f"layer{stage + 1}_{block}")(x)
    x = global_average_pool(x)
    return _head(self.num_classes, self.normalized_head, kaiming_normal_fan_in)(x)


# --------------------------------------------------------------------------------------------------------------------
# torchvision ResNet-18 / ResNet-50.


class BasicBlock(nn.Module):
  """torchvision BasicBlock (expansion 1)."""
  planes: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=kaiming_normal_fan_out)
    out = conv(self.planes, (3, 3), strides=(self.stride, self.stride), padding=_symmetric(1), name="conv1")(x)
    out = nn.relu(self.norm(name="bn1")(out))
    out = conv(self.planes, (3, 3), padding=_symmetric(1), name="conv2")(out)
    out = self.norm(name="bn2")(out)
    return nn.relu(out + _projection(x, self.planes * self.expansion, self.stride, conv, self.norm))


class Bottleneck(nn.Module):
  """torchvision Bottleneck (expansion 4), stride on the 3x3 conv ("ResNet v1.5")."""
  planes: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=kaiming_normal_fan_out)
    out = conv(self.planes, (1, 1), padding="VALID", name="conv1")(x)
    out = nn.relu(self.norm(name="bn1")(out))
    out = conv(self.planes, (3, 3), strides=(self.stride, self.stride), padding=_symmetric(1), name="conv2")(out)
    out = nn.relu(self.norm(name="bn2")(out))
    out = conv(self.planes * self.expansion, (1, 1), padding="VALID", name="conv3")(out)
    out = self.norm(name="bn3")(out)
    return nn.relu(out + _projection(x, self.planes * self.expansion, self.stride, conv, self.norm))


def _projection(x, out_channels, stride, conv, norm):
  """Identity, or torchvision's `downsample` (conv1x1(stride) + BN) when the shape changes."""
  if stride == 1 and x.shape[-1] == out_channels:
    return x
  # A 1x1 kernel with stride s and no padding reads the pixels 0, s, 2s, ... exactly like PyTorch.
  shortcut = conv(out_channels, (1, 1), strides=(stride, stride), padding="VALID", name="downsample_conv")(x)
  return norm(name="downsample_bn")(shortcut)


class ImageNetResNet(_Base):
  """torchvision's ResNet with the same submodule names (`layer{i}_{j}` for `layer{i}.{j}`)."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = self._norm(train)
    block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
    x = nn.Conv(64, (7, 7), strides=(2, 2), padding=_symmetric(3), use_bias=False, dtype=self.dtype,
                kernel_init=kaiming_normal_fan_out, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    # PyTorch pads max pooling with -inf, as reduce_window does here.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_symmetric(1))
    for stage, size in enumerate(self.stage_sizes):
      planes = 64 * 2**stage
      for block in range(size):
        stride = 2 if stage > 0 and block == 0 else 1
        x = block_cls(planes, stride, norm, self.dtype, name=f"layer{stage + 1}_{block}")(x)
    x = global_average_pool(x)
    return _head(self.num_classes, self.normalized_head, torch_linear_init)(x)


# --------------------------------------------------------------------------------------------------------------------
# Factory and pretrained weights.


def create_model(name: str, *, num_classes: int, normalized_head: bool = False, dtype: Any = jnp.float32,
                 axis_name: Optional[str] = None, mlp_widths: Sequence[int] = (512, 512)) -> nn.Module:
  """Returns the Flax module `name` (one of `MODELS`) with a `num_classes`-way head (cosine head when
  `normalized_head`). `dtype` is the compute dtype; `axis_name` the pmap axis over which train-mode BatchNorm
  averages its batch statistics (None: per-device statistics); `mlp_widths` the hidden layers of `mlp`."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; expected one of {MODELS}.")
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r} for model {name!r}.")
  common = dict(num_classes=int(num_classes), normalized_head=bool(normalized_head), dtype=dtype, axis_name=axis_name)
  if name == "cnn":
    return FashionCNN(**common)
  if name == "mlp":
    return MLP(widths=tuple(int(w) for w in mlp_widths), **common)
  if name == "resnet32":
    return CifarResNet(blocks_per_stage=5, **common)
  if name == "resnet18":
    return ImageNetResNet(stage_sizes=(2, 2, 2, 2), block="basic", **common)
  return ImageNetResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", **common)


def _is_head(flat_key: str) -> bool:
  parts = flat_key.split("/")
  return len(parts) > 1 and parts[1] == HEAD_NAME


_LOADED_COLLECTIONS = ("params", "batch_stats")


def load_pretrained(variables, path: str, *, name: str):
  """Returns `variables` with every parameter and BatchNorm statistic except the head's replaced by the arrays of the
  .npz file `path` written by `experiments/convert_torchvision_weights.py` for model `name` (resnet18 / resnet50).

  Keys are flattened with "/" ("params/layer1_0/conv1/kernel", "batch_stats/bn1/mean"). Raises ValueError naming the
  missing keys, the unexpected keys and the shape mismatches; nothing is loaded partially. The loaded arrays take the
  dtype of the leaves they replace. Leaves of other collections and the head's are returned unchanged.
  """
  if name not in PRETRAINABLE:
    raise ValueError(f"No pretrained weights for model {name!r}; expected one of {PRETRAINABLE}.")
  with np.load(path, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in npz.files}
  arch = arrays.pop(ARCH_KEY, None)
  if arch is not None and str(arch) != name:
    raise ValueError(f"{path} holds weights converted for {str(arch)!r}, not for {name!r}.")
  return replace_except_head(variables, arrays, source=path, name=name)


def replace_except_head(variables, arrays: Mapping[str, np.ndarray], *, source: str, name: str):
  """`variables` with every parameter and BatchNorm statistic except the head's replaced by `arrays` (flat
  "collection/module/.../leaf" keys, as `load_pretrained` reads them from a file; `source` and `name` only word the
  errors). Raises ValueError naming the missing keys, the unexpected keys and the shape mismatches; nothing is
  replaced partially."""
  frozen = isinstance(variables, FrozenDict)
  flat = traverse_util.flatten_dict(dict(variables.unfreeze() if frozen else variables), sep="/")
  missing, mismatched, out = [], [], {}
  for key, leaf in flat.items():
    if key.split("/")[0] not in _LOADED_COLLECTIONS or _is_head(key):
      out[key] = leaf
      continue
    if key not in arrays:
      missing.append(key)
      continue
    value = arrays[key]
    if tuple(value.shape) != tuple(leaf.shape):
      mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(leaf.shape)}")
      continue
    out[key] = jnp.asarray(value, dtype=leaf.dtype)
  unexpected = sorted(key for key in arrays if key not in flat and not _is_head(key))
  report = weights_format.key_problems_report(
      f"Cannot load {source} into model {name!r}:",
      [("missing from the file", missing), ("shape mismatches", mismatched), ("not in the model", unexpected)])
  if report:
    raise ValueError(report)
  result = traverse_util.unflatten_dict(out, sep="/")
  return FrozenDict(result) if frozen else result


def variable_shapes(name: str, num_classes: int, image_size: Optional[int] = None, normalized_head: bool = False
                    ) -> Mapping[str, tuple]:
  """Flat "collection/module/.../leaf" -> shape of model `name`'s variables, computed abstractly (no FLOPs). The
  image size (default 28 for `cnn`, 32 otherwise) matters only for `cnn`, whose head follows a flatten; for `mlp` it
  is the input dimension (default 8)."""
  model = create_model(name, num_classes=num_classes, normalized_head=normalized_head)
  if name == "mlp":
    x = jax.ShapeDtypeStruct((1, image_size or 8), jnp.float32)
  else:
    channels = 1 if name == "cnn" else 3
    image_size = image_size or (28 if name == "cnn" else 32)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(shapes), sep="/").items()}
