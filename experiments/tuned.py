r"""The equal-budget studies of docs/results/tuned/: every method of a stand-in tuned with the same number of trials.

  python -m experiments.tuned --stand_in=plantnet1081 --trials=20          # run (or continue) its studies
  python -m experiments.tuned --stand_in=fashion_exp100 --trials=20 --dry_run

Each method of the stand-in is one `experiments.tune` study (its preset, the same sampler seed, pruner and training
seed for all) in one journal file per stand-in, `docs/results/tuned/<stand_in>/studies.journal`, kept in the
repository; the trials' work directories go to `workdirs/tuned/<stand_in>/`. The studies advance in rounds of
`--round` trials, every method to the same count before the next round, so that a stopped run leaves the methods
with equal budgets. The top-K losses have a study per K, whose objective is the validation macro top-K at that K;
the methods that train one model for every K maximise the mean of the validation macro top-K over the stand-in's
K (the same K range they are reported on).
"""
import dataclasses
import os
import subprocess
import sys
import time
from typing import Tuple

from absl import app
from absl import flags

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results", "tuned")


@dataclasses.dataclass(frozen=True)
class StandIn:
  name: str
  label: str
  preset_prefix: str
  ks: Tuple[int, ...]
  flags: Tuple[str, ...] = ()


STAND_INS = {
    s.name: s for s in (
        StandIn("plantnet1081", "synthetic_plantnet1081_pretrained (1,081 classes, Pl@ntNet tail, pretrained MLP)",
                "synth_plantnet1081_pre_", (1, 3, 5)),
        StandIn("fashion_exp100", "long-tailed Fashion-MNIST, exp rho 100 (10 epochs, small CNN)", "fmnist_exp100_",
                (1, 2, 3)),
    )
}
# The methods of the issue, in table order; those taking K have one study per K.
METHODS = ("ce", "ce_drw", "focal", "ldam_drw", "mm_drw", "la", "ce_posthoc_la", "vs")
K_METHODS = ("noised_imbalanced", "noised_imbalanced_la")

flags.DEFINE_enum("stand_in", None, sorted(STAND_INS), "The stand-in whose studies to run.")
flags.DEFINE_integer("trials", 20, "Finished trials per study.")
flags.DEFINE_integer("round", 5, "Trials each study gains before the next study's turn.")
flags.DEFINE_integer("tune_workers", 2, "experiments.tune --num_workers of each study.")
flags.DEFINE_boolean("dry_run", False, "Print the commands; run nothing.")


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
          f"--workdir_root={os.path.join('workdirs', 'tuned', stand_in.name)}",
          f"--objective_ks={','.join(map(str, ks))}", f"--num_workers={workers}", *stand_in.flags]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  if FLAGS.stand_in is None:
    raise app.UsageError(f"--stand_in is required: one of {sorted(STAND_INS)}.")
  if FLAGS.trials < 1 or FLAGS.round < 1 or FLAGS.tune_workers < 1:
    raise app.UsageError("--trials, --round and --tune_workers must be positive.")
  stand_in = STAND_INS[FLAGS.stand_in]
  os.makedirs(os.path.dirname(journal(stand_in)), exist_ok=True)
  targets = list(range(min(FLAGS.round, FLAGS.trials), FLAGS.trials, FLAGS.round)) + [FLAGS.trials]
  for target in targets:
    for study, preset, ks in studies(stand_in):
      cmd = command(stand_in, study, preset, ks, target, FLAGS.tune_workers)
      print(" ".join(cmd[1:]) if FLAGS.dry_run else f"[{time.strftime('%H:%M:%S')}] {study}: to {target} trials",
            flush=True)
      if not FLAGS.dry_run:
        subprocess.run(cmd, cwd=ROOT, check=True)


if __name__ == "__main__":
  app.run(main)
