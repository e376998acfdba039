"""Shared helpers of the benchmarks: timing, machine description, and writing sections of RESULTS.md."""
import datetime
import os
import platform
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")

if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def interleaved_times(fns, *, repeats, warmup=2, max_seconds=None, min_repeats=3):
  """Round-robin timing of `fns` (name -> callable that blocks until its result is ready).

  Every round calls each function once, so a change of machine load hits all of them alike. A function whose total
  time passes `max_seconds` stops being timed once it has `min_repeats` samples. Returns name -> list of seconds.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      if max_seconds is not None and len(times[name]) >= min_repeats and sum(times[name]) > max_seconds:
        continue
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def median_ms(samples):
  return 1e3 * statistics.median(samples)


def median_ratio(numerators, denominators):
  """Median of the element-wise ratios of two equally long lists of times (one pair per interleaved round)."""
  return statistics.median(a / b for a, b in zip(numerators, denominators))


def load_average():
  try:
    return os.getloadavg()
  except OSError:
    return (float("nan"),) * 3


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def usable_cores():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count()


def machine_description(jax, torch=None, torch_device=None):
  devices = jax.devices()
  lines = [
      f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
      f"- Host: {cpu_model()}, {usable_cores()} usable cores, Python {platform.python_version()}, "
      f"{platform.system()} {platform.machine()}",
      f"- JAX {jax.__version__}, backend `{jax.default_backend()}`, device `{devices[0].device_kind}` "
      f"(x{len(devices)})",
  ]
  if torch is not None:
    lines.append(f"- PyTorch {torch.__version__} on `{torch_device}`, {torch.get_num_threads()} intra-op threads")
  return lines


def write_section(name, text, path=RESULTS):
  """Replaces (or appends) the block between `<!-- name:begin -->` and `<!-- name:end -->` in `path`."""
  begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
  block = f"{begin}\n{text.rstrip()}\n{end}"
  old = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
  pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
  new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
  with open(path, "w") as f:
    f.write(new)


def report(name, text, *, write):
  """Prints a benchmark's Markdown section and, with `write`, stores it as section `name` of RESULTS.md."""
  print(text)
  if write:
    write_section(name, text)

