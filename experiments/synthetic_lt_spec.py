"""What a `synthetic_lt` problem is: its settings (`SyntheticSpec`, whose defaults are those of the `synthetic_*`
flags), their checks, and the training class counts they imply. The generator (experiments/synthetic_lt.py) draws
the data of a spec; experiments/config.py validates a spec without importing the generator.
"""
import dataclasses
import math

import numpy as np

PROFILES = ("exp", "step", "power", "plantnet")
# Pl@ntNet-300K: the rarest 80 % of the species hold 11 % of the images (Garcin et al., NeurIPS 2021 datasets track).
PLANTNET_TAIL_CLASS_FRACTION = 0.8
PLANTNET_TAIL_IMAGE_FRACTION = 0.11


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """The generator's settings; `Config` fields `synthetic_*`, `imbalance_*`, `validation_per_class` and
  `subset_seed` map onto them (`config.synthetic_spec`)."""
  num_classes: int = 100
  num_genera: int = 10
  latent_dim: int = 8
  genus_spread: float = 1.4
  species_spread: float = 0.7
  max_count: int = 500
  imbalance_profile: str = "exp"
  imbalance_ratio: float = 100.0
  validation_per_class: int = 20
  test_per_class: int = 100
  map_layers: int = 3
  negative_slope: float = 0.2
  seed: int = 0


def check_int(value, name, minimum):
  """`int(value)`, or ValueError naming `name` unless `value` is an int >= `minimum` (also the generator's check)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
  return int(value)


def _check_positive(value, name, *, allow_zero=False):
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
      or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
    raise ValueError(f"`{name}` must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}.")
  return float(value)


# Names of the Config fields (flags) behind each spec field, for error messages.
FLAG_NAMES = {"num_classes": "synthetic_num_classes", "num_genera": "synthetic_num_genera",
              "latent_dim": "synthetic_dim", "genus_spread": "synthetic_genus_spread",
              "species_spread": "synthetic_species_spread", "max_count": "synthetic_max_count",
              "imbalance_profile": "imbalance_profile", "imbalance_ratio": "imbalance_ratio",
              "validation_per_class": "validation_per_class", "test_per_class": "synthetic_test_per_class",
              "map_layers": "synthetic_map_layers", "negative_slope": "synthetic_negative_slope",
              "seed": "subset_seed"}


def check_spec(spec: SyntheticSpec) -> SyntheticSpec:
  """Raises ValueError naming the flag of the first unsatisfiable setting; returns `spec`."""
  n = FLAG_NAMES
  check_int(spec.num_classes, n["num_classes"], 2)
  check_int(spec.num_genera, n["num_genera"], 1)
  if spec.num_genera > spec.num_classes:
    raise ValueError(f"`{n['num_genera']}`={spec.num_genera} exceeds `{n['num_classes']}`={spec.num_classes}: "
                     "every genus needs at least one class.")
  check_int(spec.latent_dim, n["latent_dim"], 1)
  _check_positive(spec.genus_spread, n["genus_spread"], allow_zero=True)
  _check_positive(spec.species_spread, n["species_spread"], allow_zero=True)
  check_int(spec.max_count, n["max_count"], 1)
  if spec.imbalance_profile not in PROFILES:
    raise ValueError(f"`{n['imbalance_profile']}` must be one of {PROFILES} for the synthetic dataset, got "
                     f"{spec.imbalance_profile!r}.")
  if not (isinstance(spec.imbalance_ratio, (int, float, np.integer, np.floating)) and np.isfinite(spec.imbalance_ratio)
          and spec.imbalance_ratio >= 1):
    raise ValueError(f"`{n['imbalance_ratio']}` must be a finite number >= 1, got {spec.imbalance_ratio!r}.")
  check_int(spec.validation_per_class, n["validation_per_class"], 0)
  check_int(spec.test_per_class, n["test_per_class"], 1)
  check_int(spec.map_layers, n["map_layers"], 0)
  slope = _check_positive(spec.negative_slope, n["negative_slope"])
  if slope > 1:
    raise ValueError(f"`{n['negative_slope']}` must be in (0, 1], got {spec.negative_slope!r}.")
  check_int(spec.seed, n["seed"], 0)
  class_counts(spec)  # fewer than one training example for some class
  return spec


def plantnet_exponent(num_classes: int) -> float:
  """The exponent `a` of the power law `n_y ∝ (1 + y)^-a` under which the rarest 80 % of `num_classes` classes
  hold 11 % of the images, as in Pl@ntNet-300K (bisection on the continuous counts)."""
  ranks = np.arange(1, num_classes + 1, dtype=np.float64)
  head = int(round((1 - PLANTNET_TAIL_CLASS_FRACTION) * num_classes))
  if head < 1 or head >= num_classes:
    raise ValueError(f"The plantnet profile needs at least 2 classes in head and tail; got {num_classes} classes.")

  def tail_fraction(a):
    w = ranks ** -a
    return w[head:].sum() / w.sum()

  lo, hi = 0.0, 20.0  # tail_fraction decreases from 0.8 (a = 0) towards 0
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if tail_fraction(mid) > PLANTNET_TAIL_IMAGE_FRACTION else (lo, mid)
  return (lo + hi) / 2


def class_counts(spec: SyntheticSpec) -> np.ndarray:
  """Training examples per class (int64 `[L]`, class 0 the most frequent, `n_0 = max_count`).

  `exp`, `step`: the LDAM-DRW profiles of `noised_topk_jax.long_tailed_counts` with `imbalance_ratio`; `power`:
  `round(max_count * (1 + y)^-a)` with `a = log(imbalance_ratio) / log(L)` (so `n_{L-1} = max_count / ratio`);
  `plantnet`: the same power law with `a = plantnet_exponent(L)` (`imbalance_ratio` ignored).
  """
  num_classes, profile = spec.num_classes, spec.imbalance_profile
  if profile in ("exp", "step"):
    import noised_topk_jax as ntk  # pylint: disable=g-import-not-at-top  (keeps `import config` free of JAX)
    try:
      counts = ntk.long_tailed_counts(num_classes, max_count=spec.max_count, imbalance_ratio=spec.imbalance_ratio,
                                      profile=profile)
    except ValueError:  # classes left empty: said below in terms of the flags
      counts = np.zeros(num_classes)
  else:
    a = plantnet_exponent(num_classes) if profile == "plantnet" else math.log(spec.imbalance_ratio) / math.log(
        num_classes)
    counts = np.round(spec.max_count * np.arange(1, num_classes + 1, dtype=np.float64) ** -a)
  counts = np.asarray(counts, np.int64)
  if counts.min() < 1:
    shape = "" if profile == "plantnet" else f" with imbalance_ratio {spec.imbalance_ratio}"
    raise ValueError(f"`{FLAG_NAMES['max_count']}`={spec.max_count} leaves the rarest classes of the {profile} "
                     f"profile{shape} over {num_classes} classes with no training example (every class needs at "
                     f"least one); raise it{'' if profile == 'plantnet' else ' or lower the ratio'}.")
  return counts
