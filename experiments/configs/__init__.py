"""Config presets: the embedded default and one preset per row of the papers' tables.

Every preset records the command that runs it; `python -m experiments.train --config=list` prints them all.
Flags given on the command line override the preset's fields.
"""
import dataclasses

from experiments import config as config_lib


@dataclasses.dataclass(frozen=True)
class Preset:
  command: str
  name: str
  description: str
  config: config_lib.Config


def _command(name, extra=""):
  return f"python -m experiments.train --config={name}" + (f" {extra}" if extra else "")


def _registry():
  from experiments.configs import cifar_lt  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from experiments.configs import fashion_mnist_lt  # pylint: disable=g-import-not-at-top
  from experiments.configs import logit_adjustment  # pylint: disable=g-import-not-at-top
  from experiments.configs import plantnet  # pylint: disable=g-import-not-at-top
  from experiments.configs import synthetic_lt  # pylint: disable=g-import-not-at-top
  from experiments.configs import vs_loss  # pylint: disable=g-import-not-at-top
  presets = {}
  for module in (default, plantnet, cifar_lt, fashion_mnist_lt, logit_adjustment, synthetic_lt, vs_loss):
    for name, (description, config, extra) in module.presets().items():
      if name in presets:
        raise ValueError(f"Duplicate preset name {name!r}.")
      presets[name] = Preset(command=_command(name, extra), name=name, description=description, config=config)
  return presets


PRESETS = _registry()


def get_preset(name: str) -> Preset:
  if name not in PRESETS:
    close = [p for p in PRESETS if name in p][:10]
    hint = f" Close matches: {close}." if close else ""
    raise ValueError(f"Unknown `config` preset {name!r}.{hint} `--config=list` prints all {len(PRESETS)} presets.")
  return PRESETS[name]
