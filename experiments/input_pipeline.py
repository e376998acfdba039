"""Input pipelines of the training binaries: long-tailed Fashion-MNIST / CIFAR, Pl@ntNet-300K, your own folder of
images (`image_folder`) and the generated many-class problem `synthetic_lt` (experiments/synthetic_lt.py).

`get_dataset(name, ...)` returns a `Dataset` whose `train_batches` / `eval_batches` yield NumPy dicts ready for
`jax.device_put`. Everything random is a pure function of its seeds, so a resumed run sees exactly the batches the
interrupted one would have seen:

* the long-tailed training subset is a function of `subset_seed` (REFERENCE.md §4: one RNG, then per class in order
  shuffle its indices and keep the first `n_c`);
* an epoch (order, class-balanced resampling draws, augmentation) is a function of `(seed, epoch)` and of nothing
  else, not even `process_count`: process `p` of `P` always receives columns `[p * b, (p + 1) * b)` of the same global
  batch, with `b = batch_size // P`.

Where the data comes from (experiments/data_files.py): Fashion-MNIST from its IDX files (`data_dir`, else the folder
of Debian's dataset-fashion-mnist package), else through TFDS; CIFAR through TFDS, which downloads what it does not
find on first use (`download`, the default) and says in one line when it cannot. Pl@ntNet-300K and `image_folder`
are folder-per-class trees of images (experiments/image_folder.py).

Fashion-MNIST and CIFAR live in memory as uint8 and are augmented with vectorized NumPy; the image folders are
streamed with tf.data. TensorFlow and TFDS are imported only when a loader needs them.
"""
import dataclasses
import json
import os
from typing import Iterator, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import noised_topk_jax as ntk
from experiments import config as config_lib
from experiments import data_files
from experiments import image_folder
from experiments import synthetic_lt

DATASETS = config_lib.DATASETS
IMBALANCE_PROFILES = ntk.PROFILES

# Where the files are looked for, and the errors that say so (experiments/data_files.py).
DatasetNotFoundError = data_files.DatasetNotFoundError
DatasetDownloadError = data_files.DatasetDownloadError
FASHION_MNIST_DEBIAN_DIR = data_files.FASHION_MNIST_DEBIAN_DIR
FASHION_MNIST_DIR_ENV = data_files.FASHION_MNIST_DIR_ENV
read_idx = data_files.read_idx

DEFAULT_VALIDATION_PER_CLASS = 500
# The images of the datasets read from arrays are used at their own size.
NATIVE_IMAGE_SIZE = {"fashion_mnist_lt": 28, "cifar10_lt": 32, "cifar100_lt": 32}

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = image_folder.IMAGENET_MEAN, image_folder.IMAGENET_STD

_PLANTNET_NAMES_FILE = "plantnet300K_species_id_2_name.json"


# ----------------------------------------------------------------------------------------------------------------
# Sources: how the images of one split are produced from example indices.
# ----------------------------------------------------------------------------------------------------------------


class _ArraySource:
  """A split held in memory as uint8, cropped/flipped and normalized per batch with vectorized NumPy.

  The images are stored channel-first, zero-padded by `pad` pixels, and viewed (no copy) as every `H x W` window of
  every image, so a random crop of a whole batch is a single gather. Normalizing channel-first and transposing the
  float result once is much faster than working on the channel-last uint8 layout.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, mean, std, pad: int = 0):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
    self.labels = labels
    self.pad = pad
    _, self._height, self._width, channels = images.shape
    padded = np.pad(images.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    self._windows = sliding_window_view(padded, (self._height, self._width), axis=(2, 3))  # [N, C, dy, dx, H, W]
    std = np.asarray(std, np.float32).reshape(channels, 1, 1)
    self._scale = 1.0 / (255.0 * std)
    self._bias = -np.asarray(mean, np.float32).reshape(channels, 1, 1) / std

  def batches(self, index_rows: np.ndarray, random_rows: np.ndarray | None) -> Iterator[np.ndarray]:
    """Yields float32 [b, H, W, C] per row of `index_rows`; `random_rows` [steps, b, 3] drives the augmentation."""
    span = 2 * self.pad + 1
    for step, indices in enumerate(index_rows):
      if random_rows is None:
        images = self._windows[indices, :, self.pad, self.pad]
      else:
        bits = random_rows[step]
        images = self._windows[indices, :, bits[:, 0] % span, bits[:, 1] % span]  # a fresh [b, C, H, W] array
        flips = bits[:, 2] % 2 == 1
        images[flips] = images[flips, :, :, ::-1]
      normalized = np.multiply(images, self._scale, dtype=np.float32)
      normalized += self._bias
      yield np.ascontiguousarray(normalized.transpose(0, 2, 3, 1))


class _VectorSource:
  """A split of feature vectors held in memory (float32 `[N, D]`); no augmentation."""

  def __init__(self, features: np.ndarray, labels: np.ndarray):
    self.features = np.ascontiguousarray(features, np.float32)
    self.labels = labels

  def batches(self, index_rows: np.ndarray, random_rows: np.ndarray | None) -> Iterator[np.ndarray]:
    del random_rows  # vectors are not augmented
    for indices in index_rows:
      yield self.features[indices]


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


def _check_int(value, name: str, *, minimum: int, maximum: int | None = None) -> int:
  """`value` as a Python int, or a ValueError naming the parameter `name` and its allowed range."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum or (
      maximum is not None and value > maximum):
    allowed = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    raise ValueError(f"`{name}` must be an int {allowed}, got {value!r}.")
  return int(value)


def _check_sharding(batch_size: int, process_index: int, process_count: int) -> int:
  """Validates the sharding arguments; returns the per-process batch size."""
  _check_int(batch_size, "batch_size", minimum=1)
  _check_int(process_count, "process_count", minimum=1)
  _check_int(process_index, "process_index", minimum=0, maximum=process_count - 1)
  if batch_size % process_count:
    raise ValueError(f"`batch_size`={batch_size} (global) must be divisible by `process_count`={process_count}.")
  return batch_size // process_count


@dataclasses.dataclass(eq=False)
class Dataset:
  """One dataset ready for training: a training split, evaluation splits and their batch iterators.

  `batch_size` is always the GLOBAL batch size; a process receives `batch_size // process_count` examples per batch.
  """
  name: str
  num_classes: int
  class_names: list[str]
  image_shape: tuple[int, ...]  # [H, W, C] of the images, [D] of synthetic_lt's vectors
  train_class_counts: np.ndarray
  eval_splits: tuple[str, ...]
  has_validation: bool
  num_train_examples: int
  _train: _ArraySource | image_folder.FileSource | _VectorSource = dataclasses.field(repr=False)
  _evals: dict[str, _ArraySource | image_folder.FileSource | _VectorSource] = dataclasses.field(repr=False)
  # synthetic_lt only: the generated data, with its exact Bayes-optimal scores (`bayes_scores`).
  synthetic: Optional[synthetic_lt.Synthetic] = dataclasses.field(default=None, repr=False)

  def steps_per_epoch(self, batch_size: int) -> int:
    """`num_train_examples // batch_size`: the last incomplete batch of an epoch is dropped."""
    _check_int(batch_size, "batch_size", minimum=1)
    if batch_size > self.num_train_examples:
      raise ValueError(f"`batch_size`={batch_size} exceeds the {self.num_train_examples} training examples of "
                       f"{self.name}: an epoch would have no full batch (lower `batch_size`).")
    return self.num_train_examples // batch_size

  def epoch_indices(self, *, epoch: int, seed: int, resample: bool = False,
                    resample_beta: Optional[float] = None) -> np.ndarray:
    """The training-example indices of one epoch, in order: a permutation, or class-balanced draws.

    With `resample`, `num_train_examples` indices are drawn with replacement, example `i` with probability
    proportional to `1 / n_{y_i}` (every class equally likely), or with `resample_beta` to the class-balanced weight
    `(1 - beta) / (1 - beta^{n_{y_i}})` of Cui et al. (LDAM-DRW's `ImbalancedDatasetSampler`, CB-RS).
    """
    seed, epoch = _check_int(seed, "seed", minimum=0), _check_int(epoch, "epoch", minimum=0)
    rng = np.random.default_rng([seed, epoch, 0])
    n = self.num_train_examples
    if not resample:
      return rng.permutation(n)
    if resample_beta is None:
      weights = 1.0 / self.train_class_counts[self._train.labels]
    else:
      weights = ntk.class_balanced_weights(self.train_class_counts, beta=resample_beta)[self._train.labels]
    return rng.choice(n, size=n, replace=True, p=weights / weights.sum())

  def train_batches(self, *, epoch: int, batch_size: int, seed: int, resample: bool = False, augment: bool = True,
                    process_index: int = 0, process_count: int = 1,
                    resample_beta: Optional[float] = None) -> Iterator[dict]:
    """One epoch of `{"image": float32 [b, H, W, C], "label": int32 [b]}`, `b = batch_size // process_count`.

    A deterministic function of `(seed, epoch, resample, augment)`: process `process_index` gets columns
    `[process_index * b, (process_index + 1) * b)` of the global batches, so the processes' shards are disjoint and
    concatenate (in process order) to the batches a single process would see. Every process yields exactly
    `steps_per_epoch(batch_size)` batches.
    """
    local = _check_sharding(batch_size, process_index, process_count)
    steps = self.steps_per_epoch(batch_size)
    order = self.epoch_indices(epoch=epoch, seed=seed, resample=resample, resample_beta=resample_beta)
    columns = slice(process_index * local, (process_index + 1) * local)
    index_rows = order[:steps * batch_size].reshape(steps, batch_size)[:, columns]
    random_rows = None
    if augment:
      augment_rng = np.random.default_rng([int(seed), int(epoch), 1])
      random_rows = augment_rng.integers(0, 2**31 - 1, size=(steps, batch_size, 3))[:, columns]
    return self._iterate(self._train, index_rows, random_rows, masks=None)

  def eval_batches(self, split: str, *, batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """The whole split in order, as `{"image", "label", "mask"}` batches of `batch_size // process_count`.

    Global batch `j` holds examples `[j * batch_size, (j + 1) * batch_size)`, process `p` its columns
    `[p * b, (p + 1) * b)`; the last global batch is padded (with copies of the last example, `mask` 0), so every
    process yields `ceil(num_eval_examples / batch_size)` batches and each example has `mask` 1 exactly once.
    """
    source = self._eval_source(split)
    return self._padded_batches(source, np.arange(len(source.labels)), batch_size, process_index, process_count)

  def train_eval_batches(self, *, batch_size: int, indices: Optional[np.ndarray] = None, process_index: int = 0,
                         process_count: int = 1) -> Iterator[dict]:
    """The training split read as an evaluation split: the evaluation transform (no augmentation), in the order of
    `indices` (default: every training example, in order), padded and masked as `eval_batches`."""
    n = self.num_train_examples
    indices = np.arange(n) if indices is None else np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or (
        indices.size and (indices.min() < 0 or indices.max() >= n)):
      raise ValueError(f"`indices` must be a 1-D integer array of training-example indices in [0, {n}).")
    return self._padded_batches(self._train, indices, batch_size, process_index, process_count)

  def _padded_batches(self, source, indices, batch_size, process_index, process_count):
    local = _check_sharding(batch_size, process_index, process_count)
    n = len(indices)
    num_batches = -(-n // batch_size)
    positions = np.arange(num_batches * batch_size).reshape(num_batches, batch_size)
    positions = positions[:, process_index * local:(process_index + 1) * local]
    masks = (positions < n).astype(np.float32)
    return self._iterate(source, indices[np.minimum(positions, n - 1)], None, masks=masks)

  def num_eval_examples(self, split: str) -> int:
    return len(self._eval_source(split).labels)

  def _eval_source(self, split: str):
    if split not in self._evals:
      raise ValueError(f"`split` must be one of {self.eval_splits} for {self.name}, got {split!r}.")
    return self._evals[split]

  @staticmethod
  def _iterate(source, index_rows, random_rows, masks) -> Iterator[dict]:
    for step, images in enumerate(source.batches(index_rows, random_rows)):
      batch = {"image": images, "label": source.labels[index_rows[step]]}
      if masks is not None:
        batch["mask"] = masks[step]
      yield batch


def shard(batch: dict, num_devices: int) -> dict:
  """A batch's `[b, ...]` arrays as `[num_devices, b / num_devices, ...]`, for a function pmapped over the devices."""
  return {name: x.reshape((num_devices, -1) + x.shape[1:]) for name, x in batch.items()}


def check_labels(labels, num_classes: int, where: str = "this batch") -> np.ndarray:
  """`labels` as int32, or a ValueError naming `where` if one lies outside `[0, num_classes)`: checked on the host,
  since under jit an out-of-range label would be clamped silently."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels[(labels < 0) | (labels >= num_classes)]
    raise ValueError(f"{where}: labels must lie in [0, {num_classes}), found {bad.size} outside, e.g. {bad[:5]}.")
  return labels.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# get_dataset
# ----------------------------------------------------------------------------------------------------------------


def get_dataset(name: str, *, data_dir: str | None = None, imbalance_profile: str = "exp",
                imbalance_ratio: float = 100.0, subset_seed: int = 0, validation_per_class: int | None = None,
                image_size: int | None = None, download: bool = True,
                synthetic: synthetic_lt.SyntheticSpec | None = None) -> Dataset:
  """Loads one of `DATASETS`.

  `*_lt` datasets: the training split is the long-tailed subset of REFERENCE.md §4 with
  `ntk.long_tailed_counts(L, max_count=max_count, imbalance_ratio=imbalance_ratio, profile=imbalance_profile)`, where
  `max_count` is derived from the data: the smallest per-class count of the full training split, minus
  `validation_per_class` (Fashion-MNIST only). For the real datasets that is the protocol's value: 5000 (CIFAR-10),
  500 (CIFAR-100), 6000 (Fashion-MNIST with `validation_per_class=0`); with Fashion-MNIST's default balanced
  validation split of 500 per class it is 5500, because the head class of the long tail would otherwise leave no
  image for validation. The test split is the full balanced test set.

  Args:
    name: one of `DATASETS`.
    data_dir: where the data is (IDX folder or TFDS data_dir for Fashion-MNIST, TFDS data_dir for CIFAR, the
      extracted archive for Pl@ntNet-300K, the root of the tree for image_folder). Without it, Fashion-MNIST is read
      from `FASHION_MNIST_DEBIAN_DIR` (or the folder in the environment variable `FASHION_MNIST_DIR_ENV`), else from
      TFDS's default data dir.
    imbalance_profile: `"exp"` or `"step"` (ignored by the folder datasets, used as they are).
    imbalance_ratio: rho = n_max / n_min >= 1 (ignored by the folder datasets).
    subset_seed: seed of the long-tailed subset and of the validation split.
    validation_per_class: Fashion-MNIST only: size per class of the balanced validation split carved from the
      training images the long-tailed subset does not use (default 500; 0 for none). CIFAR-LT has no validation
      split (the test set doubles as validation, as in the protocol) and the folder datasets read their val/ folder.
    image_size: the folder datasets only: crop size (default `config.DEFAULT_IMAGE_SIZE`: 224 for Pl@ntNet-300K, 32
      for image_folder); images are first resized so that their shorter side is `round(image_size * 256 / 224)`.
    download: Fashion-MNIST (when no IDX files are found) and CIFAR: let TFDS download and prepare the data when
      it is not in its data dir (needs network; like `tfds.load`'s default). False: raise DatasetNotFoundError.
    synthetic: synthetic_lt only: the generator's settings (default `SyntheticSpec()`), which hold its profile,
      ratio, validation size and seed; the other arguments are ignored for it (`train_lib.load_dataset(config)`
      builds the spec from a config).

  Returns:
    A `Dataset`.

  Raises:
    DatasetNotFoundError: the data is not where it was looked for; `DatasetDownloadError` when TFDS failed to
      download it.
    ValueError: an invalid argument (the message names it), labels outside `[0, num_classes)`, or a bad image
      folder (the message names the path).
  """
  if name not in DATASETS:
    raise ValueError(f"`name` must be one of {DATASETS}, got {name!r}.")
  if name == "synthetic_lt":
    return _synthetic(synthetic_lt.SyntheticSpec() if synthetic is None else synthetic)
  if synthetic is not None:
    raise ValueError(f"`synthetic` is only used by synthetic_lt, got name={name!r}.")
  if imbalance_profile not in IMBALANCE_PROFILES:
    raise ValueError(f"`imbalance_profile` must be one of {IMBALANCE_PROFILES}, got {imbalance_profile!r}.")
  if isinstance(imbalance_ratio, bool) or not isinstance(imbalance_ratio, (int, float, np.integer, np.floating)) \
      or not np.isfinite(imbalance_ratio) or imbalance_ratio < 1:
    raise ValueError(f"`imbalance_ratio` must be a finite number >= 1, got {imbalance_ratio!r}.")
  _check_int(subset_seed, "subset_seed", minimum=0)
  if validation_per_class is not None:
    _check_int(validation_per_class, "validation_per_class", minimum=0)
    if name != "fashion_mnist_lt" and validation_per_class:
      raise ValueError(f"`validation_per_class` is only supported by fashion_mnist_lt (got {validation_per_class} "
                       f"for {name}): CIFAR-LT has no validation split and the folder datasets read their val/ "
                       "folder.")
  if image_size is not None:
    _check_int(image_size, "image_size", minimum=1)
    native = NATIVE_IMAGE_SIZE.get(name)
    if native is not None and image_size != native:
      raise ValueError(f"`image_size` must be None or {native} for {name}, got {image_size}.")

  if name in config_lib.FOLDER_DATASETS:
    size = config_lib.DEFAULT_IMAGE_SIZE[name] if image_size is None else int(image_size)
    return (_plantnet if name == "plantnet300k" else _image_folder)(data_dir, image_size=size)
  long_tail = dict(profile=imbalance_profile, ratio=float(imbalance_ratio), seed=int(subset_seed))
  if name == "fashion_mnist_lt":
    per_class = DEFAULT_VALIDATION_PER_CLASS if validation_per_class is None else int(validation_per_class)
    return _fashion_mnist(data_dir, download, long_tail, validation_per_class=per_class)
  return _cifar(name, data_dir, download, long_tail)


def _long_tailed_split(labels: np.ndarray, num_classes: int, *, profile: str, ratio: float, seed: int,
                       validation_per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the long-tailed training subset and of a balanced validation split disjoint from it.

  REFERENCE.md §4: one `RandomState(seed)`; for each class in order, shuffle its indices and keep the first `n_c`.
  The validation split takes the last `validation_per_class` of the same shuffled indices, so it never overlaps
  the training subset and the subset is the same as without validation for a given `max_count`.
  """
  available = np.bincount(labels, minlength=num_classes)
  max_count = int(available.min()) - validation_per_class
  if max_count < 1:
    raise ValueError(f"`validation_per_class`={validation_per_class} leaves no training image in the smallest "
                     f"class ({available.min()} images).")
  counts = ntk.long_tailed_counts(num_classes, max_count=max_count, imbalance_ratio=ratio, profile=profile)
  rng = np.random.RandomState(seed)
  train, validation = [], []
  for c in range(num_classes):
    indices = np.flatnonzero(labels == c)
    rng.shuffle(indices)
    train.append(indices[:counts[c]])
    validation.append(indices[len(indices) - validation_per_class:])
  return np.concatenate(train), np.concatenate(validation)


def _in_memory_dataset(name: str, class_names, train, evals: dict, *, long_tail: dict, mean, std, pad: int,
                       validation_per_class: int = 0) -> Dataset:
  """`train`: (images, labels) of the full training split, long-tailed here; `evals`: split -> (images, labels)."""
  num_classes = len(class_names)
  images, labels = train
  labels = check_labels(labels, num_classes, f"{name} train")
  train_indices, validation_indices = _long_tailed_split(labels, num_classes,
                                                         validation_per_class=validation_per_class, **long_tail)
  sources = {}
  if validation_per_class:
    sources["val"] = _ArraySource(images[validation_indices], labels[validation_indices], mean=mean, std=std)
  for split, (split_images, split_labels) in evals.items():
    sources[split] = _ArraySource(split_images, check_labels(split_labels, num_classes, f"{name} {split}"),
                                  mean=mean, std=std)
  train_labels = labels[train_indices]
  return Dataset(name=name, num_classes=num_classes, class_names=list(class_names),
                 image_shape=tuple(int(d) for d in images.shape[1:]),
                 train_class_counts=np.bincount(train_labels, minlength=num_classes).astype(np.int64),
                 eval_splits=tuple(sources), has_validation="val" in sources,
                 num_train_examples=len(train_indices),
                 _train=_ArraySource(images[train_indices], train_labels, mean=mean, std=std, pad=pad),
                 _evals=sources)


# ---- Fashion-MNIST and CIFAR (arrays from IDX files or TFDS) ---------------------------------------------------


def _fashion_mnist(data_dir, download, long_tail, *, validation_per_class) -> Dataset:
  splits, class_names = data_files.fashion_mnist_arrays(data_dir, download)
  return _in_memory_dataset("fashion_mnist_lt", class_names, splits["train"], {"test": splits["test"]},
                            long_tail=long_tail, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, pad=2,
                            validation_per_class=validation_per_class)


def _cifar(name: str, data_dir, download, long_tail) -> Dataset:
  num_classes = {"cifar10_lt": 10, "cifar100_lt": 100}[name]
  looked_in = [f"TFDS {data_files.TFDS_NAMES[name]} in {data_dir or 'the default TFDS data_dir'}"]
  splits, class_names = data_files.tfds_arrays(name, data_dir, download, looked_in)
  if len(class_names) != num_classes:
    class_names = [str(c) for c in range(num_classes)]
  return _in_memory_dataset(name, class_names, splits["train"], {"test": splits["test"]}, long_tail=long_tail,
                            mean=CIFAR_MEAN, std=CIFAR_STD, pad=4)


# ---- Folders of images: image_folder, Pl@ntNet-300K ------------------------------------------------------------


def _folder_dataset(name: str, splits: image_folder.Splits, *, image_size: int, class_names=None) -> Dataset:
  num_classes = len(splits.class_names)
  return Dataset(name=name, num_classes=num_classes, class_names=list(class_names or splits.class_names),
                 image_shape=(image_size, image_size, 3),
                 train_class_counts=np.bincount(splits.train.labels, minlength=num_classes).astype(np.int64),
                 eval_splits=tuple(splits.evals), has_validation="val" in splits.evals,
                 num_train_examples=len(splits.train.labels), _train=splits.train, _evals=splits.evals)


def _image_folder(data_dir, *, image_size: int) -> Dataset:
  name = "image_folder"
  if data_dir is None:
    raise DatasetNotFoundError(name, ["nowhere: data_dir is required for image_folder"])
  if not image_folder.has_split(data_dir, "train"):
    raise DatasetNotFoundError(name, [os.path.join(data_dir, "train")])
  return _folder_dataset(name, image_folder.read_splits(data_dir, image_size=image_size), image_size=image_size)


def _plantnet(data_dir, *, image_size: int) -> Dataset:
  """image_folder's reader on the archive's layout, with the species names of its JSON file as class names."""
  name = "plantnet300k"
  if data_dir is None:
    raise DatasetNotFoundError(name, ["nowhere: data_dir is required for plantnet300k"])
  candidates = [data_dir, os.path.join(data_dir, "images")]
  root = next((c for c in candidates if image_folder.has_split(c, "train")), None)
  if root is None:
    raise DatasetNotFoundError(name, [os.path.join(c, "train") for c in candidates])
  splits = image_folder.read_splits(root, image_size=image_size)
  class_names = splits.class_names
  names_file = next((p for p in (os.path.join(data_dir, _PLANTNET_NAMES_FILE), os.path.join(root, _PLANTNET_NAMES_FILE))
                     if os.path.isfile(p)), None)
  if names_file is not None:
    with open(names_file) as f:
      id_to_name = json.load(f)
    class_names = [id_to_name.get(c, c) for c in class_names]
  return _folder_dataset(name, splits, image_size=image_size, class_names=class_names)


# ---- synthetic_lt ----------------------------------------------------------------------------------------------


def _synthetic(spec: synthetic_lt.SyntheticSpec) -> Dataset:
  data = synthetic_lt.generate(spec)
  sources = {"test": _VectorSource(data.x["test"], data.labels["test"])}
  if spec.validation_per_class:
    sources = {"val": _VectorSource(data.x["val"], data.labels["val"]), **sources}
  names = [f"class {c} (genus {g})" for c, g in enumerate(data.genus)]
  return Dataset(name="synthetic_lt", num_classes=spec.num_classes, class_names=names,
                 image_shape=(spec.latent_dim,), train_class_counts=data.train_class_counts.copy(),
                 eval_splits=tuple(sources), has_validation="val" in sources,
                 num_train_examples=len(data.labels["train"]),
                 _train=_VectorSource(data.x["train"], data.labels["train"]), _evals=sources, synthetic=data)
