"""Tests of experiments/models.py and experiments/convert_torchvision_weights.py.

The ResNets are run with variables filled by NumPy (shapes from `jax.eval_shape`) rather than `model.init`: on
XLA:CPU the threefry initialisers of a ResNet take ~15 s to compile, the forward pass a few seconds. Real `init` is
exercised on the CNN and on single blocks. The PyTorch comparisons run only where torch is importable.
"""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import noised_topk_jax as ntk

from experiments import convert_torchvision_weights as convert
from experiments import models
from experiments import weights_format

IMAGE = {"cnn": (28, 28, 1), "resnet32": (32, 32, 3), "resnet18": (64, 64, 3), "resnet50": (64, 64, 3), "mlp": (8,)}


# --------------------------------------------------------------------------------------------------------------------
# Helpers.


@functools.lru_cache(maxsize=None)
def _apply(model, train):
  """One jitted apply per (module, mode), shared by the tests (flax modules are hashable)."""
  if train:
    return jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  return jax.jit(functools.partial(model.apply, train=False))


def _init(module, *args, **kwargs):
  """`module.init` under jit (one compilation instead of one per eager op)."""
  return jax.jit(functools.partial(module.init, **kwargs))(*args)


def _inputs(name, batch=2, seed=0):
  return _normal((batch,) + IMAGE[name], seed)


def _normal(shape, seed=0):
  # NumPy draws: every new shape of an eager jax.random.normal compiles a threefry kernel (~1 s on XLA:CPU).
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _key(seed):
  # Initialisation keys use the "rbg" generator, whose kernels compile much faster than threefry's on XLA:CPU; the
  # initialisers' distributions do not depend on the bit generator.
  return jax.random.key(seed, impl="rbg")


def _fake_variables(name, num_classes, normalized_head=False, seed=0):
  """Variables of the right shapes, filled by NumPy: He-normal kernels, BN scale ~1, bias/mean small, var ~1."""
  rng = np.random.default_rng(seed)
  shapes = models.variable_shapes(name, num_classes, IMAGE[name][0], normalized_head)
  flat = {}
  for key, shape in shapes.items():
    leaf = key.split("/")[-1]
    if leaf == "kernel":
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif leaf in ("scale",):
      value = rng.uniform(0.5, 1.5, shape)
    elif leaf == "var":
      value = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      value = 0.1 * rng.standard_normal(shape)
    flat[key] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def cnn_and_variables():
  model = models.create_model("cnn", num_classes=10)
  return model, _init(model, _key(0), _inputs("cnn"), train=False)


_BN_TORCH = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _torchvision_state_dict(arch, num_classes=1000, seed=0):
  """A torchvision-style ResNet state_dict as NumPy arrays, written from torchvision's naming and shapes (independent
  of the converter's own key list)."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(key, out_c, in_c, k):
    sd[key] = rng.standard_normal((out_c, in_c, k, k)).astype(np.float32)

  def bn(prefix, c):
    sd[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{prefix}.bias"] = rng.standard_normal(c).astype(np.float32)
    sd[f"{prefix}.running_mean"] = rng.standard_normal(c).astype(np.float32)
    sd[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1.weight", 64, 3, 7)
  bn("bn1", 64)
  bottleneck = arch == "resnet50"
  layers = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
  expansion = 4 if bottleneck else 1
  inplanes = 64
  for i, n_blocks in enumerate(layers):
    planes = 64 * 2**i
    for j in range(n_blocks):
      p = f"layer{i + 1}.{j}"
      stride = 2 if i > 0 and j == 0 else 1
      if bottleneck:
        conv(f"{p}.conv1.weight", planes, inplanes, 1)
        bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2.weight", planes, planes, 3)
        bn(f"{p}.bn2", planes)
        conv(f"{p}.conv3.weight", planes * 4, planes, 1)
        bn(f"{p}.bn3", planes * 4)
      else:
        conv(f"{p}.conv1.weight", planes, inplanes, 3)
        bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2.weight", planes, planes, 3)
        bn(f"{p}.bn2", planes)
      if stride != 1 or inplanes != planes * expansion:
        conv(f"{p}.downsample.0.weight", planes * expansion, inplanes, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  sd["fc.weight"] = rng.standard_normal((num_classes, inplanes)).astype(np.float32)
  sd["fc.bias"] = rng.standard_normal(num_classes).astype(np.float32)
  return sd


def _write_npz(path, flat, arch):
  np.savez(path, **flat, **{convert.ARCH_KEY: np.array(arch)})
  return str(path)


# --------------------------------------------------------------------------------------------------------------------
# Factory.


def test_create_model_rejects_unknown_name_and_bad_num_classes():
  with pytest.raises(ValueError, match="resnet1000"):
    models.create_model("resnet1000", num_classes=10)
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("cnn", num_classes=1)
  assert models.MODELS == ("cnn", "resnet32", "resnet18", "resnet50", "mlp")
  model = models.create_model("resnet18", num_classes=7, normalized_head=True, dtype=jnp.bfloat16, axis_name="batch")
  assert (model.num_classes, model.normalized_head, model.dtype, model.axis_name) == (7, True, jnp.bfloat16, "batch")


# --------------------------------------------------------------------------------------------------------------------
# Shapes, dtypes, parameter counts.


@pytest.mark.parametrize("name", models.MODELS)
def test_output_shape_and_dtype_train_and_eval(name, cnn_and_variables):
  num_classes = 10 if name in ("cnn", "resnet32") else 7
  model = models.create_model(name, num_classes=num_classes)
  variables = cnn_and_variables[1] if name == "cnn" else _fake_variables(name, num_classes)
  x = _inputs(name)
  logits = _apply(model, False)(variables, x)
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  logits, updates = _apply(model, True)(variables, x)
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
  assert set(updates) == {"batch_stats"}
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


@pytest.mark.parametrize("name", ["cnn", "resnet32"])
def test_bfloat16_compute_gives_float32_logits_and_params(name):
  model = models.create_model(name, num_classes=10, dtype=jnp.bfloat16)
  x = _inputs(name)
  variables = _fake_variables(name, 10)
  logits = _apply(model, False)(variables, x)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
  reference = _apply(models.create_model(name, num_classes=10), False)(variables, x)
  # bfloat16 keeps 8 significant bits: each rounding of an activation errs by at most u = 2^-8 of it, and the logits
  # carry the errors of the layers' roundings, relative to the activations' scale (max |logit|), not to each logit
  # (some are near 0). Measured: at most 1.3 u max|logit| (cnn) and 0.95 u (resnet32) over 4 seeds of variables and
  # inputs; 4 u allows three times that. The first convolution's kernel 3 % off gives 8 u: it fails.
  np.testing.assert_allclose(logits, reference, rtol=0, atol=4 * 2.0**-8 * float(np.abs(reference).max()))
  if name == "cnn":
    shapes = jax.eval_shape(functools.partial(model.init, train=False), _key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))


def test_parameter_counts():
  def n_params(name, num_classes, normalized_head=False):
    shapes = models.variable_shapes(name, num_classes, normalized_head=normalized_head)
    return sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("params/"))

  # ResNet-32 for CIFAR-10: 0.46M (exactly 464,154 with option-A shortcuts, BN affine parameters and the linear head).
  assert n_params("resnet32", 10) == 464_154
  # torchvision's numbers (sum(p.numel() for p in model.parameters())).
  assert n_params("resnet18", 1000) == 11_689_512
  assert n_params("resnet50", 1000) == 25_557_032
  # The cosine head has no bias.
  assert n_params("resnet50", 1000, normalized_head=True) == 25_557_032 - 1000
  assert n_params("cnn", 10) < 100_000


# --------------------------------------------------------------------------------------------------------------------
# Heads.


def test_cosine_head_matches_normalized_dot_product_and_has_no_bias():
  head = models.CosineHead(5)
  x = _normal((4, 8), 1)
  variables = _init(head, _key(2), x)
  assert set(variables["params"]) == {"kernel"}
  kernel = np.asarray(variables["params"]["kernel"])
  expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True))
  apply = jax.jit(head.apply)
  out = apply(variables, x)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(apply(variables, 3.7 * x), out, rtol=1e-5, atol=1e-6)  # scale invariant
  # Perfect alignment gives 1 (clipped against rounding), and an all-zero feature vector 0 with finite gradients.
  aligned = apply(variables, jnp.asarray(np.tile(kernel[:, :1].T, (4, 1))) * 5.0)
  assert float(aligned[0, 0]) == pytest.approx(1.0, abs=1e-6) and float(aligned.max()) <= 1.0
  grads = jax.jit(jax.grad(lambda v, z: head.apply(v, z).sum(), argnums=(0, 1)))(variables, jnp.zeros((4, 8)))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("shape", [(1568, 10), (64, 1081), (3, 2)])
def test_cosine_head_initial_columns_have_unit_norm(shape):
  kernel = np.asarray(ntk.cosine_head_init(_key(0), shape), np.float64)
  assert kernel.shape == shape
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
  # The columns are rescaled draws, not one direction repeated.
  assert np.linalg.matrix_rank(kernel) == min(shape)
  head = models.CosineHead(shape[1])
  variables = _init(head, _key(1), jnp.ones((2, shape[0])))
  np.testing.assert_allclose(np.linalg.norm(variables["params"]["kernel"], axis=0), 1.0, rtol=1e-5)


def _head_angle_after_sgd(head, loss_fn, *, kernel_scale=1.0, steps=5, learning_rate=0.05):
  """Mean angle (radians) by which the head's kernel columns turn in `steps` steps of the binaries' optimizer (SGD,
  momentum 0.9, coupled weight decay 5e-4) on one fixed batch of 1,568 post-ReLU-like features (the CNN's width)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(np.abs(rng.standard_normal((128, 1568))), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 128))
  params = jax.tree.map(lambda a: a * kernel_scale, _init(head, _key(1), x)["params"])
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(learning_rate, momentum=0.9))
  grad = jax.jit(jax.grad(lambda p: jnp.mean(loss_fn(head.apply({"params": p}, x), labels))))
  opt_state, w0 = tx.init(params), np.asarray(params["kernel"], np.float64)
  for _ in range(steps):
    updates, opt_state = tx.update(grad(params), opt_state, params)
    params = optax.apply_updates(params, updates)
  w1 = np.asarray(params["kernel"], np.float64)
  cos = np.sum(w0 * w1, 0) / np.linalg.norm(w0, axis=0) / np.linalg.norm(w1, axis=0)
  return float(np.mean(np.arccos(np.clip(cos, -1.0, 1.0))))


def test_cosine_head_learns_as_fast_as_linear_head():
  # The property a mis-scaled init breaks: under SGD a column of norm r turns by ~lr / r**2 per step, so the cosine
  # head's effective learning rate is set by its init. With unit-norm columns LDAM (scale 30) turns the cosine head's
  # columns by about as much as cross-entropy turns the linear head's (measured ratio ~0.8); U(-1, 1) columns without
  # the rescaling (norm ~23, the bug fixed in 0.2.0) turn ~200 times less (~0.004), and this test must fail on them.
  counts = 5500 * 0.01 ** (np.arange(10) / 9)
  ldam = functools.partial(ntk.ldam_loss, margins=ntk.class_margins(counts, max_margin=0.5), scale=30.0)
  linear = _head_angle_after_sgd(models.LinearHead(10, kernel_init=models.kaiming_normal_fan_in),
                                 ntk.cross_entropy_loss)
  cosine = _head_angle_after_sgd(models.CosineHead(10), ldam)
  assert linear > 0.05
  assert 0.2 < cosine / linear < 5.0, (cosine, linear)
  unscaled = _head_angle_after_sgd(models.CosineHead(10), ldam, kernel_scale=np.sqrt(1568 / 3))
  assert unscaled / linear < 0.02, (unscaled, linear)


@pytest.mark.parametrize("name", ["cnn", "resnet32"])
def test_model_with_normalized_head_outputs_cosines(name):
  model = models.create_model(name, num_classes=10, normalized_head=True)
  variables = _fake_variables(name, 10, normalized_head=True)
  assert set(variables["params"][models.HEAD_NAME]) == {"kernel"}
  logits = _apply(model, False)(variables, _inputs(name, batch=4))
  assert logits.dtype == jnp.float32 and logits.shape == (4, 10)
  assert float(jnp.abs(logits).max()) <= 1.0
  assert float(jnp.abs(logits).max()) > 0.0
  linear = models.create_model(name, num_classes=10, normalized_head=False)
  assert set(_fake_variables(name, 10)["params"][models.HEAD_NAME]) == {"kernel", "bias"}
  assert linear.normalized_head is False


# --------------------------------------------------------------------------------------------------------------------
# ResNet-32 specifics: option-A shortcut, no projection parameters, initialisation.


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
  x = _normal((2, 8, 8, 16), 0)
  y = jax.jit(models.option_a_shortcut, static_argnames="planes")(x, planes=32)
  assert y.shape == (2, 4, 4, 32)
  np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
  assert float(jnp.abs(y[..., :8]).max()) == 0.0 and float(jnp.abs(y[..., 24:]).max()) == 0.0
  # Odd spatial size: PyTorch's x[:, :, ::2, ::2] keeps ceil(n / 2) rows, like the stride-2 3x3 conv with padding 1.
  assert models.option_a_shortcut(jnp.ones((1, 7, 7, 32)), planes=64).shape == (1, 4, 4, 64)


def _bn_eval():
  return functools.partial(nn.BatchNorm, use_running_average=True, momentum=models.BN_MOMENTUM,
                           epsilon=models.BN_EPSILON)


@pytest.mark.parametrize("in_channels,planes,stride", [(16, 32, 2), (16, 16, 1)])
def test_cifar_block_shortcut_is_parameter_free(in_channels, planes, stride):
  block = models.CifarBasicBlock(planes, stride, _bn_eval())
  x = _normal((2, 8, 8, in_channels), 0)
  variables = _init(block, _key(1), x)
  assert set(variables["params"]) == {"conv1", "bn1", "conv2", "bn2"}
  # With zero convolutions the residual branch is BN(0) = 0, so the block returns relu(shortcut).
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if "kernel" in jax.tree_util.keystr(path) else v, variables)
  out = jax.jit(block.apply)(zeroed, x)
  shortcut = models.option_a_shortcut(x, planes) if stride != 1 or in_channels != planes else x
  np.testing.assert_allclose(out, jax.nn.relu(shortcut), atol=1e-6)
  assert out.shape == (2, 8 // stride, 8 // stride, planes)


def test_resnet32_structure():
  shapes = models.variable_shapes("resnet32", 10)
  params = {k: s for k, s in shapes.items() if k.startswith("params/")}
  modules = {k.split("/")[1] for k in params}
  assert modules == {"conv1", "bn1", models.HEAD_NAME} | {f"layer{i}_{j}" for i in (1, 2, 3) for j in range(5)}
  assert not any("downsample" in k for k in shapes)
  kernels = [k for k, s in params.items() if k.endswith("/kernel") and len(s) == 4]
  assert len(kernels) == 31  # + the head = 32 weight layers
  assert params["params/layer3_4/conv2/kernel"] == (3, 3, 64, 64)
  assert params["params/layer2_0/conv1/kernel"] == (3, 3, 16, 32)
  assert params[f"params/{models.HEAD_NAME}/kernel"] == (64, 10)


def test_conv_init_is_untruncated_kaiming_normal_fan_in():
  # A ResNet-32 stage-3 block initialised by Flax: 3x3x64x64 kernels, fan_in = 576, std sqrt(2/576) = 0.0589.
  block = models.CifarBasicBlock(64, 1, _bn_eval())
  variables = _init(block, _key(3), jnp.zeros((1, 8, 8, 64)))
  w = np.concatenate([np.ravel(variables["params"][c]["kernel"]) for c in ("conv1", "conv2")])  # 73,728 draws
  std = np.sqrt(2.0 / (3 * 3 * 64))
  # The sample std of n normal draws has relative standard error 1/sqrt(2n) = 0.26%: a 2% tolerance is ~8 sigma.
  assert np.std(w) == pytest.approx(std, rel=0.02)
  assert abs(np.mean(w)) < 0.02 * std
  # Untruncated: 4.55% of normal draws lie beyond 2 std (none for a [-2, 2] truncated normal).
  assert 0.040 < np.mean(np.abs(w) > 2 * std) < 0.051
  # torchvision ResNets use fan_out: 3x3 conv 64 -> 128, std sqrt(2 / (9 * 128)).
  tv_block = models.BasicBlock(128, 2, _bn_eval())
  tv = _init(tv_block, _key(4), jnp.zeros((1, 8, 8, 64)))["params"]["conv2"]["kernel"]
  assert np.std(tv) == pytest.approx(np.sqrt(2.0 / (9 * 128)), rel=0.02)


# --------------------------------------------------------------------------------------------------------------------
# BatchNorm: train vs eval, running statistics, cross-device averaging.


def test_batchnorm_train_and_eval_modes(cnn_and_variables):
  model, variables = cnn_and_variables
  x = _inputs("cnn", batch=8, seed=1)
  # Eval mode uses the running statistics: a sample's logits do not depend on the rest of the batch.
  eval_logits = _apply(model, False)(variables, x)
  np.testing.assert_allclose(_apply(model, False)(variables, x[:2])[0], eval_logits[0], rtol=1e-5, atol=1e-5)
  # Train mode uses the batch statistics: they do.
  train_logits, _ = _apply(model, True)(variables, x)
  other, _ = _apply(model, True)(variables, jnp.concatenate([x[:1], x[1:] * 3.0 + 1.0]))
  assert not np.allclose(other[0], train_logits[0], atol=1e-3)
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)


def test_batchnorm_normalizes_with_batch_statistics_and_pytorch_epsilon(cnn_and_variables):
  model, variables = cnn_and_variables
  x = _inputs("cnn", batch=8, seed=2)
  _, state = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats", "intermediates"],
                                       capture_intermediates=True))(variables, x)
  conv_out = np.asarray(state["intermediates"]["conv1"]["__call__"][0], np.float64)
  bn_out = np.asarray(state["intermediates"]["bn1"]["__call__"][0], np.float64)
  mean, var = conv_out.mean(axis=(0, 1, 2)), conv_out.var(axis=(0, 1, 2))
  scale = np.asarray(variables["params"]["bn1"]["scale"])
  bias = np.asarray(variables["params"]["bn1"]["bias"])
  np.testing.assert_allclose(bn_out, (conv_out - mean) / np.sqrt(var + 1e-5) * scale + bias, atol=2e-4)
  # Running statistics: (1 - 0.1) * old + 0.1 * batch, the batch variance being the biased one.
  np.testing.assert_allclose(state["batch_stats"]["bn1"]["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(state["batch_stats"]["bn1"]["var"], 0.9 + 0.1 * var, rtol=1e-4)


def test_batch_stats_are_updated_with_momentum_0_9(cnn_and_variables):
  model, variables = cnn_and_variables
  x = _inputs("cnn", batch=16, seed=3)
  _, updates1 = _apply(model, True)(variables, x)
  _, updates2 = _apply(model, True)({"params": variables["params"], **updates1}, x)
  init, s1, s2 = (traverse_util.flatten_dict(t, sep="/") for t in
                  (variables["batch_stats"], updates1["batch_stats"], updates2["batch_stats"]))
  assert set(s1) == set(init) and len(s1) == 2 * 3  # mean and var of the 3 BatchNorms
  for key in init:
    assert not np.allclose(s1[key], init[key])
    # Same batch twice: s1 = 0.9 s0 + 0.1 b, s2 = 0.9 s1 + 0.1 b  =>  s2 - s1 = 0.9 (s1 - s0).
    np.testing.assert_allclose(s2[key] - s1[key], 0.9 * (s1[key] - init[key]), rtol=1e-4, atol=1e-6)


@pytest.mark.two_devices
def test_pmap_with_axis_name_matches_single_device_batch_statistics(cnn_and_variables):
  assert jax.local_device_count() == 2
  _, variables = cnn_and_variables
  x = _inputs("cnn", batch=8, seed=4)
  reference_model = models.create_model("cnn", num_classes=10)
  ref_logits, ref_updates = _apply(reference_model, True)(variables, x)

  pmapped_model = models.create_model("cnn", num_classes=10, axis_name="batch")
  step = jax.pmap(functools.partial(pmapped_model.apply, train=True, mutable=["batch_stats"]), axis_name="batch",
                  in_axes=(None, 0), devices=jax.local_devices()[:2])
  logits, updates = step(variables, x.reshape((2, 4) + x.shape[1:]))
  np.testing.assert_allclose(logits.reshape(8, -1), ref_logits, rtol=1e-4, atol=1e-4)
  for ref, per_device in zip(jax.tree.leaves(ref_updates), jax.tree.leaves(updates)):
    np.testing.assert_allclose(per_device[0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_device[1], ref, rtol=1e-5, atol=1e-6)

  # Without the axis name each device keeps its own statistics (so the comparison above is not vacuous).
  local = jax.pmap(functools.partial(reference_model.apply, train=True, mutable=["batch_stats"]), in_axes=(None, 0),
                   devices=jax.local_devices()[:2])
  _, local_updates = local(variables, x.reshape((2, 4) + x.shape[1:]))
  mean = local_updates["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(mean[0], mean[1])
  # A model with an axis name still runs in eval mode outside pmap.
  assert _apply(pmapped_model, False)(variables, x).shape == (8, 10)


# --------------------------------------------------------------------------------------------------------------------
# Converter and load_pretrained.


@pytest.mark.parametrize("arch", models.PRETRAINABLE)
def test_load_pretrained_round_trip(arch, tmp_path):
  sd = _torchvision_state_dict(arch, num_classes=1000, seed=1)
  flat = convert.convert_state_dict(sd, arch)
  assert not any("num_batches_tracked" in k for k in flat)
  convert.check_against_model(flat, arch)
  path = _write_npz(tmp_path / f"{arch}.npz", flat, arch)

  num_classes = 5
  variables = _fake_variables(arch, num_classes, seed=2)
  load = models.load_pretrained(variables, path, name=arch)
  np.testing.assert_array_equal(load["params"]["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(load["params"]["bn1"]["scale"], sd["bn1.weight"])
  np.testing.assert_array_equal(load["params"]["bn1"]["bias"], sd["bn1.bias"])
  np.testing.assert_array_equal(load["batch_stats"]["bn1"]["mean"], sd["bn1.running_mean"])
  np.testing.assert_array_equal(load["batch_stats"]["bn1"]["var"], sd["bn1.running_var"])
  np.testing.assert_array_equal(load["params"]["layer1_1"]["conv2"]["kernel"],
                                sd["layer1.1.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(load["params"]["layer3_0"]["downsample_conv"]["kernel"],
                                sd["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(load["params"]["layer2_0"]["downsample_bn"]["scale"],
                                sd["layer2.0.downsample.1.weight"])
  np.testing.assert_array_equal(load["batch_stats"]["layer4_1"]["bn2"]["var"], sd["layer4.1.bn2.running_var"])
  if arch == "resnet50":
    np.testing.assert_array_equal(load["params"]["layer4_2"]["conv3"]["kernel"],
                                  sd["layer4.2.conv3.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(load["params"]["layer1_0"]["downsample_bn"]["bias"],
                                  sd["layer1.0.downsample.1.bias"])
  else:
    assert "downsample_conv" not in load["params"]["layer1_0"]
  # Every non-head leaf came from the file, the head is untouched.
  flat_loaded = traverse_util.flatten_dict(load, sep="/")
  flat_before = traverse_util.flatten_dict(variables, sep="/")
  assert set(flat_loaded) == set(flat_before)
  for key, value in flat_loaded.items():
    if f"/{models.HEAD_NAME}/" in key:
      assert value is flat_before[key]
    else:
      assert value.dtype == jnp.float32
      np.testing.assert_array_equal(value, flat[key])
  n_loaded = sum(v.size for k, v in flat_loaded.items() if k.startswith("params/") and models.HEAD_NAME not in k)
  assert n_loaded == {"resnet18": 11_689_512 - 513_000, "resnet50": 25_557_032 - 2_049_000}[arch]


def test_load_pretrained_skips_cosine_head(tmp_path):
  flat = convert.convert_state_dict(_torchvision_state_dict("resnet18"), "resnet18")
  path = _write_npz(tmp_path / "r18.npz", flat, "resnet18")
  variables = _fake_variables("resnet18", 3, normalized_head=True)
  loaded = models.load_pretrained(variables, path, name="resnet18")
  assert set(loaded["params"][models.HEAD_NAME]) == {"kernel"}
  assert loaded["params"][models.HEAD_NAME]["kernel"].shape == (512, 3)
  model = models.create_model("resnet18", num_classes=3, normalized_head=True)
  assert float(jnp.abs(_apply(model, False)(loaded, _inputs("resnet18"))).max()) <= 1.0


def test_load_pretrained_reports_missing_unexpected_and_mismatched(tmp_path):
  flat = convert.convert_state_dict(_torchvision_state_dict("resnet18"), "resnet18")
  variables = _fake_variables("resnet18", 4)
  broken = dict(flat)
  del broken["batch_stats/layer2_1/bn1/var"]
  broken["params/layer3_0/conv1/kernel"] = broken["params/layer3_0/conv1/kernel"][..., :10]
  broken["params/layer9_0/conv1/kernel"] = np.zeros((1,), np.float32)
  path = _write_npz(tmp_path / "broken.npz", broken, "resnet18")
  with pytest.raises(ValueError) as info:
    models.load_pretrained(variables, path, name="resnet18")
  message = str(info.value)
  assert "batch_stats/layer2_1/bn1/var" in message
  assert "params/layer3_0/conv1/kernel" in message and "(3, 3, 128, 10)" in message
  assert "params/layer9_0/conv1/kernel" in message
  # Wrong architecture and unsupported names.
  good = _write_npz(tmp_path / "good.npz", flat, "resnet18")
  with pytest.raises(ValueError, match="resnet18"):
    models.load_pretrained(_fake_variables("resnet50", 4), good, name="resnet50")
  with pytest.raises(ValueError, match="resnet32"):
    models.load_pretrained(variables, good, name="resnet32")


def test_converter_rejects_wrong_state_dicts():
  sd = _torchvision_state_dict("resnet18")
  with pytest.raises(ValueError, match="layer1.0.conv3.weight"):  # a ResNet-18 is not a ResNet-50
    convert.convert_state_dict(sd, "resnet50")
  del sd["layer2.0.downsample.1.running_mean"]
  sd["layer2.0.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as info:
    convert.convert_state_dict(sd, "resnet18")
  assert "layer2.0.downsample.1.running_mean" in str(info.value) and "layer2.0.extra.weight" in str(info.value)
  # The converter keeps its own copies of the .npz conventions (to import without jax); they must agree.
  assert (convert.ARCH_KEY, convert.HEAD_NAME) == (models.ARCH_KEY, models.HEAD_NAME)
  # DataParallel prefixes are accepted.
  prefixed = {f"module.{k}": v for k, v in _torchvision_state_dict("resnet18").items()}
  assert len(convert.convert_state_dict(prefixed, "resnet18")) == len(convert.expected_torchvision_keys("resnet18"))


# --------------------------------------------------------------------------------------------------------------------
# Optional comparison with PyTorch (skipped when torch is not installed).


def _torch_resnet(torch, arch):
  """torchvision's ResNet written in plain torch.nn (same module names, hence the same state_dict keys)."""
  tnn = torch.nn

  class Basic(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample):
      super().__init__()
      self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(planes)
      self.relu = tnn.ReLU()
      self.downsample = downsample

    def forward(self, x):
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      return self.relu(out + (x if self.downsample is None else self.downsample(x)))

  class Bottle(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample):
      super().__init__()
      self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(planes)
      self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = tnn.BatchNorm2d(planes * 4)
      self.relu = tnn.ReLU()
      self.downsample = downsample

    def forward(self, x):
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return self.relu(out + (x if self.downsample is None else self.downsample(x)))

  class ResNet(tnn.Module):

    def __init__(self, block, layers, num_classes):
      super().__init__()
      self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = tnn.BatchNorm2d(64)
      self.relu = tnn.ReLU()
      self.maxpool = tnn.MaxPool2d(3, 2, 1)
      inplanes = 64
      for i, n in enumerate(layers):
        planes, blocks = 64 * 2**i, []
        for j in range(n):
          stride = 2 if i > 0 and j == 0 else 1
          downsample = None
          if stride != 1 or inplanes != planes * block.expansion:
            downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                                        tnn.BatchNorm2d(planes * block.expansion))
          blocks.append(block(inplanes, planes, stride, downsample))
          inplanes = planes * block.expansion
        setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
      self.avgpool = tnn.AdaptiveAvgPool2d(1)
      self.fc = tnn.Linear(inplanes, num_classes)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  if arch == "resnet18":
    return ResNet(Basic, (2, 2, 2, 2), 7)
  return ResNet(Bottle, (3, 4, 6, 3), 7)


@pytest.mark.torch
@pytest.mark.parametrize("arch", models.PRETRAINABLE)
def test_matches_torch_reference(arch, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = _torch_resnet(torch, arch)
  with torch.no_grad():  # non-trivial BatchNorm affine parameters and running statistics
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
  assert set(k for k in sd if not k.endswith("num_batches_tracked")) == set(convert.expected_torchvision_keys(arch))
  assert set(sd) == set(_torchvision_state_dict(arch, num_classes=7))  # the test helper uses torchvision's names
  flat = convert.convert_state_dict(sd, arch)
  path = _write_npz(tmp_path / "w.npz", flat, arch)
  variables = models.load_pretrained(_fake_variables(arch, 7), path, name=arch)
  variables["params"][models.HEAD_NAME] = {"kernel": jnp.asarray(flat["params/head/kernel"]),
                                           "bias": jnp.asarray(flat["params/head/bias"])}
  model = models.create_model(arch, num_classes=7)
  x = np.asarray(_inputs(arch, seed=5))
  x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

  net.eval()
  with torch.no_grad():
    expected = net(x_torch).numpy()
  logits = np.asarray(_apply(model, False)(variables, jnp.asarray(x)))
  scale = float(np.abs(expected).max())
  np.testing.assert_allclose(logits, expected, atol=1e-4 * scale, rtol=1e-4)

  net.train()
  with torch.no_grad():
    expected = net(x_torch).numpy()
  logits, updates = _apply(model, True)(variables, jnp.asarray(x))
  scale = float(np.abs(expected).max())
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4 * scale, rtol=1e-4)
  # Running means follow the same update (running variances differ by the n / (n - 1) of PyTorch's unbiased update).
  np.testing.assert_allclose(updates["batch_stats"]["layer2_0"]["downsample_bn"]["mean"],
                             net.layer2[0].downsample[1].running_mean.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"], net.bn1.running_mean.numpy(), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.torch
def test_converter_command_line(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  sd = {k: torch.from_numpy(v) for k, v in _torchvision_state_dict("resnet18", num_classes=1000).items()}
  torch.save(sd, tmp_path / "resnet18.pth")
  out = tmp_path / "resnet18.npz"
  assert convert.main(["--input", str(tmp_path / "resnet18.pth"), "--output", str(out), "--arch", "resnet18"]) == 0
  with np.load(out) as npz:
    assert str(npz[convert.ARCH_KEY]) == "resnet18"
    np.testing.assert_array_equal(npz["params/layer4_0/conv1/kernel"],
                                  sd["layer4.0.conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(npz["params/head/kernel"], sd["fc.weight"].numpy().T)


def test_key_problems_report_lists_each_nonempty_section():
  report = weights_format.key_problems_report("Bad:", [("missing", ["a", "b"]), ("unexpected", []),
                                                ("malformed", [f"k{i}" for i in range(23)])], limit=20)
  assert report.splitlines() == ["Bad:", "  missing (2): a, b",
                                 "  malformed (23): " + ", ".join(f"k{i}" for i in range(20)) + ", ... (3 more)"]
  assert weights_format.key_problems_report("Bad:", [("missing", []), ("unexpected", ())]) == ""


def test_the_converter_and_the_name_lists_import_without_jax():
  # The converter runs where only torch and NumPy exist; the models take the names from the same module.
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  code = ("import sys; import experiments.convert_torchvision_weights, experiments.config; "
          "assert 'jax' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
  assert models.HEAD_NAME == convert.HEAD_NAME == weights_format.HEAD_NAME
  assert models.PRETRAINABLE == tuple(convert.ARCHS)
  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
  assert models.MODELS is config_lib.MODELS

