"""Datasets stored as folders of images, one folder per class: `root/{train,val,test}/<class>/*.{jpg,jpeg,png}`.

`dataset=image_folder` reads any such tree; `plantnet300k` is the same layout read by the same code, plus its own
checks (`input_pipeline._plantnet`: the archive's extra `images/` level, its species-name file). `read_splits(root,
image_size=...)` lists and checks the tree and returns a `FileSource` per split:

* The classes are the sub-folders of `train/`, their names sorted as Python sorts strings (by code point: "Zebra"
  before "ant"); a class's index is its position in that order, and the folder names are the class names of
  results.json and of the per-class plot. Each must hold at least one image, and there must be at least two.
* `test/` is required, `val/` optional: a split exists exactly when its folder does (`has_split`), and then it must
  hold images. Their class folders must be training classes; a training class may have no folder there (a few of
  Pl@ntNet-300K's classes have no validation image).
* The images are the files named `*.jpg`, `*.jpeg` or `*.png`, in any case; other files, and names starting with
  "." (macOS `._*` copies, `.ipynb_checkpoints`), are ignored. The first bytes of every image are checked (a JPEG or
  PNG signature) when the tree is read; a file that still fails to decode is named when a batch reaches it.
* A bad tree raises ValueError with one line naming the path: an empty training class, a val/test class absent from
  train/, an unreadable image, a val/ or test/ without images, fewer than two classes.

`FileSource` streams a split with tf.data: decoded to RGB, resized so that the shorter side is
`round(image_size * 256 / 224)`, cropped to `image_size` x `image_size` (random crop in training, centre crop in
evaluation, no flip) and normalized with the ImageNet statistics.
"""
import concurrent.futures
import dataclasses
import os
import re
from typing import Iterator

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_SPLITS = ("val", "test")  # "val" optional, "test" required
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG
_IO_THREADS = 16  # the signature check opens every file: threads hide the latency of network file systems


def import_tensorflow():
  """Imports TensorFlow hidden from every GPU, so that it never takes accelerator memory from JAX (also used by the
  TFDS loaders of input_pipeline)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Image folders (image_folder, Pl@ntNet-300K) and the TFDS datasets (CIFAR) are read with "
                      f"TensorFlow, which is not installed ({e}): pip install tensorflow-cpu (requirements.txt pins "
                      "the tested version). Fashion-MNIST from IDX files and synthetic_lt need no TensorFlow.") from e
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialized: the first call did it.
    pass
  return tf


def _tf_message(error) -> str:
  """The gist of a TensorFlow error on one line, without its graph-node decorations."""
  message = getattr(error, "message", None) or str(error)
  message = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[\[.*|\s*\[Op:.*", "", message, flags=re.DOTALL)
  return " ".join(message.split())


class FileSource:
  """A split streamed from image files with tf.data: read, decode, resize, crop and normalize in parallel.

  Resizing follows torchvision's `Resize(resize_size)`: the shorter side becomes `resize_size`, the longer one
  `int(resize_size * long / short)`. Training crops are `tf.image.stateless_random_crop` seeded per example from the
  host-side random draws, so they do not depend on tf.data's scheduling.
  """

  def __init__(self, paths: np.ndarray, labels: np.ndarray, *, image_size: int, resize_size: int, mean, std):
    self.labels = labels
    self._paths = paths
    self._paths_tensor = None
    self._image_size = image_size
    self._resize_size = resize_size
    self._mean = np.asarray(mean, np.float32) * 255.0
    self._std = np.asarray(std, np.float32) * 255.0

  def _load_and_transform(self, path, random_bits, augment: bool):
    tf = import_tensorflow()
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    short, long = tf.minimum(height, width), tf.maximum(height, width)
    new_long = tf.cast(tf.math.floordiv(tf.cast(self._resize_size, tf.int64) * tf.cast(long, tf.int64),
                                        tf.cast(short, tf.int64)), tf.int32)
    new_height = tf.where(height <= width, self._resize_size, new_long)
    new_width = tf.where(height <= width, new_long, self._resize_size)
    image = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear", antialias=True)
    size = self._image_size
    if augment:
      image = tf.image.stateless_random_crop(image, [size, size, 3], seed=random_bits[:2])
    else:
      top = tf.cast(tf.round(tf.cast(new_height - size, tf.float32) / 2.0), tf.int32)
      left = tf.cast(tf.round(tf.cast(new_width - size, tf.float32) / 2.0), tf.int32)
      image = image[top:top + size, left:left + size]
    image = (image - self._mean) / self._std
    image.set_shape([size, size, 3])
    return image

  def batches(self, index_rows: np.ndarray, random_rows: np.ndarray | None) -> Iterator[np.ndarray]:
    """Yields float32 [b, H, W, C] per row of `index_rows`; `random_rows` [steps, b, 3] drives the random crops.

    Raises:
      ValueError: naming the first file of the failing batch that TensorFlow cannot read or decode.
    """
    tf = import_tensorflow()
    if self._paths_tensor is None:
      self._paths_tensor = tf.constant(self._paths)
    steps, batch = index_rows.shape
    augment = random_rows is not None
    if not augment:
      random_rows = np.zeros((steps, batch, 3), np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((index_rows.reshape(-1).astype(np.int64),
                                                  random_rows.reshape(-1, 3).astype(np.int64)))
    dataset = dataset.map(
        lambda index, bits: self._load_and_transform(tf.gather(self._paths_tensor, index), bits, augment),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    iterator = dataset.as_numpy_iterator()
    for step in range(steps):
      try:
        images = next(iterator)
      except tf.errors.OpError as e:  # a corrupt, truncated or vanished file; tf.data does not say which
        raise ValueError(self._unreadable(index_rows[step:].reshape(-1), e)) from e
      yield images

  def _unreadable(self, indices: np.ndarray, error) -> str:
    """The one-line message naming the first of `indices`' files that TensorFlow cannot decode."""
    tf = import_tensorflow()
    for index in dict.fromkeys(indices.tolist()):  # in order, each file once
      path = self._paths[index]
      try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
      except tf.errors.OpError as e:
        return f"{path}: TensorFlow cannot read this image ({_tf_message(e)}); remove or replace it."
    return f"Reading the images failed: {_tf_message(error)}"


def has_split(root: str, split: str) -> bool:
  """Whether the tree at `root` has `split`: a split exists exactly when its folder does."""
  return os.path.isdir(os.path.join(root, split))


def list_images(directory: str) -> dict[str, list[str]]:
  """`{class folder name: sorted image paths}` of a folder-per-class split, the folders in sorted order."""
  classes = {}
  for entry in sorted(os.scandir(directory), key=lambda e: e.name):
    if entry.is_dir() and not entry.name.startswith("."):
      classes[entry.name] = sorted(os.path.join(entry.path, f.name) for f in os.scandir(entry.path)
                                   if f.is_file() and not f.name.startswith(".")
                                   and f.name.lower().endswith(IMAGE_EXTENSIONS))
  return classes


def _image_problem(path: str) -> str | None:
  """Why `path` is not a readable JPEG or PNG file, judged from its first bytes; None when it looks like one."""
  try:
    with open(path, "rb") as f:
      head = f.read(len(_SIGNATURES[1]))
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror}"
  if not head:
    return "an empty file"
  if not head.startswith(_SIGNATURES):
    return f"neither JPEG nor PNG: it starts with {head[:4]!r}"
  return None


def check_images(paths: list[str]) -> None:
  """Raises ValueError naming the first of `paths` that cannot be opened or lacks a JPEG / PNG signature."""
  with concurrent.futures.ThreadPoolExecutor(_IO_THREADS) as pool:
    for path, problem in zip(paths, pool.map(_image_problem, paths)):
      if problem:
        raise ValueError(f"{path}: not a readable JPEG or PNG image ({problem}); remove or replace it.")


@dataclasses.dataclass(eq=False)
class Splits:
  """The checked splits of an image-folder tree."""
  class_names: list[str]  # the folder names of train/, sorted
  train: FileSource
  evals: dict[str, FileSource]  # "val" when the tree has it, then "test"


def read_splits(root: str, *, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Splits:
  """Lists and checks the tree at `root` (see the module docstring); `root/train` must exist.

  Raises:
    ValueError: a bad tree, in one line naming the path.
  """
  train_dir = os.path.join(root, "train")
  train_folders = list_images(train_dir)
  if len(train_folders) < 2:
    found = f"only {list(train_folders)[0]!r}" if train_folders else "none"
    raise ValueError(f"{train_dir}: needs at least two class folders, one per class holding its images "
                     f"({train_dir}/<class>/*.jpg), found {found}.")
  empty = next((c for c, paths in train_folders.items() if not paths), None)
  if empty is not None:
    raise ValueError(f"{os.path.join(train_dir, empty)}: this training class holds no {', '.join(IMAGE_EXTENSIONS)} "
                     "image; every class folder of train/ needs at least one (add images or remove the folder).")
  class_names = list(train_folders)
  class_index = {c: i for i, c in enumerate(class_names)}
  resize_size = int(round(image_size * 256 / 224))

  def source(folders: dict[str, list[str]]) -> FileSource:
    paths = [p for c in folders for p in folders[c]]
    check_images(paths)
    labels = np.asarray([class_index[c] for c in folders for _ in folders[c]], np.int32)
    return FileSource(np.asarray(paths, dtype=object), labels, image_size=image_size, resize_size=resize_size,
                      mean=mean, std=std)

  train = source(train_folders)
  evals = {}
  for split in EVAL_SPLITS:
    split_dir = os.path.join(root, split)
    if not has_split(root, split):
      if split == "test":
        raise ValueError(f"{split_dir}: missing; the test split is required ({split_dir}/<class>/*.jpg, with "
                         f"class folders named as in {train_dir}).")
      continue
    folders = list_images(split_dir)
    unknown = [c for c in folders if c not in class_index]
    if unknown:
      more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
      raise ValueError(f"{os.path.join(split_dir, unknown[0])}{more}: not a class of {train_dir}; the classes are "
                       f"the folders of train/ (add {os.path.join(train_dir, unknown[0])} or remove this folder).")
    if not any(folders.values()):
      hint = "the test split is required" if split == "test" else "remove it to train without validation"
      raise ValueError(f"{split_dir}: holds no {', '.join(IMAGE_EXTENSIONS)} image in a class folder; {hint}.")
    evals[split] = source(folders)
  return Splits(class_names=class_names, train=train, evals=evals)
