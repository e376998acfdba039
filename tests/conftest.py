"""Test-session setup shared by every test module.

Two forced host devices let the pmap tests run on a CPU-only machine; the flag must be set before JAX initialises
its backend, which is why it lives here and not in the individual tests.
"""
import os
import tempfile

_FLAG = "--xla_force_host_platform_device_count=2"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A persistent XLA compilation cache shared by the test processes (pytest-xdist workers and the binaries the tests
# launch): the training tests compile the same models many times (e.g. one ResNet-32 init and eval step for all 88
# CIFAR-LT presets), so the suite compiles each distinct computation once. Set JAX_COMPILATION_CACHE_DIR to move it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "noised_topk_jax_tests_xla_cache"))
