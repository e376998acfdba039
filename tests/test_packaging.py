"""Packaging: `pip install .` gives the library only, with jax and numpy as its only requirements.

One test (so that the wheel is built once, also under pytest-xdist), in two stages:

1. Build the wheel the way pip does for `pip install .` / `pip install git+URL` (`pip wheel --no-deps . -w DIR`,
   with build isolation) from a copy of the repository's files, and check that it holds `noised_topk_jax/` and its
   metadata only, that the version is `noised_topk_jax.__version__`, and that the runtime requirements are exactly
   jax and numpy (the rest sits in the `experiments` and `test` extras).
2. Create a *clean* virtual environment (no system site-packages), `pip install` the wheel there (pip fetches jax
   and numpy from the configured index: PyPI or a mirror; jax is ~100 MB the first time, cached after), check that
   nothing else came with it, and call a loss under `jit` and `grad` from outside the repository. (The examples of
   examples/, which add a Flax stack on top of the library, run in tests/test_examples.py with the pinned
   requirements.txt: installing unpinned flax and optax here would test whatever the index serves that day.)
"""
import email.parser
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

import noised_topk_jax as ntk
from tests import shared_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_REQUIREMENTS = {"jax>=0.10.2", "numpy>=1.26"}
EXPERIMENTS_EXTRA = {"flax", "optax", "chex", "absl-py", "orbax-checkpoint", "tensorflow-cpu; sys_platform != 'darwin'",
                     "tensorflow; sys_platform == 'darwin'", "tensorflow-datasets", "importlib_resources",
                     "tensorboard", "matplotlib", "pillow"}
_SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", "workdir", "workdirs"}


def _repository_files():
  """The files `pip install git+URL` would see: tracked and untracked-but-not-ignored files."""
  try:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(REPO, p))]
  except (OSError, subprocess.CalledProcessError):
    files = []
    for root, dirs, names in os.walk(REPO):
      dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
      files += [os.path.relpath(os.path.join(root, n), REPO) for n in names if not n.endswith(".pyc")]
    return files


def _run(cmd, *, timeout=shared_runs.SUBPROCESS_TIMEOUT_S, **kwargs):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
  assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  source = tmp_path_factory.mktemp("source")
  for rel in _repository_files():
    os.makedirs(os.path.dirname(os.path.join(source, rel)), exist_ok=True)
    shutil.copy2(os.path.join(REPO, rel), os.path.join(source, rel))
  out = tmp_path_factory.mktemp("wheelhouse")
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", str(out)], cwd=source)
  wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
  assert len(wheels) == 1, wheels
  return os.path.join(out, wheels[0])


def _requirements(metadata):
  """(runtime requirements, {extra: requirements}) from the Requires-Dist fields."""
  runtime, extras = set(), {}
  for req in metadata.get_all("Requires-Dist") or []:
    if ";" in req:
      spec, marker = (s.strip() for s in req.split(";", 1))
      extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker).group(1)
      # What is left of the marker once the extra is removed: a platform condition, kept with the requirement.
      rest = re.sub(r"\s*(and\s+)?extra\s*==\s*['\"][^'\"]+['\"]", "", marker).strip()
      rest = re.sub(r"^\((.*)\)$", r"\1", rest).replace('"', "'")
      extras.setdefault(extra, set()).add(spec.replace(" ", "") + (f"; {rest}" if rest else ""))
    else:
      runtime.add(req.replace(" ", ""))
  return runtime, extras


def check_wheel_contents(wheel):
  assert os.path.basename(wheel) == f"noised_topk_jax-{ntk.__version__}-py3-none-any.whl"
  dist_info = f"noised_topk_jax-{ntk.__version__}.dist-info/"
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    metadata = email.parser.Parser().parsestr(z.read(dist_info + "METADATA").decode())
  # The library only: no experiments/, examples/, tests/, notebooks/, scripts/.
  assert all(n.startswith(("noised_topk_jax/", dist_info)) for n in names), names
  modules = sorted(n for n in names if n.startswith("noised_topk_jax/"))
  library = sorted(f"noised_topk_jax/{f}" for f in os.listdir(os.path.join(REPO, "noised_topk_jax"))
                   if f.endswith(".py"))
  assert modules == library
  assert metadata["Name"] == "noised_topk_jax"
  assert metadata["Version"] == ntk.__version__
  assert metadata["Requires-Python"] == ">=3.11"
  assert metadata["License-Expression"] == "Apache-2.0"
  assert dist_info + "licenses/LICENSE" in names, names
  runtime, extras = _requirements(metadata)
  assert runtime == RUNTIME_REQUIREMENTS
  assert extras["experiments"] == EXPERIMENTS_EXTRA
  assert "test" in extras


@pytest.mark.slow
def test_wheel_is_library_only_and_works_in_a_clean_venv(wheel, tmp_path):
  check_wheel_contents(wheel)

  env_dir = tmp_path / "venv"
  # No pip inside (ensurepip alone takes seconds): this interpreter's pip installs into it with `--python`.
  venv.EnvBuilder(with_pip=False, system_site_packages=False, clear=True).create(env_dir)
  python = str(env_dir / "bin" / "python")
  pip = [sys.executable, "-m", "pip", "--python", python]
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
  env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
  work = tmp_path / "elsewhere"  # run outside the repository, so that only the installed copy can be imported
  work.mkdir()

  # --no-compile: byte-compile only what gets imported (compiling all of jax, scipy, flax costs more CPU time).
  _run(pip + ["install", "-q", "--no-compile", wheel], env=env, cwd=work)
  installed = _run(pip + ["list", "--format=freeze"], env=env, cwd=work).lower()
  names = {line.split("==")[0].replace("_", "-") for line in installed.split()}
  assert {"noised-topk-jax", "jax", "jaxlib", "numpy"} <= names, installed
  assert not names & {"flax", "optax", "tensorflow-cpu", "tensorflow-datasets", "absl-py", "matplotlib"}, installed

  check = (
      "import importlib.util, os, sys, jax, jax.numpy as jnp, numpy as np\n"
      "import noised_topk_jax as ntk\n"
      f"assert os.path.realpath(ntk.__file__).startswith(os.path.realpath({str(env_dir)!r})), ntk.__file__\n"
      "assert importlib.util.find_spec('experiments') is None\n"
      "logits = jax.random.normal(jax.random.key(0), (8, 10))\n"
      "labels = jnp.arange(8)\n"
      "margins = ntk.class_margins(np.arange(10, 0, -1) * 100, max_margin=0.2)\n"
      "f = lambda s: ntk.noised_topk_loss(s, labels, k=2, epsilon=0.1, num_samples=3, margins=margins,\n"
      "                                   scale=60.0, key=jax.random.key(1)).mean()\n"
      "loss, grad = jax.jit(jax.value_and_grad(f))(logits)\n"
      "assert np.isfinite(float(loss)) and grad.shape == (8, 10)\n"
      "print('ok', ntk.__version__, float(loss))\n")
  assert _run([python, "-c", check], env=env, cwd=work).startswith(f"ok {ntk.__version__}")
