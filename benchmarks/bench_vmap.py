"""The noised operator's B samples: broadcast over a leading axis (the library) against `jax.vmap` of one sample.

    python benchmarks/bench_vmap.py               # writes its section of benchmarks/RESULTS.md
    python benchmarks/bench_vmap.py --no-write --rounds 10

Both formulations compute `mean_b top_k(s + eps Z_b)` and its perturbed-optimizer gradient, in float32, at the five
shapes of `bench_noised_topk.py` (k = K + 1 as in the loss, eps 0.01, the same explicit noise `[B, N, L]` passed as
an argument of the jitted function, "auto" selection):
- broadcast: `ntk.noised_kth_largest(s, k, epsilon=eps, noise=z)`, one selection over `[B, N, L]` and a custom VJP
  that counts the B one-hots itself;
- vmap: a single-sample operator (noise `[N, L]`, its own custom VJP: the one-hot at the selected index) mapped with
  `jax.vmap` over the sample axis of the noise and averaged; vmap's transpose sums the B gradients.

Timed: `jit(value_and_grad(sum(w * op(s, z))))`, medians of interleaved rounds and the median of the per-round ratios.
Memory: XLA's compiled memory analysis of the same function, temporaries + outputs. Also checked: the values of the
two are identical, and the largest gradient difference (vmap sums B copies of `g / B` where the library multiplies
the count by `g / B`, so the two may differ by rounding).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_noised_topk  # pylint: disable=wrong-import-position
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import noised_topk_jax as ntk  # pylint: disable=wrong-import-position
from noised_topk_jax import _selection  # pylint: disable=wrong-import-position

FORMULATIONS = ("broadcast", "vmap")


def single_sample_kth(k, selection, num_classes):
  """`op(s, z, eps) = top_k(s + eps z)` for one float32 draw `z` of the scores' shape, with the one-hot gradient at
  the selected index (and `sum(g * z_selected)` for eps)."""
  # pylint: disable=protected-access
  def forward(scores, z, epsilon):
    perturbed = scores + epsilon * z
    idx = _selection._select_kth(jax.lax.stop_gradient(perturbed), k, selection)
    return _selection._take_last(perturbed, idx), (idx, _selection._take_last(z, idx))

  def backward(residuals, g):
    idx, z_selected = residuals
    return g[..., None] * jax.nn.one_hot(idx, num_classes, dtype=g.dtype), None, jnp.sum(g * z_selected)

  op = jax.custom_vjp(lambda scores, z, epsilon: forward(scores, z, epsilon)[0])
  op.defvjp(forward, backward)
  return op


def steps(num_classes, k, weights):
  """formulation -> jitted `(s, z) -> (value, grad wrt s)` of `sum(weights * op(s, z))`."""
  selection = _selection._resolve_selection("auto")  # pylint: disable=protected-access
  eps = bench_noised_topk.EPSILON
  single = single_sample_kth(k, selection, num_classes)
  ops = {
      "broadcast": lambda s, z: ntk.noised_kth_largest(s, k, epsilon=eps, noise=z, selection=selection),
      "vmap": lambda s, z: jnp.mean(jax.vmap(single, in_axes=(None, 0, None))(s, z, eps), axis=0),
  }
  loss = lambda op: lambda s, z: jnp.sum(weights * op(s, z))
  return {name: jax.jit(jax.value_and_grad(loss(op))) for name, op in ops.items()}


def measure(shape, rounds):
  n, num_classes, num_samples, big_k = shape
  rng = np.random.default_rng(0)
  scores = jnp.asarray(rng.uniform(-1.0, 1.0, size=(n, num_classes)).astype(np.float32))
  noise = jnp.asarray(rng.standard_normal((num_samples, n, num_classes)).astype(np.float32))
  fns = steps(num_classes, big_k + 1, jnp.asarray(rng.uniform(0.5, 1.5, size=n).astype(np.float32)))
  (v_b, g_b), (v_v, g_v) = (fns[f](scores, noise) for f in FORMULATIONS)
  memory = {}
  for name, fn in fns.items():
    analysis = fn.lower(scores, noise).compile().memory_analysis()
    memory[name] = None if analysis is None else analysis.temp_size_in_bytes + analysis.output_size_in_bytes
  times = common.interleaved_times({f: (lambda fn=fns[f]: jax.block_until_ready(fn(scores, noise)))
                                    for f in FORMULATIONS}, repeats=rounds, warmup=3)
  return {"ms": {f: common.median_ms(times[f]) for f in FORMULATIONS},
          "ratio": common.median_ratio(times["vmap"], times["broadcast"]), "memory": memory,
          "same_value": bool(v_b == v_v), "grad_diff": float(jnp.max(jnp.abs(g_b - g_v)))}


def _format(rows, args, load_before):
  return "\n".join([
      "## Noised operator: broadcast over the B samples against jax.vmap", "", *common.machine_description(jax),
      f"- Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, after: "
      f"{' / '.join(f'{x:.2f}' for x in common.load_average())}",
      f"- Command: `python benchmarks/bench_vmap.py --rounds {args.rounds}`; see the script's docstring. Memory: "
      "compiled temporaries + outputs (MiB).", "",
      "| N | L | B | k | broadcast (ms) | vmap (ms) | vmap / broadcast | broadcast memory | vmap memory "
      "| values identical | max gradient difference |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
      *rows])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rounds", type=int, default=60, help="interleaved timing rounds per shape")
  parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
  args = parser.parse_args()
  load_before = common.load_average()
  mib = lambda b: "n/a" if b is None else f"{b / 2**20:.2f}"
  rows = []
  for shape in bench_noised_topk.SHAPES:
    r = measure(shape, args.rounds)
    rows.append(f"| {' | '.join(map(str, shape[:3]))} | {shape[3] + 1} | {r['ms']['broadcast']:.3f} | "
                f"{r['ms']['vmap']:.3f} | {r['ratio']:.2f} | {mib(r['memory']['broadcast'])} | "
                f"{mib(r['memory']['vmap'])} | {'yes' if r['same_value'] else 'no'} | {r['grad_diff']:.1e} |")
    print(rows[-1], flush=True)
  text = _format(rows, args, load_before)
  print(text)
  if args.no_write:
    return
  common.write_section(f"bench_vmap:{jax.default_backend()}", text)


if __name__ == "__main__":
  main()
