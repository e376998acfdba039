"""Grids of presets x seeds, named after the tables they reproduce (used by `experiments.reproduce`).

A grid is a list of `Run`s (a preset, a seed, and the table cells the run fills) plus the table's layout: rows
(methods), settings (column groups: datasets or imbalance profiles), the K of the columns, the metric (macro-average
top-K accuracy or top-1 error, in %) and the papers' figures to print beside the measured ones.

- `plantnet_table`: the noised top-K paper's Pl@ntNet-300K table (6 losses, K = 1, 3, 5, ResNet-50). Model
  selection is on validation macro-average top-K, so every (loss, K) cell is its own run with `selection_k=K`; the
  top-K losses also train with `k=K`.
- `mm_table1`: Table 1 of the MM paper (11 methods x CIFAR-10/100-LT x exp/step x rho 100/10, ResNet-32): top-1 error
  of the best test epoch (the LDAM-DRW/MM protocol).
- `fashion_mnist_lt`: every loss of the library on long-tailed Fashion-MNIST (exp rho 100, step rho 10), K = 1, 2, 3;
  it runs on a CPU (experiments/configs/fashion_mnist_lt.py).
- `synthetic_lt`: every loss of the library on the generated 100-class problem with an exact Bayes optimum
  (experiments/synthetic_lt.py), K = 1, 3, 5, with each method's regret; it runs on a CPU
  (experiments/configs/synthetic_lt.py).
- `fashion_mnist_lt_converged`: the rows of `fashion_mnist_lt` that issue 19 names (exp rho = 100) trained 10x longer.
- `synthetic_lt_fit`, `synthetic_lt_pretrained`: the same table in other regimes of the same problem (issue 19):
  trained until cross-entropy fits its training labels, and fine-tuned from hidden layers pretrained on a balanced
  draw of the generator (`REGIMES` in experiments/configs/synthetic_lt.py).
"""
import dataclasses
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

from experiments import config as config_lib
from experiments import configs
from experiments.configs import cifar_lt
from experiments.configs import fashion_mnist_lt
from experiments.configs import synthetic_lt


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a grid: `preset` with `seed`, filling the cells (row, setting, K) for K in `ks`."""
  name: str
  preset: str
  seed: int
  row: str
  setting: str
  ks: Tuple[int, ...]
  config: config_lib.Config
  overrides: Tuple[Tuple[str, object], ...] = ()  # Flags beyond the preset (besides --seed), in command form.


@dataclasses.dataclass(frozen=True)
class Grid:
  name: str
  description: str
  rows: Dict[str, str]  # row key -> label, in table order
  settings: Dict[str, str]  # setting key -> column-group label, in table order
  ks: Tuple[int, ...]
  metric: str  # "macro_topk" (accuracy, %) or "top1_error" (%)
  make_runs: Callable[[Sequence[int]], list]
  paper: Dict[Tuple[str, str, int], float]  # (row, setting, K) -> the paper's figure (%)
  data_flags: str  # What the user must add to run it for real (data location, weights).
  default_seeds: Tuple[int, ...] = (0, 1, 2)
  claims: Optional[Callable] = None  # cells -> markdown lines (fashion_mnist_lt, synthetic_lt)
  bayes: bool = False  # The runs report the exact Bayes optimum (synthetic_lt): regret tables and bucket plots.
  notes: Tuple[str, ...] = ()  # Markdown lines printed under the table: protocol choices to know when reading it.

  def runs(self, seeds: Sequence[int]):
    return self.make_runs(tuple(seeds))


def _run(preset, seed, row, setting, ks, **overrides):
  config = configs.get_preset(preset).config.replace(seed=seed, **overrides)
  config_lib.validate(config, explicitly_set=set(overrides))
  extra = "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
  name = f"{preset}{'_' + extra if extra else ''}_seed{seed}"
  return Run(name=name, preset=preset, seed=seed, row=row, setting=setting, ks=tuple(ks), config=config,
             overrides=tuple(sorted(overrides.items())))


# --- Pl@ntNet-300K (noised top-K paper) -----------------------------------------------------------------------------
_PLANTNET_ROWS = {"ce": "Cross-entropy", "smooth_svm": "Smooth top-K SVM (tau 0.1)",
                  "noised_balanced": "Noised top-K, balanced (eps 1, B 5)", "focal": "Focal (gamma 2)",
                  "ldam": "LDAM (max m 0.2)", "noised_imbalanced": "Noised top-K, imbalanced (eps 0.01, B 5, max m 0.2)"}
_PLANTNET_PAPER = {"ce": (36.3, 58.8, 68.7), "smooth_svm": (35.7, 50.3, 50.9), "noised_balanced": (35.8, 58.7, 66.4),
                   "focal": (37.6, 60.4, 69.7), "ldam": (40.6, 63.3, 71.9),
                   "noised_imbalanced": (42.4, 64.9, 73.2)}
_PLANTNET_KS = (1, 3, 5)


def _plantnet_runs(seeds):
  runs = []
  for row in _PLANTNET_ROWS:
    takes_k = row in config_lib.LOSS_HYPERPARAMETERS["k"]
    for k in _PLANTNET_KS:
      for seed in seeds:
        changes = {"selection_k": k}
        if takes_k and k != 5:  # The presets train with k = 5 (the released commands).
          changes["k"] = k
        runs.append(_run(f"plantnet_{row}", seed, row, "plantnet300k", (k,), **changes))
  return runs


# --- CIFAR-LT, MM paper Table 1 ---------------------------------------------------------------------------------------
def _cifar_setting(column):
  dataset, profile, ratio = column
  return f"{dataset}_{profile}{ratio}"


def _cifar_label(column):
  dataset, profile, ratio = column
  return f"{'CIFAR-10' if dataset == 'cifar10_lt' else 'CIFAR-100'} {profile} {ratio}"


def _mm_runs(seeds):
  return [_run(cifar_lt.preset_name(column, method), seed, method, _cifar_setting(column), (1,))
          for column in cifar_lt.COLUMNS for method in cifar_lt.PAPER_TOP1_ERROR for seed in seeds]


# --- Long-tailed Fashion-MNIST ----------------------------------------------------------------------------------------
def _fashion_runs(seeds, converged=False):
  # Seeds outermost: a grid stopped early still has whole seeds.
  return [_run(preset, seed, method, setting, (k,) if k else fashion_mnist_lt.KS)
          for seed in seeds for preset, setting, method, k in fashion_mnist_lt.runs(converged)]


def _fashion_claims(cells, converged=False):
  from experiments import aggregate  # pylint: disable=g-import-not-at-top
  return aggregate.fashion_claims(cells, converged)


# --- synthetic_lt -----------------------------------------------------------------------------------------------------
def _synthetic_runs(seeds, regime="underfit", settings=synthetic_lt.GRID_SETTINGS):
  return [_run(preset, seed, method, setting, (k,) if k else synthetic_lt.KS)
          for seed in seeds for preset, setting, method, k in synthetic_lt.runs(settings, regime=regime)]


def _synthetic_claims(cells, settings=synthetic_lt.GRID_SETTINGS):
  from experiments import aggregate  # pylint: disable=g-import-not-at-top
  return aggregate.paper_claims(cells, aggregate.ClaimGroups(
      labels={m: label for m, (label, _, _) in synthetic_lt.METHODS.items()}, balanced=synthetic_lt.BALANCED,
      imbalanced=synthetic_lt.IMBALANCED, logit_adjusted=synthetic_lt.LOGIT_ADJUSTED,
      settings=tuple(settings), ks=synthetic_lt.KS))


GRIDS = {
    "plantnet_table": Grid(
        name="plantnet_table",
        description="Pl@ntNet-300K, ResNet-50 pretrained on ImageNet: test macro-average top-K accuracy (%), "
                    "model selected on validation macro top-K (noised top-K paper).",
        rows=_PLANTNET_ROWS, settings={"plantnet300k": "Pl@ntNet-300K"}, ks=_PLANTNET_KS, metric="macro_topk",
        make_runs=_plantnet_runs,
        paper={(row, "plantnet300k", k): v for row, vals in _PLANTNET_PAPER.items()
               for k, v in zip(_PLANTNET_KS, vals)},
        data_flags="--data_dir=PLANTNET_300K_DIR --pretrained_weights=resnet50_imagenet.npz",
        notes=("- One run per (loss, K) with `selection_k=K`; the top-K losses also train with `k=K` (the released "
               "commands use K = 5).",)),
    "mm_table1": Grid(
        name="mm_table1",
        description="CIFAR-10/100-LT, ResNet-32: top-1 test error (%) of the best test epoch (the test set doubles as "
                    "validation, as in the LDAM-DRW/MM protocol) (MM paper, Table 1).",
        rows=dict(cifar_lt.METHOD_LABELS), settings={_cifar_setting(c): _cifar_label(c) for c in cifar_lt.COLUMNS},
        ks=(1,), metric="top1_error", make_runs=_mm_runs,
        paper={(method, _cifar_setting(c), 1): errors[i] for method, errors in cifar_lt.PAPER_TOP1_ERROR.items()
               for i, c in enumerate(cifar_lt.COLUMNS)},
        data_flags="--data_dir=TFDS_DATA_DIR"),
    "fashion_mnist_lt": Grid(
        name="fashion_mnist_lt",
        description="Long-tailed Fashion-MNIST, small CNN, last epoch: test macro-average top-K accuracy (%) "
                    "(balanced test set, so equal to top-K accuracy).",
        rows={m: label for m, (label, _, _) in fashion_mnist_lt.METHODS.items()},
        settings={name: f"{profile} rho={ratio}" for name, profile, ratio in fashion_mnist_lt.SETTINGS},
        ks=fashion_mnist_lt.KS, metric="macro_topk", make_runs=_fashion_runs, paper={}, data_flags="",
        claims=_fashion_claims,
        notes=(
            f"- Protocol: every run trains {fashion_mnist_lt.EPOCHS} epochs at lr {fashion_mnist_lt.LEARNING_RATE} "
            f"(x0.1 at epochs {', '.join(map(str, fashion_mnist_lt.LR_DECAY_EPOCHS))}; DRW from epoch "
            f"{fashion_mnist_lt.LR_DECAY_EPOCHS[0]}), values tuned once for cross-entropy on validation "
            "([tuning.md](tuning.md)); the last epoch's model is tested once. Loss-specific values, and why the "
            "imbalanced noised loss uses epsilon 0.1 instead of the paper's 0.01: "
            "`experiments/configs/fashion_mnist_lt.py`.",
            "- Top-K losses (top-K hinge, smooth SVM, both noised losses) train one model per K: their column K is "
            "the model trained with that K. The other losses train one model, read at K = 1, 2, 3.",
            "- Seeds change the initialization, the batch order and the loss's noise; the long-tailed subset is the "
            "same for all (subset seed 0). Exp rho = 100: 5,500 down to 55 images per class (13,646); step "
            "rho = 10: five classes of 5,500 and five of 550 (30,250). Test: the balanced 10,000 test images.",
        )),
    "synthetic_lt": Grid(
        name="synthetic_lt",
        description="Generated 100-class long-tailed problem with an exact Bayes optimum (experiments/synthetic_lt.py), "
                    "MLP, last epoch: test macro-average top-K accuracy (%) on a balanced test set (100 per class) "
                    "and the regret, Bayes-optimal minus the method, in points.",
        rows={m: label for m, (label, _, _) in synthetic_lt.METHODS.items()},
        settings={s: synthetic_lt.SETTINGS[s][0] for s in synthetic_lt.GRID_SETTINGS}, ks=synthetic_lt.KS,
        metric="macro_topk", make_runs=_synthetic_runs, paper={}, data_flags="", claims=_synthetic_claims, bayes=True,
        notes=(
            f"- Protocol: every run trains an MLP for {synthetic_lt.EPOCHS} epochs at lr {synthetic_lt.LEARNING_RATE} "
            f"(x0.1 at epochs {', '.join(map(str, synthetic_lt.LR_DECAY_EPOCHS))}; DRW from epoch "
            f"{synthetic_lt.LR_DECAY_EPOCHS[0]}); the last epoch's model is tested once. Loss hyperparameters: "
            "`experiments/configs/synthetic_lt.py`.",
            "- Data: 100 classes in 10 genera of 10 (confusable within a genus), exp profile rho = 100 (500 down to 5 "
            "training examples per class, 10,847 in all), latent and observation dimension 8, observations an "
            "invertible nonlinear map of the latent; 100 test examples per class. The same data for every run "
            "(generator seed 0); seeds change the initialization, the batch order and the loss's noise.",
            "- Top-K losses train one model per K: their column K is the model trained with that K.",
            "- Bayes rows: the exact class likelihood is the best possible classifier for macro top-K (a uniform "
            "prior); the exact posterior (with the training prior) is what a perfectly fitted, uncorrected "
            "cross-entropy model would converge to. Regret = Bayes likelihood row - method; its ± is the method's "
            "std over seeds (the Bayes figure is fixed).",
        )),
}


_FASHION = GRIDS["fashion_mnist_lt"]
GRIDS["fashion_mnist_lt_converged"] = dataclasses.replace(
    _FASHION, name="fashion_mnist_lt_converged",
    description=_FASHION.description.replace("small CNN, last epoch", "small CNN trained to convergence, last epoch"),
    rows={m: _FASHION.rows[m] for m in fashion_mnist_lt.CONVERGED_METHODS},
    settings={s: f"{_FASHION.settings[s]}, {fashion_mnist_lt.CONVERGED_EPOCHS} epochs"
              for s in fashion_mnist_lt.CONVERGED_SETTINGS},
    make_runs=functools.partial(_fashion_runs, converged=True),
    claims=functools.partial(_fashion_claims, converged=True),
    notes=(f"- Protocol (convergence): every run trains {fashion_mnist_lt.CONVERGED_EPOCHS} epochs, 10x the "
           f"`fashion_mnist_lt` grid's, at lr {fashion_mnist_lt.LEARNING_RATE} (x0.1 at epochs "
           f"{', '.join(map(str, fashion_mnist_lt.CONVERGED_LR_DECAY_EPOCHS))}, the same fractions of training; DRW "
           f"from epoch {fashion_mnist_lt.CONVERGED_LR_DECAY_EPOCHS[0]}); everything else, loss hyperparameters "
           "included, as in that grid ([../fashion_mnist_lt/table.md](../fashion_mnist_lt/table.md)); the last "
           "epoch's model is tested once. The rows of issue 19: does each verdict of the 10-epoch grid survive "
           "training until the models fit their training data (train fit column)?",) + _FASHION.notes[1:])


def _synthetic_regime_grid(regime: str, protocol: str, setting: str = "lt100") -> Grid:
  """`synthetic_lt`'s table, rows, claims and Bayes rows for the runs of another regime (or setting) of the problem."""
  base = GRIDS["synthetic_lt"]
  name = f"synthetic_lt_{regime}" if setting == "lt100" else f"synthetic_{setting}_{regime}"
  description = base.description.replace(", MLP, last epoch", f", MLP in the {regime} regime, last epoch")
  notes, claims = base.notes[1:], base.claims
  if setting != "lt100":
    test_per_class = synthetic_lt.SETTINGS[setting][1]["synthetic_test_per_class"]
    description = description.replace("Generated 100-class long-tailed problem",
                                      "Generated 1,081-class problem with Pl@ntNet-300K's tail").replace(
                                          "(100 per class)", f"({test_per_class} per class)")
    notes = (_PLANTNET1081_DATA,) + notes[1:]
    claims = functools.partial(_synthetic_claims, settings=(setting,))
  return dataclasses.replace(
      base, name=name, description=description,
      settings={setting: f"{synthetic_lt.SETTINGS[setting][0]}, {regime} regime"},
      make_runs=functools.partial(_synthetic_runs, regime=regime, settings=(setting,)), claims=claims,
      notes=(protocol,) + notes)


_PLANTNET1081_DATA = (
    "- Data: 1,081 classes in 108 genera (confusable within a genus), the `plantnet` profile: a power law from 5,000 "
    "training examples in the head class down to 1 (22,034 in all; the rarest 80 % of the classes hold 10.9 % of "
    "them, as in Pl@ntNet-300K), latent and observation dimension 8; 20 validation and 20 test examples per class. "
    "The same data for every run (generator seed 0); seeds change the initialization, the pretraining draw's order, "
    "the batch order and the loss's noise.")


def _pretrained_protocol(setting="lt100"):
  lr = synthetic_lt.method_config(setting, "ce", regime="pretrained").learning_rate
  return (
      f"- Protocol (pretrained regime): for each seed, the MLP's hidden layers are first trained with cross-entropy "
      f"on {synthetic_lt.PRETRAIN_EXAMPLES_PER_CLASS} examples per class of a balanced draw of the same generator "
      f"(examples disjoint from train / val / test; {synthetic_lt.PRETRAIN_EPOCHS} epochs at lr "
      f"{synthetic_lt.PRETRAIN_LEARNING_RATE}; `experiments/pretraining.py`), once, shared by every loss of that "
      f"seed; each run then fine-tunes them with its loss and a fresh head for {synthetic_lt.EPOCHS} epochs at lr "
      f"{lr} (x0.1 at epochs {', '.join(map(str, synthetic_lt.LR_DECAY_EPOCHS))}; DRW from epoch "
      f"{synthetic_lt.LR_DECAY_EPOCHS[0]}), as Pl@ntNet-300K's ResNet-50 fine-tunes ImageNet features; the "
      f"fine-tuning lr was {'chosen on the validation split' if setting != 'lt100' else 'set once, not searched'} "
      "([regimes_protocols.md](../regimes_protocols.md)); the last epoch's model is tested once. Loss "
      "hyperparameters: `experiments/configs/synthetic_lt.py`.")


def _fit_protocol(setting="lt100"):
  config = synthetic_lt.method_config(setting, "ce", regime="fit")
  return (
      f"- Protocol (fit regime): every run trains an MLP of {' x '.join(map(str, config.mlp_widths))} hidden units "
      f"for {config.epochs} epochs at lr {config.learning_rate} without weight decay (x0.1 at epochs "
      f"{', '.join(map(str, config.lr_decay_epochs))}; DRW from epoch {config.drw_start_epoch}), chosen so that "
      "cross-entropy fits at least 95 % of its training labels ([regimes_protocols.md](../regimes_protocols.md)); the "
      "last epoch's model is tested once. Loss hyperparameters: `experiments/configs/synthetic_lt.py`.")


GRIDS["synthetic_lt_fit"] = _synthetic_regime_grid("fit", _fit_protocol())
GRIDS["synthetic_lt_pretrained"] = _synthetic_regime_grid("pretrained", _pretrained_protocol())
GRIDS["synthetic_plantnet1081_pretrained"] = _synthetic_regime_grid(
    "pretrained", _pretrained_protocol("plantnet1081"), setting="plantnet1081")
GRIDS["synthetic_plantnet1081_fit"] = _synthetic_regime_grid("fit", _fit_protocol("plantnet1081"),
                                                             setting="plantnet1081")


def get_grid(name: str) -> Grid:
  if name not in GRIDS:
    raise ValueError(f"Unknown `grid` {name!r}; choose one of {sorted(GRIDS)}.")
  return GRIDS[name]
