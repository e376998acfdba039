"""The command-line flags of the binaries, generated from the `Config` dataclass in one place.

`experiments.train` defines one flag per config field (`define_config_flags()`); `experiments.reproduce` defines the
data flags it passes to every run (`define_config_flags(("data_dir", "pretrained_weights"))`). Both go through
`define_config_flags`, which defines each field once per process with the same help text and type, so the two
binaries can be imported together (the tests do). Flags default to None, meaning "the preset's value".
"""
import dataclasses
import re
import typing

from absl import flags

from experiments import config as config_lib

FLAGS = flags.FLAGS

HELP = {
    "dataset": (f"One of {config_lib.DATASETS}. image_folder: your own images, data_dir/train/<class>/*.jpg (or "
                ".jpeg, .png, any case), data_dir/test/<class>/... and optionally data_dir/val/<class>/...; the "
                "classes are the sorted folder names of train/, and their names label results.json and the "
                "per-class plot. Without val/ the last epoch is reported and average-K is not computed."),
    "data_dir": ("Dataset location: the Fashion-MNIST IDX folder or TFDS data_dir, the TFDS data_dir (CIFAR), the "
                 "Pl@ntNet-300K root or the image_folder root. Default: Fashion-MNIST from the folder of Debian's "
                 "dataset-fashion-mnist package, else from TFDS's default data dir (~/tensorflow_datasets or "
                 "$TFDS_DATA_DIR); CIFAR from TFDS's default data dir."),
    "tfds_download": ("fashion_mnist_lt, cifar10_lt, cifar100_lt: when the data is not found locally (Fashion-MNIST: "
                      "no IDX files either), download it through TFDS into its data dir on first use (needs "
                      "network; on by default). false: fail instead, with the other ways to get it. The folder "
                      "datasets and synthetic_lt are never downloaded."),
    "image_size": ("The folder datasets (image_folder, plantnet300k): side of the square crop the model sees "
                   f"(defaults: {', '.join(f'{k} {v}' for k, v in config_lib.DEFAULT_IMAGE_SIZE.items())}). "
                   "Images are resized so that their shorter side is round(image_size * 256 / 224), then cropped: "
                   "at random in training, in the centre in evaluation. A multiple of 4 for model=cnn."),
    "imbalance_profile": "Long-tailed profile of the training subset: exp or step (synthetic_lt also: power, plantnet).",
    "imbalance_ratio": "rho = n_max / n_min of the long-tailed training subset.",
    "loss": f"One of {config_lib.LOSSES}.",
    "k": "K of the top-K losses (noised, hinge, smooth SVM).",
    "epsilon": "Noise scale of the noised top-K losses.",
    "num_samples": "Monte Carlo draws B of the noised top-K losses.",
    "antithetic": "Draw the noised losses' B samples as B/2 antithetic pairs Z, -Z (B even).",
    "max_margin": "Margin of the rarest class (LDAM, MM-LDAM uses 0.5 internally, imbalanced noised).",
    "scale": "Logit scale (LDAM, MM, imbalanced noised).",
    "gamma": "Focal loss gamma.",
    "tau": ("Temperature of smooth_svm (default 0.1) or of logit_adjusted (default 1.0); the weight of the log "
            "prior in vs (default 1.0)."),
    "vs_gamma": "VS loss: exponent gamma of the per-class logit factors (n_j / n_max)^gamma (default 0.3).",
    "logit_adjustment_tau": ("Add tau * log(class prior) to the logits of the loss during training (logit adjustment "
                             "of any loss; divided by the scale for ldam/mm/noised_imbalanced). 0: off."),
    "posthoc_tau": ("Evaluate with logits - tau * log(class prior) (post-hoc logit adjustment; divided by the scale "
                    "for scaled losses). 0: off. results.json records it."),
    "mm_delta_minus": "MM loss delta^-.",
    "mm_beta": "MM loss beta (delta^+ = beta delta^-).",
    "mm_reference_code_compat": "Reproduce the released MM code's two quirks.",
    "train_rule": f"One of {config_lib.TRAIN_RULES}.",
    "model": (f"One of {config_lib.MODELS}. Default cnn: a small CNN sized for a CPU, for Fashion-MNIST's 28x28 "
              "and image_folder's 32x32 images alike; resnet32 is CIFAR-LT's network, resnet50 Pl@ntNet's."),
    "normalized_head": "Cosine (normalized) classifier head instead of a linear one.",
    "eval_ks": "The K of the reported top-K metrics, comma-separated.",
    "lr_decay_epochs": "Epochs (0-indexed) at which the learning rate is multiplied by lr_decay_factor.",
    "pretrained_weights": "A .npz of ImageNet weights made by experiments.convert_torchvision_weights.",
    "max_steps_per_epoch": "Truncate every epoch (smoke tests only).",
    "synthetic_num_classes": "synthetic_lt: number of classes L.",
    "synthetic_num_genera": "synthetic_lt: number of genera (families of confusable classes).",
    "synthetic_dim": "synthetic_lt: dimension of the latent Gaussian and of the observations.",
    "synthetic_genus_spread": "synthetic_lt: std of the genus centres (per dimension).",
    "synthetic_species_spread": "synthetic_lt: std of a class mean around its genus centre.",
    "synthetic_max_count": "synthetic_lt: training examples of the most frequent class.",
    "synthetic_test_per_class": "synthetic_lt: test examples per class (balanced test split).",
    "synthetic_map_layers": "synthetic_lt: leaky-ReLU layers of the invertible observation map.",
    "synthetic_negative_slope": "synthetic_lt: slope of the map's leaky ReLU, in (0, 1].",
    "mlp_widths": "Hidden layer widths of model=mlp, comma-separated.",
    "subset_seed": "Seed of the long-tailed subset and validation split (synthetic_lt: of the generator).",
    "pretrain_examples_per_class": ("synthetic_lt, model=mlp: pretrain the hidden layers with CE on this many "
                                    "examples per class of a balanced draw of the same generator, then fine-tune "
                                    "with a fresh head (experiments/pretraining.py). 0: from scratch."),
    "pretrain_epochs": "Epochs of the pretraining (lr x0.1 at 2/3 and 5/6 of them).",
    "pretrain_learning_rate": "Learning rate of the pretraining.",
    "validation_per_class": ("fashion_mnist_lt only: images per class of the balanced validation split carved from "
                             "the training images the long tail leaves unused (default 500; 0: no validation "
                             "split). CIFAR-LT has none; the folder datasets read their val/ folder."),
    "augment": ("Augment the training images: padded random crops and horizontal flips (Fashion-MNIST, CIFAR), "
                "random crops without flips (the folder datasets). synthetic_lt's vectors are never augmented."),
    "svm_alpha": "smooth_svm: the margin alpha of the smooth top-k SVM (Berrada et al.; default 1).",
    "cb_beta": ("beta of the class-balanced weights (1 - beta) / (1 - beta^n_y) used by train_rule=reweight, drw "
                "and resample (Cui et al.; 0.9999 in LDAM-DRW)."),
    "drw_start_epoch": "train_rule=drw: the epoch (0-indexed) from which the class-balanced weights apply.",
    "require_pretrained": ("Refuse to start without --pretrained_weights (the Pl@ntNet-300K presets set it: the "
                           "authors always fine-tune ImageNet weights); false trains from scratch on purpose."),
    "half_precision": ("Run the model's convolutions and batch norm in bfloat16 (parameters stay float32; logits are "
                       "cast to float32 before the loss)."),
    "epochs": "Number of training epochs.",
    "batch_size": "Global training batch size, split over the local devices (must divide by their number).",
    "eval_batch_size": "Global evaluation batch size (the last batch is padded and masked).",
    "learning_rate": "Peak learning rate of SGD (after the warm-up).",
    "momentum": "SGD momentum.",
    "nesterov": "Nesterov momentum.",
    "weight_decay": "Coupled L2 weight decay (added to the gradient, as PyTorch's SGD does).",
    "warmup_epochs": "Epochs of linear learning-rate warm-up from 0 (0: none).",
    "lr_decay_factor": "Factor applied to the learning rate at each of lr_decay_epochs.",
    "selection_k": ("K of the validation macro top-K that selects the reported epoch. Default: the loss's k when it "
                    "is one of eval_ks, else the largest of eval_ks."),
    "model_selection": (f"One of {config_lib.MODEL_SELECTIONS}: how the reported epoch is chosen. auto: the best "
                        "validation macro top-K (selection_k) when there is a validation split, else the best test "
                        "epoch (the CIFAR-LT protocol), or the last epoch for image_folder. results.json says which."),
    "eval_every_epochs": "Evaluate every this many epochs (and after the last).",
    "checkpoint_every_epochs": "Save a checkpoint every this many epochs (and after the last); a rerun resumes there.",
    "log_every_steps": "Log the training loss and accuracy every this many steps.",
    "seed": "Seed of the initialisation, the batch order, the augmentation and the loss noise.",
    "distributed": ("Multi-host: call jax.distributed.initialize() (with --coordinator_address, --num_processes, "
                    "--process_id, or auto-detection on TPU pods and SLURM); each process reads its shard of every "
                    "global batch."),
    "coordinator_address": "--distributed: host:port of process 0 (default: auto-detected).",
    "num_processes": "--distributed: number of processes (default: auto-detected).",
    "process_id": "--distributed: this process's index (default: auto-detected).",
    "pretrain_cache_dir": ("Where pretrained hidden layers are cached, one file per seed and setting, shared by runs. "
                           "Default: pretrained/ beside the workdir."),
}


def _base_type(annotation):
  origin = typing.get_origin(annotation)
  if origin is typing.Union:
    return _base_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
  if origin in (tuple, typing.Tuple):
    return tuple
  return annotation



FIELD_TYPES = {f.name: _base_type(f.type) for f in dataclasses.fields(config_lib.Config)}
_DEFINED = set()


def define_config_flags(names=None):
  """Defines the flags of the config fields `names` (default: every field) that this module has not defined yet."""
  for name in FIELD_TYPES if names is None else names:
    if name in _DEFINED:
      continue
    _DEFINED.add(name)
    type_ = FIELD_TYPES[name]
    help_ = HELP.get(name, name.replace("_", " ").capitalize() + ".") + " Overrides the preset."
    if type_ is bool:
      flags.DEFINE_boolean(name, None, help_)
    elif type_ is int:
      flags.DEFINE_integer(name, None, help_)
    elif type_ is float:
      flags.DEFINE_float(name, None, help_)
    elif type_ is tuple:
      flags.DEFINE_list(name, None, help_)
    else:
      flags.DEFINE_string(name, None, help_)


def _parse_tuple(name, values):
  try:
    return tuple(int(v) for v in values if v != "")
  except ValueError as e:
    raise ValueError(f"--{name} must be a comma-separated list of integers, got {values}.") from e


def overrides_from_flags(names=None):
  """`{field: value}` of the config flags given on the command line (of `names`, default every defined one)."""
  overrides = {}
  for name in sorted(_DEFINED) if names is None else names:
    type_ = FIELD_TYPES[name]
    value = getattr(FLAGS, name)
    if value is None:
      continue
    overrides[name] = _parse_tuple(name, value) if type_ is tuple else value
  return overrides


def run_name(preset_name: str, overrides: dict) -> str:
  """The preset's name and the overrides that change what is trained, as one file name (the default workdir of
  experiments.train, the default study name of experiments.tune)."""
  ignored = {"data_dir", "log_every_steps", "eval_batch_size", "pretrained_weights", "pretrain_cache_dir"}
  parts = [preset_name] + [f"{k}-{','.join(map(str, v)) if isinstance(v, tuple) else v}"
                           for k, v in sorted(overrides.items()) if k not in ignored]
  return re.sub(r"[^A-Za-z0-9_.,=-]+", "", "_".join(parts))


# Flags that several binaries define, with one help text: name -> (absl kind, help).
SHARED_FLAGS = {
    "config": ("string", "Preset name (`python -m experiments.train --config=list` prints them all). "
                         "experiments.train: default `default`, the embedded default job; experiments.tune: required."),
    "traceback": ("boolean", "On a configuration or missing-dataset error, show the Python traceback too (default: "
                             "the message alone)."),
    "workdir_root": ("string", "Where the runs' work directories go. Default: workdirs/reproduce/<grid> "
                               "(experiments.reproduce), tuning/ (experiments.tune)."),
    "num_workers": ("integer", "Worker processes. experiments.reproduce: runs in parallel, each pinned to one core "
                               "when there are at least as many cores (on a CPU, two 1-core runs beat one 2-core "
                               "run); default one per core on a CPU-only machine (at most 8), else 1. "
                               "experiments.tune: processes on one study; default 1."),
    "worker_index": ("integer", "Internal: this process is worker `worker_index` of --num_workers, started by the "
                                "first one."),
    "trials": ("integer", "Finished trials (complete or pruned) a study should hold; a rerun continues it up to this "
                          "total. experiments.tune: required; experiments.tuned: per study, default 20."),
    "seeds": ("list", "Seeds (comma-separated). experiments.reproduce: default the grid's (0,1,2); "
                      "experiments.tuned --rerun: default 0,1,2."),
    "dry_run": ("boolean", "Print the commands (experiments.reproduce: and whether each run is done); run nothing."),
}


def define_shared(*names: str) -> None:
  """Defines the `SHARED_FLAGS` `names` (default None) unless another binary already did: the binaries are imported
  together (the tests, the flag reference), so such a flag is defined once and each binary reads None as its own
  default."""
  for name in names:
    if name not in FLAGS:
      kind, help_ = SHARED_FLAGS[name]
      getattr(flags, f"DEFINE_{kind}")(name, None, help_)
