r"""Trains a classifier with one of the library's losses.

  python -m experiments.train                                   # the embedded default (long-tailed Fashion-MNIST)
  python -m experiments.train --config=list                     # every preset and the command that runs it
  python -m experiments.train --config=plantnet_noised_imbalanced --data_dir=... --pretrained_weights=...
  python -m experiments.train --loss=ce --epochs=5              # flags override the preset's fields

Results land in --workdir (printed at start): results.json, per_class_accuracy.png, tensorboard/, checkpoints/.
Restarting an interrupted command resumes from its last checkpoint.
"""
import dataclasses
import os
import re
import sys
import typing

from absl import app
from absl import flags
from absl import logging

from experiments import config as config_lib
from experiments import configs

FLAGS = flags.FLAGS

flags.DEFINE_string("config", "default", "Preset name (`--config=list` prints them all).")
flags.DEFINE_string("workdir", None, "Output directory. Default: workdirs/<preset>[_<overrides>].")
flags.DEFINE_boolean("traceback", False, "On a configuration or missing-dataset error, show the Python traceback "
                     "too (default: the message alone).")

_HELP = {
    "dataset": f"One of {config_lib.DATASETS}.",
    "data_dir": "Dataset location: the Fashion-MNIST IDX folder, the TFDS data_dir (CIFAR) or the Pl@ntNet-300K root.",
    "imbalance_profile": "Long-tailed profile of the training subset: exp or step.",
    "imbalance_ratio": "rho = n_max / n_min of the long-tailed training subset.",
    "loss": f"One of {config_lib.LOSSES}.",
    "k": "K of the top-K losses (noised, hinge, smooth SVM).",
    "epsilon": "Noise scale of the noised top-K losses.",
    "num_samples": "Monte Carlo draws B of the noised top-K losses.",
    "antithetic": "Draw the noised losses' B samples as B/2 antithetic pairs Z, -Z (B even).",
    "max_margin": "Margin of the rarest class (LDAM, MM-LDAM uses 0.5 internally, imbalanced noised).",
    "scale": "Logit scale (LDAM, MM, imbalanced noised).",
    "gamma": "Focal loss gamma.",
    "tau": "Temperature of smooth_svm (default 0.1) or of logit_adjusted (default 1.0).",
    "logit_adjustment_tau": ("Add tau * log(class prior) to the logits of the loss during training (logit adjustment "
                             "of any loss; divided by the scale for ldam/mm/noised_imbalanced). 0: off."),
    "posthoc_tau": ("Evaluate with logits - tau * log(class prior) (post-hoc logit adjustment; divided by the scale "
                    "for scaled losses). 0: off. results.json records it."),
    "mm_delta_minus": "MM loss delta^-.",
    "mm_beta": "MM loss beta (delta^+ = beta delta^-).",
    "mm_reference_code_compat": "Reproduce the released MM code's two quirks.",
    "train_rule": f"One of {config_lib.TRAIN_RULES}.",
    "model": f"One of {config_lib.MODELS}.",
    "normalized_head": "Cosine (normalized) classifier head instead of a linear one.",
    "eval_ks": "The K of the reported top-K metrics, comma-separated.",
    "lr_decay_epochs": "Epochs (0-indexed) at which the learning rate is multiplied by lr_decay_factor.",
    "pretrained_weights": "A .npz of ImageNet weights made by experiments.convert_torchvision_weights.",
    "max_steps_per_epoch": "Truncate every epoch (smoke tests only).",
}


def _base_type(annotation):
  origin = typing.get_origin(annotation)
  if origin is typing.Union:
    return _base_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
  if origin in (tuple, typing.Tuple):
    return tuple
  return annotation


_FIELD_TYPES = {f.name: _base_type(f.type) for f in dataclasses.fields(config_lib.Config)}

for _name, _type in _FIELD_TYPES.items():
  if _name in FLAGS:  # Already defined by experiments.reproduce (data_dir, pretrained_weights): same meaning.
    continue
  _help = _HELP.get(_name, _name.replace("_", " ").capitalize() + ".") + " Overrides the preset."
  if _type is bool:
    flags.DEFINE_boolean(_name, None, _help)
  elif _type is int:
    flags.DEFINE_integer(_name, None, _help)
  elif _type is float:
    flags.DEFINE_float(_name, None, _help)
  elif _type is tuple:
    flags.DEFINE_list(_name, None, _help)
  else:
    flags.DEFINE_string(_name, None, _help)


def _parse_tuple(name, values):
  try:
    return tuple(int(v) for v in values if v != "")
  except ValueError as e:
    raise ValueError(f"--{name} must be a comma-separated list of integers, got {values}.") from e


def config_from_flags():
  """The preset named by --config with every explicitly given flag applied; returns (config, overrides)."""
  preset = configs.get_preset(FLAGS.config)
  overrides = {}
  for name, type_ in _FIELD_TYPES.items():
    value = getattr(FLAGS, name)
    if value is None:
      continue
    overrides[name] = _parse_tuple(name, value) if type_ is tuple else value
  config = preset.config.replace(**overrides)
  return config_lib.validate(config, explicitly_set=set(overrides)), overrides


def default_workdir(preset_name, overrides):
  ignored = {"data_dir", "log_every_steps", "eval_batch_size", "pretrained_weights"}
  parts = [preset_name] + [f"{k}-{','.join(map(str, v)) if isinstance(v, tuple) else v}"
                           for k, v in sorted(overrides.items()) if k not in ignored]
  return os.path.join("workdirs", re.sub(r"[^A-Za-z0-9_.,=-]+", "", "_".join(parts)))


class _QuietLibraries:
  """Drops the INFO chatter of Orbax (a dozen lines per checkpoint); its warnings and errors still show."""

  def filter(self, record):
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
  if FLAGS.config == "list":
    for preset in configs.PRESETS.values():
      print(f"{preset.name}\n    {preset.command}\n    {preset.description}")
    return
  try:
    config, overrides = config_from_flags()
  except ValueError as e:
    _fail(e, status=2)
  workdir = FLAGS.workdir or default_workdir(FLAGS.config, overrides)
  print(f"Preset {FLAGS.config}; workdir {os.path.abspath(workdir)}", flush=True)
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
  print(f"\nResults: {os.path.join(os.path.abspath(workdir), 'results.json')}", flush=True)


if __name__ == "__main__":
  app.run(main)
