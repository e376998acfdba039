"""Names shared by the models and the torchvision weight converter, importable without JAX (the converter runs on
machines that have only torch and NumPy)."""

# Models for which `experiments/convert_torchvision_weights.py` converts ImageNet weights.
PRETRAINABLE = ("resnet18", "resnet50")
# Name of the classifier submodule in every model; `models.load_pretrained` never loads it.
HEAD_NAME = "head"
# Key of the architecture name stored in converted .npz files.
ARCH_KEY = "__arch__"


def key_problems_report(title: str, sections, limit: int = 20) -> str:
  """`title`, then one line "  label (count): key, key, ... (n more)" per non-empty `(label, keys)` of `sections`
  (at most `limit` keys shown); "" when every section is empty."""
  lines = [title]
  for label, items in sections:
    items = list(items)
    if items:
      more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
      lines.append(f"  {label} ({len(items)}): {', '.join(items[:limit])}{more}")
  return "\n".join(lines) if len(lines) > 1 else ""
