r"""The equal-budget studies of docs/results/tuned/: every method of a stand-in tuned with the same number of trials.

  python -m experiments.tuned --stand_in=plantnet1081                      # run (or continue) its studies
  python -m experiments.tuned --stand_in=fashion_exp100 --trials=21 --dry_run
  python -m experiments.tuned --stand_in=fashion_exp100 --rerun           # best and default trials, 3 seeds, tested
  python -m experiments.tuned --stand_in=fashion_exp100 --report          # table.md, trials.csv, best_so_far.png

Each method of the stand-in is one `experiments.tune` study (its preset, the same sampler seed, pruner and training
seed for all; 21 finished trials by default: the preset's own values first, never pruned, then 20 searched) in one
journal file per stand-in, `docs/results/tuned/<stand_in>/studies.journal`, kept in the
repository; the trials' work directories go to `workdirs/tuned/<stand_in>/`. The studies advance in rounds of
`--round` trials, every method to the same count before the next round, so that a stopped run leaves the methods
with equal budgets. The top-K losses have a study per K, whose objective is the validation macro top-K at that K;
the methods that train one model for every K maximise the mean of the validation macro top-K over the stand-in's
K (the same K range they are reported on).

`--rerun` trains each study's best configuration and its default trial's with seeds 0, 1, 2 (`experiments.train`,
test split read once, at the end of each run; one core per run) into
`workdirs/tuned/<stand_in>/rerun/<study>_trial<n>_seed<s>` (a study continued to a new best gets new re-runs),
recording each finished re-run in `docs/results/tuned/<stand_in>/reruns.csv` at once: a re-run recorded there is not
trained again, so committing the file carries a stopped `--rerun` over to another machine. `--report` writes
`docs/results/tuned/<stand_in>/`: `trials.csv` (one row per trial, with its worker's CPU seconds where recorded),
`reruns.csv` (one row per re-run), `table.md` (default against tuned macro top-K, the tuned values with those on the
edge of their range flagged, each study's parameter importances, what the studies and re-runs cost) and
`best_so_far.png` (best validation value against trials, per study).
"""
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Tuple

from absl import app
from absl import flags

from experiments import flags_lib

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results", "tuned")
WORKDIRS = os.path.join(ROOT, "workdirs", "tuned")


@dataclasses.dataclass(frozen=True)
class StandIn:
  name: str
  label: str
  preset_prefix: str
  ks: Tuple[int, ...]
  defaults: Tuple[str, str]  # (runs.csv of the grid that trained the presets' defaults, its setting)
  flags: Tuple[str, ...] = ()  # training flags of every trial and re-run
  tune_flags: Tuple[str, ...] = ()  # flags of experiments.tune alone


STAND_INS = {
    s.name: s for s in (
        StandIn("plantnet1081", "synthetic_plantnet1081_pretrained (1,081 classes, Pl@ntNet tail, pretrained MLP)",
                "synth_plantnet1081_pre_", (1, 3, 5),
                ("docs/results/synthetic_plantnet1081_pretrained/runs.csv", "plantnet1081")),
        StandIn("fashion_exp100", "long-tailed Fashion-MNIST, exp rho 100 (10 epochs, small CNN)", "fmnist_exp100_",
                (1, 2, 3), ("docs/results/fashion_mnist_lt/runs.csv", "exp100")),
    )
}
# The methods of the issue, in table order; those taking K have one study per K.
METHODS = ("ce", "ce_drw", "focal", "ldam_drw", "mm_drw", "la", "ce_posthoc_la", "vs")
K_METHODS = ("noised_imbalanced", "noised_imbalanced_la")

flags.DEFINE_string("stand_in", None, f"The stand-in whose studies to run: {', '.join(sorted(STAND_INS))}.")
flags.DEFINE_integer("round", 5, "Trials each study gains before the next study's turn.")
flags.DEFINE_integer("tune_workers", 2, "experiments.tune --num_workers of each study; --rerun: runs at a time.")
flags.DEFINE_boolean("rerun", False, "Train each study's best configuration with --seeds (tested once) instead of "
                     "running the studies.")
flags.DEFINE_boolean("report", False, "Write docs/results/tuned/<stand_in>/ from the studies and the re-runs.")
SHARED_FLAGS = ("trials", "seeds", "dry_run")
flags_lib.define_shared(*SHARED_FLAGS)


def studies(stand_in: StandIn):
  """(study name, preset, objective K) of every method of `stand_in`, in table order."""
  out = [(m, stand_in.preset_prefix + m, stand_in.ks) for m in METHODS]
  out += [(f"{m}_k{k}", f"{stand_in.preset_prefix}{m}_k{k}", (k,)) for m in K_METHODS for k in stand_in.ks]
  return out


def journal(stand_in: StandIn) -> str:
  return os.path.join(RESULTS, stand_in.name, "studies.journal")


def command(stand_in: StandIn, study: str, preset: str, ks, trials: int, workers: int):
  return [sys.executable, "-m", "experiments.tune", f"--config={preset}", f"--trials={trials}",
          f"--storage=journal:{os.path.relpath(journal(stand_in), ROOT)}", f"--study_name={study}",
          f"--workdir_root={os.path.relpath(os.path.join(WORKDIRS, stand_in.name), ROOT)}",
          f"--objective_ks={','.join(map(str, ks))}", f"--num_workers={workers}", *stand_in.flags,
          *stand_in.tune_flags]


# --- the studies' records ----------------------------------------------------------------------------------------
def load_studies(stand_in: StandIn) -> Dict[str, object]:
  """{study name: optuna.Study} of the stand-in's studies that exist, in table order."""
  import optuna  # pylint: disable=g-import-not-at-top
  from experiments import tune  # pylint: disable=g-import-not-at-top
  if not os.path.exists(journal(stand_in)):
    return {}
  storage = tune.open_storage(f"journal:{journal(stand_in)}")
  names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
  return {name: optuna.load_study(study_name=name, storage=storage) for name, _, _ in studies(stand_in)
          if name in names}


def _finished(study):
  import optuna  # pylint: disable=g-import-not-at-top
  return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def trials_rows(stand_in: StandIn, loaded) -> List[dict]:
  rows = []
  params = sorted({p for study in loaded.values() for t in study.trials for p in t.params})
  for name, study in loaded.items():
    for t in study.trials:
      fit = t.user_attrs.get("train_fit") or {}
      # `value`: the objective of a complete trial; of a pruned one, its score at the epoch it stopped.
      row = {"stand_in": stand_in.name, "method": name, "trial": t.number, "state": t.state.name.lower(),
             "value": "" if t.value is None else f"{t.value:.6f}",
             "last_epoch_reported": max(t.intermediate_values) + 1 if t.intermediate_values else "",
             "posthoc_tau": t.user_attrs.get("posthoc_tau", ""),
             "train_fit_top1_accuracy": f"{fit['top1_accuracy']:.4f}" if "top1_accuracy" in fit else "",
             "train_seconds": f"{t.user_attrs['train_seconds']:.1f}" if "train_seconds" in t.user_attrs else "",
             "cpu_seconds": t.user_attrs.get("cpu_seconds", ""),
             "default": "yes" if t.user_attrs.get("default") else "",
             "diverged": "yes" if "diverged" in t.user_attrs else "",
             "retry_of": t.user_attrs.get("retry_of", "")}
      row.update({p: (f"{t.params[p]:.6g}" if isinstance(t.params.get(p), float) else t.params.get(p, ""))
                  for p in params})
      rows.append(row)
  return rows


def _write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


# --- re-runs ------------------------------------------------------------------------------------------------------
def trial_flags(trial) -> List[str]:
  """A trial's values as training flags (the post-hoc tau it chose included)."""
  out = [f"--{k}={v!r}" if isinstance(v, float) else f"--{k}={v}" for k, v in sorted(trial.params.items())]
  if "posthoc_tau" in trial.user_attrs:
    out.append(f"--posthoc_tau={trial.user_attrs['posthoc_tau']!r}")
  return out


def rerun_trials(study) -> List[Tuple[str, object]]:
  """[(role, trial)] re-run for a study: its best trial ("best") and its complete default trial ("default"), once
  each; the default's re-runs are the table's default column, trained by the same code as the tuned one."""
  if not any(t.state.name == "COMPLETE" for t in study.trials):
    return []
  best = study.best_trial
  default = next((t for t in study.trials if t.user_attrs.get("default") and t.state.name == "COMPLETE"), None)
  if default is None:
    return [("best", best)]
  return [("best default", best)] if default.number == best.number else [("best", best), ("default", default)]


def rerun_workdir(stand_in: StandIn, study, seed: int, trial) -> str:
  """The re-run of `trial` of `study` with `seed`, named by the trial's number: a study continued to a new best gets
  new re-runs."""
  return os.path.join(WORKDIRS, stand_in.name, "rerun", f"{study.study_name}_trial{trial.number}_seed{seed}")


def rerun(stand_in: StandIn, seeds, dry_run=False, parallel=1):
  """Trains each study's best configuration, and its default trial's, with each seed (`parallel` at a time, each
  pinned to one core, whatever `parallel`)."""
  loaded = load_studies(stand_in)
  recorded = _recorded_reruns(stand_in)
  commands = []
  for name, preset, _ in studies(stand_in):
    trials = rerun_trials(loaded[name]) if name in loaded else []
    if not trials:
      print(f"{name}: no finished study yet, skipped", flush=True)
      continue
    for _, trial in trials:
      for seed in seeds:
        workdir = rerun_workdir(stand_in, loaded[name], seed, trial)
        if os.path.exists(os.path.join(workdir, "results.json")) or (name, trial.number, seed) in recorded:
          continue
        commands.append([sys.executable, "-m", "experiments.train", f"--config={preset}", f"--seed={seed}",
                         *trial_flags(trial), *stand_in.flags, f"--workdir={workdir}"])

  def finish(proc):  # each finished re-run is recorded at once: reruns.csv, committed, carries it to a new machine
    _wait_for(proc)
    _write_csv(reruns_csv(stand_in), rerun_rows(stand_in, loaded))

  for cmd in commands:
    print(" ".join(cmd[1:]), flush=True)
  if not dry_run:
    run_pinned(commands, parallel, finish)


def run_pinned(commands, parallel: int, on_finish):
  """Runs `commands` (argv lists whose last item is `--workdir=DIR`; each writes DIR.log), `parallel` at a time,
  each pinned to one core, and calls `on_finish(process)` as each ends: a slot is refilled when any of its runs ends,
  not only the oldest (a seed's first re-run also pretrains, and takes several times longer)."""
  from experiments import reproduce  # pylint: disable=g-import-not-at-top
  cores = reproduce.usable_cores()
  free = [cores[i % len(cores)] for i in range(parallel)]  # one core per slot
  running = {}  # process -> its core
  commands = list(commands)
  while commands or running:
    if commands and len(running) < parallel:
      cmd = commands.pop(0)
      log = cmd[-1][len("--workdir="):] + ".log"  # beside the workdir; a pipe could fill and stall the run
      os.makedirs(os.path.dirname(log), exist_ok=True)
      with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
      # Always one core per run: XLA's CPU thread count changes the order of its float reductions, and with it the
      # results (fmnist_exp100_la seed 0: 83.70 % macro top-1 on two cores, 83.85 % on one).
      running[proc] = free.pop(0)
      os.sched_setaffinity(proc.pid, {running[proc]})
      continue
    done = next((proc for proc in running if proc.poll() is not None), None)
    if done is None:
      time.sleep(0.5)
      continue
    free.append(running.pop(done))
    on_finish(done)


def _wait_for(proc):
  if proc.wait():
    log = proc.args[-1][len("--workdir="):] + ".log"
    with open(log) as f:
      raise RuntimeError(f"{' '.join(proc.args[1:])} failed ({proc.returncode}):\n{f.read()[-3000:]}")


def reruns_csv(stand_in: StandIn) -> str:
  return os.path.join(os.path.dirname(journal(stand_in)), "reruns.csv")


def _recorded_reruns(stand_in: StandIn) -> Dict[Tuple[str, int, int], dict]:
  """The re-runs that reruns.csv records, by (method, trial, seed): a re-run recorded there is not trained again,
  though its workdir is gone (another machine, a fresh checkout)."""
  if not os.path.exists(reruns_csv(stand_in)):
    return {}
  with open(reruns_csv(stand_in)) as f:
    return {(r["method"], int(r["trial"]), int(r["seed"])): r for r in csv.DictReader(f)}


def rerun_rows(stand_in: StandIn, loaded) -> List[dict]:
  """One row per finished re-run, from its workdir's results.json or, where that is gone, from reruns.csv: `role`
  "best", "default" or "best default" (the default was the best)."""
  recorded = _recorded_reruns(stand_in)
  rows = []
  for name, _, ks in studies(stand_in):
    for role, trial in (rerun_trials(loaded[name]) if name in loaded else []):
      for seed in (int(s) for s in _seeds()):
        path = os.path.join(rerun_workdir(stand_in, loaded[name], seed, trial), "results.json")
        if not os.path.exists(path):
          if (name, trial.number, seed) in recorded:  # its role may have changed since (a new best)
            rows.append(dict(recorded[name, trial.number, seed], role=role, ks=" ".join(map(str, ks))))
          continue
        with open(path) as f:
          results = json.load(f)
        row = {"method": name, "role": role, "trial": trial.number, "seed": seed, "ks": " ".join(map(str, ks))}
        for k in stand_in.ks:
          row[f"macro_top{k}_accuracy"] = f"{results['test'][f'macro_top{k}_accuracy']:.4f}"
          bayes = results.get("bayes")
          row[f"bayes_macro_top{k}_accuracy"] = (f"{bayes['likelihood'][f'macro_top{k}_accuracy']:.4f}" if bayes
                                                 else "")
        row["train_fit_top1_accuracy"] = f"{results['train_fit']['top1_accuracy']:.4f}"
        row["train_seconds"] = f"{results['train_seconds']:.1f}"
        row["flags"] = " ".join(trial_flags(trial))
        rows.append(row)
  return rows


# --- the report ---------------------------------------------------------------------------------------------------
ROW_LABELS = {"ce": "CE", "ce_drw": "CE-DRW", "focal": "Focal", "ldam_drw": "LDAM-DRW", "mm_drw": "MM-DRW",
              "la": "LA loss", "ce_posthoc_la": "CE + post-hoc LA", "vs": "VS loss",
              "noised_imbalanced": "noised top-K, imbalanced", "noised_imbalanced_la": "noised top-K, imbalanced + LA"}


def _cell_study(row: str, k: int) -> str:
  return f"{row}_k{k}" if row in K_METHODS else row


def _mean_std(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not values:
    return "—"
  return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def _tuned_values(stand_in: StandIn, study_name: str, study) -> str:
  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
  from experiments import configs  # pylint: disable=g-import-not-at-top
  preset = dict((n, p) for n, p, _ in studies(stand_in))[study_name]
  config = configs.get_preset(preset).config
  space = config_lib.search_space(config)
  best = study.best_trial
  parts = ["**the default**"] if best.user_attrs.get("default") else []
  for name, value in sorted(best.params.items()):
    edge = space[name].on_edge(config, value) if name in space else None
    parts.append(f"{name} {value:.3g}" + (f" (**{edge} edge**)" if edge else ""))
  if "posthoc_tau" in best.user_attrs:
    tau = best.user_attrs["posthoc_tau"]
    edge = " (**grid edge**)" if tau in (min(config_lib.POSTHOC_TAUS), max(config_lib.POSTHOC_TAUS)) else ""
    parts.append(f"post-hoc tau {tau:g}{edge}")
  return ", ".join(parts)


def _importance_dict(study) -> Dict[str, float]:
  """PED-ANOVA importances of a study, most important first ({} when they cannot be computed)."""
  import optuna  # pylint: disable=g-import-not-at-top
  try:
    return dict(optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()))
  except (RuntimeError, ValueError, ZeroDivisionError):
    return {}


def _importances(study) -> str:
  importances = _importance_dict(study)
  return ", ".join(f"{k} {v:.2f}" for k, v in importances.items()) if importances else "—"


def table(stand_in: StandIn, loaded, reruns: List[dict]) -> str:
  from experiments import regimes  # pylint: disable=g-import-not-at-top
  grid, grid_fit = regimes.read_cells(os.path.join(ROOT, stand_in.defaults[0]), stand_in.defaults[1])
  tuned, tuned_fit, defaults, default_fit, bayes = {}, {}, {}, {}, {}
  for r in reruns:
    for k in (int(k) for k in r["ks"].split()):
      row = r["method"].rsplit("_k", 1)[0] if r["method"].endswith(f"_k{k}") else r["method"]
      for role, cells, fit in (("best", tuned, tuned_fit), ("default", defaults, default_fit)):
        if role in r["role"].split():
          cells.setdefault((row, k), []).append(100 * float(r[f"macro_top{k}_accuracy"]))
          fit.setdefault((row, k), []).append(100 * float(r["train_fit_top1_accuracy"]))
      if r[f"bayes_macro_top{k}_accuracy"]:
        bayes[k] = 100 * float(r[f"bayes_macro_top{k}_accuracy"])
  from_grid = sorted({row for row, _ in grid if row in METHODS + K_METHODS} - {row for row, _ in defaults})
  for key in grid:  # a study without a default trial: the grid's runs of the preset
    if key[0] in from_grid:
      defaults[key], default_fit[key] = grid[key], grid_fit.get(key, [])
  ks = stand_in.ks
  trials = {len(_finished(study)) for study in loaded.values()}
  lines = [f"# Tuned, not defaulted: {stand_in.label}", "",
           f"Generated by `python -m experiments.tuned --stand_in={stand_in.name} --report` from `studies.journal` "
           "(the Optuna studies) and the re-runs; do not edit by hand. Each method: an `experiments.tune` study of "
           f"its preset with {' or '.join(map(str, sorted(trials)))} finished trials (seeded TPE, median pruning, "
           "the validation split only; where a study has a trial of the preset's own values, trained to the end, "
           "its tuned values are never below them on validation), then its best configuration trained with seeds "
           "0, 1, 2 and tested once. "
           "Default: the study's default trial (the preset's values) re-run the same way, by the same code"
           + (f"; for {', '.join(ROW_LABELS[r] for r in from_grid)}, whose studies have none, the grid's runs "
              f"(`{stand_in.defaults[0]}`, seeds 0, 1, 2)" if from_grid else "")
           + ". The top-K losses have a study per K; the other methods train one model and maximise the mean "
           f"validation macro top-K over K = {', '.join(map(str, ks))}.", "",
           "## Test macro top-K (%), mean ± std over seeds", "",
           "| method | " + " | ".join(f"default top-{k} | tuned top-{k}" for k in ks)
           + (" | " + " | ".join(f"tuned regret top-{k}" for k in ks) if bayes else "")
           + " | train fit top-1, default / tuned |",
           "|---|" + "---:|" * (2 * len(ks) + (len(ks) if bayes else 0) + 1)]
  if bayes:
    lines.append("| *Bayes-optimal (likelihood)* | " + " | ".join(f"*{bayes[k]:.2f}* | *{bayes[k]:.2f}*" for k in ks)
                 + " | " + " | ".join("*0*" for _ in ks) + " | — |")
  rows = list(METHODS) + list(K_METHODS)
  import numpy as np  # pylint: disable=g-import-not-at-top
  for row in rows:
    cells = []
    for k in ks:
      cells += [_mean_std(defaults.get((row, k), [])), _mean_std(tuned.get((row, k), []))]
    if bayes:
      cells += [f"{bayes[k] - np.mean(tuned[(row, k)]):.2f}" if (row, k) in tuned else "—" for k in ks]
    fit_default = [v for (r, _), vs in default_fit.items() if r == row for v in vs]
    fit_tuned = [v for (r, _), vs in tuned_fit.items() if r == row for v in vs]
    fit = (f"{np.mean(fit_default):.1f} / {np.mean(fit_tuned):.1f}" if fit_default and fit_tuned else "—")
    lines.append(f"| {ROW_LABELS[row]} | " + " | ".join(cells) + f" | {fit} |")
  lines += verdict_lines(stand_in, defaults, tuned, loaded)
  lines += ["", "## The studies", "",
            "Tuned values: the best trial's (**edge**: within 5 % of its range's end, in log units for a log range: "
            "the range may have been too narrow). Importances: PED-ANOVA on the complete trials (Optuna's "
            "`PedAnovaImportanceEvaluator`: how differently each value range is distributed among the best 10 % of "
            "trials and among all; needs no scikit-learn); they sum to 1 within a study.", "",
            "| study | finished (pruned) | failed | best validation (%) | tuned values | importances |",
            "|---|---:|---:|---:|---|---|"]
  import optuna  # pylint: disable=g-import-not-at-top
  for name, study in loaded.items():
    finished = _finished(study)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in finished)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    has_best = any(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
    lines.append(f"| `{name}` | {len(finished)} ({pruned}) | {failed} | "
                 + (f"{100 * study.best_value:.2f} | {_tuned_values(stand_in, name, study)} | {_importances(study)} |"
                    if has_best else "— | — | — |"))
  lines += cost_lines(loaded, reruns)
  return "\n".join(lines) + "\n"


def cost_lines(loaded, reruns: List[dict]) -> List[str]:
  """The '## Cost' section: trials, the pruned share, failures, and the time the studies and re-runs took."""
  import optuna  # pylint: disable=g-import-not-at-top
  finished = [t for study in loaded.values() for t in _finished(study)]
  pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in finished)
  failed = sum(t.state == optuna.trial.TrialState.FAIL for study in loaded.values() for t in study.trials)
  complete_seconds = sum(t.user_attrs.get("train_seconds", 0.0) for t in finished
                         if t.state == optuna.trial.TrialState.COMPLETE)
  timed = [t.user_attrs["cpu_seconds"] for t in finished if "cpu_seconds" in t.user_attrs]
  lines = ["", "## Cost", "",
           f"- {len(finished)} finished trials in {len(loaded)} studies, {pruned} of them pruned "
           f"({100 * pruned / max(len(finished), 1):.0f} %); {failed} failed (interrupted, then retried: not counted).",
           "- Training time of the complete trials (each run's own wall clock, the epochs only; it includes any time a "
           f"run was paused or waited for a core): {complete_seconds:,.0f} s."]
  if timed:
    lines.append(f"- CPU time of the worker on each trial (recorded for {len(timed)} of the {len(finished)}; "
                 f"pruned trials included; the cost, where the wall clock above is not): {sum(timed):,.0f} s, "
                 f"{sum(timed) / len(timed):.0f} s a trial.")
  if reruns:
    lines.append(f"- Re-runs: {len(reruns)}, {sum(float(r['train_seconds']) for r in reruns):,.0f} s of training.")
  return lines


def _mean_over_ks(cells, row, ks):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(np.mean([np.mean(cells[(row, k)]) for k in ks])) if all((row, k) in cells for k in ks) else None


def verdict_lines(stand_in: StandIn, defaults, tuned, loaded) -> List[str]:
  """The '## Default against tuned' section: the paper's claims 2 and 4 and VS against the best LA row at each K,
  the seed tables' baseline orderings, and what tuning moved (the spread of the losses against CE's own gain)."""
  from experiments import regimes  # pylint: disable=g-import-not-at-top
  if not tuned:
    return []
  ks = stand_in.ks
  lines = ["", "## Default against tuned", "",
           "The same checks as [regimes.md](../../regimes.md), among the methods above only (the default columns are "
           "re-ranked among them too), on the default and on the tuned runs; ± the standard error of a difference "
           "of means over seeds; verdicts beyond twice it (\"within noise\" otherwise). Claim 2: rank of the "
           "imbalanced noised top-K loss and its difference to the best other method. Claim 4: imbalanced noised "
           "top-K minus the best logit-adjusted row (LA loss or CE + post-hoc LA); the last column: the same for the "
           "imbalanced noised top-K loss with LA offsets.", "",
           "| K | runs | claim 2: rank; noised - best other | claim 4: noised - best LA | VS - best LA "
           "| noised + LA - best LA |",
           "|---|---|---|---|---|---|"]
  for k in ks:
    for name, cells in (("default", defaults), ("tuned", tuned)):
      lines.append(f"| {k} | {name} | " + " | ".join(regimes.claims_row(cells, k, ROW_LABELS,
                                                                        also=("noised_imbalanced_la",))) + " |")
  orderings = [o for o in regimes.ORDERINGS if all((m, 1) in tuned and (m, 1) in defaults for m in (o.a, o.b))]
  if orderings:
    lines += ["", "The seed tables' baseline orderings at K = 1 that these methods cover (seed figures in "
              "[regimes.md](../../regimes.md); \"yes\": the seed's sign beyond twice the standard error):", "",
              "| ordering | seed | default | tuned |", "|---|---|---|---|"]
    for o in orderings:
      seed = ", ".join(f"{v:+.2f} ({t})" for t, v in o.seed)
      lines.append(f"| {o.label} | {seed} | {regimes.ordering_cell(defaults, o)[0]} | "
                   f"{regimes.ordering_cell(tuned, o)[0]} |")
  # What tuning moved: each method's gain, the spread of the losses, and CE's gain from its two optimiser values.
  mean_t = {m: _mean_over_ks(tuned, m, ks) for m in METHODS}
  mean_d = {m: _mean_over_ks(defaults, m, ks) for m in METHODS}
  single = [m for m in METHODS if mean_t[m] is not None and mean_d[m] is not None]
  if "ce" in single:
    tuned_order = sorted(single, key=lambda m: -mean_t[m])
    default_order = sorted(single, key=lambda m: -mean_d[m])
    beaten = [ROW_LABELS[m] for m in default_order if mean_d[m] < mean_t["ce"]]
    lines += ["", f"What tuning moved (macro top-K, mean over K = {', '.join(map(str, ks))}, mean over seeds, "
              "points; the methods that train one model):", "",
              "| method | default | tuned | tuned - default |", "|---|---:|---:|---:|"]
    for m in single:
      lines.append(f"| {ROW_LABELS[m]} | {mean_d[m]:.2f} | {mean_t[m]:.2f} | {mean_t[m] - mean_d[m]:+.2f} |")
    wd_ranks = []
    for study in loaded.values():
      imp = _importance_dict(study)
      if "weight_decay" in imp:
        wd_ranks.append(list(imp).index("weight_decay") + 1)
    lines += ["", "- CE tuned (learning rate and weight decay only) - CE default: "
              f"{mean_t['ce'] - mean_d['ce']:+.2f}; tuned CE ({mean_t['ce']:.2f}) is above the default of "
              f"{len(beaten)} of the {len(single)} methods"
              + (f" ({', '.join(beaten)})" if beaten else "") + ".",
              f"- The spread of the losses (best - worst method): "
              f"{mean_d[default_order[0]] - mean_d[default_order[-1]]:.2f} at their defaults "
              f"({ROW_LABELS[default_order[0]]} - {ROW_LABELS[default_order[-1]]}), "
              f"{mean_t[tuned_order[0]] - mean_t[tuned_order[-1]]:.2f} tuned "
              f"({ROW_LABELS[tuned_order[0]]} - {ROW_LABELS[tuned_order[-1]]}); the best tuned method - tuned CE: "
              f"{mean_t[tuned_order[0]] - mean_t['ce']:+.2f}.",
              f"- Weight decay's PED-ANOVA importance rank in each study: "
              + (", ".join(f"{r}" for r in wd_ranks) + f" (first in {sum(r == 1 for r in wd_ranks)} of "
                 f"{len(wd_ranks)} studies)." if wd_ranks else "not computable.")]
  return lines


def plot_best_so_far(loaded, path):
  from experiments import aggregate  # pylint: disable=g-import-not-at-top
  if not aggregate.can_plot():
    return False
  plt = aggregate._pyplot()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(8, 5))
  for name, study in loaded.items():
    best, curve = None, []
    for t in sorted(study.trials, key=lambda t: t.number):
      # A pruned trial's value is its score at the epoch it stopped: not a result, so not a best.
      if t.state.name == "COMPLETE" and (best is None or t.value > best):
        best = t.value
      curve.append(float("nan") if best is None else 100 * best)
    ax.plot(range(1, len(curve) + 1), curve, label=name, linestyle="--" if "noised" in name else "-")
  ax.set_xlabel("trials started")
  ax.set_ylabel("best validation objective so far (%)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def report(stand_in: StandIn):
  loaded = load_studies(stand_in)
  if not loaded:
    raise app.UsageError(f"No study of {stand_in.name} in {journal(stand_in)} yet.")
  out = os.path.dirname(journal(stand_in))
  _write_csv(os.path.join(out, "trials.csv"), trials_rows(stand_in, loaded))
  reruns = rerun_rows(stand_in, loaded)
  if reruns:
    _write_csv(reruns_csv(stand_in), reruns)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table(stand_in, loaded, reruns))
  plot_best_so_far(loaded, os.path.join(out, "best_so_far.png"))
  print(f"Wrote {os.path.relpath(out, ROOT)}/; `python -m experiments.regimes` links its table.md from "
        "docs/results/index.md.", flush=True)


DEFAULT_TRIALS = 21  # each study: its default trial (the preset's values) and 20 searched ones


def _trials() -> int:
  return DEFAULT_TRIALS if FLAGS.trials is None else FLAGS.trials


def _seeds():
  return FLAGS.seeds or ["0", "1", "2"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  if FLAGS.stand_in not in STAND_INS:
    raise app.UsageError(f"--stand_in must be one of {sorted(STAND_INS)}, got {FLAGS.stand_in}.")
  if _trials() < 1 or FLAGS.round < 1 or FLAGS.tune_workers < 1:
    raise app.UsageError("--trials, --round and --tune_workers must be positive.")
  stand_in = STAND_INS[FLAGS.stand_in]
  if FLAGS.report:
    report(stand_in)
    return
  if FLAGS.rerun:
    rerun(stand_in, [int(s) for s in _seeds()], dry_run=FLAGS.dry_run, parallel=FLAGS.tune_workers)
    return
  os.makedirs(os.path.dirname(journal(stand_in)), exist_ok=True)
  targets = list(range(min(FLAGS.round, _trials()), _trials(), FLAGS.round)) + [_trials()]
  for target in targets:
    for study, preset, ks in studies(stand_in):
      cmd = command(stand_in, study, preset, ks, target, FLAGS.tune_workers)
      print(" ".join(cmd[1:]) if FLAGS.dry_run else f"[{time.strftime('%H:%M:%S')}] {study}: to {target} trials",
            flush=True)
      if not FLAGS.dry_run:
        subprocess.run(cmd, cwd=ROOT, check=True)


if __name__ == "__main__":
  app.run(main)
