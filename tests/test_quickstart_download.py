"""The quick start off Debian: without the dataset-fashion-mnist package, the default job gets Fashion-MNIST through
TFDS, downloading it on first use; offline, it fails in one line naming the other ways to get the data.

The Debian folder is hidden with `NTK_FASHION_MNIST_DIR` (an empty folder) and TFDS's builder is faked
(`fake_data.mock_fashion_mnist_tfds`), or its download made to fail, so that no test needs the network.
"""
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import configs
from experiments import data_files
from experiments import input_pipeline as ip
from tests import fake_data
from tests import optional
from tests import shared_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DEFAULT_RETRIES = 10  # tensorflow_datasets/core/download/downloader.py, MAX_RETRIES

needs_tfds = optional.needs("tensorflow", "tensorflow_datasets")


@pytest.fixture
def no_debian_package(tmp_path, monkeypatch):
  """A machine without dataset-fashion-mnist: its folder is an empty one."""
  monkeypatch.setenv(ip.FASHION_MNIST_DIR_ENV, str(tmp_path / "no_debian_package"))


def _expected_error(target: str, cause: str) -> str:
  files = ", ".join(f"{f}.gz" for f in data_files.FASHION_MNIST_FILES)
  return (f"Could not download Fashion-MNIST through TFDS into {target} ({cause}). Other ways to get it: on "
          "Debian/Ubuntu `apt-get install dataset-fashion-mnist` (as root) puts its IDX files in "
          f"/usr/share/datasets/fashion-mnist, read when no data_dir is given; or put the four IDX files ({files}, "
          "gzipped or not) in a folder and pass it as data_dir (--data_dir=FOLDER).")


def test_the_debian_folder_is_the_default_and_the_variable_moves_it(monkeypatch, tmp_path):
  monkeypatch.delenv(ip.FASHION_MNIST_DIR_ENV, raising=False)
  assert data_files.fashion_mnist_default_dir() == ip.FASHION_MNIST_DEBIAN_DIR == "/usr/share/datasets/fashion-mnist"
  fake_data.write_fashion_mnist_idx(str(tmp_path), train_per_class=12, test_per_class=2)
  monkeypatch.setenv(ip.FASHION_MNIST_DIR_ENV, str(tmp_path))
  dataset = ip.get_dataset("fashion_mnist_lt", imbalance_ratio=2, validation_per_class=0, download=False)
  assert dataset.num_eval_examples("test") == 20  # read from the generated files, no data_dir given


@pytest.mark.slow
@needs_tfds
def test_the_default_job_downloads_fashion_mnist_through_tfds_and_trains(no_debian_package, tmp_path, capsys):
  from experiments import train_lib  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
  config = configs.get_preset("default").config.replace(
      validation_per_class=5, imbalance_ratio=5.0, epochs=1, batch_size=32, eval_batch_size=50, lr_decay_epochs=(),
      max_steps_per_epoch=2)
  workdir = str(tmp_path / "workdir")
  with fake_data.mock_fashion_mnist_tfds(train_per_class=30, test_per_class=5) as builders:
    results = train_lib.train_and_evaluate(config, workdir)
  # One builder, for TFDS's default data dir (no data_dir given), downloaded once with the bounded retries.
  [builder] = builders
  assert builder.requested_data_dir is None
  assert builder.download_retries == [data_files.TFDS_DOWNLOAD_RETRIES]
  assert downloader.MAX_RETRIES == TFDS_DEFAULT_RETRIES  # restored
  assert "Downloading and preparing" not in capsys.readouterr().out  # TFDS's banner is swallowed
  # Trained on the downloaded data: 25 .. 5 images per class (30 minus 5 for validation, ratio 5), all 50 tested.
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  counts = written["train_class_counts"]
  assert counts[0] == 25 and counts[-1] == 5 and len(counts) == 10
  assert written["class_names"] == list(fake_data.TFDS_FASHION_MNIST_NAMES)
  assert sum(row["test_count"] for row in written["per_class"].values()) == 50
  assert 0 <= written["test"]["top1_accuracy"] <= written["test"]["top2_accuracy"] <= 1
  assert len(written["history"]) == 1 and np.isfinite(written["history"][0]["train"]["loss"])
  assert written["test"] == results["test"]


@needs_tfds
def test_a_failed_download_is_one_line_naming_the_other_ways(no_debian_package, tmp_path):
  error = ConnectionError("Failed to resolve 'fashion-mnist.s3-website.eu-central-1.amazonaws.com'")
  with fake_data.mock_fashion_mnist_tfds(download_error=error) as builders:
    with pytest.raises(ip.DatasetDownloadError) as info:
      ip.get_dataset("fashion_mnist_lt", validation_per_class=0)
  assert builders[0].requested_data_dir is None
  assert str(info.value) == _expected_error(builders[0].data_dir, f"ConnectionError: {error}")
  assert isinstance(info.value, ip.DatasetNotFoundError) and info.value.__cause__ is error
  assert builders[0].download_retries == [data_files.TFDS_DOWNLOAD_RETRIES]

  # With a data_dir that holds no IDX files, TFDS downloads into it.
  data_dir = str(tmp_path / "my_data")
  with fake_data.mock_fashion_mnist_tfds(download_error=error) as builders:
    with pytest.raises(ip.DatasetDownloadError, match="into " + os.path.join(data_dir, "fashion_mnist")):
      ip.get_dataset("fashion_mnist_lt", data_dir=data_dir, validation_per_class=0)
  assert builders[0].requested_data_dir == data_dir


@needs_tfds
def test_with_download_off_nothing_is_downloaded(no_debian_package):
  with fake_data.mock_fashion_mnist_tfds() as builders:
    with pytest.raises(ip.DatasetNotFoundError) as info:
      ip.get_dataset("fashion_mnist_lt", validation_per_class=0, download=False)
  assert not isinstance(info.value, ip.DatasetDownloadError)
  assert builders[0].download_retries == []
  message = str(info.value)
  assert "tfds_download is off" in message and "apt-get install dataset-fashion-mnist" in message
  assert "\n" not in message


@pytest.mark.slow
@needs_tfds
def test_tfds_gives_up_in_seconds_when_no_name_resolves(tmp_path, monkeypatch, capsys, caplog):
  # The real TFDS download, up to the network: no host name resolves, as on a machine without network. TFDS's own
  # 10 retries per URL back off for ~200 s in all before giving up; the loader's 3 for ~1 s. The backoff is counted
  # in the sleeps that the retries ask for (and skipped), not timed: a busy machine must not fail this test. A
  # data_dir without IDX files is the TFDS data dir (TFDS reads $TFDS_DATA_DIR once, when imported).
  caplog.set_level(logging.INFO)

  def no_network(host, *args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known ({host}, simulated)")

  backoff = []
  real_sleep = time.sleep

  def sleep(seconds):
    backoff.append(seconds)
    real_sleep(0)

  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  monkeypatch.setattr(time, "sleep", sleep)
  data_dir = str(tmp_path / "tensorflow_datasets")
  with pytest.raises(ip.DatasetDownloadError) as info:
    ip.get_dataset("fashion_mnist_lt", data_dir=data_dir, validation_per_class=0)
  monkeypatch.setattr(time, "sleep", real_sleep)
  cause = info.value.__cause__
  # ModuleNotFoundError 'importlib_resources' here means TFDS cannot download at all: tensorflow/datasets#11212,
  # TFDS 4.9 uses the package without declaring it (requirements.txt must list it).
  assert "Failed to resolve" in str(cause) or "Name or service not known" in str(cause), repr(cause)
  assert sum(backoff) < 60, backoff
  target = os.path.join(data_dir, "fashion_mnist", "3.0.1")
  assert str(info.value).startswith(f"Could not download Fashion-MNIST through TFDS into {target} (ConnectionError: ")
  assert "\n" not in str(info.value)
  captured = capsys.readouterr()
  assert "Downloading and preparing" not in captured.out and "Dl Completed" not in captured.err
  # urllib3 warns once per retry; the binary drops those lines, and TFDS's INFO and WARNING ones.
  retries = [r for r in caplog.records if r.name.startswith("urllib3")]
  assert retries and all(r.levelname == "WARNING" for r in retries)
  # At most TFDS_DOWNLOAD_RETRIES retries per file: urllib3 counts down the retries left from that bound.
  left = [int(n) for r in retries for n in re.findall(r"Retry\(total=(\d+)", r.getMessage())]
  assert left and max(left) < data_files.TFDS_DOWNLOAD_RETRIES, left
  from experiments import train  # pylint: disable=g-import-not-at-top  (defines the binary's flags)
  quiet = train._QuietLibraries()  # pylint: disable=protected-access
  assert not any(quiet.filter(r) for r in retries)
  assert not any(quiet.filter(r) for r in caplog.records if "tensorflow_datasets" in r.pathname)


_OFFLINE_BINARY = """
import sys
from absl import app
from tensorflow_datasets.core import dataset_builder
def offline(self, *args, **kwargs):
  raise ConnectionError("Failed to resolve 'fashion-mnist.s3-website.eu-central-1.amazonaws.com' (no network)")
dataset_builder.DatasetBuilder.download_and_prepare = offline
from experiments import train
app.run(train.main)
"""


@pytest.mark.slow
@needs_tfds
def test_the_binary_fails_in_one_line_when_the_download_fails(tmp_path):
  # `python -m experiments.train` (its main, under absl), the download of the real TFDS builder replaced by a
  # network failure: exit 1, the one line, no traceback.
  tfds_dir = str(tmp_path / "tensorflow_datasets")
  env = dict(os.environ, NTK_FASHION_MNIST_DIR=str(tmp_path / "empty"), TFDS_DATA_DIR=tfds_dir,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, "-c", _OFFLINE_BINARY, f"--workdir={tmp_path / 'workdir'}"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=shared_runs.SUBPROCESS_TIMEOUT_S,
                       check=False)
  assert out.returncode == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("experiments.train: error:")]
  target = os.path.join(tfds_dir, "fashion_mnist", "3.0.1")
  cause = "ConnectionError: Failed to resolve 'fashion-mnist.s3-website.eu-central-1.amazonaws.com' (no network)"
  assert errors == ["experiments.train: error: " + _expected_error(target, cause)], out.stderr[-3000:]
  assert out.stderr.rstrip("\n").endswith(errors[0])
  assert out.stdout.splitlines() == [f"Preset default; workdir {tmp_path / 'workdir'}"]
