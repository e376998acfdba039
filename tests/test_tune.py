"""experiments.tune: the declared search space, the trial loop (continuation, kills, pruning, divergence), the test
split left alone, two worker processes on one study, and bad input."""
import csv
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments import config as config_lib
from experiments import configs
from tests import shared_runs
from tests.test_regimes import _tiny

optuna = pytest.importorskip("optuna")
from experiments import tune  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 10-class synthetic_lt problem small enough for a trial of a few seconds (as tests/test_regimes.py's runs).
TINY_FLAGS = ["--synthetic_num_classes=10", "--synthetic_num_genera=2", "--synthetic_max_count=30",
              "--imbalance_ratio=10", "--synthetic_test_per_class=10", "--validation_per_class=4",
              "--mlp_widths=16,16", "--batch_size=16", "--eval_batch_size=50", "--eval_ks=1,3", "--lr_decay_epochs=2"]


# --- the declared space ---------------------------------------------------------------------------------------------
def test_every_range_is_a_field_read_by_the_losses_it_names_and_says_where_it_comes_from():
  fields = {f.name for f in dataclasses.fields(config_lib.Config)}
  for entry in config_lib.SEARCH_SPACE:
    assert entry.field in fields, entry
    assert entry.low < entry.high and (not entry.log or entry.low > 0), entry
    assert len(entry.source) > 20, entry  # a sentence naming a paper or the authors' code
    for loss in entry.applies_to:
      if loss != "*" and entry.field in config_lib.LOSS_HYPERPARAMETERS:
        assert loss in config_lib.LOSS_HYPERPARAMETERS[entry.field], (entry.field, loss)


@pytest.mark.parametrize("loss, own", [
    ("ce", set()), ("focal", {"gamma"}), ("ldam", {"max_margin", "scale"}), ("mm", {"mm_beta", "mm_delta_minus"}),
    ("logit_adjusted", {"tau"}), ("vs", {"vs_gamma", "tau"}), ("noised_imbalanced", {"epsilon", "scale", "max_margin"}),
])
def test_each_loss_searches_learning_rate_weight_decay_and_its_own(loss, own):
  config = config_lib.Config(loss=loss, normalized_head=loss in ("ldam", "mm", "noised_imbalanced"))
  assert set(config_lib.search_space(config)) == {"learning_rate", "weight_decay"} | own


def test_drw_start_and_added_la_offsets_are_searched_where_the_preset_uses_them():
  drw = configs.get_preset("synth_plantnet1081_pre_mm_drw").config
  space = config_lib.search_space(drw)
  assert {"drw_start_epoch", "mm_beta", "mm_delta_minus"} <= set(space)
  assert space["drw_start_epoch"].bounds(drw) == (round(0.3 * drw.epochs), round(0.95 * drw.epochs))
  la = configs.get_preset("synth_plantnet1081_pre_noised_imbalanced_la_k3").config
  assert "logit_adjustment_tau" in config_lib.search_space(la)
  assert "logit_adjustment_tau" not in config_lib.search_space(la.replace(logit_adjustment_tau=0.0))
  assert "num_samples" not in config_lib.search_space(la) and "k" not in config_lib.search_space(la)


def test_a_value_on_the_edge_of_its_range_is_flagged():
  config = config_lib.Config()
  lr = next(e for e in config_lib.SEARCH_SPACE if e.field == "learning_rate")  # 1e-3 .. 1, log
  assert lr.on_edge(config, 1.1e-3) == "low" and lr.on_edge(config, 0.9) == "high"
  assert lr.on_edge(config, 0.03) is None
  gamma = next(e for e in config_lib.SEARCH_SPACE if e.field == "gamma")  # 0 .. 5, linear
  assert gamma.on_edge(config, 0.2) == "low" and gamma.on_edge(config, 0.3) is None


def test_space_changes_and_fixed_fields():
  config = config_lib.Config(loss="focal")
  space = tune.parse_space(["gamma=0.5:3", "learning_rate=0.01:0.5:log"], config, fixed={"weight_decay"})
  assert space == {"gamma": (0.5, 3.0, False, False), "learning_rate": (0.01, 0.5, True, False)}
  for bad, words in [("tau=0:1", "`tau` is not searched for loss=focal"), ("gamma=1", "field=low:high"),
                     ("gamma=3:1", "low < high"), ("learning_rate=0:1:log", "low > 0"), ("gamma=a:b", "numbers")]:
    with pytest.raises(tune.TuneError, match=words):
      tune.parse_space([bad], config, fixed=set())


def test_pruning_waits_for_the_first_learning_rate_decay():
  preset = configs.get_preset("synth_plantnet1081_pre_ce").config
  assert tune.warmup_epochs_before_pruning(preset) == 20
  assert tune.warmup_epochs_before_pruning(preset.replace(lr_decay_epochs=())) == preset.epochs


# --- the trial loop, in process -------------------------------------------------------------------------------------
def _tuner(tmp_path, *, trials, storage=None, config=None, space=None, pruner=None, **kwargs):
  config = config or _tiny(loss="logit_adjusted", pretrain_examples_per_class=0, epochs=3, lr_decay_epochs=(2,),
                           eval_every_epochs=1, checkpoint_every_epochs=1)
  study = optuna.create_study(storage=storage, study_name="s", direction="maximize", load_if_exists=True,
                              pruner=pruner or optuna.pruners.NopPruner())
  space = space or tune.parse_space([], config, fixed=set())
  return tune.Tuner(study=study, base_config=config, space=space, objective_ks=(1,), trials=trials,
                    workdir=str(tmp_path / "trials"), sampler_seed=0, worker_index=0, stale_after=3600.0,
                    poll_seconds=0.1, **kwargs)


@pytest.mark.slow
def test_a_trial_never_evaluates_the_test_split_and_reports_every_epoch(tmp_path, monkeypatch):
  from experiments import input_pipeline  # pylint: disable=g-import-not-at-top
  read = []
  original = input_pipeline.Dataset.eval_batches

  def eval_batches(self, split, **kwargs):
    read.append(split)
    if split == "test":
      raise AssertionError("a tuning trial read the test split")
    return original(self, split, **kwargs)

  monkeypatch.setattr(input_pipeline.Dataset, "eval_batches", eval_batches)
  config = _tiny(loss="ce", posthoc_tau=1.0, pretrain_examples_per_class=0, epochs=3, lr_decay_epochs=(2,),
                 eval_every_epochs=1)
  tuner = _tuner(tmp_path, trials=1, config=config)
  assert tuner.run() == 1
  (trial,) = tuner.study.trials
  assert trial.state == optuna.trial.TrialState.COMPLETE
  assert set(read) == {"val"} and len(read) >= 3  # each epoch, then the post-hoc tau grid
  assert sorted(trial.intermediate_values) == [0, 1, 2]
  # The value is the validation macro top-1 at the post-hoc tau chosen from the grid, the best of the grid.
  assert trial.user_attrs["posthoc_tau"] in config_lib.POSTHOC_TAUS
  assert trial.value == pytest.approx(trial.user_attrs["validation"]["macro_top1_accuracy"], abs=1e-12)
  assert trial.value >= trial.intermediate_values[2] - 1e-12  # the epochs report tau = 1, one of the grid's
  assert "train_fit" in trial.user_attrs


@pytest.mark.slow
def test_a_rerun_continues_the_study_to_its_total_with_new_values(tmp_path):
  storage = f"journal:{tmp_path / 'study.journal'}"
  assert _tuner(tmp_path, trials=2, storage=tune.open_storage(storage)).run() == 2
  tuner = _tuner(tmp_path, trials=3, storage=tune.open_storage(storage))
  assert tuner.run() == 3
  trials = tuner.study.trials
  assert [t.number for t in trials] == [0, 1, 2]
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  assert len({tuple(sorted(t.params.items())) for t in trials}) == 3  # the rerun did not repeat the first draws
  assert len({t.user_attrs["workdir"] for t in trials}) == 3


@pytest.mark.slow
def test_the_default_trial_comes_first_once_with_the_preset_values_and_is_never_pruned(tmp_path):
  storage = f"journal:{tmp_path / 'study.journal'}"
  prune_all = optuna.pruners.ThresholdPruner(upper=-1.0)  # prunes every trial at its first report
  tuner = _tuner(tmp_path, trials=2, storage=tune.open_storage(storage), pruner=prune_all)
  queued = tuner.enqueue_default()
  config = tuner.base_config
  assert queued == {"learning_rate": config.learning_rate, "weight_decay": config.weight_decay, "tau": 1.0}
  assert tuner.enqueue_default() is None  # one per study
  assert tuner.run() == 2
  default, searched = tuner.study.trials
  assert default.user_attrs["default"] and default.params == queued
  assert default.state == optuna.trial.TrialState.COMPLETE and sorted(default.intermediate_values) == [0, 1, 2]
  assert searched.state == optuna.trial.TrialState.PRUNED and "default" not in searched.user_attrs
  continued = _tuner(tmp_path, trials=3, storage=tune.open_storage(storage), pruner=prune_all)
  assert continued.enqueue_default() is None  # a continued study has its default already
  assert continued.run() == 3 and sum(bool(t.user_attrs.get("default")) for t in continued.study.trials) == 1


@pytest.mark.slow
def test_a_pruned_trial_stops_training_and_a_diverged_one_is_finished_as_pruned(tmp_path):
  # A pruner that prunes at the first report: training stops after the first epoch.
  tuner = _tuner(tmp_path, trials=1, pruner=optuna.pruners.ThresholdPruner(upper=-1.0))
  tuner.run()
  (trial,) = tuner.study.trials
  assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [0]
  assert trial.user_attrs["cpu_seconds"] > 0  # a pruned trial's cost is recorded too
  # A learning rate of 1e4 makes the loss non-finite: finished (pruned), not failed, so it is not retried.
  config = _tiny(loss="ce", pretrain_examples_per_class=0, epochs=3, lr_decay_epochs=(2,), eval_every_epochs=1)
  space = tune.parse_space(["learning_rate=1e4:2e4:log"], config, fixed={"weight_decay"})
  tuner = _tuner(tmp_path / "diverged", trials=1, config=config, space=space)
  assert tuner.run() == 1
  (trial,) = tuner.study.trials
  assert trial.state == optuna.trial.TrialState.PRUNED
  assert "training loss became" in trial.user_attrs["diverged"] and trial.user_attrs["cpu_seconds"] > 0


@pytest.mark.slow
def test_an_interrupted_trial_is_failed_and_retried_with_its_values_from_its_checkpoint(tmp_path, monkeypatch):
  from experiments import train_lib  # pylint: disable=g-import-not-at-top
  storage = f"journal:{tmp_path / 'study.journal'}"
  tuner = _tuner(tmp_path, trials=1, storage=tune.open_storage(storage))
  original = train_lib.train_and_evaluate

  def interrupted(config, workdir, *, on_epoch, **kwargs):
    def stop_after_two(record):
      on_epoch(record)
      if record["epoch"] == 1:
        raise KeyboardInterrupt
    return original(config, workdir, on_epoch=stop_after_two, **kwargs)

  monkeypatch.setattr(train_lib, "train_and_evaluate", interrupted)
  tuner.enqueue_default()  # the interrupted trial is the study's default: so is its retry
  with pytest.raises(KeyboardInterrupt):
    tuner.run()
  monkeypatch.setattr(train_lib, "train_and_evaluate", original)
  tuner = _tuner(tmp_path, trials=1, storage=tune.open_storage(storage))
  assert tuner.run() == 1
  failed, retried = tuner.study.trials
  assert failed.state == optuna.trial.TrialState.FAIL and retried.state == optuna.trial.TrialState.COMPLETE
  assert retried.params == failed.params and retried.user_attrs["retry_of"] == failed.number
  assert retried.user_attrs["default"] and retried.user_attrs["workdir"] == failed.user_attrs["workdir"]
  # Resumed: the two epochs of the interrupted attempt come back from its checkpoint, the third is new.
  assert sorted(retried.intermediate_values) == [0, 1, 2]
  assert retried.intermediate_values[1] == failed.intermediate_values[1]


# --- the command: processes and bad input --------------------------------------------------------------------------
def _storage(tmp_path, kind):
  return f"journal:{tmp_path / 'study.journal'}" if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"


def _command(tmp_path, *extra, storage="journal"):
  return [sys.executable, "-m", "experiments.tune", "--config=synth_lt100_la", f"--workdir_root={tmp_path}",
          f"--storage={_storage(tmp_path, storage)}", "--study_name=s", "--poll_seconds=0.5", *TINY_FLAGS, *extra]


def _trials(tmp_path, storage="journal"):
  return optuna.load_study(study_name="s", storage=tune.open_storage(_storage(tmp_path, storage))).trials


@pytest.mark.slow
def test_two_worker_processes_finish_one_study_without_duplicate_or_lost_trials(tmp_path):
  proc = subprocess.run(_command(tmp_path, "--trials=4", "--num_workers=2", "--epochs=2"), cwd=REPO,
                        capture_output=True, text=True, timeout=shared_runs.SUBPROCESS_TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  trials = _trials(tmp_path)
  finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  # Two workers may each start one of the last trials: at most one beyond the total, never fewer, none lost.
  assert 4 <= len(finished) == len(trials) <= 5
  assert {t.user_attrs["worker"] for t in trials} == {0, 1}
  assert [bool(t.user_attrs.get("default")) for t in trials].count(True) == 1 and trials[0].user_attrs["default"]
  assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
  assert len({t.user_attrs["workdir"] for t in trials}) == len(trials)
  assert all(os.path.exists(os.path.join(t.user_attrs["workdir"], "results.json")) for t in trials)
  assert "Best: trial" in proc.stdout


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_and_retried_by_the_next_run(tmp_path):
  # SQLite: a killed process's locks go with it (the journal file's lock file waits 30 s to be forced open).
  flags = ["--trials=1", "--epochs=30", "--checkpoint_every_epochs=1"]
  proc = subprocess.Popen(_command(tmp_path, *flags, storage="sqlite"), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  checkpoints = tmp_path / "s" / "trial_0000" / "checkpoints"
  deadline = time.time() + shared_runs.SUBPROCESS_TIMEOUT_S
  while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert proc.poll() is None and time.time() < deadline, "the trial never wrote a checkpoint"
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rerun = subprocess.run(_command(tmp_path, *flags, storage="sqlite"), cwd=REPO, capture_output=True, text=True,
                         timeout=shared_runs.SUBPROCESS_TIMEOUT_S, check=False)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  killed, retried = _trials(tmp_path, storage="sqlite")
  assert killed.state == optuna.trial.TrialState.FAIL and retried.state == optuna.trial.TrialState.COMPLETE
  assert retried.params == killed.params and retried.user_attrs["retry_of"] == 0
  assert killed.user_attrs["default"] and retried.user_attrs["default"]  # the default trial, killed and retried
  assert "was killed" in rerun.stderr
  assert "1 complete, 0 pruned, 1 failed" in rerun.stdout
  # Resumed from the killed attempt's checkpoints: its epochs come back (as reported values) with the same scores.
  assert all(retried.intermediate_values[e] == v for e, v in killed.intermediate_values.items())
  assert len(retried.intermediate_values) == 30


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--config=nope", "--trials=2"], "Unknown `config` preset 'nope'"),
    (["--config=synth_lt100_ce", "--trials=2", "--space=gamma=0:3"], "`gamma` is not searched for loss=ce"),
    (["--config=synth_lt100_ce", "--trials=2", "--storage=postgresql://nobody@127.0.0.1:9/none"], "cannot be opened"),
    (["--config=synth_lt100_ce", "--trials=0"], "--trials must be a positive"),
    (["--config=cifar10_lt_exp100_erm", "--trials=2"], "has no validation split"),
])
def test_bad_input_is_one_line(tmp_path, flags, message, capsys):
  # The first case on the real command line; the others in this process (a subprocess costs seconds of imports).
  if flags[0] == "--config=nope":
    proc = subprocess.run([sys.executable, "-m", "experiments.tune", f"--workdir_root={tmp_path}", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=shared_runs.SUBPROCESS_TIMEOUT_S, check=False)
    code, err = proc.returncode, proc.stderr
  else:
    from absl import logging  # pylint: disable=g-import-not-at-top
    capsys.readouterr()
    code, verbosity = None, logging.get_verbosity()
    try:
      tune.FLAGS(["experiments.tune", f"--workdir_root={tmp_path}", *flags])
      try:
        tune.main(["experiments.tune"])
      except SystemExit as e:
        code = e.code
    finally:
      tune.FLAGS.unparse_flags()
      logging.set_verbosity(verbosity)
    err = capsys.readouterr().err
  assert code == 2
  assert err.strip().splitlines() == [err.strip()] and message in err, err


def test_objective_averages_the_macro_top_k_it_names():
  metrics = {"macro_top1_accuracy": 0.2, "macro_top3_accuracy": 0.5, "top1_accuracy": 0.9}
  assert tune.objective_value(metrics, (1,)) == 0.2
  assert tune.objective_value(metrics, (1, 3)) == pytest.approx(0.35, abs=1e-15)


def test_the_tuning_page_carries_the_declared_space():
  with open(os.path.join(REPO, "docs", "tuning.md"), encoding="utf-8") as f:
    page = f.read()
  table = page.split("tests/test_tune.py checks it -->\n", 1)[1].split("\n<!-- /space-table -->", 1)[0]
  assert table == tune.space_table(), "docs/tuning.md is stale: paste experiments.tune.space_table() into it"


def test_the_reruns_refill_a_slot_when_any_run_ends_not_only_the_oldest(tmp_path):
  # Two slots, three runs: "long" ends only once "third" has run, which can start only in the slot that "short"
  # frees while "long" still runs (a scheduler that waits for the oldest run first would time out here).
  from experiments import tuned  # pylint: disable=g-import-not-at-top
  flag = tmp_path / "third_ran"
  wait = f"import os, time, sys\nfor _ in range(600):\n  if os.path.exists({str(flag)!r}): sys.exit(0)\n  " \
         "time.sleep(0.05)\nsys.exit(3)"
  commands = [[sys.executable, "-c", wait, f"--workdir={tmp_path / 'long'}"],
              [sys.executable, "-c", "pass", f"--workdir={tmp_path / 'short'}"],
              [sys.executable, "-c", f"open({str(flag)!r}, 'w').close()", f"--workdir={tmp_path / 'third'}"]]
  ended = []
  tuned.run_pinned(commands, 2, lambda proc: ended.append((proc.args[-1].rsplit("/", 1)[-1], proc.returncode)))
  assert ended[0] == ("short", 0)
  assert sorted(ended) == [("long", 0), ("short", 0), ("third", 0)]
  assert all((tmp_path / f"{name}.log").exists() for name in ("long", "short", "third"))


@pytest.mark.slow
def test_the_equal_budget_studies_rerun_their_best_configurations_and_report(tmp_path, monkeypatch, capsys):
  # Three methods of the generated 10-class problem at K = 1, two trials each (the default and one searched), one
  # re-run seed: the loop, the re-runs and the report of experiments.tuned on a stand-in made for the test.
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from experiments import tuned  # pylint: disable=g-import-not-at-top
  stand_in = tuned.StandIn("tiny", "tiny", "synth_lt100_", (1,), ("docs/results/synthetic_lt/runs.csv", "lt100"),
                           flags=tuple(TINY_FLAGS) + ("--epochs=2",), tune_flags=("--poll_seconds=0.5",))
  monkeypatch.setattr(tuned, "STAND_INS", {"tiny": stand_in})
  monkeypatch.setattr(tuned, "METHODS", ("ce", "ce_posthoc_la"))
  monkeypatch.setattr(tuned, "K_METHODS", ("noised_imbalanced",))
  monkeypatch.setattr(tuned, "RESULTS", str(tmp_path / "results"))
  monkeypatch.setattr(tuned, "WORKDIRS", str(tmp_path / "workdirs"))
  out = tmp_path / "results" / "tiny"

  def run_tuned(*argvs):  # `python -m experiments.tuned` with each argv in turn, in this process
    absl_flags.FLAGS.unparse_flags()
    for argv in argvs:
      try:
        absl_flags.FLAGS(["tuned", "--stand_in=tiny", *argv])
        tuned.main(["tuned"])
      finally:
        absl_flags.FLAGS.unparse_flags()
      if "--rerun" in argv:  # the re-runs are recorded as they finish, before any report
        assert (out / "reruns.csv").exists()

  run_tuned(["--trials=2", "--round=2", "--tune_workers=1"], ["--rerun", "--seeds=0"], ["--report", "--seeds=0"])
  loaded = tuned.load_studies(stand_in)
  assert list(loaded) == ["ce", "ce_posthoc_la", "noised_imbalanced_k1"]
  assert all(len(study.trials) == 2 for study in loaded.values())
  with open(out / "trials.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6 and {r["method"] for r in rows} == set(loaded)
  assert all(r["state"] == "complete" and 0 <= float(r["value"]) <= 1 for r in rows)
  assert all(float(r["cpu_seconds"]) > 0 for r in rows)  # each worker's CPU time on the trial
  assert all(r["posthoc_tau"] != "" for r in rows if r["method"] == "ce_posthoc_la")
  assert [r["default"] for r in rows if r["method"] == "ce"] == ["yes", ""]  # each study's first trial
  with open(out / "reruns.csv") as f:
    reruns = list(csv.DictReader(f))
  # Each study's best trial and its default trial re-run (once, when the default is the best), and tested.
  for name, study in loaded.items():
    roles = [r["role"] for r in reruns if r["method"] == name]
    assert roles in (["best default"], ["best", "default"]), roles
    assert (roles == ["best default"]) == (study.best_trial.user_attrs.get("default", False))
  for r in reruns:  # each re-run trained its trial's values: the learning rate is in the recorded flags
    trial = loaded[r["method"]].trials[int(r["trial"])]
    assert f"--learning_rate={trial.params['learning_rate']!r}" in r["flags"]
    assert ("default" in r["role"]) == bool(trial.user_attrs.get("default"))
  table = (out / "table.md").read_text()
  assert "| CE |" in table and "| noised top-K, imbalanced |" in table and "| `noised_imbalanced_k1` | 2 (0) | 0 |" in table
  assert "tuned regret top-1" in table  # synthetic_lt has its Bayes optimum
  assert "the grid's runs" not in table  # every study has its default trial, re-run
  cost = table.split("## Cost")[1]  # what the studies cost: 6 trials, each with its worker's CPU time
  assert "- 6 finished trials in 3 studies" in cost and "recorded for 6 of the 6" in cost
  assert f"- Re-runs: {len(reruns)}, " in cost
  # The claims on the default and the tuned runs, among these methods only (3 of them).
  claim_rows = [line for line in table.splitlines() if line.startswith("| 1 | ")]
  assert [line.split(" | ")[1] for line in claim_rows] == ["default", "tuned"]
  assert all(" of 3; " in line and "vs CE + post-hoc LA" in line for line in claim_rows)
  assert "| CE | " in table.split("What tuning moved")[1] and "CE tuned (learning rate and weight decay only)" in table
  # On another machine (the re-runs' workdirs gone, reruns.csv committed): nothing is trained again, and the report
  # is the same.
  shutil.rmtree(tmp_path / "workdirs" / "tiny" / "rerun")
  capsys.readouterr()
  run_tuned(["--rerun", "--seeds=0"], ["--report", "--seeds=0"])
  assert "experiments.train" not in capsys.readouterr().out
  with open(out / "reruns.csv") as f:
    assert list(csv.DictReader(f)) == reruns
  assert (out / "table.md").read_text() == table
