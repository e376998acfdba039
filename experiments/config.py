"""The training configuration: one flat, typed record, validated before anything runs.

Presets (`experiments/configs/`) build a `Config`; command-line flags override single fields; `validate` rejects
unknown values and inconsistent combinations with a message naming the field.
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np

from experiments import image_folder
from experiments import synthetic_lt_spec
from experiments import weights_format

DATASETS = ("fashion_mnist_lt", "cifar10_lt", "cifar100_lt", "plantnet300k", "image_folder", "synthetic_lt")
# Read through TFDS, which downloads them on first use unless `tfds_download` is off (CIFAR always; Fashion-MNIST when
# no IDX files are found). The folder datasets and synthetic_lt are never downloaded.
TFDS_DATASETS = ("fashion_mnist_lt", "cifar10_lt", "cifar100_lt")
# Folder-per-class trees of images (experiments/image_folder.py): the training split is used as it is (no long-tailed
# subset), and the images are cropped to `image_size`, by default DEFAULT_IMAGE_SIZE: Pl@ntNet's 224 (the ResNet-50
# of the paper); image_folder's 32, small RGB images, which the default model (the small CNN of the default job,
# sized for a CPU) takes as it takes Fashion-MNIST's 28x28; model=resnet32, CIFAR-LT's network, is made for 32x32
# too and is the stronger choice on a GPU.
FOLDER_DATASETS = ("plantnet300k", "image_folder")
DEFAULT_IMAGE_SIZE = {"plantnet300k": 224, "image_folder": 32}
LOSSES = ("ce", "focal", "ldam", "mm", "mm_ldam", "smooth_svm", "topk_hinge", "noised_balanced", "noised_imbalanced",
          "logit_adjusted", "balanced_softmax", "vs")
# Losses that already add the log-prior offsets to the logits (so `logit_adjustment_tau` would add them twice).
LOGIT_ADJUSTED_LOSSES = ("logit_adjusted", "balanced_softmax", "vs")
# Losses whose logits are multiplied by `scale` inside the loss: logit-adjustment offsets act on the scaled logits,
# so they are divided by the scale before being added to (or subtracted from) the raw ones.
SCALED_LOSSES = ("ldam", "mm", "mm_ldam", "noised_imbalanced")
# `tau` when not set: the smooth SVM's temperature (Pl@ntNet table), the logit adjustment's temperature (Menon et al.),
# the VS loss's additive weight (the default of the VS authors' `train.py`).
DEFAULT_TAU = {"smooth_svm": 0.1, "logit_adjusted": 1.0, "vs": 1.0}
TRAIN_RULES = ("none", "reweight", "drw", "resample")
MODELS = ("cnn", "resnet32", "resnet18", "resnet50", "mlp")
_SPEC = synthetic_lt_spec.SyntheticSpec()
MODEL_SELECTIONS = ("auto", "val_macro_topk", "best_test_epoch", "last_epoch")

# Which losses read which hyperparameter: setting one for a loss that ignores it is an error, not a silent no-op.
LOSS_HYPERPARAMETERS = {
    "k": ("smooth_svm", "topk_hinge", "noised_balanced", "noised_imbalanced"),
    "epsilon": ("noised_balanced", "noised_imbalanced"),
    "num_samples": ("noised_balanced", "noised_imbalanced"),
    "antithetic": ("noised_balanced", "noised_imbalanced"),
    # mm_ldam: the rarest class's LDAM margin, which lowers its delta_minus; the authors' HMMLoss fixes it at 0.5
    # (its `max_m` is delta_minus), the MM-LDAM presets set 0.5 explicitly (the field's default is 0.2).
    "max_margin": ("ldam", "mm_ldam", "noised_imbalanced"),
    "scale": ("ldam", "mm", "mm_ldam", "noised_imbalanced"),
    "gamma": ("focal",),
    "tau": ("smooth_svm", "logit_adjusted", "vs"),
    "vs_gamma": ("vs",),
    "svm_alpha": ("smooth_svm",),
    "mm_delta_minus": ("mm", "mm_ldam"),
    "mm_beta": ("mm", "mm_ldam"),
    "mm_reference_code_compat": ("mm", "mm_ldam"),
}


@dataclasses.dataclass(frozen=True)
class SearchRange:
  """The range `experiments.tune` searches for one field, and where the range comes from.

  `applies_to`: the losses that read the field (`"*"`: every loss); `train_rule`: the train rule that reads it
  instead; `when_set`: searched only where the preset sets the field (to a nonzero value), e.g. the LA offsets added to
  another loss. `fraction_of_epochs`: the range is a fraction of the run's `epochs`, rounded to a whole epoch.
  """
  field: str
  low: float
  high: float
  log: bool
  source: str
  applies_to: Tuple[str, ...] = ()
  train_rule: Optional[str] = None
  when_set: bool = False
  fraction_of_epochs: bool = False

  def bounds(self, config: "Config") -> Tuple[float, float]:
    if self.fraction_of_epochs:
      return max(1, round(self.low * config.epochs)), min(config.epochs - 1, round(self.high * config.epochs))
    return self.low, self.high

  def on_edge(self, config: "Config", value: float, share: float = 0.05) -> Optional[str]:
    """"low" or "high" when `value` lies within `share` of the range (in log units for a log range) of a bound."""
    low, high = self.bounds(config)
    if self.fraction_of_epochs:
      return "low" if value <= low else "high" if value >= high else None
    f = np.log if self.log else (lambda x: x)
    position = (f(value) - f(low)) / (f(high) - f(low))
    return "low" if position <= share else "high" if position >= 1 - share else None


# The search space of every loss, one declaration (experiments/tune.py reads it; docs/tuning.md prints it): learning
# rate and weight decay for every loss, log scale, plus each loss's own. The number of noise samples B stays at 5 and
# K at the preset's (a study per K). Each range covers the values the papers and the authors' code use and extends
# beyond them, so that a best value on an edge means the range was too narrow (tune's report flags it).
SEARCH_SPACE = (
    SearchRange("learning_rate", 1e-3, 1.0, True, "the presets' 0.002 (Pl@ntNet fine-tuning) to 0.1 (CIFAR-LT, "
                "LDAM-DRW; synthetic_lt), about a decade beyond each end", ("*",)),
    SearchRange("weight_decay", 1e-6, 1e-2, True, "the authors' 1e-4 (noised top-K) and 2e-4 (LDAM-DRW), the "
                "presets' 5e-4; Alshammari et al. (CVPR 2022) tune it up to 5e-3 for long-tailed recognition", ("*",)),
    SearchRange("gamma", 0.0, 5.0, False, "focal loss: Lin et al.'s grid {0, 0.1, 0.2, 0.5, 1, 2, 5}; 2 in the "
                "noised top-K paper's Pl@ntNet table", ("focal",)),
    SearchRange("max_margin", 0.05, 1.0, True, "LDAM-DRW's 0.5 (CIFAR), the noised top-K paper's 0.2 (Pl@ntNet, "
                "LDAM and the imbalanced noised loss)", ("ldam", "noised_imbalanced")),
    SearchRange("scale", 5.0, 100.0, True, "LDAM-DRW's 30, the noised top-K paper's 40 (LDAM) and 60 (noised), "
                "the MM scripts' 19-30 (MM's scale is not searched)", ("ldam", "noised_imbalanced")),
    SearchRange("mm_beta", 0.5, 10.0, True, "the MM paper's ablation (1 to 1.53 on CIFAR) and its command-line "
                "default 10", ("mm", "mm_ldam")),
    SearchRange("mm_delta_minus", 0.1, 3.0, True, "the MM paper's ablation (0.6 to 2.1 on CIFAR-10, 1.29 on "
                "CIFAR-100) and its command-line default 0.5", ("mm", "mm_ldam")),
    SearchRange("tau", 0.0, 3.0, False, "logit adjustment: Menon et al.'s tau = 1; 0 is cross-entropy",
                ("logit_adjusted",)),
    SearchRange("tau", 0.0, 3.0, False, "VS loss's additive tau: the authors' CIFAR-10-LT command 1.2 (the only "
                "value their code gives), 0 removes it", ("vs",)),
    SearchRange("vs_gamma", 0.0, 0.5, False, "VS loss's multiplicative gamma: the authors' command 0.2, 0 removes "
                "it", ("vs",)),
    SearchRange("tau", 0.01, 1.0, True, "smooth top-K SVM's temperature: the Pl@ntNet table's 0.1, a decade on "
                "each side", ("smooth_svm",)),
    SearchRange("epsilon", 1e-3, 1.0, True, "noised top-K: the paper's 0.01 (imbalanced, Pl@ntNet) and 1 "
                "(balanced); the Fashion-MNIST presets' 0.1", ("noised_balanced", "noised_imbalanced")),
    SearchRange("logit_adjustment_tau", 0.0, 3.0, False, "LA offsets added to another loss: as the LA loss's tau",
                ("*",), when_set=True),
    SearchRange("drw_start_epoch", 0.3, 0.95, False, "deferred re-weighting's start, a fraction of the epochs: "
                "LDAM-DRW's 160 of 200 (0.8); the presets start it at the first learning-rate decay",
                train_rule="drw", fraction_of_epochs=True),
)
# Post-hoc logit adjustment's tau is chosen on validation after training (one training, every tau of this grid),
# not searched: Menon et al. choose it on a holdout the same way.
POSTHOC_TAUS = tuple(float(t) for t in np.round(np.arange(0.0, 3.0001, 0.25), 2))


def search_space(config: "Config") -> dict:
  """{field: SearchRange} that `experiments.tune` searches for `config`'s loss and train rule."""
  out = {}
  for entry in SEARCH_SPACE:
    if entry.train_rule is not None:
      applies = config.train_rule == entry.train_rule
    else:
      applies = "*" in entry.applies_to or config.loss in entry.applies_to
    if entry.when_set:
      applies = applies and bool(getattr(config, entry.field))
    if applies:
      out[entry.field] = entry
  return out


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of a training run. Field names are the flag names of `experiments.train`."""
  # Data.
  dataset: str = "fashion_mnist_lt"
  data_dir: Optional[str] = None
  imbalance_profile: str = "exp"
  imbalance_ratio: float = 100.0
  subset_seed: int = 0
  validation_per_class: Optional[int] = None  # None: the dataset's default.
  image_size: Optional[int] = None  # Folder datasets' crop size; None: DEFAULT_IMAGE_SIZE of the dataset.
  augment: bool = True
  tfds_download: bool = True  # TFDS_DATASETS: download what is not found locally (False: fail instead).
  # The generator of `dataset=synthetic_lt` (experiments/synthetic_lt.py; its seed is `subset_seed`).
  synthetic_num_classes: int = _SPEC.num_classes
  synthetic_num_genera: int = _SPEC.num_genera
  synthetic_dim: int = _SPEC.latent_dim
  synthetic_genus_spread: float = _SPEC.genus_spread
  synthetic_species_spread: float = _SPEC.species_spread
  synthetic_max_count: int = _SPEC.max_count
  synthetic_test_per_class: int = _SPEC.test_per_class
  synthetic_map_layers: int = _SPEC.map_layers
  synthetic_negative_slope: float = _SPEC.negative_slope
  # Loss.
  loss: str = "noised_imbalanced"
  k: int = 2
  epsilon: float = 0.1
  num_samples: int = 5
  antithetic: bool = False  # Noise drawn as B/2 antithetic pairs (B even).
  max_margin: float = 0.2
  scale: float = 60.0
  gamma: float = 2.0
  tau: Optional[float] = None  # None: DEFAULT_TAU of the loss.
  svm_alpha: float = 1.0
  mm_delta_minus: float = 0.5
  mm_beta: float = 10.0
  mm_reference_code_compat: bool = False
  vs_gamma: float = 0.3  # VS loss exponent of (n_j / n_max)^gamma (the default of the VS authors' `train.py`).
  logit_adjustment_tau: float = 0.0  # > 0: add tau * log(prior) to the logits of any other loss during training.
  posthoc_tau: float = 0.0  # > 0: evaluate with logits - tau * log(prior) (post-hoc logit adjustment).
  train_rule: str = "none"
  cb_beta: float = 0.9999
  drw_start_epoch: int = 160
  # Model.
  model: str = "cnn"
  normalized_head: bool = True
  mlp_widths: Tuple[int, ...] = (512, 512)  # Hidden layers of `model=mlp`.
  pretrained_weights: Optional[str] = None
  require_pretrained: bool = False  # The Pl@ntNet presets: refuse to start without pretrained_weights.
  # synthetic_lt's mlp: hidden layers first trained with CE on a balanced draw of the same generator, then fine-tuned
  # with the run's loss and a fresh head (experiments/pretraining.py). 0: no pretraining.
  pretrain_examples_per_class: int = 0
  pretrain_epochs: int = 30
  pretrain_learning_rate: float = 0.1
  pretrain_cache_dir: Optional[str] = None  # None: `pretrained/` beside the workdir (shared by a grid's runs).
  half_precision: bool = False
  # Optimizer and schedule (SGD with momentum, coupled weight decay, linear warm-up, step decay).
  epochs: int = 16
  batch_size: int = 128
  eval_batch_size: int = 500
  learning_rate: float = 0.2
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4
  warmup_epochs: int = 0
  lr_decay_epochs: Tuple[int, ...] = (10, 14)
  lr_decay_factor: float = 0.1
  # Evaluation, model selection, bookkeeping.
  eval_ks: Tuple[int, ...] = (1, 2, 3)
  selection_k: Optional[int] = None  # K of the validation macro top-K used for model selection; None: the loss's k.
  model_selection: str = "auto"  # `validate` resolves "auto" and selection_k=None (`_resolve_model_selection`).
  eval_every_epochs: int = 1
  checkpoint_every_epochs: int = 1
  log_every_steps: int = 50
  max_steps_per_epoch: Optional[int] = None  # Truncates epochs, for smoke tests only.
  seed: int = 0
  # Multi-host.
  distributed: bool = False
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None

  def replace(self, **changes):
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"Unknown config fields: {sorted(unknown)}.")
    return dataclasses.replace(self, **changes)

  def to_dict(self):
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}


def _one_of(config, name, allowed):
  value = getattr(config, name)
  if value not in allowed:
    raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")


def validate(config: Config, *, explicitly_set=()) -> Config:
  """Checks values and combinations; `explicitly_set` names the fields the user set (flags or preset)."""
  _one_of(config, "dataset", DATASETS)
  _one_of(config, "loss", LOSSES)
  _one_of(config, "train_rule", TRAIN_RULES)
  _one_of(config, "model", MODELS)
  _one_of(config, "model_selection", MODEL_SELECTIONS)
  from noised_topk_jax import imbalance  # pylint: disable=g-import-not-at-top  (JAX: not at import, for --help)
  _one_of(config, "imbalance_profile",
          synthetic_lt_spec.PROFILES if config.dataset == "synthetic_lt" else imbalance.PROFILES)
  _check_synthetic(config, explicitly_set)
  _check_pretraining(config, explicitly_set)
  _check_data(config, explicitly_set)
  if not config.mlp_widths or any(int(w) < 1 for w in config.mlp_widths):
    raise ValueError(f"`mlp_widths` must be a non-empty list of ints >= 1, got {config.mlp_widths}.")
  if "mlp_widths" in explicitly_set and config.model != "mlp":
    raise ValueError(f"`mlp_widths` is only used by `model=mlp`, got model={config.model!r}.")
  if (config.model == "mlp") != (config.dataset == "synthetic_lt"):
    raise ValueError(f"`model=mlp` takes the vectors of `dataset=synthetic_lt` and nothing else (the image datasets "
                     f"take cnn/resnet models); got model={config.model!r}, dataset={config.dataset!r}.")
  positive_ints = ("epochs", "batch_size", "eval_batch_size", "num_samples", "k", "eval_every_epochs",
                   "checkpoint_every_epochs", "log_every_steps")
  for name in positive_ints:
    if int(getattr(config, name)) < 1:
      raise ValueError(f"`{name}` must be >= 1, got {getattr(config, name)}.")
  for name in ("warmup_epochs", "drw_start_epoch"):
    if getattr(config, name) < 0:
      raise ValueError(f"`{name}` must be >= 0, got {getattr(config, name)}.")
  for name in ("learning_rate", "scale"):
    if not getattr(config, name) > 0:
      raise ValueError(f"`{name}` must be > 0, got {getattr(config, name)}.")
  if config.tau is not None and not (np.isfinite(config.tau) and (config.tau > 0 if config.loss == "smooth_svm"
                                                                   else config.tau >= 0)):
    bound = "> 0" if config.loss == "smooth_svm" else ">= 0"
    raise ValueError(f"`tau` must be a finite number {bound} for loss={config.loss}, got {config.tau}.")
  for name in ("epsilon", "gamma", "weight_decay", "momentum", "max_margin", "logit_adjustment_tau", "posthoc_tau"):
    if not getattr(config, name) >= 0:
      raise ValueError(f"`{name}` must be >= 0, got {getattr(config, name)}.")
  if not (np.isfinite(config.vs_gamma) and config.vs_gamma >= 0):
    raise ValueError(f"`vs_gamma` must be a finite number >= 0, got {config.vs_gamma}.")
  if config.imbalance_ratio < 1:
    raise ValueError(f"`imbalance_ratio` must be >= 1, got {config.imbalance_ratio}.")
  if not 0 <= config.cb_beta < 1:
    raise ValueError(f"`cb_beta` must be in [0, 1), got {config.cb_beta}.")
  if not 0 < config.lr_decay_factor <= 1:
    raise ValueError(f"`lr_decay_factor` must be in (0, 1], got {config.lr_decay_factor}.")
  if not config.eval_ks or any(int(k) < 1 for k in config.eval_ks):
    raise ValueError(f"`eval_ks` must be a non-empty list of ints >= 1, got {config.eval_ks}.")
  if list(config.lr_decay_epochs) != sorted(config.lr_decay_epochs):
    raise ValueError(f"`lr_decay_epochs` must be increasing, got {config.lr_decay_epochs}.")
  if config.selection_k is not None and config.selection_k not in config.eval_ks:
    raise ValueError(f"`selection_k`={config.selection_k} must be one of `eval_ks` {config.eval_ks}.")
  if config.train_rule == "drw" and config.drw_start_epoch >= config.epochs:
    raise ValueError(f"`train_rule=drw` needs `drw_start_epoch` < `epochs`; got drw_start_epoch="
                     f"{config.drw_start_epoch}, epochs={config.epochs} (re-weighting would never start).")
  if "drw_start_epoch" in explicitly_set and config.train_rule != "drw":
    raise ValueError(f"`drw_start_epoch` is only used with `train_rule=drw`, got train_rule={config.train_rule!r}.")
  if "cb_beta" in explicitly_set and config.train_rule not in ("drw", "reweight", "resample"):
    raise ValueError(f"`cb_beta` is only used with `train_rule` drw, reweight or resample, got "
                     f"{config.train_rule!r}.")
  for name, losses in LOSS_HYPERPARAMETERS.items():
    if name in explicitly_set and config.loss not in losses:
      raise ValueError(f"`{name}` is not used by `loss={config.loss}` (it is read by: {', '.join(losses)}). "
                       "Remove it or pick a loss that uses it.")
  if config.antithetic and config.num_samples % 2:
    raise ValueError(f"`antithetic` draws pairs Z, -Z: `num_samples` must be even, got {config.num_samples}.")
  if config.logit_adjustment_tau and config.loss in LOGIT_ADJUSTED_LOSSES:
    raise ValueError(f"`logit_adjustment_tau` adds the offsets that loss={config.loss} already adds; use `tau` "
                     "(logit_adjusted, vs) or leave `logit_adjustment_tau` at 0.")
  if config.pretrained_weights and config.model not in weights_format.PRETRAINABLE:
    raise ValueError(f"`pretrained_weights` needs model {' or '.join(weights_format.PRETRAINABLE)}, got "
                     f"{config.model!r}.")
  if config.distributed and (config.num_processes is None) != (config.process_id is None):
    raise ValueError("`num_processes` and `process_id` must be given together (or neither, for auto-detection).")
  return _resolve_model_selection(config)


def has_validation_split(config: Config) -> bool:
  """Whether the dataset of `config` has a validation split: Pl@ntNet-300K's official one, image_folder's when its
  data_dir has a val/ folder, the balanced split of Fashion-MNIST-LT and synthetic_lt unless
  `validation_per_class=0`; CIFAR-LT has none."""
  if config.dataset in ("cifar10_lt", "cifar100_lt"):
    return False
  if config.dataset == "image_folder":
    return config.data_dir is not None and image_folder.has_split(config.data_dir, "val")
  return config.dataset == "plantnet300k" or config.validation_per_class != 0


def _resolve_model_selection(config: Config) -> Config:
  """The one place that decides how the reported epoch is chosen: `model_selection="auto"` becomes the validation
  macro top-K when there is a validation split, else the best test epoch (the CIFAR-LT protocol); `selection_k=None`
  becomes the loss's K when it is one of `eval_ks`, else the largest of `eval_ks`. The trainer reads both fields."""
  selection = config.model_selection
  if selection == "auto":
    if has_validation_split(config):
      selection = "val_macro_topk"
    else:
      # The CIFAR-LT protocol picks the best test epoch; your own images have no protocol to follow, so without a
      # validation split their run reports its last epoch rather than an epoch chosen on the test split.
      selection = "last_epoch" if config.dataset == "image_folder" else "best_test_epoch"
  elif selection == "val_macro_topk" and not has_validation_split(config):
    if config.dataset in ("cifar10_lt", "cifar100_lt"):
      hint = " (its protocol reports the best test epoch: use best_test_epoch or last_epoch)"
    elif config.dataset == "image_folder":
      hint = f" (no val/ folder in data_dir={config.data_dir}: add val/<class>/ folders of images, or use last_epoch)"
    else:
      hint = " with validation_per_class=0"
    raise ValueError(f"`model_selection=val_macro_topk` needs a validation split; {config.dataset} has none{hint}.")
  k = config.selection_k
  if k is None:
    k = config.k if config.loss in LOSS_HYPERPARAMETERS["k"] and config.k in config.eval_ks else max(config.eval_ks)
  return config.replace(model_selection=selection, selection_k=int(k))


def synthetic_spec(config: Config) -> synthetic_lt_spec.SyntheticSpec:
  """The generator settings of `config` (`dataset=synthetic_lt`)."""
  return synthetic_lt_spec.SyntheticSpec(
      num_classes=config.synthetic_num_classes, num_genera=config.synthetic_num_genera,
      latent_dim=config.synthetic_dim, genus_spread=config.synthetic_genus_spread,
      species_spread=config.synthetic_species_spread, max_count=config.synthetic_max_count,
      imbalance_profile=config.imbalance_profile, imbalance_ratio=config.imbalance_ratio,
      validation_per_class=(_SPEC.validation_per_class if config.validation_per_class is None
                            else config.validation_per_class),
      test_per_class=config.synthetic_test_per_class, map_layers=config.synthetic_map_layers,
      negative_slope=config.synthetic_negative_slope, seed=config.subset_seed)


def _check_synthetic(config, explicitly_set):
  if config.dataset != "synthetic_lt":
    stray = sorted(n for n in explicitly_set if n.startswith("synthetic_"))
    if stray:
      raise ValueError(f"`{stray[0]}` is a setting of `dataset=synthetic_lt`, got dataset={config.dataset!r}.")
    return
  spec = synthetic_lt_spec.check_spec(synthetic_spec(config))
  if config.loss in LOSS_HYPERPARAMETERS["k"] and config.k >= spec.num_classes:
    raise ValueError(f"`k` must be < `synthetic_num_classes`={spec.num_classes} (the loss uses the (k+1)-th largest "
                     f"score), got k={config.k}.")
  if max(config.eval_ks) > spec.num_classes:
    raise ValueError(f"`eval_ks` must not exceed `synthetic_num_classes`={spec.num_classes}, got {config.eval_ks}.")


def _check_data(config, explicitly_set):
  """Data settings that the dataset would ignore, and the folder datasets' image size against the model."""
  if "tfds_download" in explicitly_set and config.dataset not in TFDS_DATASETS:
    raise ValueError(f"`tfds_download` is only used by {', '.join(TFDS_DATASETS)}: dataset={config.dataset} is "
                     "never downloaded.")
  if config.dataset not in FOLDER_DATASETS:
    return
  stray = [n for n in ("imbalance_profile", "imbalance_ratio", "subset_seed") if n in explicitly_set]
  if stray:
    raise ValueError(f"`{stray[0]}` is not used by dataset={config.dataset}: its training split is used as it is "
                     "(the class counts are those of its train/ folders).")
  size = DEFAULT_IMAGE_SIZE[config.dataset] if config.image_size is None else config.image_size
  if config.model == "cnn" and size % 4:
    raise ValueError(f"`image_size` must be a multiple of 4 for model=cnn (it halves the image twice), got {size}.")


PRETRAIN_FIELDS = ("pretrain_epochs", "pretrain_learning_rate", "pretrain_cache_dir")


def _check_pretraining(config, explicitly_set):
  n = config.pretrain_examples_per_class
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"`pretrain_examples_per_class` must be an int >= 0 (0: no pretraining), got {n!r}.")
  if not n:
    stray = sorted(f for f in PRETRAIN_FIELDS if f in explicitly_set)
    if stray:
      raise ValueError(f"`{stray[0]}` is only used with `pretrain_examples_per_class` > 0.")
    return
  if config.dataset != "synthetic_lt" or config.model != "mlp":
    raise ValueError(f"`pretrain_examples_per_class` pretrains the mlp of `dataset=synthetic_lt` on a balanced draw "
                     f"of its generator; got dataset={config.dataset!r}, model={config.model!r}.")
  if int(config.pretrain_epochs) < 1:
    raise ValueError(f"`pretrain_epochs` must be >= 1, got {config.pretrain_epochs}.")
  if not (np.isfinite(config.pretrain_learning_rate) and config.pretrain_learning_rate > 0):
    raise ValueError(f"`pretrain_learning_rate` must be a finite number > 0, got {config.pretrain_learning_rate}.")


def check_pretrained(config: Config) -> None:
  """Fails when the config asks for pretrained weights and none were given (checked when a run starts, not when a
  grid is built: the weights come from a flag)."""
  if config.require_pretrained and not config.pretrained_weights:
    raise ValueError(f"This preset fine-tunes ImageNet weights (as the paper): pass `pretrained_weights` (a .npz from "
                     f"experiments.convert_torchvision_weights), or set `require_pretrained` to false to train "
                     f"{config.model} from scratch.")


def loss_tau(config: Config) -> float:
  """The `tau` of the loss: the configured value, else the loss's default."""
  return DEFAULT_TAU.get(config.loss, 0.0) if config.tau is None else float(config.tau)


def logit_scale(config: Config) -> float:
  """The factor the loss applies to the logits (1 for unscaled losses)."""
  return float(config.scale) if config.loss in SCALED_LOSSES else 1.0
