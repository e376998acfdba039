"""What tests/conftest.py promises the rest of the suite, checked in a pytest subprocess that loads it as a plugin:
two devices whatever device count the environment passes in, `--without` hiding packages from the tests and from
the processes they start, and `-m torch` refusing to run where torch cannot be imported."""
import os
import subprocess
import sys

import pytest

from tests import optional
from tests import shared_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBES = '''
import subprocess
import sys

import pytest


@pytest.mark.two_devices
def test_two_devices():
  import jax
  assert jax.device_count() == 2


def test_hidden_here_and_in_a_child_process():
  with pytest.raises(ImportError, match="hidden by pytest --without"):
    import matplotlib  # noqa: F401
  child = subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True, text=True)
  assert child.returncode != 0 and "hidden by pytest --without" in child.stderr


@pytest.mark.torch
def test_torch():
  import torch  # noqa: F401
'''


def _pytest(tmp_path, *args, xla_flags):
  probes = tmp_path / "test_probes.py"
  probes.write_text(_PROBES)
  env = dict(os.environ, XLA_FLAGS=xla_flags)
  env.pop("NTK_TEST_WITHOUT", None)
  env.pop("PYTEST_ADDOPTS", None)
  # The project's pytest configuration (strict markers), one process, the conftest as a plugin.
  return subprocess.run([sys.executable, "-m", "pytest", "-c", "pyproject.toml", "--rootdir", str(tmp_path),
                         "-p", "tests.conftest", "-p", "no:cacheprovider", "-n", "0", "-q", *args, str(probes)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=shared_runs.SUBPROCESS_TIMEOUT_S,
                        check=False)


@pytest.mark.slow
def test_an_inherited_device_count_is_replaced_and_without_hides_packages(tmp_path):
  proc = _pytest(tmp_path, "--without=matplotlib",
                 xla_flags="--xla_force_host_platform_device_count=1 --xla_cpu_enable_fast_math=false")
  summary = proc.stdout.strip().splitlines()[-1]
  # The torch probe runs where torch is installed (.venv-torch) and is skipped, naming it, elsewhere.
  if optional.available("torch"):
    assert proc.returncode == 0 and "3 passed" in summary, proc.stdout + proc.stderr
  else:
    assert proc.returncode == 0 and "2 passed, 1 skipped" in summary, proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_torch_tier_refuses_to_run_without_torch(tmp_path):
  proc = _pytest(tmp_path, "--without=torch", "-m", "torch", xla_flags="")
  assert proc.returncode == 4  # pytest's usage error: nothing ran, nothing passed by skipping
  assert "-m torch: torch cannot be imported" in proc.stderr
