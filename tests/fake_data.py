"""Small generated datasets in the real on-disk formats, for tests that must not need the real data.

The images carry a class-dependent pattern that survives the training augmentations (shifts of a few pixels,
horizontal flips, JPEG compression, resizing), so that end-to-end tests can check that a model learns something:

* `write_fashion_mnist_idx`: the four Fashion-MNIST IDX files (gzipped or raw), 28x28 grey images whose class is
  coded by a bright horizontal band (5 positions) spanning either the full width or its middle half.
* `write_plantnet_tree`: a Pl@ntNet-300K-style folder tree `root/{train,val,test}/<class_id>/*.jpg`, RGB JPEGs of
  varied sizes whose class is coded by their colour.
* `write_image_folder`: an `image_folder` tree `root/{train,val,test}/<class>/*` of small RGB PNGs and JPEGs (the
  extensions in varied case), imbalanced, whose class is coded by their colour.
* `mock_cifar`: a context manager under which `tfds.load("cifar10" / "cifar100")` returns random data.
* `mock_fashion_mnist_tfds`: a context manager under which `tfds.builder("fashion_mnist")` is not prepared until its
  `download_and_prepare` "downloads" generated Fashion-MNIST-like images, or fails as told.
"""
import contextlib
import gzip
import os
import types
from unittest import mock

import numpy as np

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
PLANTNET_CLASS_IDS = ("1355868", "1355920", "1356022", "1356111", "1357330", "1358752", "1363128", "1392475")
# Skewed like the real data: the head class has 20x the images of the rarest one.
PLANTNET_TRAIN_COUNTS = (40, 20, 12, 6, 2)


def fashion_like_images(labels: np.ndarray, *, rng: np.random.Generator, noise: int = 60) -> np.ndarray:
  """uint8 [N, 28, 28] images: uniform noise in [0, noise) plus the class's bright band (classes 0..9)."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise ValueError(f"labels must be in [0, 10), got range [{labels.min()}, {labels.max()}].")
  images = rng.integers(0, noise, size=(len(labels), 28, 28), dtype=np.uint8)
  for c in np.unique(labels):
    top = 2 + 5 * (c % 5)
    columns = slice(0, 28) if c < 5 else slice(7, 21)
    rows = np.flatnonzero(labels == c)
    images[rows, top:top + 4, columns] = rng.integers(180, 256, size=(len(rows), 4, len(range(28)[columns])))
  return images


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file (magic 0x0000 08 ndim, big-endian int32 dims), gzipped if `path` ends .gz."""
  array = np.ascontiguousarray(array, dtype=np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def write_fashion_mnist_idx(directory: str, *, train_per_class=200, test_per_class=30, num_classes: int = 10,
                            compress: bool = True, seed: int = 0) -> dict:
  """Writes Fashion-MNIST-format IDX files in `directory` (created if needed).

  Args:
    directory: output folder.
    train_per_class: images per class in the train split: an int, or a sequence of `num_classes` ints.
    test_per_class: the same for the test split.
    num_classes: at most 10.
    compress: write `*.gz` files (as distributed) or raw IDX files.
    seed: seed of the labels' order and the pixels.

  Returns:
    `{"train": (images uint8 [N, 28, 28], labels uint8 [N]), "test": (...)}`, exactly what was written; the
    labels are shuffled, as in the real files.

  Note: `get_dataset("fashion_mnist_lt", data_dir=directory)` holds out `validation_per_class` (default 500) train
  images per class, so pass a `validation_per_class` below `min(train_per_class)` (or 0); the long-tailed subset
  then uses `max_count = min(train_per_class) - validation_per_class`.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  written = {}
  for split, per_class in (("train", train_per_class), ("test", test_per_class)):
    per_class = np.broadcast_to(np.asarray(per_class, np.int64), (num_classes,))
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.uint8)
    images = fashion_like_images(labels, rng=rng)
    suffix = ".gz" if compress else ""
    images_name, labels_name = FASHION_MNIST_FILES[split]
    write_idx(os.path.join(directory, images_name + suffix), images)
    write_idx(os.path.join(directory, labels_name + suffix), labels)
    written[split] = (images, labels)
  return written


def _class_colour(c: int) -> np.ndarray:
  """A distinct saturated RGB colour per class index (hues spread around the circle)."""
  hue = (c * 0.618034) % 1.0
  channel = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
  return 40 + 180 * channel


def write_plantnet_tree(root: str, *, train_counts=PLANTNET_TRAIN_COUNTS, val_per_class=3, test_per_class=4,
                        missing_in_val: tuple[int, ...] = (-1,), min_side: int = 24, max_side: int = 64,
                        seed: int = 0) -> dict:
  """Writes a Pl@ntNet-300K-style tree `root/{train,val,test}/<class_id>/<n>.jpg` of RGB JPEGs of varied sizes.

  Args:
    root: output folder.
    train_counts: training images per class; the number of classes is its length (at most 8).
    val_per_class: validation images per class.
    test_per_class: test images per class.
    missing_in_val: classes (indices into `train_counts`) with no validation folder, as happens in the real data.
    min_side: smallest image side; sides are drawn in [min_side, max_side], so aspect ratios vary both ways.
    max_side: largest image side.
    seed: seed of the sizes and pixels.

  Returns:
    `{"class_ids": [...], "train": counts, "val": counts, "test": counts}` (counts: int lists in class order).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  num_classes = len(train_counts)
  class_ids = list(PLANTNET_CLASS_IDS[:num_classes])
  missing = {m % num_classes for m in missing_in_val}
  counts = {
      "train": list(train_counts),
      "val": [0 if c in missing else val_per_class for c in range(num_classes)],
      "test": [test_per_class] * num_classes,
  }
  for split, split_counts in counts.items():
    for c, count in enumerate(split_counts):
      if not count:
        continue
      folder = os.path.join(root, split, class_ids[c])
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        height, width = rng.integers(min_side, max_side + 1, size=2)
        pixels = _class_colour(c) + rng.normal(0, 12, size=(height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"),
                                                                        quality=90)
  return {"class_ids": class_ids, **counts}


@contextlib.contextmanager
def mock_cifar(num_examples: int = 1000):
  """Within this context, `tfds.load` of any dataset (cifar10, cifar100, ...) yields `num_examples` random examples.

  The examples follow the dataset's features (32x32x3 uint8 images, uniform labels); the train and test splits hold
  the same examples. No file is read and nothing is downloaded.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=num_examples):
    yield


# Cycled through by `write_image_folder`: the loader must take every case of the three extensions.
IMAGE_FOLDER_EXTENSIONS = (".png", ".jpg", ".JPEG", ".PNG", ".Jpg", ".jpeg")


def write_image_folder(root: str, *, train_counts: dict, val_per_class: int = 0, test_per_class: int = 3,
                       min_side: int = 28, max_side: int = 44, seed: int = 0) -> dict:
  """Writes an `image_folder` tree `root/{train,val,test}/<class>/<n><ext>` of RGB images of varied sizes.

  Args:
    root: output folder.
    train_counts: `{class name: training images}`, in any order (the loader sorts the names).
    val_per_class: validation images per class; 0: no val/ folder at all.
    test_per_class: test images per class.
    min_side: smallest image side; sides are drawn in [min_side, max_side].
    max_side: largest image side.
    seed: seed of the sizes and pixels.

  Returns:
    `{"classes": sorted class names, "train": counts, "val": counts or None, "test": counts}`, the counts in the
    order of `classes`. Class `i` of that order has the colour `_class_colour(i)`; the extensions cycle through
    `IMAGE_FOLDER_EXTENSIONS` (PNG or JPEG content to match).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  classes = sorted(train_counts)
  counts = {"train": [train_counts[c] for c in classes], "test": [test_per_class] * len(classes)}
  if val_per_class:
    counts["val"] = [val_per_class] * len(classes)
  n = 0
  for split, split_counts in counts.items():
    for c, count in enumerate(split_counts):
      folder = os.path.join(root, split, classes[c])
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        height, width = rng.integers(min_side, max_side + 1, size=2)
        pixels = np.clip(_class_colour(c) + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
        ext = IMAGE_FOLDER_EXTENSIONS[n % len(IMAGE_FOLDER_EXTENSIONS)]
        n += 1
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:04d}{ext}"),
                                     format="PNG" if ext.lower() == ".png" else "JPEG")
  return {"classes": classes, "train": counts["train"], "val": counts.get("val"), "test": counts["test"]}


# The class names of TFDS's fashion_mnist (tensorflow_datasets/image_classification/mnist.py).
TFDS_FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                            "Bag", "Ankle boot")


class FakeFashionMnistBuilder:
  """What `tfds.builder("fashion_mnist", data_dir=...)` returns under `mock_fashion_mnist_tfds`.

  `data_dir` is TFDS's versioned folder under the data dir asked for, else under TFDS's default data dir (which TFDS
  reads from `$TFDS_DATA_DIR` when it is imported). `download_and_prepare` records TFDS's retry bound at that moment
  (`download_retries`), prints a banner as TFDS does, then fails with `download_error` or "prepares" the data, which
  `as_dataset` then serves: generated Fashion-MNIST-like images (`fashion_like_images`), shuffled labels.
  """

  def __init__(self, data_dir, *, train_per_class: int, test_per_class: int, download_error=None, seed: int = 0):
    self.requested_data_dir = data_dir
    from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
    root = data_dir or constants.DATA_DIR
    self.data_dir = os.path.join(root, "fashion_mnist", "3.0.1")
    self.download_retries = []
    self.info = types.SimpleNamespace(
        features={"label": types.SimpleNamespace(names=list(TFDS_FASHION_MNIST_NAMES))})
    self._download_error = download_error
    self._prepared = False
    rng = np.random.default_rng(seed)
    self.data = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
      labels = rng.permutation(np.repeat(np.arange(10), per_class))
      self.data[split] = (fashion_like_images(labels, rng=rng)[..., None], labels.astype(np.int64))

  def is_prepared(self) -> bool:
    return self._prepared

  def download_and_prepare(self):
    from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
    self.download_retries.append(downloader.MAX_RETRIES)
    print(f"Downloading and preparing dataset 29.45 MiB to {self.data_dir}...")
    if self._download_error is not None:
      raise self._download_error
    self._prepared = True

  def as_dataset(self, split: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not self._prepared:
      raise AssertionError("as_dataset before the data was prepared")
    images, labels = self.data[split]
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


@contextlib.contextmanager
def mock_fashion_mnist_tfds(*, train_per_class: int = 30, test_per_class: int = 5, download_error=None):
  """Within this context, `tfds.builder("fashion_mnist", data_dir=...)` returns a new `FakeFashionMnistBuilder`.

  Yields the list of builders made, in order, to check which data dir was asked for and what was downloaded.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  made = []

  def builder(name, *, data_dir=None, **kwargs):
    if name != "fashion_mnist" or kwargs:
      raise AssertionError(f"unexpected tfds.builder({name!r}, {kwargs})")
    made.append(FakeFashionMnistBuilder(data_dir, train_per_class=train_per_class, test_per_class=test_per_class,
                                        download_error=download_error))
    return made[-1]

  with mock.patch.object(tfds, "builder", builder):
    yield made
