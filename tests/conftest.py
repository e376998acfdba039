"""Test-session setup shared by every test module.

Two forced host devices let the pmap tests run on a CPU-only machine; the flag must be set before JAX initialises
its backend, which is why it lives here and not in the individual tests.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=2"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
