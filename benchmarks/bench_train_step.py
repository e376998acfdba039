"""Images/s of the full pmapped train step with the imbalanced noised top-K loss against cross-entropy.

    python benchmarks/bench_train_step.py                    # ResNet-32, CIFAR shapes, batch 128, L = 100
    python benchmarks/bench_train_step.py --preset plantnet  # ResNet-50, 224x224, batch 32, L = 1081 (GPU-sized)
    python benchmarks/bench_train_step.py --preset synthetic1081   # the generated plantnet1081 MLP, batch 128

The step is `experiments.train_lib.train_step` under `jax.pmap` over the local devices, exactly as the trainer runs it
(forward, loss, backward, gradient psum, SGD update, BatchNorm statistics), on random images. The loss's share of a
step is estimated twice: from the two step times, `(t_noised - t_ce) / t_noised`, and from the loss's own forward +
backward on the step's logits shape, timed alone (`loss alone / t_noised`), which does not suffer from the
subtraction of two noisy numbers. The B N L standard normals of the loss are timed alone too (`jax.random.normal`
of `[B, N, L]`, the floor of bench_noised_topk.py): where the model is small (the `synthetic1081` MLP: 8 inputs,
2 x 512, L = 1081) they, not the network, can dominate the step. Results go to their section of
benchmarks/RESULTS.md.
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_noised_topk  # pylint: disable=wrong-import-position
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import noised_topk_jax as ntk  # pylint: disable=wrong-import-position
from experiments import config as config_lib  # pylint: disable=wrong-import-position
from experiments import input_pipeline  # pylint: disable=wrong-import-position
from experiments import train_lib  # pylint: disable=wrong-import-position

PRESETS = {
    # CIFAR-100-LT protocol: ResNet-32 with a normalized head, batch 128.
    "cifar": dict(model="resnet32", num_classes=100, image_size=32, batch_size=128),
    # Pl@ntNet-300K protocol: ResNet-50, 224x224 crops, batch 32, 1081 classes.
    "plantnet": dict(model="resnet50", num_classes=1081, image_size=224, batch_size=32),
    # The generated plantnet1081 problem (experiments/configs/synthetic_lt.py): an MLP of 2 x 512 on 8-d vectors.
    "synthetic1081": dict(model="mlp", num_classes=1081, input_shape=(8,), batch_size=128),
}
# The imbalanced noised loss of the Pl@ntNet-300K commands: K = 5, eps 0.01, B = 5, max margin 0.2, scale 60.
NOISED = dict(k=5, epsilon=0.01, num_samples=5, max_margin=0.2, scale=60.0)


def _input_shape(preset):
  return preset.get("input_shape") or (preset["image_size"], preset["image_size"], 3)


def _title(preset):
  if "input_shape" in preset:
    return f"{preset['model']} on {preset['input_shape'][0]}-d vectors"
  return f"{preset['model']}, {preset['image_size']}x{preset['image_size']}"


class _FakeDataset:
  def __init__(self, num_classes, input_shape):
    self.num_classes = num_classes
    self.image_shape = tuple(input_shape)
    self.train_class_counts = np.maximum(1, (500 * 0.01**(np.arange(num_classes) / (num_classes - 1)))).astype(int)


def _config(preset, loss, half_precision):
  extra = NOISED if loss == "noised_imbalanced" else {}
  dataset = "synthetic_lt" if preset["model"] == "mlp" else "cifar100_lt"
  return config_lib.Config(dataset=dataset, model=preset["model"], loss=loss, normalized_head=True,
                           batch_size=preset["batch_size"], half_precision=half_precision, **extra)


def _step_fn(preset, loss, dataset, half_precision):
  config = _config(preset, loss, half_precision)
  loss_fn = train_lib.make_loss_fn(config, np.asarray(dataset.train_class_counts))
  state, schedule = train_lib.create_train_state(config, dataset, steps_per_epoch=100)
  p_step = jax.pmap(functools.partial(train_lib.train_step, loss_fn=loss_fn, schedule=schedule),
                    axis_name=train_lib.AXIS, in_axes=(0, 0, None, None), donate_argnums=(0,))
  return p_step, state


class _Trainer:
  """Runs steps of one loss on fixed random batches; calling it runs one step and blocks."""

  def __init__(self, preset, loss, dataset, half_precision):
    import flax  # pylint: disable=import-outside-toplevel
    self.p_step, state = _step_fn(preset, loss, dataset, half_precision)
    self.state = flax.jax_utils.replicate(state)
    devices = jax.local_device_count()
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((preset["batch_size"],) + dataset.image_shape).astype(np.float32),
             "label": rng.integers(0, dataset.num_classes, preset["batch_size"]).astype(np.int32)}
    sharded = input_pipeline.shard(batch, devices)
    # On the devices once, so that the timed steps do not include the host-to-device copy of the images.
    self.batch = jax.pmap(lambda x: x)(sharded)
    self.rng = jax.random.key(1)
    self.weights = jnp.ones(dataset.num_classes, jnp.float32)

  def __call__(self):
    self.state, metrics = self.p_step(self.state, self.batch, self.rng, self.weights)
    jax.block_until_ready((self.state, metrics))


def _loss_alone(preset, dataset):
  """Forward + backward of the noised loss on one device's logits, as inside the step."""
  n = preset["batch_size"] // jax.local_device_count()
  margins = ntk.class_margins(dataset.train_class_counts, max_margin=NOISED["max_margin"])
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.uniform(-1, 1, (n, dataset.num_classes)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, dataset.num_classes, n).astype(np.int32))

  @jax.jit
  def step(logits, key):
    key, sub = jax.random.split(key)
    value, grad = jax.value_and_grad(lambda s: jnp.mean(ntk.noised_topk_loss(
        s, labels, k=NOISED["k"], epsilon=NOISED["epsilon"], num_samples=NOISED["num_samples"], margins=margins,
        scale=NOISED["scale"], key=sub)))(logits)
    return value, grad, key

  state = {"key": jax.random.key(0)}

  def run():
    *out, state["key"] = step(logits, state["key"])
    jax.block_until_ready(out)

  return run


def run(preset_name, *, repeats, half_precision, batch_size=None):
  preset = PRESETS[preset_name]
  if batch_size is not None:
    if batch_size <= 0 or batch_size % jax.local_device_count():
      raise ValueError(f"`batch_size` must be a positive multiple of the {jax.local_device_count()} local devices, "
                       f"got {batch_size}.")
    preset = dict(preset, batch_size=batch_size)
  dataset = _FakeDataset(preset["num_classes"], _input_shape(preset))
  fns = {"ce": _Trainer(preset, "ce", dataset, half_precision),
         "noised": _Trainer(preset, "noised_imbalanced", dataset, half_precision),
         "loss_alone": _loss_alone(preset, dataset),
         # bench_noised_topk.py's floor: `jax.random.normal` of the loss's [B, N, L] noise on one device, with keys
         # split before the timed calls.
         "normals_alone": bench_noised_topk._FreshKeys(  # pylint: disable=protected-access
             bench_noised_topk._noise_step(  # pylint: disable=protected-access
                 (NOISED["num_samples"], preset["batch_size"] // jax.local_device_count(), dataset.num_classes),
                 "jax"), calls=repeats + 2)}
  load_before = common.load_average()
  times = common.interleaved_times(fns, repeats=repeats, warmup=2)
  load_after = common.load_average()
  t = {name: common.median_ms(v) for name, v in times.items()}
  batch = preset["batch_size"]
  lines = [f"## Train step: {_title(preset)}, batch {batch}, L = {preset['num_classes']}", "",
           *common.machine_description(jax),
           f"- Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, after: "
           f"{' / '.join(f'{x:.2f}' for x in load_after)}",
           f"- `experiments.train_lib.train_step` under `jax.pmap` over {jax.local_device_count()} local device(s), "
           f"{'bfloat16' if half_precision else 'float32'} compute, normalized head; noised loss: K = {NOISED['k']}, "
           f"eps {NOISED['epsilon']}, B = {NOISED['num_samples']}, max margin {NOISED['max_margin']}, "
           f"scale {NOISED['scale']}. Medians of {repeats} interleaved steps after 2 warm-up steps.", "",
           "| loss | step ms | images/s |", "|---|---:|---:|",
           f"| cross-entropy | {t['ce']:.1f} | {1e3 * batch / t['ce']:.1f} |",
           f"| imbalanced noised top-K | {t['noised']:.1f} | {1e3 * batch / t['noised']:.1f} |", "",
           f"- Noised loss forward + backward alone on the step's logits: {t['loss_alone']:.2f} ms = "
           f"**{100 * t['loss_alone'] / t['noised']:.2f}%** of the noised step.",
           f"- Its B N L = {NOISED['num_samples']} x {batch // jax.local_device_count()} x {preset['num_classes']} "
           f"standard normals alone (`jax.random.normal`): {t['normals_alone']:.2f} ms = "
           f"{100 * t['normals_alone'] / t['noised']:.2f}% of the noised step.",
           f"- Step-time difference (noised - CE) / noised: {100 * (t['noised'] - t['ce']) / t['noised']:.2f}% "
           "(the difference of two noisy medians; can be negative)."]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cifar")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--half-precision", action="store_true", help="bfloat16 compute in the model")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="global batch instead of the preset's (the device check's CPU smoke run uses 16)")
  parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
  args = parser.parse_args()
  text = run(args.preset, repeats=args.repeats, half_precision=args.half_precision, batch_size=args.batch_size)
  print(text)
  if not args.no_write:
    common.write_section(f"bench_train_step:{args.preset}:{jax.default_backend()}", text)


if __name__ == "__main__":
  main()
