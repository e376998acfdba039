"""Where the datasets' files are, and getting them when they are not: Fashion-MNIST's IDX files, TFDS (CIFAR, and
Fashion-MNIST without IDX files) with its download, and the errors that say where the pipeline looked and how to get
the data. `input_pipeline` turns what these functions return into a `Dataset`.

Fashion-MNIST is read from its four IDX files in `data_dir`, or without one in the folder of Debian's
dataset-fashion-mnist package (`FASHION_MNIST_DEBIAN_DIR`); failing that, through TFDS like CIFAR. TFDS reads its data
dir (`data_dir`, else its default, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`) and, with `download` (the default,
like `tfds.load`'s), downloads and prepares there what it does not find, once. When that fails (no network), the
error is one line naming the other ways to get the data.
"""
import contextlib
import gzip
import io
import os
import time

from absl import logging
import numpy as np

from experiments import image_folder

# Where `apt-get install dataset-fashion-mnist` puts the IDX files (Debian/Ubuntu), read when no data_dir is given.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# Set, this environment variable replaces that folder (the tests point it at an empty one: a machine without the
# package).
FASHION_MNIST_DIR_ENV = "NTK_FASHION_MNIST_DIR"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot")

TFDS_NAMES = {"fashion_mnist_lt": "fashion_mnist", "cifar10_lt": "cifar10", "cifar100_lt": "cifar100"}
_TITLES = {"fashion_mnist_lt": "Fashion-MNIST", "cifar10_lt": "CIFAR-10", "cifar100_lt": "CIFAR-100"}
# TFDS retries each URL 10 times with exponential backoff (0.2 s x 2^n): with no network it gave up after 206 s
# (measured, TFDS 4.9.10, name resolution failing at once). 3 retries still ride out a passing error and fail in ~2 s.
TFDS_DOWNLOAD_RETRIES = 3

_FASHION_MNIST_ELSEWHERE = (
    "on Debian/Ubuntu `apt-get install dataset-fashion-mnist` (as root) puts its IDX files in "
    f"{FASHION_MNIST_DEBIAN_DIR}, read when no data_dir is given; or put the four IDX files "
    f"({', '.join(f + '.gz' for f in FASHION_MNIST_FILES)}, gzipped or not) in a folder and pass it as data_dir "
    "(--data_dir=FOLDER)")


def _tfds_elsewhere(tfds_name: str) -> str:
  return (f"on an offline machine, run `tfds build {tfds_name} --data_dir=DIR` on a networked one, copy DIR here and "
          "pass it as data_dir (--data_dir=DIR)")


_HOW_TO_GET = {
    "fashion_mnist_lt": (
        f"Fashion-MNIST: {_FASHION_MNIST_ELSEWHERE}; or let TFDS download it on first use (tfds_download, on by "
        f"default; needs network); or {_tfds_elsewhere('fashion_mnist')}."),
    "cifar10_lt": ("CIFAR-10 is read through TFDS, which downloads it on first use (tfds_download, on by default; "
                   f"needs network); {_tfds_elsewhere('cifar10')}."),
    "cifar100_lt": ("CIFAR-100 is read through TFDS, which downloads it on first use (tfds_download, on by default; "
                    f"needs network); {_tfds_elsewhere('cifar100')}."),
    "plantnet300k": (
        "Pl@ntNet-300K: download plantnet_300K.zip from https://zenodo.org/record/5645731 (about 30 GB), unzip it "
        "and pass the extracted folder as data_dir. Expected layout: data_dir/{train,val,test}/<class_id>/*.jpg "
        "(the archive's data_dir/images/{train,val,test}/... is accepted too); the class order is the sorted list "
        "of train folder names. It cannot be downloaded automatically."),
    "image_folder": (
        "image_folder reads your own images: pass data_dir=DIR holding DIR/train/<class>/*.jpg (or .jpeg, .png; one "
        "folder per class, the sorted folder names are the classes), DIR/test/<class>/... and optionally "
        "DIR/val/<class>/... (model selection and average-K on it)."),
}
# What a failed download suggests instead.
_ELSEWHERE = {
    "fashion_mnist_lt": f"Other ways to get it: {_FASHION_MNIST_ELSEWHERE}.",
    "cifar10_lt": f"Other way to get it: {_tfds_elsewhere('cifar10')}.",
    "cifar100_lt": f"Other way to get it: {_tfds_elsewhere('cifar100')}.",
}


def one_line(error: BaseException, limit: int = 400) -> str:
  """`Type: message` of an exception on one line, cut at `limit` characters."""
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


class DatasetNotFoundError(FileNotFoundError):
  """The dataset's files are not where the pipeline looked; the message says where it looked and how to get them."""

  def __init__(self, name: str, looked_in: list[str], detail: str = ""):
    message = f"Dataset {name!r} not found. Looked in: " + "; ".join(looked_in) + "."
    if detail:
      message += f" ({detail})"
    message += " How to get it: " + _HOW_TO_GET[name]
    super().__init__(message)
    self.dataset_name = name
    self.looked_in = tuple(looked_in)


class DatasetDownloadError(DatasetNotFoundError):
  """TFDS could not download a dataset found nowhere locally; the one-line message names the other ways to get it."""

  def __init__(self, name: str, target: str, error: BaseException):
    FileNotFoundError.__init__(  # pylint: disable=non-parent-init-called
        self, f"Could not download {_TITLES[name]} through TFDS into {target} ({one_line(error)}). "
        + _ELSEWHERE[name])
    self.dataset_name = name
    self.looked_in = (target,)


# ---- Fashion-MNIST's IDX files ---------------------------------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzipped when the name ends in .gz) of unsigned bytes into a uint8 array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4]!r}).")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape} ({np.prod(shape)} bytes) but holds {body.size} bytes.")
  return body.reshape(shape)


def find_idx_files(directory: str) -> dict | None:
  """`{split: (images_path, labels_path)}` when `directory` holds all four Fashion-MNIST IDX files."""
  found = {}
  for split, names in (("train", FASHION_MNIST_FILES[:2]), ("test", FASHION_MNIST_FILES[2:])):
    paths = []
    for file_name in names:
      existing = [p for p in (os.path.join(directory, file_name + ext) for ext in (".gz", "")) if os.path.isfile(p)]
      if not existing:
        return None
      paths.append(existing[0])
    found[split] = tuple(paths)
  return found


def fashion_mnist_default_dir() -> str:
  """Where Fashion-MNIST's IDX files are looked for when no data_dir is given: the folder named by the environment
  variable `FASHION_MNIST_DIR_ENV` when set, else `FASHION_MNIST_DEBIAN_DIR`."""
  return os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DEBIAN_DIR


def fashion_mnist_arrays(data_dir, download: bool) -> tuple[dict, list[str]]:
  """`({"train": (images uint8 [N, 28, 28, 1], labels), "test": ...}, class names)` of Fashion-MNIST: from the IDX
  files of `data_dir` (else of `fashion_mnist_default_dir()`), else through TFDS (`tfds_arrays`)."""
  directory = data_dir if data_dir is not None else fashion_mnist_default_dir()
  files = find_idx_files(directory)
  if files is None:
    looked_in = [f"IDX files in {directory}", f"TFDS fashion_mnist in {data_dir or 'the default TFDS data_dir'}"]
    splits, names = tfds_arrays("fashion_mnist_lt", data_dir, download, looked_in)
    return splits, names if len(names) == len(FASHION_MNIST_CLASS_NAMES) else list(FASHION_MNIST_CLASS_NAMES)
  splits = {}
  for split, (images_path, labels_path) in files.items():
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
      raise ValueError(f"{images_path} / {labels_path}: expected [N, H, W] images and [N] labels, got "
                       f"{images.shape} and {labels.shape}.")
    splits[split] = (images[..., None], labels)
  return splits, list(FASHION_MNIST_CLASS_NAMES)


# ---- TFDS --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_bounded_download():
  """Around `download_and_prepare`: `TFDS_DOWNLOAD_RETRIES` retries per URL, and neither TFDS's banners (printed)
  nor its progress bars, so that a failure reads as one line. (urllib3 logs a warning per retry, from TFDS's
  download threads, which may outlive this context: experiments.train drops them.)"""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
  retries = downloader.MAX_RETRIES
  downloader.MAX_RETRIES = TFDS_DOWNLOAD_RETRIES
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    downloader.MAX_RETRIES = retries
    tfds.display_progress_bar(True)


def tfds_arrays(name: str, data_dir, download: bool, looked_in: list[str]) -> tuple[dict, list[str]]:
  """`({"train": (images uint8 [N, H, W, C], labels int64 [N]), "test": ...}, class names)` of the TFDS dataset
  behind `name` (`TFDS_NAMES`), downloaded and prepared first (into `data_dir`, else TFDS's default data dir) when
  it is not there and `download` is set.

  Raises:
    DatasetNotFoundError: not there and `download` unset, or unreadable; `DatasetDownloadError` when the download
      failed.
  """
  try:
    image_folder.import_tensorflow()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetNotFoundError(name, looked_in, f"TensorFlow Datasets is not installed: {e}") from e
  try:
    builder = tfds.builder(TFDS_NAMES[name], data_dir=data_dir)
    prepared = builder.is_prepared()
  except Exception as e:  # pylint: disable=broad-except  # TFDS reports unusable data dirs with several types.
    raise DatasetNotFoundError(name, looked_in, f"TFDS: {one_line(e)}") from e
  if not prepared:
    if not download:
      raise DatasetNotFoundError(name, looked_in, f"not prepared in {builder.data_dir}, and tfds_download is off")
    logging.info("%s: downloading it through TFDS into %s, once (later runs read it there).", _TITLES[name],
                 builder.data_dir)
    start = time.time()
    try:
      with _quiet_bounded_download():
        builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except  # network, disk and TFDS errors alike
      raise DatasetDownloadError(name, str(builder.data_dir), e) from e
    logging.info("%s downloaded and prepared in %.0f s.", _TITLES[name], time.time() - start)
  try:
    datasets = [builder.as_dataset(split=split) for split in ("train", "test")]
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetNotFoundError(name, looked_in, f"TFDS: {one_line(e)}") from e
  splits = {}
  for split, dataset in zip(("train", "test"), datasets):
    chunks = list(tfds.as_numpy(dataset.map(lambda x: (x["image"], x["label"])).batch(10_000)))
    splits[split] = (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
  return splits, list(builder.info.features["label"].names)
