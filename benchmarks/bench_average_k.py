"""The average-k threshold (`ntk.average_k_threshold`) against NumPy and against `lax.top_k`, in one process.

    python benchmarks/bench_average_k.py               # writes its section of benchmarks/RESULTS.md
    python benchmarks/bench_average_k.py --no-write --rounds 3 --shapes 2000,1081

The threshold is the midpoint of the (N k)-th and (N k + 1)-th largest of the N L validation probabilities. Timed,
interleaved, on the same float32 softmax outputs (Dirichlet draws, concentration 0.05: a few large entries per row):
- library: `jit(ntk.average_k_threshold)`, an exact radix selection (32 counting passes over the array);
- top_k: the same midpoint from `jax.lax.top_k(flat, N k + 1)` under `jit` (what the library did before);
- NumPy: `np.partition` of the flattened array at the two positions (the reference; the released code sorts the
  whole array with torch, which is slower still).
All three give the same float32 value (checked). Ratios > 1: the library is faster.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
from jax import lax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import noised_topk_jax as ntk  # pylint: disable=wrong-import-position

# Pl@ntNet-300K's validation split (31,118 images) and the generated plantnet1081 one (21,620), then CIFAR-100-sized.
SHAPES = ((31118, 1081), (21620, 1081), (10000, 100))
KS = (1, 3, 5)


def top_k_threshold(probs, k):
  flat = probs.reshape(-1)
  m = probs.shape[0] * k
  largest = lax.top_k(flat, m + 1)[0]
  return 0.5 * (largest[m - 1] + largest[m])


def numpy_threshold(probs, k):
  flat = probs.reshape(-1)
  m = probs.shape[0] * k
  part = np.partition(flat, (flat.size - m - 1, flat.size - m))  # ascending: the m-th largest is at size - m
  return np.float32(0.5) * (part[flat.size - m] + part[flat.size - m - 1])


def run(shapes, rounds, write):
  library = jax.jit(ntk.average_k_threshold, static_argnames="k")
  top_k = jax.jit(top_k_threshold, static_argnums=1)
  rows = []
  for n, num_classes in shapes:
    probs = np.random.default_rng(n + num_classes).dirichlet(np.full(num_classes, 0.05), size=n).astype(np.float32)
    device_probs = jnp.asarray(probs)
    for k in KS:
      values = {"library": float(library(device_probs, k=k)), "top_k": float(top_k(device_probs, k)),
                "numpy": float(numpy_threshold(probs, k))}
      if len(set(values.values())) != 1:
        raise AssertionError(f"thresholds differ at {(n, num_classes, k)}: {values}")
      times = common.interleaved_times({
          "library": lambda: library(device_probs, k=k).block_until_ready(),
          "top_k": lambda: top_k(device_probs, k).block_until_ready(),
          "numpy": lambda: numpy_threshold(probs, k)}, repeats=rounds, warmup=1, max_seconds=60, min_repeats=2)
      rounds_done = min(len(t) for t in times.values())
      rows.append(f"| {n} | {num_classes} | {k} | {common.median_ms(times['library']):.0f} | "
                  f"{common.median_ms(times['top_k']):.0f} | {common.median_ms(times['numpy']):.0f} | "
                  f"{common.median_ratio(times['top_k'][:rounds_done], times['library'][:rounds_done]):.1f} | "
                  f"{common.median_ratio(times['numpy'][:rounds_done], times['library'][:rounds_done]):.2f} |")
      print(rows[-1], flush=True)
  text = "\n".join([
      "## Average-k threshold: radix selection against lax.top_k and NumPy", "",
      *common.machine_description(jax),
      f"- Load average (1/5/15 min) after: {' / '.join(f'{x:.2f}' for x in common.load_average())}",
      f"- Medians of up to {rounds} interleaved rounds (a variant past 60 s in all stops at 2); float32 Dirichlet(0.05) "
      "softmax-like rows; the three thresholds are equal at every row.", "",
      "| N | L | k | library ms | lax.top_k ms | NumPy partition ms | top_k / library | NumPy / library |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|", *rows])
  common.report("average_k", text, write=write)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per row")
  parser.add_argument("--shapes", nargs="+", default=None, help="N,L pairs (default: the three of SHAPES)")
  parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
  args = parser.parse_args()
  shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
  run(shapes, args.rounds, not args.no_write)


if __name__ == "__main__":
  main()
