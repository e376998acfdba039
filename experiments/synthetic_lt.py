r"""A many-class long-tailed classification problem whose Bayes-optimal classifier is known exactly.

`generate(spec)` draws, deterministically from `spec.seed`, a dataset shaped like Pl@ntNet-300K's problem: many
classes that are confusable within families ("genera"), a long-tailed class prior, and observations that are a
nonlinear function of a Gaussian latent, so that a model must learn the map while the optimal scores stay exact.

The generative model (`d = latent_dim`, `L = num_classes`, `G = num_genera`):

- every class `y` belongs to genus `g(y)`; the genera hold `L / G` classes each (the remainder spread one per genus)
  and are filled by a random permutation of the classes, so head and tail classes mix within a genus;
- genus centres `c_g ~ N(0, genus_spread^2 I_d)`, class means `mu_y = c_{g(y)} + N(0, species_spread^2 I_d)`:
  classes of a genus are close to each other (confusable), genera far apart;
- class prior `pi_y = n_y / sum_c n_c`, where `n_y` are the training counts of `class_counts(spec)` (class 0 is the
  most frequent); the training split holds exactly `n_y` examples of class `y`, so its class frequencies are the
  prior; the validation and test splits are balanced (`validation_per_class`, `test_per_class` per class);
- latent `z | y ~ N(mu_y, I_d)` (shared isotropic covariance);
- observation `x = f(z)`: `map_layers` layers `h <- leaky_relu(Q_l h + b_l)` (random orthogonal `Q_l`, slope
  `negative_slope`) then `x = Q_out h + b_out`, and a fixed standardization. Each step is invertible, so `f` is a
  bijection of R^d (`invert_map` is its inverse).

Why the scores are exact: since `f` is a bijection, `p(x | y) = p_z(f^{-1}(x) | y) |det J_{f^{-1}}(x)|`, and the
Jacobian factor is the same for every class. So with `z = f^{-1}(x)`:

- the **posterior** `p(y | x) = softmax_y(log pi_y - ||z - mu_y||^2 / 2)` is optimal for top-K accuracy under the
  training prior (the K classes of largest posterior maximize the probability that the label is among them);
- the **class likelihood** `log p(x | y) = -||z - mu_y||^2 / 2 + const` (no prior) is optimal for *macro-average*
  top-K accuracy, the papers' metric: macro top-K is `(1 / L) sum_y P(y in T(x) | y) = integral of
  sum_{y in T(x)} p(x | y) / L dx`, maximized point-wise by the K classes of largest likelihood, i.e. the Bayes
  classifier of the same problem with a uniform prior.

`Synthetic.bayes_scores(split, kind)` returns either score for every example of a split (computed from the latent,
which the generator keeps; the model only sees `x`). The test split is balanced and large (default 100 per class), so
each class's accuracy has a binomial standard error of at most 5 points and a macro average over 100 classes about
0.5 points; the Bayes figures are measured on the same test examples as the models, so a regret is a paired
difference.

Nothing is downloaded; the data of a `spec` is the same on every machine (NumPy's PCG64 with seeds derived from
`spec.seed`).
"""
import dataclasses
import math
from typing import Dict, Tuple

import numpy as np

PROFILES = ("exp", "step", "power", "plantnet")
# Pl@ntNet-300K: the rarest 80 % of the species hold 11 % of the images (Garcin et al., NeurIPS 2021 datasets track).
PLANTNET_TAIL_CLASS_FRACTION = 0.8
PLANTNET_TAIL_IMAGE_FRACTION = 0.11
SPLITS = ("train", "val", "test")


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


def _check_int(value, name, minimum):
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
  _check_int(spec.num_classes, n["num_classes"], 2)
  _check_int(spec.num_genera, n["num_genera"], 1)
  if spec.num_genera > spec.num_classes:
    raise ValueError(f"`{n['num_genera']}`={spec.num_genera} exceeds `{n['num_classes']}`={spec.num_classes}: "
                     "every genus needs at least one class.")
  _check_int(spec.latent_dim, n["latent_dim"], 1)
  _check_positive(spec.genus_spread, n["genus_spread"], allow_zero=True)
  _check_positive(spec.species_spread, n["species_spread"], allow_zero=True)
  _check_int(spec.max_count, n["max_count"], 1)
  if spec.imbalance_profile not in PROFILES:
    raise ValueError(f"`{n['imbalance_profile']}` must be one of {PROFILES} for the synthetic dataset, got "
                     f"{spec.imbalance_profile!r}.")
  if not (isinstance(spec.imbalance_ratio, (int, float, np.integer, np.floating)) and np.isfinite(spec.imbalance_ratio)
          and spec.imbalance_ratio >= 1):
    raise ValueError(f"`{n['imbalance_ratio']}` must be a finite number >= 1, got {spec.imbalance_ratio!r}.")
  _check_int(spec.validation_per_class, n["validation_per_class"], 0)
  _check_int(spec.test_per_class, n["test_per_class"], 1)
  _check_int(spec.map_layers, n["map_layers"], 0)
  slope = _check_positive(spec.negative_slope, n["negative_slope"])
  if slope > 1:
    raise ValueError(f"`{n['negative_slope']}` must be in (0, 1], got {spec.negative_slope!r}.")
  _check_int(spec.seed, n["seed"], 0)
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


@dataclasses.dataclass(frozen=True)
class _Map:
  """The invertible observation map `f`: layers (Q, b) with leaky ReLU, an output layer, a standardization."""
  layers: Tuple[Tuple[np.ndarray, np.ndarray], ...]
  output: Tuple[np.ndarray, np.ndarray]
  slope: float
  mean: np.ndarray
  std: np.ndarray


def _orthogonal(rng, d):
  q, r = np.linalg.qr(rng.standard_normal((d, d)))
  return q * np.sign(np.diag(r))  # Haar-distributed


def _raw_map(m: _Map, z):
  h = z
  for q, b in m.layers:
    h = h @ q.T + b
    h = np.where(h >= 0, h, m.slope * h)
  return h @ m.output[0].T + m.output[1]


def apply_map(m: _Map, z: np.ndarray) -> np.ndarray:
  """`x = f(z)` for latent rows `z` `[N, d]` (float64)."""
  return (_raw_map(m, z) - m.mean) / m.std


def invert_map(m: _Map, x: np.ndarray) -> np.ndarray:
  """`z = f^{-1}(x)`."""
  h = (x * m.std + m.mean - m.output[1]) @ m.output[0]  # Q^-1 = Q^T
  for q, b in reversed(m.layers):
    h = np.where(h >= 0, h, h / m.slope)
    h = (h - b) @ q
  return h


@dataclasses.dataclass(frozen=True)
class Synthetic:
  """A generated dataset: per split the observations `x` (float32 `[N, d]`), labels and latents (float64)."""
  spec: SyntheticSpec
  genus: np.ndarray  # [L] genus of each class
  means: np.ndarray  # [L, d] class means in latent space
  train_class_counts: np.ndarray  # [L]
  observation_map: _Map
  x: Dict[str, np.ndarray]
  labels: Dict[str, np.ndarray]
  latents: Dict[str, np.ndarray]

  @property
  def prior(self) -> np.ndarray:
    return self.train_class_counts / self.train_class_counts.sum()

  def bayes_scores(self, split: str, kind: str = "likelihood") -> np.ndarray:
    """Exact Bayes-optimal class scores `[N, L]` of every example of `split`: `"likelihood"` (log p(x | y) up to a
    per-example constant; optimal for macro-average top-K) or `"posterior"` (log p(y | x); optimal for top-K
    accuracy under the training prior)."""
    if kind not in ("likelihood", "posterior"):
      raise ValueError(f"`kind` must be 'likelihood' or 'posterior', got {kind!r}.")
    z = self.latents[split]
    sq = (np.sum(z**2, 1, keepdims=True) - 2 * z @ self.means.T + np.sum(self.means**2, 1)[None, :])
    scores = -0.5 * sq
    if kind == "posterior":
      scores = scores + np.log(self.prior)[None, :]
      scores = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
    return scores


def _class_latents(rng, means, labels):
  return means[labels] + rng.standard_normal((len(labels), means.shape[1]))


def generate(spec: SyntheticSpec) -> Synthetic:
  """Draws the dataset of `spec` (see the module docstring); the same `spec` always gives the same arrays."""
  check_spec(spec)
  num_classes, d = spec.num_classes, spec.latent_dim
  rng = lambda tag: np.random.default_rng([spec.seed, tag])
  structure = rng(0)
  genus = np.empty(num_classes, np.int64)
  genus[structure.permutation(num_classes)] = np.arange(num_classes) % spec.num_genera
  centres = spec.genus_spread * structure.standard_normal((spec.num_genera, d))
  means = centres[genus] + spec.species_spread * structure.standard_normal((num_classes, d))
  counts = class_counts(spec)
  per_split = {"train": counts, "val": np.full(num_classes, spec.validation_per_class),
               "test": np.full(num_classes, spec.test_per_class)}
  labels, latents = {}, {}
  for i, split in enumerate(SPLITS):
    split_rng = rng(1 + i)
    y = np.repeat(np.arange(num_classes), per_split[split])
    y = y[split_rng.permutation(len(y))]
    labels[split] = y.astype(np.int32)
    latents[split] = _class_latents(split_rng, means, y)
  map_rng = rng(9)
  scale = math.sqrt(spec.genus_spread**2 + spec.species_spread**2 + 1.0)
  layers = []
  for _ in range(spec.map_layers):
    # Biases of the latent's scale put the kinks of the leaky ReLU inside the data cloud.
    layers.append((_orthogonal(map_rng, d), 0.5 * scale * map_rng.standard_normal(d)))
  output = (_orthogonal(map_rng, d), map_rng.standard_normal(d))
  unscaled = _Map(layers=tuple(layers), output=output, slope=float(spec.negative_slope), mean=np.zeros(d),
                  std=np.ones(d))
  raw_train = _raw_map(unscaled, latents["train"])
  m = dataclasses.replace(unscaled, mean=raw_train.mean(0), std=raw_train.std(0) + 1e-12)
  x = {split: apply_map(m, latents[split]).astype(np.float32) for split in SPLITS}
  return Synthetic(spec=spec, genus=genus, means=means, train_class_counts=counts, observation_map=m, x=x,
                   labels=labels, latents=latents)


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Whether each label is among the k largest scores of its row (ties broken towards the lower class index)."""
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.any(order == labels[:, None], axis=1)


def per_class_topk(scores: np.ndarray, labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
  """Each class's top-k accuracy `[L]` (float64)."""
  hits = topk_hits(scores, labels, k)
  return np.bincount(labels, weights=hits, minlength=num_classes) / np.bincount(labels, minlength=num_classes)


def macro_topk(scores: np.ndarray, labels: np.ndarray, k: int, num_classes: int) -> float:
  """Macro-average top-k accuracy: the mean over classes of each class's top-k accuracy."""
  return float(per_class_topk(scores, labels, k, num_classes).mean())


def balanced_draw(data: Synthetic, per_class: int, *, stream: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`per_class` fresh examples of every class of `data`'s problem: observations (float32 `[L * per_class, d]`, the
  same map `f` and standardization as `data.x`), labels (int32, shuffled) and latents (float64).

  The draw uses the random stream `np.random.default_rng([spec.seed, stream])`. `generate` uses streams 0 (classes,
  genera, means), 1-3 (train, val, test) and 9 (the map); `stream` must be another one (>= 10), so the draw is
  statistically independent of every split while it shares the classes, their means and `f`.
  """
  per_class = _check_int(per_class, "per_class", 1)
  stream = _check_int(stream, "stream", 10)
  rng = np.random.default_rng([data.spec.seed, stream])
  y = np.repeat(np.arange(data.spec.num_classes), per_class)
  y = y[rng.permutation(len(y))]
  z = _class_latents(rng, data.means, y)
  return apply_map(data.observation_map, z).astype(np.float32), y.astype(np.int32), z
