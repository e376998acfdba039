"""Variance reduction for the noised top-K estimator: gradient variance and time per step of each noise scheme.

    python benchmarks/bench_variance.py                 # writes its section of benchmarks/RESULTS.md
    python benchmarks/bench_variance.py --quick         # a few keys, no file written (smoke run)

The price of the noised top-K loss is the Monte Carlo error of its B draws. At fixed logits this script draws the
loss gradient (the perturbed-optimizer estimate, `d mean(loss) / d logits` of `ntk.noised_topk_loss`) with many keys
for each scheme at the same B, and reports the total variance `sum_ij Var_key[g_ij]` and its ratio to independent
draws (> 1: the scheme has lower variance). Schemes:

- `iid`: B independent standard normals per score (the library's default);
- `antithetic`: B/2 draws and their negatives (`antithetic=True`, in the library);
- `latin_hypercube`: for every score, the B draws stratified in probability, `Phi^-1((pi_b + U_b) / B)` with a
  random permutation `pi` of 0..B-1 per score (randomized quasi-Monte-Carlo along the sample axis). Not in the
  library: it is kept here only to show whether it pays.

Shapes: the imbalanced noised loss of the Pl@ntNet protocol (N 32, L 1081, K 5, margins max 0.2, scale 60) on
standard-normal scores (the issue's probe) and on cosine-like scores (uniform in [-0.3, 0.7]), and the Fashion-MNIST
default (N 128, L 10, K 2), each at epsilon 0.01, 0.1 and 1. Time per step: forward + backward under `jit`,
medians of interleaved rounds (the generator of each scheme included). Accuracy: the embedded default job
(`python -m experiments.train`, through `train_and_evaluate`) for each seed of `--accuracy_seeds` with iid draws at
its B = 5, iid draws at B = 4 and antithetic pairs at B = 4.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from jax.scipy import special  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import noised_topk_jax as ntk  # pylint: disable=wrong-import-position
from experiments import configs  # pylint: disable=wrong-import-position
from experiments import train_lib  # pylint: disable=wrong-import-position

SCHEMES = ("iid", "antithetic", "latin_hypercube")
EPSILONS = (0.01, 0.1, 1.0)
# name -> (N, L, K, score distribution)
SHAPES = {
    "plantnet, normal scores": (32, 1081, 5, "normal"),
    "plantnet, cosine scores": (32, 1081, 5, "cosine"),
    "fashion default": (128, 10, 2, "cosine"),
}


def latin_hypercube_normal(key, shape):
  """Standard normals `[B, ...]` stratified along axis 0: each score's B draws fall one in each of B equal-probability
  bins (in random order), each uniform within its bin."""
  k_uniform, k_perm = jax.random.split(key)
  num_samples = shape[0]
  u = jax.random.uniform(k_uniform, shape, minval=1e-7, maxval=1.0 - 1e-7)
  perm = jnp.argsort(jax.random.uniform(k_perm, shape), axis=0).astype(jnp.float32)
  return special.ndtri((perm + u) / num_samples)


def make_grad_fn(scheme, *, logits, labels, k, epsilon, num_samples, margins):
  def loss(s, key):
    kwargs = dict(k=k, epsilon=epsilon, margins=margins, scale=60.0)
    if scheme == "latin_hypercube":
      noise = latin_hypercube_normal(key, (num_samples,) + s.shape)
      return jnp.mean(ntk.noised_topk_loss(s, labels, noise=noise, **kwargs))
    return jnp.mean(ntk.noised_topk_loss(s, labels, num_samples=num_samples, key=key,
                                         antithetic=scheme == "antithetic", **kwargs))
  grad = jax.grad(loss)
  return jax.jit(lambda key: grad(logits, key))


def inputs(n, num_classes, dist, seed=0):
  rng = np.random.default_rng(seed)
  if dist == "normal":
    logits = rng.standard_normal((n, num_classes))
  else:
    logits = rng.uniform(-0.3, 0.7, (n, num_classes))
  labels = rng.integers(0, num_classes, n)
  counts = np.maximum(5, (5000 * 0.01 ** (np.arange(num_classes) / max(num_classes - 1, 1)))).astype(np.int64)
  return (jnp.asarray(logits, jnp.float32), jnp.asarray(labels), ntk.class_margins(counts, max_margin=0.2))


def total_variance(grad_fn, num_keys, seed):
  keys = jax.random.split(jax.random.key(seed), num_keys)
  grads = jax.lax.map(grad_fn, keys)  # [R, N, L]
  g = np.asarray(grads, np.float64)
  return float(g.var(axis=0, ddof=1).sum()), float(np.abs(g.mean(axis=0)).sum())


# (label, config changes) of the default job's accuracy comparison.
ACCURACY_VARIANTS = (("iid, B = 5 (the default)", {}), ("iid, B = 4", {"num_samples": 4}),
                     ("antithetic, B = 4", {"num_samples": 4, "antithetic": True}))


def default_job_accuracy(seeds):
  """Test top-1/2/3 (%) of the default job per variant and seed."""
  base = configs.get_preset("default").config
  out = {}
  for label, changes in ACCURACY_VARIANTS:
    for seed in seeds:
      with tempfile.TemporaryDirectory() as workdir:
        results = train_lib.train_and_evaluate(base.replace(seed=seed, **changes), workdir)
      out[(label, seed)] = [100 * results["test"][f"top{k}_accuracy"] for k in (1, 2, 3)]
      print(f"default job, {label}, seed {seed}: top-1/2/3 " + " / ".join(f"{v:.2f}" for v in out[(label, seed)]),
            flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_samples", type=int, default=4, help="B, the same for every scheme (even).")
  parser.add_argument("--num_keys", type=int, default=400, help="Keys per variance estimate.")
  parser.add_argument("--rounds", type=int, default=30, help="Interleaved timing rounds.")
  parser.add_argument("--accuracy_seeds", default="0,1,2",
                      help="Seeds of the default job's accuracy comparison (empty: skip it).")
  parser.add_argument("--quick", action="store_true", help="Few keys and rounds, no accuracy runs; nothing written.")
  args = parser.parse_args()
  if args.quick:
    args.num_keys, args.rounds, args.accuracy_seeds = 40, 3, ""
  seeds = [int(x) for x in args.accuracy_seeds.split(",") if x != ""]
  load_before = common.load_average()

  var_rows, time_rows = [], []
  for shape_name, (n, num_classes, k, dist) in SHAPES.items():
    logits, labels, margins = inputs(n, num_classes, dist)
    for eps in EPSILONS:
      fns = {s: make_grad_fn(s, logits=logits, labels=labels, k=k, epsilon=eps, num_samples=args.num_samples,
                             margins=margins) for s in SCHEMES}
      results = {s: total_variance(fns[s], args.num_keys, seed=1) for s in SCHEMES}
      base = results["iid"][0]
      var_rows.append((shape_name, eps, {s: results[s][0] for s in SCHEMES},
                       {s: base / results[s][0] if results[s][0] > 0 else float("inf") for s in SCHEMES}))
      print(f"{shape_name:26s} eps {eps:<5}: " + ", ".join(
          f"{s} var {results[s][0]:.3e} (iid/{s} {base / results[s][0]:.2f})" for s in SCHEMES), flush=True)
      if eps == 0.01:  # time per step does not depend on epsilon
        key = jax.random.key(7)
        timed = {s: (lambda f=fns[s]: f(key).block_until_ready()) for s in SCHEMES}
        times = common.interleaved_times(timed, repeats=args.rounds)
        time_rows.append((shape_name, {s: common.median_ms(times[s]) for s in SCHEMES}))
        print(f"{shape_name:26s} ms/step: " + ", ".join(f"{s} {common.median_ms(times[s]):.3f}" for s in SCHEMES),
              flush=True)

  lines = [f"## Noised top-K: variance reduction of the gradient estimate (B = {args.num_samples})", "",
           *common.machine_description(jax),
           f"- Load average before: {' / '.join(f'{x:.2f}' for x in load_before)}, after: "
           f"{' / '.join(f'{x:.2f}' for x in common.load_average())}",
           f"- Command: `python benchmarks/bench_variance.py --num_samples={args.num_samples} "
           f"--num_keys={args.num_keys} --rounds={args.rounds} --accuracy_seeds={args.accuracy_seeds}`",
           "- Gradient of the batch-mean imbalanced noised loss (max margin 0.2, scale 60) at fixed logits; total "
           f"variance over {args.num_keys} keys; ratio = iid variance / scheme variance (> 1: lower variance). "
           "Schemes: see the script's docstring.", "",
           "| shapes (N, L, K), scores | epsilon | " + " | ".join(f"{s} total variance" for s in SCHEMES)
           + " | iid / antithetic | iid / latin hypercube |",
           "|---|---:|" + "---:|" * len(SCHEMES) + "---:|---:|"]
  for shape_name, eps, var, ratio in var_rows:
    n, num_classes, k, _ = SHAPES[shape_name]
    lines.append(f"| {shape_name} ({n}, {num_classes}, {k}) | {eps} | "
                 + " | ".join(f"{var[s]:.3e}" for s in SCHEMES)
                 + f" | {ratio['antithetic']:.2f} | {ratio['latin_hypercube']:.2f} |")
  lines += ["", "Time per step (forward + backward, jit), medians of interleaved rounds:", "",
            "| shapes | " + " | ".join(f"{s} (ms)" for s in SCHEMES) + " | antithetic / iid | latin hypercube / iid |",
            "|---|" + "---:|" * len(SCHEMES) + "---:|---:|"]
  for shape_name, ms in time_rows:
    lines.append(f"| {shape_name} | " + " | ".join(f"{ms[s]:.3f}" for s in SCHEMES)
                 + f" | {ms['antithetic'] / ms['iid']:.2f} | {ms['latin_hypercube'] / ms['iid']:.2f} |")
  if seeds:
    accuracy = default_job_accuracy(seeds)
    lines += ["", f"The default job's test accuracy (%), mean ± std over seeds {', '.join(map(str, seeds))}:", "",
              "| noise | top-1 | top-2 | top-3 | per seed (top-1 / top-2 / top-3) |", "|---|---:|---:|---:|---|"]
    for label, _ in ACCURACY_VARIANTS:
      vals = np.asarray([accuracy[(label, seed)] for seed in seeds])
      spread = vals.std(axis=0, ddof=1) if len(seeds) > 1 else np.zeros(3)
      lines.append(f"| {label} | " + " | ".join(f"{m:.2f} ± {sd:.2f}" for m, sd in zip(vals.mean(0), spread))
                   + " | " + "; ".join(" / ".join(f"{v:.2f}" for v in row) for row in vals) + " |")
  common.report(f"bench_variance:{jax.default_backend()}", "\n".join(lines), write=not args.quick)


if __name__ == "__main__":
  main()
