"""Compile time and time per step of `smooth_topk_svm_loss`'s value-and-grad.

    python benchmarks/bench_compile.py             # writes its section of benchmarks/RESULTS.md
    python benchmarks/bench_compile.py --no-write --compiles 1 --rounds 10

Compile time: `jax.jit(jax.value_and_grad(mean(loss))).lower(logits).compile()` of a new function after
`jax.clear_caches()`, so nothing traced or compiled before is reused; reported split into tracing + lowering and
XLA's compilation, medians of `--compiles` fresh compiles, the shapes interleaved. Time per step: the compiled
function, medians of `--rounds` rounds, one shape after another. Logits uniform in [-1, 1] (cosine scores), tau 0.1
(the Pl@ntNet-300K setting), alpha 1.

The step is also timed for the same loss with the hard branch's order statistics taken from full sorts
(`sorted_step`), as the library computed them before it used its selection (2026-12-06), interleaved with the
library's step round by round: the "sort / selection" column is measured in this process.

Before 2026-12-06 the section also showed this script's figures for the code before the log-space recursion was
vectorized (measured on `8ac44ff`, on another CPU); RESULTS.md keeps them in its text.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import noised_topk_jax as ntk  # pylint: disable=wrong-import-position

# (N examples, L classes, k): the Pl@ntNet-300K head at batch 32 and 128 (the plantnet1081 grid's MLP) and a 10-class
# head, at k = 1 and 5.
SHAPES = ((32, 1081, 1), (32, 1081, 5), (128, 1081, 1), (128, 1081, 5), (32, 10, 1), (32, 10, 5))
TAU, ALPHA = 0.1, 1.0


def _inputs(n, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.uniform(-1.0, 1.0, size=(n, num_classes)).astype(np.float32))
  return logits, jnp.asarray(rng.integers(0, num_classes, size=n).astype(np.int32))


def _step(labels, k):
  """A new jitted value-and-grad function (a new Python function every call: nothing cached applies to it)."""
  return jax.jit(jax.value_and_grad(lambda s: jnp.mean(ntk.smooth_topk_svm_loss(s, labels, k=k, tau=TAU,
                                                                                  alpha=ALPHA))))


def _sorted_kth_largest(x, k):
  return -jnp.sort(-x, axis=-1)[..., k - 1]


def sorted_step(labels, k):
  """`_step` with the hard branch's and the switch's order statistics from full sorts, as the code before."""
  loss = lambda s: ntk.losses._smooth_topk_svm(s, labels, k, TAU, ALPHA, _sorted_kth_largest)  # pylint: disable=protected-access
  return jax.jit(jax.value_and_grad(lambda s: jnp.mean(loss(s))))


def compile_times(shapes, compiles):
  """shape -> ([trace + lower seconds], [compile seconds]), one fresh compile per shape and round."""
  out = {shape: ([], []) for shape in shapes}
  for _ in range(compiles):
    for shape in shapes:
      logits, labels = _inputs(*shape[:2])
      jax.clear_caches()
      start = time.perf_counter()
      lowered = _step(labels, shape[2]).lower(logits)
      lowered_at = time.perf_counter()
      lowered.compile()
      out[shape][0].append(lowered_at - start)
      out[shape][1].append(time.perf_counter() - lowered_at)
  return out


def step_times(shapes, rounds):
  """(shape, "selection" or "sort") -> times of the library's step and of `sorted_step`, interleaved per shape.

  Shapes are timed one after another, not interleaved with each other: right after a 100 ms step, the first call
  of a 0.05 ms one took 2.8 ms in such a run (interleaving all shapes, as this script did before 2026-12-06).
  """
  times = {}
  for shape in shapes:
    logits, labels = _inputs(*shape[:2])
    fns = {}
    for name, make in (("selection", _step), ("sort", sorted_step)):
      compiled = make(labels, shape[2]).lower(logits).compile()
      fns[(shape, name)] = lambda c=compiled, x=logits: jax.block_until_ready(c(x))
    times.update(common.interleaved_times(fns, repeats=rounds))
  return times


def _format(rows, args, load_before):
  lines = ["## Smooth top-k SVM: compile time and time per step", "", *common.machine_description(jax),
           f"- Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, after: "
           f"{' / '.join(f'{x:.2f}' for x in common.load_average())}",
           f"- Command: `python benchmarks/bench_compile.py --compiles {args.compiles} --rounds {args.rounds}`",
           f"- `jit(value_and_grad(mean(smooth_topk_svm_loss)))`, tau {TAU}, alpha {ALPHA}; compile: medians of "
           f"{args.compiles} fresh compiles after `jax.clear_caches()`; step: medians of {args.rounds} rounds "
           "interleaving the two steps of a shape, one shape after another. Sort: the same step with the hard "
           "branch's order statistics from full sorts (the code before 2026-12-06), timed in the same rounds.", "",
           "| N | L | k | trace + lower (s) | XLA compile (s) | compile total (s) | step (ms) | sort: step (ms) | "
           "sort / selection |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for (n, num_classes, k), lower_s, compile_s, step_ms, sort_ms in rows:
    cells = [f"{lower_s:.2f}", f"{compile_s:.2f}", f"{lower_s + compile_s:.2f}", f"{step_ms:.3f}", f"{sort_ms:.3f}",
             f"{sort_ms / step_ms:.2f}"]
    lines.append(f"| {n} | {num_classes} | {k} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--compiles", type=int, default=3, help="fresh compiles per shape")
  parser.add_argument("--rounds", type=int, default=50, help="interleaved rounds of the step timing")
  parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
  args = parser.parse_args()
  load_before = common.load_average()
  compiled = compile_times(SHAPES, args.compiles)
  steps = step_times(SHAPES, args.rounds)
  rows = []
  for shape in SHAPES:
    lower_s, compile_s = (float(np.median(t)) for t in compiled[shape])
    rows.append((shape, lower_s, compile_s, common.median_ms(steps[(shape, "selection")]),
                 common.median_ms(steps[(shape, "sort")])))
    print(f"{shape}: trace + lower {lower_s:.3f} s, compile {compile_s:.3f} s, step {rows[-1][3]:.4f} ms "
          f"(sort-based: {rows[-1][4]:.4f} ms)", flush=True)
  text = _format(rows, args, load_before)
  print(text)
  if not args.no_write:
    common.write_section(f"bench_compile:{jax.default_backend()}", text)


if __name__ == "__main__":
  main()
