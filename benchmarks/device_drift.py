"""Do 1 and 2 devices train the same model? Per-step train-loss drift of the Fashion-MNIST-LT presets.

    python benchmarks/device_drift.py            # writes its section of benchmarks/RESULTS.md
    python benchmarks/device_drift.py --quick    # 10 steps, nothing written (smoke run)

For each preset, the first epoch's train steps (`experiments.train_lib.train_step`, pmapped as the trainer runs
it) on the same global batches, once on 1 device and once on 2 (on CPU: 2 forced host devices), from the same
initialization and key. It prints the relative difference of the per-step loss at a few steps and of the epoch's
mean loss. Reduction order alone makes the two runs differ by ~1e-7 at first; training then amplifies it (for every
loss: the trajectory is chaotic). Loss noise that depended on the device would make the noised loss differ from the
first step on.
"""
import argparse
import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import flax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

PRESETS = ("fmnist_exp100_ce", "fmnist_exp100_noised_imbalanced_k2")
REPORTED_STEPS = (1, 5, 10, 20, 40, 80)


def per_step_losses(config, dataset, batches, num_devices):
  counts = np.asarray(dataset.train_class_counts)
  loss_fn = train_lib.make_loss_fn(config, counts)
  state, schedule = train_lib.create_train_state(config, dataset, len(batches))
  devices = jax.local_devices()[:num_devices]
  step = jax.pmap(lambda s, b, r, w: train_lib.train_step(s, b, r, w, loss_fn=loss_fn, schedule=schedule),
                  axis_name=train_lib.AXIS, in_axes=(0, 0, None, None), devices=devices)
  rstate = flax.jax_utils.replicate(state, devices=devices)
  weights = jnp.asarray(train_lib.class_weights_for_epoch(config, counts, 0))
  rng = jax.random.key(config.seed + 1)
  losses = []
  for batch in batches:
    rstate, metrics = step(rstate, input_pipeline.shard(batch, num_devices), rng, weights)
    losses.append(float(metrics["loss"][0]))
  return np.asarray(losses)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", default=",".join(PRESETS), help="Comma-separated preset names.")
  parser.add_argument("--data_dir", default=None, help="Fashion-MNIST IDX folder (default: the preset's).")
  parser.add_argument("--quick", action="store_true", help="10 steps, nothing written.")
  args = parser.parse_args()
  if jax.local_device_count() < 2:
    raise SystemExit(f"needs 2 local devices, found {jax.local_device_count()}")
  rows = []
  for name in args.presets.split(","):
    config = configs.get_preset(name).config
    if args.data_dir:
      config = config.replace(data_dir=args.data_dir)
    config = config_lib.validate(config)
    dataset = train_lib.load_dataset(config)
    steps = 10 if args.quick else dataset.steps_per_epoch(config.batch_size)
    batches = list(dataset.train_batches(epoch=0, batch_size=config.batch_size, seed=config.seed,
                                         augment=config.augment))[:steps]
    one, two = (per_step_losses(config, dataset, batches, n) for n in (1, 2))
    rel = np.abs(one - two) / np.abs(one)
    mean_rel = abs(one.mean() - two.mean()) / abs(one.mean())
    rows.append((name, steps, {s: rel[s - 1] for s in REPORTED_STEPS + (steps,) if s <= steps}, mean_rel))
    print(f"{name}: {steps} steps, relative loss difference " +
          ", ".join(f"step {s} {v:.1e}" for s, v in rows[-1][2].items()) + f"; epoch mean {mean_rel:.1e}",
          flush=True)
  shown = sorted({s for _, _, rel, _ in rows for s in rel})
  lines = ["## Device-count drift: 1 vs 2 devices, first epoch", "", *common.machine_description(jax),
           "- Command: `python benchmarks/device_drift.py`",
           "- The same global batches, initialization and key on 1 and on 2 devices; relative difference "
           "|loss_1 - loss_2| / loss_1 of the per-step train loss, and of the epoch's mean.", "",
           "| preset | " + " | ".join(f"step {s}" for s in shown) + " | epoch mean |",
           "|---|" + "---:|" * (len(shown) + 1)]
  for name, _, rel, mean_rel in rows:
    lines.append(f"| {name} | " + " | ".join(f"{rel[s]:.1e}" if s in rel else "" for s in shown)
                 + f" | {mean_rel:.1e} |")
  common.report(f"device_drift:{jax.default_backend()}", "\n".join(lines), write=not args.quick)


if __name__ == "__main__":
  main()
