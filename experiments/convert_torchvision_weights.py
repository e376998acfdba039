r"""Converts a torchvision ResNet-18 / ResNet-50 ImageNet state_dict (.pth) to the .npz read by
`experiments.models.load_pretrained`.

  python -m experiments.convert_torchvision_weights --input resnet50-0676ba61.pth --output resnet50.npz \
      --arch resnet50

Getting the torchvision file (no machine of this project reaches the internet): on a networked machine with torch and
torchvision, either

  python -c "import torch, torchvision; \
    m = torchvision.models.resnet50(weights='IMAGENET1K_V1'); torch.save(m.state_dict(), 'resnet50-0676ba61.pth')"

or download the file torchvision itself fetches, https://download.pytorch.org/models/<file>, with <file> =
resnet50-0676ba61.pth (ResNet50_Weights.IMAGENET1K_V1, the classic `pretrained=True` weights used for Pl@ntNet-300K;
IMAGENET1K_V2 is resnet50-11ad3fa6.pth) or resnet18-f37072fd.pth (ResNet18_Weights.IMAGENET1K_V1), e.g. with
`curl -LO`. Copy the .pth file here (scp, USB, ...) and run this script. It needs torch only to read the .pth file
(`pip install torch`, CPU build); torchvision is not needed here.

Mapping (torchvision name -> flattened Flax variable, "/"-separated as in the .npz):
  conv1.weight [O, I, kh, kw]            -> params/conv1/kernel [kh, kw, I, O]
  bn1.weight / bias                      -> params/bn1/scale / bias
  bn1.running_mean / running_var         -> batch_stats/bn1/mean / var      (num_batches_tracked is dropped)
  layer{i}.{j}.conv{n}.weight            -> params/layer{i}_{j}/conv{n}/kernel
  layer{i}.{j}.bn{n}.*                   -> params|batch_stats/layer{i}_{j}/bn{n}/*
  layer{i}.{j}.downsample.0.weight       -> params/layer{i}_{j}/downsample_conv/kernel
  layer{i}.{j}.downsample.1.*            -> params|batch_stats/layer{i}_{j}/downsample_bn/*
  fc.weight [out, in] / fc.bias          -> params/head/kernel [in, out] / params/head/bias
The head is kept in the file for completeness; `load_pretrained` skips it (the number of classes differs).
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from experiments import weights_format

ARCHS = {
    # arch: (blocks per stage, convs (and BNs) per block)
    "resnet18": ((2, 2, 2, 2), 2),
    "resnet50": ((3, 4, 6, 3), 3),
}
ARCH_KEY = weights_format.ARCH_KEY
HEAD_NAME = weights_format.HEAD_NAME

_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_BLOCK_RE = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")


def expected_torchvision_keys(arch: str) -> list:
  """The keys (without num_batches_tracked) of torchvision's `resnet18()` / `resnet50()` state_dict."""
  stage_sizes, convs = ARCHS[arch]
  bn = ("weight", "bias", "running_mean", "running_var")
  keys = ["conv1.weight"] + [f"bn1.{leaf}" for leaf in bn]
  for stage, size in enumerate(stage_sizes):
    for block in range(size):
      prefix = f"layer{stage + 1}.{block}"
      for n in range(1, convs + 1):
        keys.append(f"{prefix}.conv{n}.weight")
        keys += [f"{prefix}.bn{n}.{leaf}" for leaf in bn]
      # The first block of each stage changes the shape, except ResNet-18's layer1 (64 -> 64, stride 1).
      if block == 0 and (stage > 0 or convs == 3):
        keys.append(f"{prefix}.downsample.0.weight")
        keys += [f"{prefix}.downsample.1.{leaf}" for leaf in bn]
  return keys + ["fc.weight", "fc.bias"]


def _map_key(key: str) -> Optional[tuple]:
  """torchvision key -> (collection, module path, leaf, kind) with kind in {"conv", "linear", "vector"}; None if the
  key is not part of a torchvision ResNet."""
  parts = key.split(".")
  if key == "fc.weight":
    return "params", (HEAD_NAME,), "kernel", "linear"
  if key == "fc.bias":
    return "params", (HEAD_NAME,), "bias", "vector"
  match = _BLOCK_RE.match(key)
  if match:
    module = (f"layer{match.group(1)}_{match.group(2)}",)
    parts = match.group(3).split(".")
  else:
    module = ()
  if len(parts) == 2 and re.fullmatch(r"conv\d+", parts[0]) and parts[1] == "weight":
    return "params", module + (parts[0],), "kernel", "conv"
  if len(parts) == 2 and re.fullmatch(r"bn\d+", parts[0]) and parts[1] in _BN_LEAVES:
    collection, leaf = _BN_LEAVES[parts[1]]
    return collection, module + (parts[0],), leaf, "vector"
  if match and len(parts) == 3 and parts[0] == "downsample":
    if parts[1] == "0" and parts[2] == "weight":
      return "params", module + ("downsample_conv",), "kernel", "conv"
    if parts[1] == "1" and parts[2] in _BN_LEAVES:
      collection, leaf = _BN_LEAVES[parts[2]]
      return collection, module + ("downsample_bn",), leaf, "vector"
  return None


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str) -> Dict[str, np.ndarray]:
  """Maps a torchvision ResNet state_dict given as NumPy arrays to flat Flax keys ("params/layer1_0/conv1/kernel"),
  transposing conv kernels OIHW -> HWIO and the linear weight (out, in) -> (in, out). A "module." prefix
  (DataParallel) is stripped and num_batches_tracked dropped. Raises ValueError listing missing, unexpected and
  malformed keys. Pure NumPy: testable without torch."""
  if arch not in ARCHS:
    raise ValueError(f"Unknown arch {arch!r}; expected one of {tuple(ARCHS)}.")
  state = {}
  for key, value in state_dict.items():
    key = key[len("module."):] if key.startswith("module.") else key
    if key.endswith("num_batches_tracked"):
      continue
    state[key] = np.asarray(value)
  expected = expected_torchvision_keys(arch)
  missing = [k for k in expected if k not in state]
  unexpected = sorted(set(state) - set(expected))
  out, malformed = {}, []
  for key in expected:
    if key not in state:
      continue
    collection, module, leaf, kind = _map_key(key)
    value = state[key]
    ndim = {"conv": 4, "linear": 2, "vector": 1}[kind]
    if value.ndim != ndim:
      malformed.append(f"{key}: expected {ndim} dims, got shape {value.shape}")
      continue
    if kind == "conv":
      value = value.transpose(2, 3, 1, 0)
    elif kind == "linear":
      value = value.T
    out["/".join((collection,) + module + (leaf,))] = np.ascontiguousarray(value, dtype=np.float32)
  report = weights_format.key_problems_report(f"State dict is not a torchvision {arch}:",
                               [("missing", missing), ("unexpected", unexpected), ("malformed", malformed)])
  if report:
    raise ValueError(report)
  return out


def check_against_model(flat: Mapping[str, np.ndarray], arch: str) -> None:
  """Raises ValueError if the converted arrays do not have the shapes of `experiments.models`' `arch` (head
  included, with as many classes as the file's fc layer)."""
  from experiments import models  # jax / flax: imported here to keep the mapping importable on its own

  num_classes = flat[f"params/{HEAD_NAME}/bias"].shape[0]
  shapes = models.variable_shapes(arch, num_classes)
  problems = [f"{k}: missing" for k in shapes if k not in flat]
  problems += [f"{k}: not in the model" for k in flat if k not in shapes]
  problems += [f"{k}: {flat[k].shape} vs model {shapes[k]}" for k in flat if k in shapes and flat[k].shape != shapes[k]]
  if problems:
    raise ValueError(f"Converted weights do not fit models.{arch}: " + "; ".join(problems[:20]))


def _load_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch  # optional dependency, needed only here
  except ImportError as e:
    raise SystemExit("Reading a .pth file needs PyTorch: pip install torch (the CPU build is enough).") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise SystemExit(f"{path} does not hold a state_dict (got {type(obj).__name__}); save model.state_dict().")
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True, help="torchvision state_dict (.pth)")
  parser.add_argument("--output", required=True, help="output .npz")
  parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
  parser.add_argument("--skip_model_check", action="store_true",
                      help="do not compare the shapes with experiments.models (avoids importing jax/flax)")
  args = parser.parse_args(argv)
  flat = convert_state_dict(_load_torch_state_dict(args.input), args.arch)
  if not args.skip_model_check:
    check_against_model(flat, args.arch)
  np.savez(args.output, **flat, **{ARCH_KEY: np.array(args.arch)})
  n = sum(v.size for k, v in flat.items() if k.startswith("params/"))
  print(f"Wrote {len(flat)} arrays ({n:,} parameters) for {args.arch} to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
