r"""Runs a grid of presets x seeds and writes the paper-style table, a CSV and plots.

  python -m experiments.reproduce --grid=fashion_mnist_lt                 # 156 runs: 50 min on 2 CPU cores
  python -m experiments.reproduce --grid=synthetic_lt                     # 78 runs, regret vs the Bayes optimum
  python -m experiments.reproduce --grid=synthetic_lt_pretrained          # the same, fine-tuned (also _fit)
  python -m experiments.reproduce --grid=synthetic_plantnet1081_pretrained   # 1,081 classes, Pl@ntNet's tail (also _fit)
  python -m experiments.reproduce --grid=fashion_mnist_lt_converged       # 33 runs of 100 epochs
  python -m experiments.reproduce --grid=mm_table1 --dry_run              # prints the 264 training commands
  python -m experiments.reproduce --grid=plantnet_table --data_dir=... --pretrained_weights=...

Runs go one after another in this process, or on a CPU-only machine in one process per core (`--num_workers`; each
worker claims the next run no other one holds, so they share a resumed grid evenly), each in
`<workdir_root>/<run name>`. A run whose results.json exists is skipped and an interrupted run resumes from its last
checkpoint, so rerunning the command finishes the grid. The printed commands are equivalent: run them anywhere (a
cluster, several GPUs), put their workdirs under one root and call this with `--aggregate_only`.

Writes to `--output_dir` (default docs/results/<grid>): table.md (the table, mean ± std over seeds, the papers'
figures beside, then macro average-K when the runs report it; the command, machine and run time; for fashion_mnist_lt
the check of the papers' claims), table.csv, runs.csv (one line per run) and plots/ (per-class accuracy against class
frequency, one line per method; bars of the table's metric by method).
"""
import contextlib
import datetime
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from experiments import aggregate
from experiments import flags_lib
from experiments import grids

FLAGS = flags.FLAGS
flags.DEFINE_enum("grid", None, sorted(grids.GRIDS), "The grid to run.")
SHARED_FLAGS = ("seeds", "dry_run", "workdir_root", "num_workers", "worker_index")
flags_lib.define_shared(*SHARED_FLAGS)
flags.DEFINE_string("output_dir", None, "Where the table, CSVs and plots go. Default: docs/results/<grid>.")
flags.DEFINE_boolean("aggregate_only", False, "Write the table from the finished runs; run nothing.")
# The training binary's flags of the same names (experiments/flags_lib.py), passed to every run.
flags_lib.define_config_flags(DATA_FLAGS := ("data_dir", "pretrained_weights"))


def _seeds(grid):
  if FLAGS.seeds is None:
    return grid.default_seeds
  try:
    seeds = tuple(int(s) for s in FLAGS.seeds)
  except ValueError as e:
    raise app.UsageError(f"--seeds must be comma-separated integers, got {FLAGS.seeds}.") from e
  if not seeds or len(set(seeds)) != len(seeds):
    raise app.UsageError(f"--seeds must be distinct integers, got {FLAGS.seeds}.")
  return seeds


def _data_changes():
  return {k: v for k, v in flags_lib.overrides_from_flags(DATA_FLAGS).items() if v}


def run_command(grid, run, workdir_root, data_changes=None):
  """The `experiments.train` command equivalent to one run of the grid (`data_changes`: data_dir etc. flags)."""
  data_changes = data_changes or {}
  parts = ["python", "-m", "experiments.train", f"--config={run.preset}", f"--seed={run.seed}"]
  parts += [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in run.overrides]
  parts.append(f"--workdir={os.path.join(workdir_root, run.name)}")
  for name, value in data_changes.items():
    parts.append(f"--{name}={value}")
  if grid.data_flags and not data_changes:
    parts.append(grid.data_flags)
  return " ".join(parts)


def _is_done(workdir_root, run):
  return os.path.exists(os.path.join(workdir_root, run.name, "results.json"))


CLAIMS_DIR = ".claims"


@contextlib.contextmanager
def _claim(workdir_root, run):
  """Yields True when this process holds `run` (an exclusive lock no other worker holds), else False.

  The lock is an `fcntl.flock` on `<workdir_root>/.claims/<run>.lock`, held while the run trains: the kernel
  releases it when the process ends, however it ends, so a killed worker leaves no stale claim.
  """
  import fcntl  # pylint: disable=g-import-not-at-top  (POSIX: workers share runs only where it exists)
  os.makedirs(os.path.join(workdir_root, CLAIMS_DIR), exist_ok=True)
  with open(os.path.join(workdir_root, CLAIMS_DIR, f"{run.name}.lock"), "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def run_all(runs, workdir_root, data_changes=None, shared=False):
  """Trains `runs` one after another in this process; returns the names of the runs that failed.

  With `shared`, several processes run the same list: each claims the next run no other one holds
  (`_claim`), so the workers share the pending runs however unevenly they were done before (a resumed grid).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import train_lib  # pylint: disable=g-import-not-at-top
  failed = []
  pending = [r for r in runs if not _is_done(workdir_root, r)]
  for i, run in enumerate(pending):
    with (_claim(workdir_root, run) if shared else contextlib.nullcontext(True)) as mine:
      if not mine or (shared and _is_done(workdir_root, run)):  # another worker has it, or finished it
        continue
      position, t0 = f"[{i + 1}/{len(pending)}]", time.time()
      print(f"{position} {run.name} ...", flush=True)
      try:
        results = train_lib.train_and_evaluate(run.config.replace(**(data_changes or {})),
                                               os.path.join(workdir_root, run.name))
      except Exception as e:  # pylint: disable=broad-except
        # One bad run must not lose the others: report it, go on, fail at the end.
        logging.exception("Run %s failed.", run.name)
        print(f"{position} {run.name} FAILED: {type(e).__name__}: {e}", flush=True)
        failed.append(run.name)
        continue
      finally:
        # Free the run's compiled executables: each keeps memory mappings for the life of the process, and a long
        # grid of large models would otherwise reach the kernel's limit (vm.max_map_count) and abort.
        jax.clear_caches()
        gc.collect()
      test = results["test"]
      print(f"{position} {run.name}: " + ", ".join(
          f"top-{k} {100 * test[f'top{k}_accuracy']:.2f} (macro {100 * test[f'macro_top{k}_accuracy']:.2f})"
          for k in run.config.eval_ks) + f"; {time.time() - t0:.0f} s", flush=True)
  return failed


def usable_cores():
  """The cores this process may run on; empty where the OS cannot tell (no pinning there)."""
  return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def default_num_workers(max_workers=8):
  """One worker per usable core (at most `max_workers`) when JAX would run on the CPU; else 1 (one accelerator)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu":
    return 1
  return max(1, min(len(usable_cores()) or os.cpu_count() or 1, max_workers))


def _spawn_workers(grid, seeds, workdir_root, num_workers):
  cores = usable_cores()
  pin = len(cores) >= num_workers
  procs = []
  for i in range(num_workers):
    cmd = [sys.executable, "-m", "experiments.reproduce", f"--grid={grid.name}",
           f"--seeds={','.join(map(str, seeds))}", f"--workdir_root={workdir_root}", f"--num_workers={num_workers}",
           f"--worker_index={i}"]
    for name, value in _data_changes().items():
      cmd.append(f"--{name}={value}")
    preexec = (lambda core=cores[i]: os.sched_setaffinity(0, {core})) if pin else None
    procs.append(subprocess.Popen(cmd, preexec_fn=preexec))  # pylint: disable=subprocess-popen-preexec-fn
  return [p.wait() for p in procs]


INVOCATIONS_FILE = "invocations.jsonl"


def _this_command():
  return "python -m experiments.reproduce " + " ".join(
      shlex.quote(a) for a in sys.argv[1:] if not a.startswith(("--dry_run", "--aggregate_only")))


def record_invocation(workdir_root, runs_trained, wall_seconds):
  """Appends this command, its date, wall time and number of trained runs to the grid's invocation log."""
  os.makedirs(workdir_root, exist_ok=True)
  with open(os.path.join(workdir_root, INVOCATIONS_FILE), "a") as f:
    f.write(json.dumps({"command": _this_command().strip(), "date": datetime.datetime.now().isoformat(" ", "minutes"),
                        "runs_trained": runs_trained, "wall_seconds": round(wall_seconds, 1)}) + "\n")


AVERAGE_K_NOTE = ("The same runs' sets of variable size: `{j : p_j >= lambda_K}`, with one threshold per run chosen on "
                  "the validation split so that the sets hold K classes on average there (Pl@ntNet-300K's "
                  "average-K; `experiments/set_eval.py`). Top-K gives every test image K classes; average-K gives "
                  "ambiguous images more and easy ones fewer.")


def write_outputs(grid, runs, seeds, workdir_root, output_dir):
  results = aggregate.load_results(runs, workdir_root)
  cells = aggregate.collect_cells(grid, runs, results)
  average_k_cells = aggregate.collect_cells(grid, runs, results, metric="macro_avgk")
  fit = aggregate.train_fit_cells(runs, results)
  os.makedirs(os.path.join(output_dir, "plots"), exist_ok=True)
  aggregate.write_csvs(grid, runs, results, cells, output_dir, average_k_cells)
  plots, bucket_sections = [], []
  bayes = aggregate.bayes_cells(grid, runs, results) if grid.bayes else {}
  plotting = aggregate.can_plot()
  if not plotting:
    logging.warning("matplotlib is not installed: %s gets its tables and CSVs, no plots.", output_dir)
  for setting in grid.settings:
    if any(s == setting for _, s, _ in cells):
      if plotting:
        bars = os.path.join("plots", f"{grid.metric}_{setting}.png")
        per_class = os.path.join("plots", f"per_class_{setting}.png")
        aggregate.plot_bars(grid, cells, setting, os.path.join(output_dir, bars))
        aggregate.plot_per_class(grid, runs, results, setting, os.path.join(output_dir, per_class))
        plots += [bars, per_class]
      if bayes:
        if plotting:
          buckets = os.path.join("plots", f"buckets_{setting}.png")
          aggregate.plot_buckets(grid, runs, results, setting, os.path.join(output_dir, buckets))
          plots.append(buckets)
        bucket_sections += [f"### {grid.settings[setting]}: macro top-K (%) by class frequency", "",
                            "Bucket = training examples of the class: many > 100, medium 20-100, few < 20 (number "
                            "of classes in parentheses); mean over seeds.", "",
                            aggregate.bucket_table(grid, runs, results, setting), ""]
  if bayes:  # the regret tables replace the plain one
    table = "\n\n".join(f"### {grid.settings[s]}\n\n"
                         + aggregate.regret_table(grid, cells, bayes, s, len(seeds), train_fit=fit)
                         for s in grid.settings if any(cs == s for _, cs, _ in cells))
  else:
    table = aggregate.markdown_table(grid, cells, len(seeds), train_fit=fit)
  average_k_section = []
  if average_k_cells:  # runs of an older version have no average-K: the section is left out
    average_k_section = ["### Macro average-K accuracy (%)", "", AVERAGE_K_NOTE, "",
                         aggregate.markdown_table(grid, average_k_cells, len(seeds), metric="macro_avgk"), ""]
  train_seconds = sum(r["train_seconds"] for r in results.values())
  invocations = []  # The commands that trained this grid's runs (appended by `main`).
  log_path = os.path.join(workdir_root, INVOCATIONS_FILE)
  if os.path.exists(log_path):
    with open(log_path) as f:
      invocations = [json.loads(line) for line in f if line.strip()]
  backends = sorted({f"{r['backend']} x{r['num_devices']}" for r in results.values()})
  lines = [f"# {grid.name}", "", grid.description, "",
           f"Mean ± std over seeds {', '.join(map(str, seeds))} ({len(results)} of {len(runs)} runs finished); the "
           "best mean of each column in bold" + ("; the paper's figure in brackets." if grid.paper else "."), "",
           table, ""] + average_k_section + list(grid.notes) + ([aggregate.TRAIN_FIT_NOTE] if fit else []) + (
               [""] if grid.notes or fit else []) + bucket_sections
  if grid.claims is not None:
    claims = grid.claims(cells)
    lines += ["## The papers' claims on this grid", ""] + claims + [""]
    if average_k_cells:
      average_k_claims = grid.claims(average_k_cells)
      changes = aggregate.verdict_changes(claims, average_k_claims)
      lines += ["### The same claims on macro average-K", "",
                "Every claim above checked again with macro average-K accuracy in place of macro top-K (read "
                "\"macro top-K\" as macro average-K in this section). Verdicts that differ from macro top-K: "
                + (f"{len(changes)} row(s)." if changes else "none."), ""] + changes + (
                    [""] if changes else []) + average_k_claims + [""]
  commands = [i["command"] for i in invocations if i.get("runs_trained")] or [_this_command()]
  lines += ["## How this was made", "", "```"] + commands + ["```", "",
            f"- Generated {datetime.date.today().isoformat()} by `experiments/reproduce.py`; per-run numbers in "
            "`runs.csv`, cells in `table.csv`.",
            f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"devices {', '.join(backends) or 'none'}; summed training time {train_seconds / 60:.1f} min.",
            *[f"- `{i['command']}` ({i['date']}): trained {i['runs_trained']} runs in {i['wall_seconds'] / 60:.1f} "
              "min wall clock." for i in invocations if i.get("runs_trained")],
            "- Each run's command: `python -m experiments.reproduce --grid=" + grid.name + " --dry_run`.", ""]
  lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
  with open(os.path.join(output_dir, "table.md"), "w") as f:
    f.write("\n".join(lines))
  return table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  if FLAGS.grid is None:
    raise app.UsageError(f"--grid is required: one of {sorted(grids.GRIDS)}.")
  if FLAGS.num_workers is not None and FLAGS.num_workers < 1:
    raise app.UsageError(f"--num_workers must be >= 1, got {FLAGS.num_workers}.")
  grid = grids.get_grid(FLAGS.grid)
  seeds = _seeds(grid)
  runs = grid.runs(seeds)
  workdir_root = FLAGS.workdir_root or os.path.join("workdirs", "reproduce", grid.name)
  output_dir = FLAGS.output_dir or os.path.join("docs", "results", grid.name)

  if FLAGS.dry_run:
    done = {r.name for r in runs if _is_done(workdir_root, r)}
    print(f"# {grid.name}: {len(runs)} runs ({len(done)} done), seeds {','.join(map(str, seeds))}.")
    for run in runs:
      print(("# done: " if run.name in done else "") + run_command(grid, run, workdir_root, _data_changes()))
    return

  if FLAGS.worker_index is not None:  # A worker of --num_workers: train its share, no table.
    logging.set_verbosity(logging.WARNING)
    try:
      import fcntl  # pylint: disable=g-import-not-at-top,unused-import
      share = dict(runs=runs, shared=True)
    except ImportError:  # no file locks here: a fixed share of the runs
      share = dict(runs=runs[FLAGS.worker_index::FLAGS.num_workers or 1])
    if run_all(workdir_root=workdir_root, data_changes=_data_changes(), **share):
      sys.exit(1)
    return

  t0 = time.time()
  failed = []
  if not FLAGS.aggregate_only:
    logging.set_verbosity(logging.WARNING)
    pending = sum(not _is_done(workdir_root, r) for r in runs)
    num_workers = FLAGS.num_workers or default_num_workers()
    if not pending:
      print(f"All {len(runs)} runs of {grid.name} are done; writing the table.", flush=True)
    elif num_workers == 1:
      failed = run_all(runs, workdir_root, _data_changes())
    else:
      print(f"{pending} runs to train in {num_workers} worker processes, one per core.", flush=True)
      codes = _spawn_workers(grid, seeds, workdir_root, num_workers)
      failed = [f"worker {i}" for i, c in enumerate(codes) if c]
    trained = pending - sum(not _is_done(workdir_root, r) for r in runs)
    if trained:
      record_invocation(workdir_root, trained, time.time() - t0)
  table = write_outputs(grid, runs, seeds, workdir_root, output_dir)
  print(table)
  print(f"\nWrote {os.path.join(output_dir, 'table.md')}", flush=True)
  if failed:
    raise SystemExit(f"{len(failed)} failed: {', '.join(failed)} (rerun the same command to retry them).")


if __name__ == "__main__":
  app.run(main)
