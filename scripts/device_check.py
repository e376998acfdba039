"""One run on a machine with an accelerator: environment, library tests, speed against PyTorch, a training job.

    bash scripts/device_check.sh --data_dir=FASHION_MNIST_DIR     # on a GPU machine: under 8 min, RESULTS_GPU.md
    bash scripts/device_check.sh --tiny                           # the same steps, tiny, on any CPU (CI runs it)

Steps, each in its own process with its own time limit (a failing or slow step is reported and the next one runs):
1. environment: Python, jax / jaxlib / flax / optax / torch versions, JAX's backend and devices, `nvidia-smi -L`;
2. the library's tests on the default backend (`tests/test_topk.py`, `test_topk_variants.py`, `test_losses.py`,
   `test_imbalance.py`, `test_metrics.py`; the tests that need two forced host devices are deselected);
3. `benchmarks/bench_noised_topk.py` at its five shapes (JAX against the PyTorch implementation of the published
   algorithm on the same device), then the Pl@ntNet-sized case (N 32, L 1081, B 5, K 5) with bfloat16 scores;
4. `benchmarks/bench_train_step.py` for ResNet-50 (224 px, batch 32, L 1081) and ResNet-32 (CIFAR, batch 128):
   the noised loss's share of a train step;
5. the embedded default job (`python -m experiments.train`, long-tailed Fashion-MNIST from `--data_dir`, e.g. the
   four IDX files copied beside the checkout): test accuracy and training images/s.
Everything goes to one Markdown file (`--output`, default benchmarks/RESULTS_GPU.md on an accelerator; nothing is
written in `--tiny` mode unless `--output` is given) and a short table is printed last. `--parallel_steps=2` runs two
steps at a time (CI's CPU smoke run on 2 cores); on an accelerator keep the default 1, each step timed alone.

Needs only what a CUDA machine typically has (jax with CUDA, flax, optax, chex, absl-py, orbax, numpy, torch,
pytest; no TensorFlow, TFDS or network): the binaries import TensorFlow only for TFDS datasets and TensorBoard
summaries, which are skipped without it. PyTorch is optional (the speed comparison is then skipped).
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ("tests/test_topk.py", "tests/test_topk_variants.py", "tests/test_losses.py", "tests/test_imbalance.py",
         "tests/test_metrics.py")
# Tests that assert two (forced host) devices: they cannot run on one accelerator.
NEEDS_TWO_DEVICES = ["-m", "not two_devices"]

ENV_SCRIPT = r"""
import importlib, platform
import jax
print(f"python {platform.python_version()} ({platform.machine()})")
for name in ("jax", "jaxlib", "flax", "optax", "chex", "orbax.checkpoint", "numpy", "torch"):
  try:
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')}")
  except ImportError:
    print(f"{name} not installed")
print(f"backend {jax.default_backend()}; devices {jax.devices()}")
try:
  import torch
  print(f"torch cuda available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
except ImportError:
  pass
"""


TORCH_MISSING = "skipped: torch is not installed"


def steps(args):
  """(name, argv, timeout seconds) of every step, in order; argv is None for a step that cannot run here."""
  py = sys.executable
  tiny = args.tiny
  # pytest-benchmark, where installed, only warns under xdist (with its install path): kept out of the report.
  test_argv = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", *TESTS,
               *(["-k", "kth_largest_matches_sort or test_cross_entropy"] if tiny else NEEDS_TWO_DEVICES)]
  if not tiny:
    test_argv[3:3] = ["-n", str(args.test_workers)]
  shapes = ["32,100,5,5"] if tiny else []
  bench = [py, "benchmarks/bench_noised_topk.py", "--no-write"] + (
      ["--repeats", "3", "--max-seconds", "0.2", "--variants", "tournament,top_k"] if tiny
      else ["--repeats", "30", "--max-seconds", "2"])
  out = [
      ("environment", [py, "-c", ENV_SCRIPT], 60),
      ("library tests", test_argv, 300 if tiny else 150),
  ]
  if args.torch:
    out += [
        ("noised loss vs PyTorch, float32", bench + (["--shapes", *shapes] if shapes else []), 300 if tiny else 100),
        ("noised loss vs PyTorch, bfloat16", bench + ["--dtype", "bfloat16", "--shapes",
                                                      *(shapes or ["32,1081,5,5"])], 300 if tiny else 60),
    ]
  else:
    out.append(("noised loss vs PyTorch", None, 0))
  if not tiny:
    out.append(("train step, ResNet-50", [py, "benchmarks/bench_train_step.py", "--preset", "plantnet",
                                          "--no-write", "--repeats", "10"], 100))
  out.append(("train step, ResNet-32", [py, "benchmarks/bench_train_step.py", "--preset", "cifar", "--no-write",
                                        *(["--repeats", "2", "--batch-size", "16"] if tiny else ["--repeats", "10"])],
                 300 if tiny else 100))
  train = [py, "-m", "experiments.train", f"--workdir={args.workdir}"]
  if args.data_dir:
    train.append(f"--data_dir={args.data_dir}")
  if tiny:
    train += ["--epochs=1", "--max_steps_per_epoch=5"]
  out.append(("default job", train, 300 if tiny else 100))
  return out


def run_step(name, argv, timeout, env):
  start = time.time()
  try:
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    output = proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    status = f"timed out after {timeout} s"
    output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
  seconds = time.time() - start
  print(f"[{name}] {status} in {seconds:.0f} s", flush=True)
  return {"name": name, "command": " ".join(argv[1:] if argv[0] == sys.executable else argv), "status": status,
          "seconds": seconds, "output": output}


def _markdown_sections(output):
  """The `## ...` sections a benchmark printed (its Markdown report)."""
  start = output.find("## ")
  return output[start:].strip() if start >= 0 else ""


def _bench_ratios(output):
  """(shape, JAX ms, torch(kthvalue)/JAX) per row of bench_noised_topk's main table."""
  rows = []
  for line in output.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 12 and all(re.fullmatch(r"\d+", c) for c in cells[:4]):
      rows.append((",".join(cells[:4]), cells[4], cells[8]))
  return rows


def summary(result, workdir):
  """A one-line key figure of a step."""
  out = result["output"]
  name = result["name"]
  if result["status"] != "ok":
    return "see the log below"
  if name == "environment":
    backend = re.search(r"^backend (.*)$", out, re.M)
    return backend.group(1)[:100] if backend else ""
  if name == "library tests":
    counts = re.findall(r"(\d+ (?:passed|failed|skipped|deselected|errors?))", out)
    return ", ".join(counts[-4:])
  if name.startswith("noised loss"):
    return "; ".join(f"({s}) JAX {ms} ms, torch/JAX {r}" for s, ms, r in _bench_ratios(out))
  if name.startswith("train step"):
    share = re.search(r"\*\*([\d.]+)%\*\* of the noised step", out)
    ips = re.findall(r"\| (cross-entropy|imbalanced noised top-K) \| ([\d.]+) \| ([\d.]+) \|", out)
    return (f"loss {share.group(1)}% of the step; " if share else "") + "; ".join(
        f"{n} {s} ms ({i} img/s)" for n, s, i in ips)
  if name == "default job":
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
      return ""
    with open(path) as f:
      r = json.load(f)
    steps_per_epoch = r["config"].get("max_steps_per_epoch") or sum(r["train_class_counts"]) // r["config"][
        "batch_size"]
    images = steps_per_epoch * r["config"]["batch_size"] * r["config"]["epochs"]
    return (f"test top-1/2/3 " + " / ".join(f"{100 * r['test'][f'top{k}_accuracy']:.2f}" for k in (1, 2, 3))
            + f"; {r['train_seconds']:.1f} s of training, {images / r['train_seconds']:.0f} images/s (compilation "
            f"included), backend {r['backend']}")
  return ""


def short_table(results):
  """The Markdown table of every step, in step order (skipped steps included, with their reason)."""
  table = ["| step | status | seconds | key figures |", "|---|---|---:|---|"]
  return table + [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} | {r['summary']} |" for r in results]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU smoke run; nothing written")
  parser.add_argument("--data_dir", default=None, help="Fashion-MNIST IDX folder for the default job")
  parser.add_argument("--output", default=None, help="Markdown file to write (default: benchmarks/RESULTS_GPU.md "
                      "unless --tiny)")
  parser.add_argument("--test_workers", type=int, default=4, help="pytest-xdist workers for the library tests")
  parser.add_argument("--budget_seconds", type=float, default=470,
                      help="wall-clock budget of all steps; a step gets at most what is left, and none is started "
                           "with under 20 s left")
  parser.add_argument("--parallel_steps", type=int, default=1,
                      help="steps run at once; 1 (the default) on an accelerator, where each step is timed alone")
  args = parser.parse_args()
  if args.parallel_steps < 1:
    parser.error(f"--parallel_steps must be >= 1, got {args.parallel_steps}")
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
    args.torch = True
  except ImportError:
    args.torch = False
  output = args.output or (None if args.tiny else os.path.join(ROOT, "benchmarks", "RESULTS_GPU.md"))
  env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2",
             # Several processes share the accelerator (test workers): no process takes 75 % of its memory upfront.
             XLA_PYTHON_CLIENT_PREALLOCATE="false")
  env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  args.workdir = tempfile.mkdtemp(prefix="device_check_default_")
  start = time.time()

  def run(step):
    name, argv, timeout = step
    left = args.budget_seconds - (time.time() - start)
    skipped = TORCH_MISSING if argv is None else "skipped: budget spent" if left < 20 else None
    if skipped:
      print(f"[{name}] {skipped}", flush=True)
      return {"name": name, "command": " ".join((argv or [])[1:]), "status": skipped, "seconds": 0.0, "output": "",
              "summary": ""}
    result = run_step(name, argv, int(min(timeout, left)), env)
    result["summary"] = summary(result, args.workdir)
    return result

  try:
    # map starts the steps in order and returns their results in order, whatever order they finish in.
    with concurrent.futures.ThreadPoolExecutor(args.parallel_steps) as pool:
      results = list(pool.map(run, steps(args)))
  finally:
    shutil.rmtree(args.workdir, ignore_errors=True)
  total = time.time() - start

  table = short_table(results)
  lines = ["# Device check", "",
           f"`bash scripts/device_check.sh{' --tiny' if args.tiny else ''}"
           f"{' --data_dir=DATA_DIR' if args.data_dir else ''}` on {datetime.datetime.now():%Y-%m-%d %H:%M}, "
           f"{total:.0f} s in all.", "", *table, ""]
  for r in results:
    # The default job's temporary workdir is a path of the machine that ran it: the report names it WORKDIR.
    r["command"], r["output"] = (r[key].replace(args.workdir, "WORKDIR") for key in ("command", "output"))
    lines += [f"## {r['name']}", "", f"`{r['command']}`: {r['status']}, {r['seconds']:.0f} s.", ""]
    report = _markdown_sections(r["output"]) if r["name"].startswith(("noised loss", "train step")) else ""
    if report and r["status"] == "ok":
      lines += [report.replace("\n## ", "\n### ").replace("## ", "### ", 1), ""]
    elif r["output"].strip():
      tail = "\n".join(r["output"].strip().splitlines()[-40:])
      lines += ["```", tail, "```", ""]
  if output:
    with open(output, "w") as f:
      f.write("\n".join(lines))
    print(f"Wrote {os.path.relpath(output, ROOT)}.")
  print("\n".join(table))
  return 0 if all(r["status"] in ("ok", TORCH_MISSING) for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
