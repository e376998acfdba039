"""Test-session setup shared by every test module.

Two forced host devices let the pmap tests run on a CPU-only machine; the flag must be set before JAX initialises
its backend, which is why it lives here and not in the individual tests. It replaces any device count inherited
through XLA_FLAGS, so that the `two_devices` tests always see two devices (and assert it, rather than skip).

The markers (pyproject.toml): `slow` (trainings, subprocesses, end to end; `-m "not slow"` is the inner loop),
`two_devices`, `torch` (skipped without PyTorch; `-m torch` where torch is missing is an error, so that the run
made for them cannot pass by skipping them all). docs/testing.md describes the tiers.

`--without=torch,matplotlib,...` makes those packages unimportable in the tests and in every process they start, so
the suite can be checked as it runs on a machine without them (tests that need one skip, naming it):

    bash scripts/test.sh --without=torch,tensorflow,tensorboard,matplotlib,nbclient
"""
import gc
import os
import sys
import tempfile

import pytest

from tests import fake_data
from tests import optional

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG + "=")]
    + [f"{_DEVICE_COUNT_FLAG}=2"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A persistent XLA compilation cache shared by the test processes (pytest-xdist workers and the binaries the tests
# launch) and kept between runs: the suite compiles each distinct computation once. Every compilation is kept, not
# only those over JAX's default 1 s: the library's tests compile thousands of small programs (each parametrized
# shape, dtype and eager primitive), and reading them back makes a second `-m "not slow"` run 2.5x faster (200 s ->
# 78 s on 2 cores). Set JAX_COMPILATION_CACHE_DIR to move it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "noised_topk_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_addoption(parser):
  parser.addoption("--without", default="", metavar="PACKAGES",
                   help="comma-separated top-level packages to make unimportable (optional-package check)")


def pytest_configure(config):
  _hide(config)
  if config.getoption("markexpr").strip() == "torch" and not optional.available("torch"):
    raise pytest.UsageError(
        f"-m torch: torch cannot be imported by {sys.executable}. The torch tests run in their own environment: "
        "NTK_VENV=.venv-torch NTK_REQUIREMENTS=benchmarks/requirements.txt bash scripts/test.sh -m torch")


def _hide(config):
  """Makes the packages named by `--without` unimportable here and in every process the tests start."""
  names = [n.strip() for n in config.getoption("--without").split(",") if n.strip()]
  if not names:
    return
  loaded = sorted(n for n in names if n in sys.modules)
  if loaded:
    raise pytest.UsageError(f"--without: {loaded} already imported before the tests started")
  # A folder of stand-in packages that raise ImportError, first on the path of this process and of its children.
  shadow = tempfile.mkdtemp(prefix="ntk_without_")
  for name in names:
    os.makedirs(os.path.join(shadow, name))
    with open(os.path.join(shadow, name, "__init__.py"), "w") as f:
      f.write(f"raise ImportError('{name} is hidden by pytest --without')\n")
  sys.path.insert(0, shadow)
  os.environ["NTK_TEST_WITHOUT"] = ",".join(names)  # read by tests/optional.py
  os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [shadow, os.environ.get("PYTHONPATH")]))


def pytest_collection_modifyitems(config, items):
  # The slow tests first (otherwise in collection order): pytest-xdist's workers then end on short tests, together,
  # instead of one worker running the last long training while the other waits.
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
  if optional.available("torch"):
    return
  skip = pytest.mark.skip(reason="needs torch (optional; CI runs these in .venv-torch: docs/testing.md)")
  for item in items:
    if item.get_closest_marker("torch"):
      item.add_marker(skip)


@pytest.fixture(autouse=True)
def _two_devices(request):
  """A `two_devices` test fails, never skips, without the two devices this file forces."""
  if request.node.get_closest_marker("two_devices"):
    import jax  # pylint: disable=g-import-not-at-top
    assert jax.device_count() == 2, (f"a two_devices test sees {jax.devices()}; tests/conftest.py forces two host "
                                     "devices on a CPU (deselect these on one accelerator: -m 'not two_devices')")
  yield


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
  """Generated Fashion-MNIST IDX files (60 training and 12 test images per class) for the tiny training runs."""
  d = str(tmp_path_factory.mktemp("fashion"))
  fake_data.write_fashion_mnist_idx(d, train_per_class=60, test_per_class=12)
  return d


def _memory_map_count():
  try:
    with open("/proc/self/maps") as f:
      return sum(1 for _ in f)
  except OSError:  # Not Linux.
    return 0


@pytest.fixture(autouse=True)
def _release_compiled_executables():
  """Clears JAX's compilation caches once a test process holds many memory mappings.

  Every compiled XLA:CPU executable keeps a few memory mappings until it is freed; a pytest-xdist worker that runs
  dozens of ResNet trainings (~1,000-2,500 mappings each) would otherwise reach the kernel's vm.max_map_count
  (65,530 by default) and abort. Clearing only past a threshold keeps the cheap in-memory cache hits elsewhere.
  """
  yield
  if _memory_map_count() > 20_000:
    import jax  # pylint: disable=g-import-not-at-top
    jax.clear_caches()
    gc.collect()
