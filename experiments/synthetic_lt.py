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

from experiments import synthetic_lt_spec

# The settings and the class counts they imply (experiments/synthetic_lt_spec.py), under the generator's name too.
SyntheticSpec = synthetic_lt_spec.SyntheticSpec
PROFILES = synthetic_lt_spec.PROFILES
check_spec = synthetic_lt_spec.check_spec
class_counts = synthetic_lt_spec.class_counts
plantnet_exponent = synthetic_lt_spec.plantnet_exponent
SPLITS = ("train", "val", "test")


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
  per_class = synthetic_lt_spec.check_int(per_class, "per_class", 1)
  stream = synthetic_lt_spec.check_int(stream, "stream", 10)
  rng = np.random.default_rng([data.spec.seed, stream])
  y = np.repeat(np.arange(data.spec.num_classes), per_class)
  y = y[rng.permutation(len(y))]
  z = _class_latents(rng, data.means, y)
  return apply_map(data.observation_map, z).astype(np.float32), y.astype(np.int32), z
