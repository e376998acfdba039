"""Training parity on long-tailed Fashion-MNIST: our JAX binary against a PyTorch implementation of the papers.

    pip install -r benchmarks/requirements.txt                            # PyTorch (CPU build), benchmark only
    python benchmarks/parity_fashion_mnist_lt.py --check_losses           # losses and model against the library
    python benchmarks/parity_fashion_mnist_lt.py                          # 5 presets, seed 0; writes PARITY.md
    python benchmarks/parity_fashion_mnist_lt.py --seeds=0,1,2            # all three seeds
    python benchmarks/parity_fashion_mnist_lt.py --presets=fmnist_exp100_ldam --epochs=2 --max_steps_per_epoch=5

For every preset and seed, one after the other (so that a change of machine load hits both sides alike):
- JAX: `experiments.train_lib.train_and_evaluate(preset.config.replace(seed=s), workdir)`, the code path of
  `python -m experiments.train --config=PRESET --seed=S` (checkpoints only after the last epoch, so that none falls
  inside a timed epoch); test top-1/2/3 from its results.
- PyTorch (`benchmarks/torch_parity.py`): the published losses, LDAM-DRW's NormedLinear and a twin of our FashionCNN
  with the same initial distributions, trained by a plain eager loop with `torch.optim.SGD` (momentum, coupled weight
  decay, the same per-epoch learning rate) on the same dataset object's `train_batches(epoch, seed, augment)`: the
  same images in the same order with the same augmentation, batch-mean loss; tested on the same balanced test set.
  Only the initial weights and the loss noise differ (each side draws its own from the seed).

Training images/s, the same definition on both sides: the images of epochs 2..E divided by those epochs' wall time,
measured from the `train_batches` call that starts an epoch to the end of its last training step (batch generation
and augmentation included, evaluation and checkpointing excluded; epoch 1 holds JAX's compilation and is left out of
both; a 1-epoch run reports epoch 1 and says so). JAX's epoch ends where the binary itself waits for its step metrics,
marked by its next dataset call. Both sides use `--threads` cores: the process is pinned to that many cores (XLA:CPU
sizes its thread pool from them) and PyTorch gets as many intra-op threads, with OMP_WAIT_POLICY=PASSIVE.

`--check_losses` compares, in float64 on random scores, the per-example values and the gradients of the batch mean of
every PyTorch loss with `noised_topk_jax`'s (the noised losses with the same explicit noise), then our FashionCNN with
its PyTorch twin given the same weights (logits in both BatchNorm modes), and 4 SGD steps of
`train_lib.train_step` against `torch.optim.SGD` from the same weights and batches, across a learning-rate decay and
with a weight decay large enough to show (the two parameter updates); it exits with status 1 if any difference passes
its tolerance.

A full run (no `--epochs` / `--max_steps_per_epoch` override) writes its section of benchmarks/PARITY.md (one per
backend and PyTorch layout: `--torch_channels_last` times PyTorch with channels-last convolutions, a CPU speed-up the
authors' code does not use).
"""
import argparse
import functools
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

# PyTorch's OpenMP workers spin after each parallel region (libgomp's default) and steal the cores of XLA's threads
# (benchmarks/bench_noised_topk.py); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position
import torch_parity  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position

import noised_topk_jax as ntk  # pylint: disable=wrong-import-position
from experiments import configs  # pylint: disable=wrong-import-position
from experiments import input_pipeline  # pylint: disable=wrong-import-position
from experiments import models  # pylint: disable=wrong-import-position
from experiments import train_lib  # pylint: disable=wrong-import-position

PRESETS = ("fmnist_exp100_ce", "fmnist_exp100_ldam", "fmnist_exp100_noised_imbalanced_k1",
           "fmnist_exp100_noised_imbalanced_k2", "fmnist_exp100_topk_hinge_k2")
KS = (1, 2, 3)
# Goal of the issue: each preset's mean test top-1 within this many points of its PyTorch twin's.
TOP1_TOLERANCE = 1.5
PARITY = os.path.join(common.ROOT, "benchmarks", "PARITY.md")
PARITY_HEADER = """# Training parity: the JAX binary against a PyTorch implementation of the papers

Written by `benchmarks/parity_fashion_mnist_lt.py` (its docstring says what is measured and how); each section
below is replaced by a rerun of the command that produced it. Text outside the markers is written by hand.
"""


# ----------------------------------------------------------------------------------------------------------------
# Threads.


def limit_threads(threads):
  """Pins the process to `threads` of its usable cores (before JAX starts its backend) and sets PyTorch's threads."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if cores and not 1 <= threads <= len(cores):
    raise ValueError(f"`--threads` must be in [1, {len(cores)}] (the usable cores), got {threads}.")
  if cores and threads < len(cores):
    os.sched_setaffinity(0, cores[:threads])
  torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# The same dataset for both sides.


# The real loader: `run_jax` replaces `input_pipeline.get_dataset` while the binary runs.
_GET_DATASET = input_pipeline.get_dataset


@functools.lru_cache(maxsize=None)
def _load_dataset(name, items):
  return _GET_DATASET(name, **dict(items))


def _cached_get_dataset(name, **kwargs):
  return _load_dataset(name, tuple(sorted(kwargs.items())))


def get_dataset(config):
  """The dataset `train_lib.load_dataset` builds for `config` (the binary's own call, so both sides see the same
  data whatever arguments it passes), loaded once per process."""
  input_pipeline.get_dataset = _cached_get_dataset
  try:
    return train_lib.load_dataset(config)
  finally:
    input_pipeline.get_dataset = _GET_DATASET


class _EpochClock:
  """The binary's dataset, which notes the time of every `train_batches` and `eval_batches` call.

  An epoch of `train_and_evaluate` starts with its `train_batches` call; its steps are done when the binary has
  read their metrics back, right before its next dataset call (the next epoch's batches or an evaluation).
  """

  def __init__(self, dataset):
    self._dataset = dataset
    self.marks = []  # (kind, time)

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def train_batches(self, **kwargs):
    self.marks.append(("train", time.perf_counter()))
    return self._dataset.train_batches(**kwargs)

  def eval_batches(self, split, **kwargs):
    self.marks.append(("eval", time.perf_counter()))
    return self._dataset.eval_batches(split, **kwargs)

  def epoch_seconds(self):
    out = []
    for i, (kind, start) in enumerate(self.marks):
      if kind == "train":
        if i + 1 == len(self.marks):
          raise RuntimeError("The binary's last epoch was not followed by an evaluation; cannot time it.")
        out.append(self.marks[i + 1][1] - start)
    return out


def steps_per_epoch(config, dataset):
  steps = dataset.steps_per_epoch(config.batch_size)
  return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


# ----------------------------------------------------------------------------------------------------------------
# One run of each side.


def images_per_second(epoch_seconds, epoch_images):
  """Images/s over epochs 2..E (all epochs when there is only one); returns (value, first epoch included)."""
  skip = 1 if len(epoch_seconds) > 1 else 0
  return sum(epoch_images[skip:]) / sum(epoch_seconds[skip:]), skip == 0


def run_jax(config, workdir):
  """`train_lib.train_and_evaluate` in a fresh `workdir`, timed by its dataset calls."""
  if os.path.exists(workdir):
    shutil.rmtree(workdir)  # a leftover checkpoint would make the binary resume instead of training
  clocks = []

  def timed_get_dataset(name, **kwargs):
    clocks.append(_EpochClock(_cached_get_dataset(name, **kwargs)))
    return clocks[-1]

  input_pipeline.get_dataset = timed_get_dataset
  try:
    start = time.perf_counter()
    results = train_lib.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
  finally:
    input_pipeline.get_dataset = _GET_DATASET
  seconds = clocks[0].epoch_seconds()
  steps = steps_per_epoch(config, get_dataset(config))
  images = [steps * config.batch_size] * len(seconds)
  ips, first_included = images_per_second(seconds, images)
  return {"test": results["test"], "epoch_seconds": seconds, "images_per_second": ips, "wall": wall,
          "first_included": first_included, "train_loss": results["history"][-1]["train"]["loss"]}


def run_torch(config, channels_last):
  dataset = get_dataset(config)
  start = time.perf_counter()
  out = torch_parity.train_and_evaluate(config, dataset, steps_per_epoch=steps_per_epoch(config, dataset),
                                        channels_last=channels_last)
  wall = time.perf_counter() - start
  ips, first_included = images_per_second(out["epoch_seconds"], out["epoch_images"])
  return {"test": out["test"], "epoch_seconds": out["epoch_seconds"], "images_per_second": ips, "wall": wall,
          "first_included": first_included, "train_loss": out["train_loss"][-1]}


def _side(fn, *args):
  try:
    return fn(*args)
  except FloatingPointError as e:  # a diverged run is a result of the comparison, not a crash of the benchmark
    print(f"  diverged: {e}", flush=True)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Tables.


def _pct(result, k):
  return float("nan") if result is None else 100.0 * result["test"][f"top{k}_accuracy"]


def _fmt(x, digits=2):
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def run_table(rows):
  lines = ["| preset | seed | JAX top-1 / 2 / 3 | PyTorch top-1 / 2 / 3 | top-1 JAX - PyTorch | last-epoch train loss "
           "JAX / PyTorch | JAX images/s | PyTorch images/s | JAX / PyTorch |",
           "|---|---:|---|---|---:|---|---:|---:|---:|"]
  for r in rows:
    j, t = r["jax"], r["torch"]
    ips_j = j["images_per_second"] if j else None
    ips_t = t["images_per_second"] if t else None
    ratio = ips_j / ips_t if ips_j and ips_t else None
    lines.append(
        f"| `{r['preset']}` | {r['seed']} | {' / '.join(_fmt(_pct(j, k)) for k in KS)} | "
        f"{' / '.join(_fmt(_pct(t, k)) for k in KS)} | {_fmt(_pct(j, 1) - _pct(t, 1))} | "
        f"{_fmt(j and j['train_loss'], 4)} / {_fmt(t and t['train_loss'], 4)} | {_fmt(ips_j, 0)} | "
        f"{_fmt(ips_t, 0)} | {_fmt(ratio)} |")
  return lines


def _mean_std(values):
  values = [v for v in values if not math.isnan(v)]
  if not values:
    return float("nan"), float("nan")
  return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def summary_table(rows, presets):
  lines = ["| preset | seeds | JAX top-1 (mean ± std) | PyTorch top-1 (mean ± std) | difference | "
           f"within {TOP1_TOLERANCE} | JAX / PyTorch images/s (median over seeds) |",
           "|---|---:|---|---|---:|---|---:|"]
  verdicts = {}
  for name in presets:
    runs = [r for r in rows if r["preset"] == name]
    if not runs:
      continue
    mj, sj = _mean_std([_pct(r["jax"], 1) for r in runs])
    mt, st = _mean_std([_pct(r["torch"], 1) for r in runs])
    diff = mj - mt
    within = abs(diff) <= TOP1_TOLERANCE
    verdict = "yes" if within else "no"
    if not within and len(runs) > 1 and not (math.isnan(sj) or math.isnan(st)):
      se = math.sqrt((sj**2 + st**2) / len(runs))
      verdict += f" (2 standard errors of the seed spread: {2 * se:.2f})"
    verdicts[name] = within
    ratios = [r["jax"]["images_per_second"] / r["torch"]["images_per_second"] for r in runs
              if r["jax"] and r["torch"]]
    lines.append(f"| `{name}` | {len(runs)} | {_fmt(mj)} ± {_fmt(sj)} | {_fmt(mt)} ± {_fmt(st)} | {_fmt(diff)} | "
                 f"{verdict} | {_fmt(statistics.median(ratios) if ratios else None)} |")
  return lines, verdicts


def report(rows, presets, *, command, config_note, load_before, load_after, first_included, torch_layout):
  lines = ["## Long-tailed Fashion-MNIST (exp, rho = 100): JAX binary vs PyTorch twin", "",
           *common.machine_description(jax, torch, "cpu"),
           f"- Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, after: "
           f"{' / '.join(f'{x:.2f}' for x in load_after)}",
           f"- Command: `{command}`", f"- {config_note}",
           f"- PyTorch side: `benchmarks/torch_parity.py`, eager mode, {torch_layout} convolutions, "
           "`torch.optim.SGD`; JAX side: `experiments.train_lib.train_and_evaluate` (jit + pmap over 1 CPU device).",
           "- Same data, batch order and augmentation on both sides (the binary's dataset object); different initial "
           "weights and loss noise (each side draws its own from the seed). Test: the balanced 10,000 test images, "
           "last epoch's model.",
           "- Images/s: training images of epochs 2..E over those epochs' wall time (batch generation and train "
           "steps, no evaluation); the ratio of each row comes from one interleaved run (JAX, then PyTorch)."
           + (" **Epoch 1 is included (1-epoch run): JAX's time holds its compilation.**" if first_included else ""),
           "", "Per run:", "", *run_table(rows), "", "Mean over seeds:", ""]
  table, verdicts = summary_table(rows, presets)
  lines += table
  ratios = [r["jax"]["images_per_second"] / r["torch"]["images_per_second"] for r in rows if r["jax"] and r["torch"]]
  lines += ["", f"- Top-1 goal (|mean difference| <= {TOP1_TOLERANCE} points): met by "
            f"{sum(verdicts.values())} of {len(verdicts)} presets."]
  if ratios:
    lines.append(f"- Speed goal (JAX images/s >= 1.0x PyTorch's): JAX / PyTorch {min(ratios):.2f}-{max(ratios):.2f} "
                 f"(median {statistics.median(ratios):.2f}) over {len(ratios)} runs; >= 1.0 in "
                 f"{sum(r >= 1.0 for r in ratios)} of them.")
  return "\n".join(lines)


def write_parity(name, text):
  if not os.path.exists(PARITY):
    with open(PARITY, "w") as f:
      f.write(PARITY_HEADER)
  common.write_section(name, text, path=PARITY)


# ----------------------------------------------------------------------------------------------------------------
# --check_losses.


def _torch_layout(variables, *, normalized_head, feature_hw=7):
  """Our FashionCNN's variables as a `torch_parity.FashionCNN` state dict (numpy arrays)."""
  params, stats = variables["params"], variables["batch_stats"]
  out = {}
  for i in range(3):
    out[f"convs.{i}.weight"] = np.asarray(params[f"conv{i + 1}"]["kernel"]).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    out[f"norms.{i}.weight"] = np.asarray(params[f"bn{i + 1}"]["scale"])
    out[f"norms.{i}.bias"] = np.asarray(params[f"bn{i + 1}"]["bias"])
    out[f"norms.{i}.running_mean"] = np.asarray(stats[f"bn{i + 1}"]["mean"])
    out[f"norms.{i}.running_var"] = np.asarray(stats[f"bn{i + 1}"]["var"])
  kernel = np.asarray(params["head"]["kernel"])
  channels = kernel.shape[0] // feature_hw**2
  # Rows of the head: ours flatten (H, W, C), PyTorch (C, H, W).
  kernel = kernel.reshape(feature_hw, feature_hw, channels, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
  if normalized_head:
    out["head.weight"] = kernel
  else:
    out["head.weight"] = kernel.T
    out["head.bias"] = np.asarray(params["head"]["bias"])
  return out


def _load_into(torch_model, state):
  missing, unexpected = torch_model.load_state_dict(
      {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False)
  if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
    raise RuntimeError(f"Parameter names do not match: missing {missing}, unexpected {unexpected}.")


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _loss_cases(counts):
  """(name, JAX per-example loss(s, y, noise), PyTorch per-example loss(s, y, noise [N, L, B]), B or None)."""
  m_ldam, m_noised = ntk.class_margins(counts, max_margin=0.5), ntk.class_margins(counts, max_margin=0.2)
  t_ldam = torch.tensor(torch_parity.class_margins(counts, max_margin=0.5), dtype=torch.float64)
  t_noised = torch.tensor(torch_parity.class_margins(counts, max_margin=0.2), dtype=torch.float64)
  cases = [
      ("cross-entropy", lambda s, y, z: ntk.cross_entropy_loss(s, y),
       lambda s, y, z: torch_parity.cross_entropy_loss(s, y), None),
      ("LDAM (max m 0.5, scale 30)", lambda s, y, z: ntk.ldam_loss(s, y, margins=m_ldam, scale=30.0),
       lambda s, y, z: torch_parity.ldam_loss(s, y, margins=t_ldam, scale=30.0), None),
  ]
  for k in (1, 2):
    cases.append((f"top-K hinge K={k}", lambda s, y, z, k=k: ntk.topk_hinge_loss(s, y, k=k),
                  lambda s, y, z, k=k: torch_parity.topk_hinge_loss(s, y, k=k), None))
  for k, eps in ((1, 0.1), (2, 0.1), (2, 1.0)):
    cases.append((f"noised imbalanced K={k} (eps {eps}, B 5, max m 0.2, scale 60)",
                  lambda s, y, z, k=k, eps=eps: ntk.noised_topk_loss(s, y, k=k, epsilon=eps, margins=m_noised,
                                                                     scale=60.0, noise=z),
                  lambda s, y, z, k=k, eps=eps: torch_parity.noised_topk_loss(s, y, k=k, epsilon=eps,
                                                                              margins=t_noised, scale=60.0, noise=z),
                  5))
  cases.append(("noised balanced K=2 (eps 1.0, B 5)",
                lambda s, y, z: ntk.noised_topk_loss(s, y, k=2, epsilon=1.0, noise=z),
                lambda s, y, z: torch_parity.noised_topk_loss(s, y, k=2, epsilon=1.0, noise=z), 5))
  return cases


def check_losses_float64(tolerance=1e-6, n=256, num_classes=10):
  counts = ntk.long_tailed_counts(num_classes, max_count=5500, imbalance_ratio=100.0)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, num_classes, n)
  inputs = {"cosine-like U(-1, 1)": rng.uniform(-1.0, 1.0, (n, num_classes)),
            "linear-like N(0, 3^2)": 3.0 * rng.standard_normal((n, num_classes))}
  margin_diff = max(_max_diff(ntk.class_margins(counts, max_margin=m), torch_parity.class_margins(counts, max_margin=m))
                    for m in (0.2, 0.5))
  lines = [f"margins (counts {counts.tolist()}): max |diff| {margin_diff:.2e}"]
  ok = margin_diff <= tolerance
  for name, jax_fn, torch_fn, num_samples in _loss_cases(counts):
    for input_name, scores in inputs.items():
      noise = rng.standard_normal((n, num_classes, num_samples)) if num_samples else None
      j_noise = None if noise is None else jnp.asarray(noise.transpose(2, 0, 1))  # [N, L, B] -> [B, N, L]
      s, y = jnp.asarray(scores), jnp.asarray(labels, jnp.int32)
      j_value = jax_fn(s, y, j_noise)
      j_grad = jax.grad(lambda s: jnp.mean(jax_fn(s, y, j_noise)))(s)
      t_scores = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
      t_noise = None if noise is None else torch.tensor(noise, dtype=torch.float64)
      t_value = torch_fn(t_scores, torch.tensor(labels, dtype=torch.int64), t_noise)
      t_value.mean().backward()
      dv, dg = _max_diff(j_value, t_value.detach().numpy()), _max_diff(j_grad, t_scores.grad.numpy())
      good = dv <= tolerance and dg <= tolerance
      ok &= good
      active = float(np.mean(np.asarray(j_value) > 0))
      lines.append(f"{name:<58} {input_name:<22} value {dv:.2e}  grad {dg:.2e}  (loss > 0: {100 * active:.0f}%)"
                   + ("" if good else "  MISMATCH"))
  return ok, lines


def check_model_and_steps(dataset, tolerance=1e-4, steps=4):
  """FashionCNN against its twin with the same weights, then `steps` SGD steps of both from the same weights."""
  lines, ok = [], True
  batches = dataset.train_batches(epoch=0, batch_size=128, seed=0, augment=True)
  batches = [next(batches) for _ in range(steps)]
  x = batches[0]["image"]
  for normalized in (False, True):
    model = models.create_model("cnn", num_classes=dataset.num_classes, normalized_head=normalized)
    variables = model.init(jax.random.key(0), jnp.zeros((1,) + dataset.image_shape, jnp.float32), train=False)
    twin = torch_parity.FashionCNN(dataset.num_classes, normalized_head=normalized)
    _load_into(twin, _torch_layout(variables, normalized_head=normalized))
    with torch.no_grad():
      diffs = {"eval": _max_diff(model.apply(variables, x, train=False), twin.eval()(torch_parity.nchw(x))),
               "train": _max_diff(model.apply(variables, x, train=True, mutable=["batch_stats"])[0],
                                  twin.train()(torch_parity.nchw(x)))}
    good = max(diffs.values()) <= tolerance
    ok &= good
    lines.append(f"FashionCNN, {'cosine' if normalized else 'linear'} head, same weights: logits max |diff| "
                 f"eval mode {diffs['eval']:.2e}, train mode {diffs['train']:.2e}" + ("" if good else "  MISMATCH"))

  import flax  # pylint: disable=import-outside-toplevel
  for preset in ("fmnist_exp100_ce", "fmnist_exp100_ldam"):
    # Two steps per epoch and a decay after the first epoch, so that the steps cross a learning-rate change; a
    # weight decay 100x the presets' so that its share of an update is far above float32 rounding.
    config = configs.get_preset(preset).config.replace(lr_decay_epochs=(1,), weight_decay=0.05)
    counts = np.asarray(dataset.train_class_counts)
    state, schedule = train_lib.create_train_state(config, dataset, steps_per_epoch=2)
    initial = _torch_layout({"params": state.params, "batch_stats": state.batch_stats},
                            normalized_head=config.normalized_head)
    twin = torch_parity.FashionCNN(dataset.num_classes, normalized_head=config.normalized_head)
    _load_into(twin, _torch_layout({"params": state.params, "batch_stats": state.batch_stats},
                                   normalized_head=config.normalized_head))
    p_step = jax.pmap(functools.partial(train_lib.train_step, loss_fn=train_lib.make_loss_fn(config, counts),
                                        schedule=schedule), axis_name=train_lib.AXIS, in_axes=(0, 0, None, None))
    rstate = flax.jax_utils.replicate(state)
    weights = jnp.ones(dataset.num_classes, jnp.float32)
    loss_fn = torch_parity.make_loss_fn(config, counts)
    optimizer = torch.optim.SGD(twin.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    twin.train()
    for step, batch in enumerate(batches):
      rstate, _ = p_step(rstate, input_pipeline.shard(batch, jax.local_device_count()), jax.random.key(0), weights)
      for group in optimizer.param_groups:
        group["lr"] = torch_parity.learning_rate_at_epoch(config, step // 2)
      loss = loss_fn(twin(torch_parity.nchw(batch["image"])),
                     torch.from_numpy(batch["label"].astype(np.int64))).mean()
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
    final = train_lib.unreplicate(rstate)
    ours = _torch_layout({"params": final.params, "batch_stats": final.batch_stats},
                         normalized_head=config.normalized_head)
    theirs = {k: v.detach().numpy() for k, v in twin.state_dict().items()}
    params = [k for k in ours if "running" not in k]
    # Difference of the two updates relative to the largest entry of PyTorch's update, worst tensor.
    rel = max(_max_diff(ours[k], theirs[k]) / max(1e-12, float(np.max(np.abs(theirs[k] - initial[k]))))
              for k in params)
    mean_diff = max(_max_diff(ours[k], theirs[k]) for k in ours if k.endswith("running_mean"))
    var_rel = max(_max_diff(ours[k], theirs[k]) / float(np.max(np.abs(theirs[k]))) for k in ours
                  if k.endswith("running_var"))
    good = rel <= 1e-2 and mean_diff <= 1e-3
    ok &= good
    lines.append(f"{steps} SGD steps ({config.loss}, {'cosine' if config.normalized_head else 'linear'} head, lr "
                 f"{config.learning_rate} then x{config.lr_decay_factor}, momentum {config.momentum}, wd "
                 f"{config.weight_decay}): parameter updates max relative |diff| {rel:.2e}, BN running mean "
                 f"{mean_diff:.2e}, running var relative {var_rel:.2e} (ours biased, PyTorch unbiased: expected ~1e-4)"
                 + ("" if good else "  MISMATCH"))
  return ok, lines


def check_losses():
  jax.config.update("jax_enable_x64", True)
  ok_losses, lines = check_losses_float64()
  print("Per-example values and gradients of the batch mean, float64, JAX library vs PyTorch (tolerance 1e-6):")
  print("\n".join("  " + line for line in lines))
  config = configs.get_preset(PRESETS[0]).config
  ok_model, lines = check_model_and_steps(get_dataset(config))
  print("Model and optimizer, float32, from the same weights:")
  print("\n".join("  " + line for line in lines))
  ok = ok_losses and ok_model
  print("all checks passed" if ok else "MISMATCH: see the lines marked above")
  return 0 if ok else 1


# ----------------------------------------------------------------------------------------------------------------
# Main.


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
  parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
  parser.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke runs)")
  parser.add_argument("--max_steps_per_epoch", type=int, default=None, help="truncate epochs (smoke runs)")
  parser.add_argument("--workdir", default=None, help="where the JAX runs write (default: a temporary directory, "
                      "removed at the end); each run's subdirectory is cleared before it starts")
  parser.add_argument("--write_results", action=argparse.BooleanOptionalAction, default=None,
                      help="replace this benchmark's section of benchmarks/PARITY.md (default: on, off with "
                      "--epochs or --max_steps_per_epoch)")
  parser.add_argument("--threads", type=int, default=common.usable_cores(),
                      help="cores for both sides (default: all usable cores)")
  parser.add_argument("--torch_channels_last", action="store_true",
                      help="PyTorch convolutions channels-last (faster on CPU; the authors' code uses NCHW)")
  parser.add_argument("--check_losses", action="store_true",
                      help="compare losses, model and optimizer with the JAX side, then exit (status 1 on mismatch)")
  args = parser.parse_args()

  limit_threads(args.threads)
  if args.check_losses:
    return check_losses()

  presets = [p.strip() for p in args.presets.split(",") if p.strip()]
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  overrides = {k: v for k, v in (("epochs", args.epochs), ("max_steps_per_epoch", args.max_steps_per_epoch))
               if v is not None}
  write = (not overrides) if args.write_results is None else args.write_results
  base_configs = {name: configs.get_preset(name).config for name in presets}  # unknown names fail before training
  for name, config in base_configs.items():
    adjusted = any(getattr(config, f, 0.0) for f in ("logit_adjustment_tau", "posthoc_tau"))
    if config.loss not in torch_parity.LOSSES or config.train_rule != "none" or config.model != "cnn" or adjusted:
      raise ValueError(f"{name}: the PyTorch twin implements the cnn model, train_rule=none, no logit adjustment "
                       f"and the losses {torch_parity.LOSSES}; got {config.model}, {config.train_rule}, "
                       f"{config.loss}.")
  workdir = args.workdir or tempfile.mkdtemp(prefix="parity_fashion_mnist_lt_")
  command = "python benchmarks/parity_fashion_mnist_lt.py" + "".join(f" {a}" for a in sys.argv[1:])
  print(f"{command}\nJAX workdirs under {workdir}; {args.threads} thread(s) per side.", flush=True)

  rows = []
  load_before = common.load_average()
  start = time.perf_counter()
  for name in presets:
    for seed in seeds:
      config = base_configs[name].replace(seed=seed, **overrides)
      # Evaluation and checkpoints only after the last epoch: nothing but training inside a timed epoch.
      config = config.replace(eval_every_epochs=config.epochs, checkpoint_every_epochs=config.epochs)
      print(f"[{time.perf_counter() - start:6.0f} s] {name} seed {seed}: JAX ...", flush=True)
      j = _side(run_jax, config, os.path.join(workdir, f"{name}_seed{seed}"))
      print(f"[{time.perf_counter() - start:6.0f} s] {name} seed {seed}: PyTorch ...", flush=True)
      t = _side(run_torch, config, args.torch_channels_last)
      rows.append({"preset": name, "seed": seed, "jax": j, "torch": t})
      for side, r in (("JAX", j), ("PyTorch", t)):
        if r:
          print(f"  {side:<8} top-1/2/3 {' / '.join(_fmt(_pct(r, k)) for k in KS)}, "
                f"{r['images_per_second']:.0f} images/s, epochs {', '.join(f'{s:.1f}' for s in r['epoch_seconds'])} "
                f"s, {r['wall']:.0f} s in all", flush=True)
  load_after = common.load_average()

  first_included = any(r[side] and r[side]["first_included"] for r in rows for side in ("jax", "torch"))
  c = next(iter(base_configs.values())).replace(**overrides)
  config_note = (f"Presets from `experiments/configs/fashion_mnist_lt.py`: {c.epochs} epoch{'s' * (c.epochs != 1)}"
                 + (f" of at most {c.max_steps_per_epoch} steps" if c.max_steps_per_epoch else "")
                 + f", batch {c.batch_size}, SGD lr {c.learning_rate} (x{c.lr_decay_factor} at epochs "
                 f"{', '.join(str(e) for e in c.lr_decay_epochs)}), momentum {c.momentum}, weight decay "
                 f"{c.weight_decay}; seeds {', '.join(map(str, seeds))}; total {time.perf_counter() - start:.0f} s.")
  text = report(rows, presets, command=command, config_note=config_note, load_before=load_before,
                load_after=load_after, first_included=first_included,
                torch_layout="channels-last" if args.torch_channels_last else "NCHW")
  print()
  print(text)
  if write:
    write_parity(f"parity_fashion_mnist_lt:{jax.default_backend()}" + (":channels_last" if args.torch_channels_last
                                                                        else ""), text)
    print(f"\nWrote its section of {os.path.relpath(PARITY, common.ROOT)}.")
  if not args.workdir:
    shutil.rmtree(workdir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
