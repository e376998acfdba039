r"""Trains a classifier with one of the library's losses.

  python -m experiments.train                                   # the embedded default (long-tailed Fashion-MNIST)
  python -m experiments.train --config=list                     # every preset and the command that runs it
  python -m experiments.train --config=plantnet_noised_imbalanced --data_dir=... --pretrained_weights=...
  python -m experiments.train --loss=ce --epochs=5              # flags override the preset's fields
  python -m experiments.train --dataset=image_folder --data_dir=DIR   # your images: DIR/{train,val,test}/<class>/*.jpg

Results land in --workdir (printed at start): results.json, per_class_accuracy.png, tensorboard/, checkpoints/.
Restarting an interrupted command resumes from its last checkpoint.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging

from experiments import config as config_lib
from experiments import configs
from experiments import flags_lib

FLAGS = flags.FLAGS

SHARED_FLAGS = ("config", "traceback")
flags_lib.define_shared(*SHARED_FLAGS)
flags.DEFINE_string("workdir", None, "Output directory. Default: workdirs/<preset>[_<overrides>].")

flags_lib.define_config_flags()


def preset_name() -> str:
  return FLAGS.config or "default"


def config_from_flags():
  """The preset named by --config with every explicitly given flag applied; returns (config, overrides)."""
  preset = configs.get_preset(preset_name())
  overrides = flags_lib.overrides_from_flags()
  config = preset.config.replace(**overrides)
  return config_lib.validate(config, explicitly_set=set(overrides)), overrides


def default_workdir(preset_name, overrides):
  return os.path.join("workdirs", flags_lib.run_name(preset_name, overrides))


class _QuietLibraries:
  """Drops the INFO chatter of Orbax (a dozen lines per checkpoint), and the INFO and WARNING lines of TFDS (a few per
  dataset read) and of urllib3 (one per retry of a TFDS download, some after the download has failed); their errors,
  and Orbax's warnings, still show."""

  def filter(self, record):
    if "tensorflow_datasets" in record.pathname or record.name.startswith("urllib3"):
      return record.levelno > 30
    if record.pathname.endswith("xla_bridge.py") and record.levelno <= 20:
      return False  # "Unable to initialize backend 'tpu'" on every machine without one
    return record.levelno > 20 or "orbax" not in record.pathname


def _fail(error, *, status):
  """Prints `error`'s message alone (or re-raises it with --traceback) and exits with `status`."""
  if FLAGS.traceback:
    raise error
  print(f"experiments.train: error: {error}", file=sys.stderr, flush=True)
  sys.exit(status)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  if preset_name() == "list":
    for preset in configs.PRESETS.values():
      print(f"{preset.name}\n    {preset.command}\n    {preset.description}")
    return
  try:
    config, overrides = config_from_flags()
  except ValueError as e:
    _fail(e, status=2)
  workdir = FLAGS.workdir or default_workdir(preset_name(), overrides)
  print(f"Preset {preset_name()}; workdir {os.path.abspath(workdir)}", flush=True)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Imported here so that `--help` and `--config=list` stay fast.
  from experiments import reporting  # pylint: disable=g-import-not-at-top
  from experiments import train_lib  # pylint: disable=g-import-not-at-top
  from experiments import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    results = train_lib.train_and_evaluate(config, workdir)
  except (ValueError, TypeError, input_pipeline.DatasetNotFoundError) as e:
    # Bad values found when the run starts (k >= L, a missing dataset, missing pretrained weights, ...): their
    # messages say what to change; a traceback would only bury them (--traceback shows it).
    _fail(e, status=1)
  print(f"\n{results['dataset']}, loss {results['loss']}, train rule {results['train_rule']}: test accuracies "
        f"({results['model_selection']}); trained in {results['train_seconds']:.0f} s\n")
  print(reporting.results_table(results, config.eval_ks))
  print(reporting.train_fit_line(results["train_fit"]))
  if results["pretraining"]:
    from experiments import pretraining  # pylint: disable=g-import-not-at-top
    print(pretraining.summary_line(results["pretraining"]))
  print(f"\nResults: {os.path.join(os.path.abspath(workdir), 'results.json')}", flush=True)


if __name__ == "__main__":
  app.run(main)
