"""Forward + backward of the imbalanced noised top-K loss: JAX against PyTorch and against the noise-generation floor.

    python benchmarks/bench_noised_topk.py              # all shapes, writes its sections of benchmarks/RESULTS.md
    python benchmarks/bench_noised_topk.py --no-write --repeats 10 --shapes 32,1081,5,5

Timed per call (medians over interleaved rounds, one process):
- JAX: `jit(value_and_grad(mean(ntk.noised_topk_loss(...))))` with per-class margins, scale 60, eps 0.01 and a fresh
  key every call (split beforehand), on JAX's default backend.
- PyTorch: `benchmarks/torch_reference.py`, the published algorithm (noise `[N, L, B]`, `torch.kthvalue` or
  `torch.topk` along the class axis, one-hot scatter backward), forward + `backward()`, on CUDA when available.
- Floor: `jax.random.normal(key, (B, N, L))` alone under `jit`, the noise every method has to draw.
PyTorch runs with OMP_WAIT_POLICY=PASSIVE (see below) and as many intra-op threads as XLA uses (all usable cores).
Also timed: every `selection` of the library, the straightforward JAX version (`lax.top_k` on the perturbed tensor and
plain autodiff) and the library's own noise generator alone. Peak memory: XLA's compiled memory analysis of the
custom-VJP loss against plain autodiff through the same selection.
"""
import argparse
import functools
import os
import sys

# PyTorch's OpenMP workers spin after each parallel region (libgomp's default), and XLA's thread pool spins too; timed
# alternately in one process, each side's spinning threads steal the cores of the other (measured: both sides 2-4x
# slower). Passive waiting removes that interference; it must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from jax import lax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import noised_topk_jax as ntk  # pylint: disable=wrong-import-position
from noised_topk_jax import _noise  # pylint: disable=wrong-import-position
from noised_topk_jax import _selection  # pylint: disable=wrong-import-position

# (N examples, L classes, B samples, K) of the issue: Pl@ntNet-300K (L = 1081) at batch 32 and 256, with B = 30,
# CIFAR-100 and CIFAR-10 sized heads.
SHAPES = ((32, 1081, 5, 5), (256, 1081, 5, 5), (32, 1081, 30, 5), (128, 100, 10, 5), (128, 10, 5, 1))
EPSILON, SCALE, MAX_MARGIN = 0.01, 60.0, 0.2
VARIANTS = tuple(s for s in ntk.SELECTIONS if s != "auto")


def _inputs(n, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.uniform(-1.0, 1.0, size=(n, num_classes)).astype(np.float32)  # cosine scores of a normalized head
  labels = rng.integers(0, num_classes, size=n).astype(np.int32)
  counts = np.maximum(1, (500 * 0.01**(np.arange(num_classes) / max(1, num_classes - 1)))).astype(np.int64)
  margins = np.asarray(ntk.class_margins(counts, max_margin=MAX_MARGIN), np.float32)
  return logits, labels, margins


def _jax_loss_step(labels, margins, k, num_samples, selection):
  def loss(logits, key):
    return jnp.mean(ntk.noised_topk_loss(logits, labels, k=k, epsilon=EPSILON, num_samples=num_samples,
                                         margins=margins, scale=SCALE, key=key, selection=selection))

  return jax.jit(jax.value_and_grad(loss))


def _naive_loss(logits, labels, margins, key, *, k, num_samples, autodiff_selection):
  """The straightforward version: perturb, select, and let autodiff differentiate through the selection."""
  noise = jax.random.normal(key, (num_samples,) + logits.shape, logits.dtype)
  perturbed = logits + EPSILON * noise
  if autodiff_selection == "top_k":
    kth = lax.top_k(perturbed, k + 1)[0][..., k]
  else:  # The library's selection, but plain autodiff through the gather instead of the custom VJP.
    select_kth = _selection._select_kth  # pylint: disable=protected-access
    idx = select_kth(lax.stop_gradient(perturbed), k + 1, autodiff_selection)
    kth = jnp.take_along_axis(perturbed, idx[..., None], axis=-1)[..., 0]
  top = jnp.mean(kth, axis=0)
  true_score = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return jnp.mean(SCALE * jax.nn.relu(margins[labels] + top - true_score))


def _naive_step(labels, margins, k, num_samples, autodiff_selection):
  fn = functools.partial(_naive_loss, k=k, num_samples=num_samples, autodiff_selection=autodiff_selection)
  return jax.jit(jax.value_and_grad(lambda logits, key: fn(logits, labels, margins, key)))


def _noise_step(shape, generator):
  if generator == "jax":
    return jax.jit(lambda key: jax.random.normal(key, shape, jnp.float32))
  return jax.jit(lambda key: _noise._standard_normal(key, shape, jnp.float32))  # pylint: disable=protected-access


class _FreshKeys:
  """Calls a jitted function of `(*args, key)` with a new key every call and blocks on the result.

  The keys are split beforehand, outside the timed calls: deriving a key inside the step (`split`, `fold_in`) runs
  JAX's own Threefry, which on CPU is a loop of small operations costing ~0.1-0.2 ms per call, not the loss's.
  """

  def __init__(self, fn, *args, calls):
    self.fn, self.args = fn, args
    self.keys = list(jax.random.split(jax.random.key(0), calls))
    self.next = 0

  def __call__(self):
    key = self.keys[self.next % len(self.keys)]
    self.next += 1
    jax.block_until_ready(self.fn(*self.args, key))


def _torch_fns(torch, device, logits, labels, margins, k, num_samples, dtype="float32"):
  import torch_reference  # pylint: disable=import-outside-toplevel
  t_logits = torch.tensor(logits, device=device, dtype=getattr(torch, dtype), requires_grad=True)
  t_labels = torch.tensor(labels, dtype=torch.int64, device=device)
  t_margins = torch.tensor(margins, device=device)
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  def make(method):
    def run():
      loss = torch_reference.noised_topk_loss(t_logits, t_labels, k=k, epsilon=EPSILON, num_samples=num_samples,
                                              margins=t_margins, scale=SCALE, method=method).mean()
      loss.backward()
      t_logits.grad = None
      sync()
    return run

  return {f"torch_{m}": make(m) for m in torch_reference.METHODS}


def _memory(fn, *args):
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  if analysis is None:
    return None
  return {"temp": analysis.temp_size_in_bytes,
          "peak": analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes}


def _memory_row(logits, labels, margins, k, num_samples):
  args = (jnp.asarray(logits), jax.random.key(0))
  auto = _selection._resolve_selection("auto")  # pylint: disable=protected-access
  custom = lambda s, key: jax.value_and_grad(lambda x: jnp.mean(ntk.noised_topk_loss(
      x, labels, k=k, epsilon=EPSILON, num_samples=num_samples, margins=margins, scale=SCALE, key=key)))(s)
  plain = lambda s, key: jax.value_and_grad(functools.partial(
      _naive_loss, k=k, num_samples=num_samples, autodiff_selection=auto))(s, labels, margins, key)
  naive = lambda s, key: jax.value_and_grad(functools.partial(
      _naive_loss, k=k, num_samples=num_samples, autodiff_selection="top_k"))(s, labels, margins, key)
  return _memory(custom, *args), _memory(plain, *args), _memory(naive, *args)


def run(shapes, *, repeats, variants, max_seconds, dtype="float32"):
  import torch  # pylint: disable=import-outside-toplevel
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cpu":
    # XLA:CPU runs its intra-op thread pool on every usable core; give PyTorch the same.
    torch.set_num_threads(common.usable_cores())
  header = common.machine_description(jax, torch, device)
  load_before = common.load_average()
  rows, detail_rows, memory_rows = [], [], []
  for (n, num_classes, num_samples, k) in shapes:
    logits, labels, margins = _inputs(n, num_classes)
    j_logits, j_labels, j_margins = jnp.asarray(logits, dtype), jnp.asarray(labels), jnp.asarray(margins)
    calls = repeats + 2
    fns = {
        "jax": _FreshKeys(_jax_loss_step(j_labels, j_margins, k, num_samples, "auto"), j_logits, calls=calls),
        "floor": _FreshKeys(_noise_step((num_samples, n, num_classes), "jax"), calls=calls),
        "own_generator": _FreshKeys(_noise_step((num_samples, n, num_classes), "own"), calls=calls),
    }
    fns.update(_torch_fns(torch, device, logits, labels, margins, k, num_samples, dtype))
    main = common.interleaved_times(fns, repeats=repeats)
    slow = {f"sel_{s}": _FreshKeys(_jax_loss_step(j_labels, j_margins, k, num_samples, s), j_logits, calls=calls)
            for s in variants}
    slow["naive_top_k"] = _FreshKeys(_naive_step(j_labels, j_margins, k, num_samples, "top_k"), j_logits,
                                     calls=calls)
    detail = common.interleaved_times(slow, repeats=repeats, warmup=1, max_seconds=max_seconds)
    t = {name: common.median_ms(v) for name, v in {**main, **detail}.items()}
    # Ratios: medians of the per-round ratios (both times of a round were taken back to back, under the same load),
    # steadier on a shared machine than ratios of medians.
    ratio = lambda a, b: common.median_ratio(main[a], main[b])
    best_torch = "torch_kthvalue" if t["torch_kthvalue"] < t["torch_topk"] else "torch_topk"
    rows.append((n, num_classes, num_samples, k, t["jax"], t["torch_kthvalue"], t["torch_topk"], t["floor"],
                 ratio("torch_kthvalue", "jax"), ratio(best_torch, "jax"), ratio("jax", "floor"),
                 ratio("jax", "own_generator")))
    detail_rows.append((n, num_classes, num_samples, k, t["own_generator"],
                        *[t[f"sel_{s}"] for s in variants], t["naive_top_k"]))
    memory_rows.append((n, num_classes, num_samples, k, *_memory_row(j_logits, j_labels, j_margins, k, num_samples)))
    print(f"{(n, num_classes, num_samples, k)}: " + ", ".join(f"{name} {v:.3f} ms" for name, v in t.items()),
          flush=True)
  load_after = common.load_average()
  auto = _selection._resolve_selection("auto")  # pylint: disable=protected-access
  text = _format(header, rows, detail_rows, memory_rows, variants, auto, repeats, load_before, load_after)
  return text if dtype == "float32" else text.replace(
      "## Noised top-K loss: forward + backward", f"## Noised top-K loss: forward + backward, {dtype} scores", 1)


def _mib(x):
  return "n/a" if x is None else f"{x / 2**20:.2f}"


def _format(header, rows, detail_rows, memory_rows, variants, auto, repeats, load_before, load_after):
  out = ["## Noised top-K loss: forward + backward", "", *header,
         f"- Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, after: "
         f"{' / '.join(f'{x:.2f}' for x in load_after)}",
         f"- Medians of {repeats} interleaved rounds; eps {EPSILON}, scale {SCALE}, per-class margins "
         f"(max {MAX_MARGIN}), K+1-th largest; `auto` = `{auto}` on this backend.", "",
         "Times in ms (medians). Ratios are medians of the per-round ratios. torch/JAX > 1: JAX is faster; best "
         "torch: the faster of the two PyTorch variants. JAX/floor: the loss's time over `jax.random.normal` of "
         "`[B, N, L]` alone; JAX/own gen.: over the library's own (bit-identical, unrolled) generator alone.", "",
         "| N | L | B | K | JAX | torch kthvalue | torch topk | floor | torch(kthvalue)/JAX | best torch/JAX "
         "| JAX/floor | JAX/own gen. |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    out.append("| " + " | ".join([str(x) for x in r[:4]] + [f"{x:.3f}" for x in r[4:8]]
                                 + [f"{x:.2f}" for x in r[8:]]) + " |")
  out += ["", "Every selection (ms, forward + backward of the same loss), the library's noise generator alone, and the "
          "straightforward version (`lax.top_k` on the perturbed tensor, plain autodiff):", "",
          "| N | L | B | K | own generator | " + " | ".join(variants) + " | naive top_k + autodiff |",
          "|" + "---:|" * (6 + len(variants))]
  for r in detail_rows:
    out.append("| " + " | ".join([str(x) for x in r[:4]] + [f"{x:.3f}" for x in r[4:]]) + " |")
  out += ["", "Compiled memory analysis of the jitted value-and-grad (MiB; temp = XLA temporaries, peak = temp + "
          "arguments + outputs). Custom VJP: the library. Plain autodiff: the same forward differentiated through "
          "the gather (the backward scatters into `[B, N, L]`). Naive: `lax.top_k` + autodiff.", "",
          "| N | L | B | K | custom VJP temp | custom VJP peak | plain autodiff temp | plain autodiff peak "
          "| naive temp | naive peak |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in memory_rows:
    cells = []
    for m in r[4:]:
      cells += [_mib(m and m["temp"]), _mib(m and m["peak"])]
    out.append("| " + " | ".join([str(x) for x in r[:4]] + cells) + " |")
  return "\n".join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", nargs="*", default=None, help="N,L,B,K tuples (default: the issue's five)")
  parser.add_argument("--repeats", type=int, default=60)
  parser.add_argument("--max-seconds", type=float, default=5.0,
                      help="time budget per slow variant and shape (at least 3 calls each)")
  parser.add_argument("--variants", default=",".join(VARIANTS), help="selections timed in the detail table")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="dtype of the scores on both sides (the noise follows it in PyTorch; JAX draws float32)")
  parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
  args = parser.parse_args()
  shapes = SHAPES if not args.shapes else tuple(tuple(int(x) for x in s.split(",")) for s in args.shapes)
  variants = tuple(v for v in args.variants.split(",") if v)
  text = run(shapes, repeats=args.repeats, variants=variants, max_seconds=args.max_seconds, dtype=args.dtype)
  print(text)
  if not args.no_write:
    suffix = "" if args.dtype == "float32" else f":{args.dtype}"
    common.write_section(f"bench_noised_topk:{jax.default_backend()}{suffix}", text)


if __name__ == "__main__":
  main()
