r"""Tunes a preset's hyperparameters on its validation split with Optuna: the same budget for every loss.

  python -m experiments.tune --config=fmnist_exp100_la --trials=20
  python -m experiments.tune --config=fmnist_exp100_la --trials=20 --num_workers=2     # two processes, one study
  python -m experiments.tune --config=synth_plantnet1081_pre_noised_imbalanced_k3 --trials=20 \
      --storage=journal:tuning/plantnet1081.journal --study_name=noised_imbalanced_k3
  python -m experiments.tune --config=fmnist_exp100_focal --trials=30 --space=gamma=0:3 --weight_decay=5e-4

Every training flag of `experiments.train` overrides the preset, and a field given on the command line is fixed,
not searched. What is searched is declared once, in `experiments/config.py` (`SEARCH_SPACE`): learning rate and
weight decay for every loss plus the loss's own; `--space=field=low:high[:log]` moves a range. The objective is
the validation macro top-K of the model the preset reports, at the preset's selection K (`--objective_ks`: the mean
over several K); the test split is never read. Seeded TPE, median pruning from the first learning-rate decay on.
`--trials` is the study's total of finished trials: a rerun continues the study, a killed trial is retried from its
checkpoints. `--storage` takes any Optuna storage (default `sqlite:///<workdir_root>/optuna.db`; `journal:PATH`;
a PostgreSQL or MySQL server for several machines). docs/tuning.md explains each choice.
"""
import os
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from experiments import config as config_lib
from experiments import configs
from experiments import flags_lib

FLAGS = flags.FLAGS

SHARED_FLAGS = ("config", "trials", "workdir_root", "num_workers", "traceback", "worker_index")
flags_lib.define_shared(*SHARED_FLAGS)
flags.DEFINE_string("storage", None, "Optuna storage: sqlite:///PATH, journal:PATH, postgresql://..., mysql://... "
                    "Default: sqlite:///<workdir_root>/optuna.db.")
flags.DEFINE_string("study_name", None, "Default: the preset's name and the overrides, as experiments.train names "
                    "its workdir.")
flags.DEFINE_list("objective_ks", None, "K of the validation macro top-K to maximise (several: their mean). "
                  "Default: the preset's selection K.")
flags.DEFINE_list("space", [], "Changed ranges, field=low:high or field=low:high:log, e.g. gamma=0:3.")
flags.DEFINE_integer("sampler_seed", 0, "Seed of the TPE sampler (with each trial's index).")
flags.DEFINE_float("stale_after", 3600.0, "Seconds without an epoch after which another machine's running trial "
                   "counts as killed (this machine's are checked by process id).")
flags.DEFINE_boolean("default_trial", True, "A new study's first trial is the preset's own values (never pruned), "
                     "so that the tuned values are never worse on validation than the untuned ones.")
flags.DEFINE_float("poll_seconds", 30.0, "How often a worker with nothing to start checks whether the trials "
                   "running elsewhere finished or were killed.")

flags_lib.define_config_flags()

TPE_STARTUP_TRIALS = 10
PRUNER_STARTUP_TRIALS = 5
HEARTBEAT_SECONDS = 60.0
HOST = socket.gethostname()


class TuneError(ValueError):
  """Bad input found before any trial runs: printed as one line."""


def parse_space(entries, config: config_lib.Config, fixed) -> dict:
  """{field: (low, high, log, integer)} searched for `config`: the declared space of its loss and train rule, minus
  the `fixed` fields (given on the command line), with the `--space` changes."""
  declared = config_lib.search_space(config)
  space = {}
  for name, entry in declared.items():
    low, high = entry.bounds(config)
    space[name] = (low, high, entry.log, entry.fraction_of_epochs)
  for item in entries:
    name, sep, value = item.partition("=")
    parts = value.split(":")
    if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
      raise TuneError(f"--space entries are field=low:high or field=low:high:log, got {item!r}.")
    if name not in declared:
      raise TuneError(f"--space: `{name}` is not searched for loss={config.loss}, train_rule={config.train_rule} "
                      f"(searched: {', '.join(declared)}).")
    try:
      low, high = float(parts[0]), float(parts[1])
    except ValueError as e:
      raise TuneError(f"--space {name}: low and high must be numbers, got {value!r}.") from e
    log = len(parts) == 3
    if not low < high or (log and low <= 0):
      raise TuneError(f"--space {name}: needs low < high{' and low > 0 on a log scale' if log else ''}, "
                      f"got {value!r}.")
    integer = space[name][3]
    space[name] = (int(low), int(high), log, True) if integer else (low, high, log, False)
  for name in fixed:
    space.pop(name, None)
  return space


def objective_value(metrics: dict, ks) -> float:
  return float(sum(metrics[f"macro_top{k}_accuracy"] for k in ks) / len(ks))


def warmup_epochs_before_pruning(config: config_lib.Config) -> int:
  """Epochs a trial always completes: those before the first learning-rate decay (the presets start DRW there
  too). The pruner judges a trial from the first epoch trained at the decayed rate on."""
  return min(config.lr_decay_epochs) if config.lr_decay_epochs else config.epochs


def open_storage(url: str):
  import optuna  # pylint: disable=g-import-not-at-top
  try:
    if url.startswith("journal:"):
      path = url[len("journal:"):]
      if not path:
        raise TuneError("--storage=journal:PATH needs a path.")
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    if url.startswith("sqlite:///"):
      os.makedirs(os.path.dirname(os.path.abspath(url[len("sqlite:///"):])), exist_ok=True)
    return optuna.storages.RDBStorage(url)
  except TuneError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # SQLAlchemy's errors (a bad URL, an unreachable server, a missing driver) come with pages of context.
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise TuneError(f"--storage={url} cannot be opened: {first_line}") from e


class Tuner:
  """One worker: runs trials of the study until it holds `trials` finished ones."""

  def __init__(self, *, study, base_config, space, objective_ks, trials, workdir, sampler_seed, worker_index,
               stale_after, poll_seconds=30.0):
    self.study, self.base_config, self.space = study, base_config, space
    self.objective_ks, self.trials, self.workdir = tuple(objective_ks), trials, workdir
    self.sampler_seed, self.worker_index = sampler_seed, worker_index
    self.stale_after, self.poll_seconds = stale_after, poll_seconds

  # -- the loop ----------------------------------------------------------------------------------------------------
  def run(self):
    import optuna  # pylint: disable=g-import-not-at-top
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    while True:
      self.fail_stale_trials()
      trials = self.study.get_trials(deepcopy=False)
      finished = sum(t.state in done for t in trials)
      running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
      if finished >= self.trials:
        return finished
      if finished + running >= self.trials:
        time.sleep(self.poll_seconds)  # the last trials are running elsewhere; one of them may be killed
        continue
      self.run_one(len(trials))

  def sampler(self, index):
    import optuna  # pylint: disable=g-import-not-at-top
    # A fresh seeded sampler per trial: its random start-up draws depend on the trial's index, so that a rerun (a new
    # process) or a second worker does not repeat the first trials' values.
    return optuna.samplers.TPESampler(seed=self.sampler_seed * 1_000_003 + 7919 * index + self.worker_index,
                                      n_startup_trials=TPE_STARTUP_TRIALS)

  def run_one(self, index):
    import optuna  # pylint: disable=g-import-not-at-top
    self.study.sampler = self.sampler(index)
    trial = self.study.ask()
    workdir = trial.user_attrs.get("workdir") or os.path.join(self.workdir, f"trial_{trial.number:04d}")
    trial.set_user_attr("workdir", workdir)
    trial.set_user_attr("host", HOST)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("worker", self.worker_index)
    trial.set_user_attr("heartbeat", time.time())
    t0, cpu0 = time.time(), time.process_time()

    def record_cpu():  # the worker's CPU time on this trial: its cost, whatever else the machine was doing
      trial.set_user_attr("cpu_seconds", round(time.process_time() - cpu0, 1))

    try:
      value = self.objective(trial, workdir)
    except optuna.TrialPruned:
      record_cpu()
      self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      self._log(trial, "pruned", t0)
      return
    except FloatingPointError as e:  # diverged: a result (these values do not train), not a failure to retry
      trial.set_user_attr("diverged", str(e))
      record_cpu()
      self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      self._log(trial, "diverged (finished as pruned)", t0)
      return
    except (KeyboardInterrupt, SystemExit):  # killed: failed, and retried with the same values
      self.retry(trial.number, trial.params, workdir, default=bool(trial.user_attrs.get("default")))
      self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
      raise
    except BaseException:  # broken (a bug, a bad value): failed, and the worker stops with the message
      self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
      raise
    record_cpu()
    self.study.tell(trial, value)
    self._log(trial, f"{value:.4f}", t0)

  def _log(self, trial, outcome, t0):
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    print(f"trial {trial.number} (worker {self.worker_index}): {values} -> {outcome} in {time.time() - t0:.0f} s",
          flush=True)

  # -- one trial ---------------------------------------------------------------------------------------------------
  def suggest(self, trial) -> dict:
    values = {}
    for name, (low, high, log, integer) in self.space.items():
      values[name] = (trial.suggest_int(name, int(low), int(high), log=log) if integer
                      else trial.suggest_float(name, low, high, log=log))
    return values

  def objective(self, trial, workdir) -> float:
    import optuna  # pylint: disable=g-import-not-at-top
    from experiments import train_lib  # pylint: disable=g-import-not-at-top
    config = self.base_config.replace(**self.suggest(trial))
    config_lib.validate(config)

    last_beat = [time.time()]

    def on_epoch(record):
      if time.time() - last_beat[0] > HEARTBEAT_SECONDS:  # a write locks the storage: at most one a minute
        last_beat[0] = time.time()
        trial.set_user_attr("heartbeat", last_beat[0])
      if "val" not in record:
        return
      trial.report(objective_value(record["val"], self.objective_ks), record["epoch"])
      # The default values are the reference every tuned value is compared with: always trained to the end.
      if not trial.user_attrs.get("default") and trial.should_prune():
        raise optuna.TrialPruned()

    posthoc = config_lib.POSTHOC_TAUS if config.posthoc_tau else ()
    results = train_lib.train_and_evaluate(config, workdir, read_test=False, on_epoch=on_epoch, posthoc_taus=posthoc)
    metrics = results["validation"]
    if posthoc:
      best = max(results["posthoc_validation"], key=lambda r: objective_value(r["metrics"], self.objective_ks))
      trial.set_user_attr("posthoc_tau", best["tau"])
      metrics = best["metrics"]
    trial.set_user_attr("validation", {k: v for k, v in metrics.items() if k.startswith(("top", "macro_top"))})
    trial.set_user_attr("train_fit", results["train_fit"])
    trial.set_user_attr("train_seconds", results["train_seconds"])
    return objective_value(metrics, self.objective_ks)

  # -- killed trials -----------------------------------------------------------------------------------------------
  def enqueue_default(self):
    """Queues the base config's own values of the searched fields as a trial, once per study (none when the study
    already has one). Returns the values queued, or None."""
    if any(t.user_attrs.get("default") for t in self.study.get_trials(deepcopy=False)):
      return None
    values = {name: config_lib.loss_tau(self.base_config) if name == "tau" else getattr(self.base_config, name)
              for name in self.space}  # tau None: the loss's own default
    self.study.enqueue_trial(values, user_attrs={"default": True}, skip_if_exists=False)
    return values

  def retry(self, number, params, workdir, default=False):
    """Queues the values of killed trial `number` again; the retry resumes from its work directory (and is the
    study's default trial if that one was)."""
    attrs = {"retry_of": number, "workdir": workdir, **({"default": True} if default else {})}
    self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)

  def fail_stale_trials(self):
    import optuna  # pylint: disable=g-import-not-at-top
    now = time.time()
    for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
      attrs = t.user_attrs
      if "pid" not in attrs:
        continue  # just asked for: its owner is writing its attributes
      if attrs.get("host") == HOST:
        stale = not _process_alive(attrs["pid"])
      else:
        stale = now - attrs.get("heartbeat", now) > self.stale_after
      if not stale:
        continue
      try:
        self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
      except RuntimeError:
        continue  # another worker got there first and queued the retry
      logging.warning("Trial %d (pid %s on %s) was killed: failed, and queued again with the same values.",
                      t.number, attrs.get("pid"), attrs.get("host"))
      self.retry(t.number, t.params, attrs.get("workdir"), default=bool(attrs.get("default")))


def _process_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _fail(error, status):
  if FLAGS.traceback:
    raise error
  print(f"experiments.tune: error: {error}", file=sys.stderr, flush=True)
  sys.exit(status)


def _workdir_root() -> str:
  return FLAGS.workdir_root or "tuning"


def _num_workers() -> int:
  return 1 if FLAGS.num_workers is None else FLAGS.num_workers


def _worker_index() -> int:
  return FLAGS.worker_index or 0


def prepare():
  """(study, Tuner, storage URL) from the flags; TuneError or ValueError on bad input."""
  if FLAGS.config is None:
    raise TuneError("--config is required (a preset name; `python -m experiments.train --config=list`).")
  if FLAGS.trials is None or FLAGS.trials < 1:
    raise TuneError(f"--trials must be a positive number of finished trials, got {FLAGS.trials}.")
  if not FLAGS.poll_seconds > 0:
    raise TuneError(f"--poll_seconds must be positive, got {FLAGS.poll_seconds}.")
  if _num_workers() < 1:
    raise TuneError(f"--num_workers must be >= 1, got {_num_workers()}.")
  if not FLAGS.stale_after > 2 * HEARTBEAT_SECONDS:
    raise TuneError(f"--stale_after must exceed {2 * HEARTBEAT_SECONDS:.0f} s (two heartbeats), got "
                    f"{FLAGS.stale_after}.")
  preset = configs.get_preset(FLAGS.config)
  overrides = flags_lib.overrides_from_flags()
  fixed = set(overrides)
  if "eval_every_epochs" not in overrides:
    overrides["eval_every_epochs"] = 1  # the pruner reads every epoch's validation score
  if preset.config.replace(**overrides).pretrain_examples_per_class and "pretrain_cache_dir" not in overrides:
    overrides["pretrain_cache_dir"] = os.path.join(os.path.abspath(_workdir_root()), "pretrained")
  config = config_lib.validate(preset.config.replace(**overrides), explicitly_set=fixed)
  if not config_lib.has_validation_split(config):
    raise TuneError(f"{FLAGS.config}: dataset {config.dataset} has no validation split here; tuning reads "
                    "validation only (the test split is for the final run).")
  if config.model_selection == "best_test_epoch":
    raise TuneError(f"{FLAGS.config} selects its epoch on the test split; tune it with "
                    "--model_selection=val_macro_topk or --model_selection=last_epoch.")
  space = parse_space(FLAGS.space, config, fixed)
  if not space:
    raise TuneError(f"Nothing to search for {FLAGS.config}: every field of its space is fixed on the command line.")
  try:
    ks = tuple(int(k) for k in FLAGS.objective_ks) if FLAGS.objective_ks else (config.selection_k,)
  except ValueError as e:
    raise TuneError(f"--objective_ks must be integers, got {FLAGS.objective_ks}.") from e
  missing = [k for k in ks if k not in config.eval_ks]
  if missing:
    raise TuneError(f"--objective_ks {missing} are not among the evaluated eval_ks {list(config.eval_ks)}.")
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage_url = FLAGS.storage or f"sqlite:///{os.path.join(os.path.abspath(_workdir_root()), 'optuna.db')}"
  storage = open_storage(storage_url)
  name = FLAGS.study_name or flags_lib.run_name(FLAGS.config, {k: v for k, v in overrides.items() if k in fixed})
  pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                       n_warmup_steps=warmup_epochs_before_pruning(config))
  study = optuna.create_study(storage=storage, study_name=name, direction="maximize", pruner=pruner,
                              load_if_exists=True)
  recorded = study.user_attrs.get("preset")
  if recorded is not None and recorded != FLAGS.config:
    raise TuneError(f"Study {name!r} in {storage_url} tunes preset {recorded!r}, not {FLAGS.config!r}; pick another "
                    "--study_name.")
  study.set_user_attr("preset", FLAGS.config)
  study.set_user_attr("objective_ks", list(ks))
  study.set_user_attr("space", {k: list(v) for k, v in space.items()})
  tuner = Tuner(study=study, base_config=config, space=space, objective_ks=ks, trials=FLAGS.trials,
                workdir=os.path.join(_workdir_root(), name), sampler_seed=FLAGS.sampler_seed,
                worker_index=_worker_index(), stale_after=FLAGS.stale_after,
                poll_seconds=FLAGS.poll_seconds)
  if FLAGS.default_trial and _worker_index() == 0:  # before worker 0 starts the others: queued once
    tuner.enqueue_default()
  return study, tuner, storage_url


def summary(study, ks) -> str:
  import optuna  # pylint: disable=g-import-not-at-top
  trials = study.get_trials(deepcopy=False)
  count = {s: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
  lines = [f"Study {study.study_name}: {count[optuna.trial.TrialState.COMPLETE]} complete, "
           f"{count[optuna.trial.TrialState.PRUNED]} pruned, {count[optuna.trial.TrialState.FAIL]} failed."]
  if count[optuna.trial.TrialState.COMPLETE]:
    best = study.best_trial
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    extra = f", posthoc_tau={best.user_attrs['posthoc_tau']}" if "posthoc_tau" in best.user_attrs else ""
    lines.append(f"Best: trial {best.number}, validation macro top-{'/'.join(map(str, ks))} "
                 f"{100 * best.value:.2f} %: {values}{extra}")
  return "\n".join(lines)


def space_table() -> str:
  """The declared search space as a Markdown table (docs/tuning.md carries it; tests/test_tune.py keeps it equal)."""
  rows = ["| field | range | scale | searched for | source |", "|---|---|---|---|---|"]
  for e in config_lib.SEARCH_SPACE:
    where = (f"train_rule={e.train_rule}" if e.train_rule else
             "every loss" if "*" in e.applies_to else ", ".join(f"`{loss}`" for loss in e.applies_to))
    if e.when_set:
      where += ", where the preset sets it"
    span = (f"{e.low:g}-{e.high:g} of `epochs`" if e.fraction_of_epochs else f"{e.low:g}-{e.high:g}")
    rows.append(f"| `{e.field}` | {span} | {'log' if e.log else 'linear'} | {where} | {e.source} |")
  return "\n".join(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  try:
    study, tuner, storage_url = prepare()
  except ValueError as e:  # TuneError, and the preset's and the config's own messages
    _fail(e, status=2)
  logging.set_verbosity(logging.WARNING)
  print(f"Study {study.study_name} in {storage_url}: {FLAGS.trials} finished trials of {FLAGS.config}, searching "
        f"{', '.join(tuner.space)}; trials in {os.path.abspath(tuner.workdir)}", flush=True)
  children = []
  if _worker_index() == 0 and _num_workers() > 1:
    argv_rest = [a for a in sys.argv[1:] if not a.startswith(("--num_workers", "--worker_index"))]
    if not FLAGS.study_name:
      argv_rest.append(f"--study_name={study.study_name}")
    # On a CPU, one core per worker when there are enough (as experiments.reproduce: two 1-core runs beat one
    # 2-core run); this process is worker 0.
    from experiments import reproduce  # pylint: disable=g-import-not-at-top
    cores = reproduce.usable_cores()
    pin = len(cores) >= _num_workers() and reproduce.default_num_workers() > 1
    for i in range(1, _num_workers()):
      children.append(subprocess.Popen([sys.executable, "-m", "experiments.tune", *argv_rest, "--num_workers=1",
                                        f"--worker_index={i}"]))
      if pin:  # pinned once started (no preexec_fn: forking a process that runs JAX's threads can deadlock)
        os.sched_setaffinity(children[-1].pid, {cores[i]})
    if pin:
      os.sched_setaffinity(0, {cores[0]})
  status = 0
  try:
    tuner.run()
  except (ValueError, TypeError) as e:
    status = 1
    print(f"experiments.tune: error: {e}", file=sys.stderr, flush=True)
  finally:
    for child in children:
      status = status or child.wait()
  print(summary(study, tuner.objective_ks), flush=True)
  sys.exit(status)


if __name__ == "__main__":
  app.run(main)
