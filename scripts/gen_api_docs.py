"""Writes docs/api.md, the API reference, from the docstrings of everything in `noised_topk_jax.__all__`.

    python scripts/gen_api_docs.py           # regenerate docs/api.md
    python scripts/gen_api_docs.py --check   # exit 1 if docs/api.md is out of date (tests/test_api_docs.py)

The output depends only on the library's source (names, signatures, docstrings, module docstrings), never on the
machine or the JAX backend, so it is reproducible byte for byte. Docstrings are Google style with optax-like
sections; `.. math::` blocks become ```math blocks and `:math:` roles `$...$`, which GitHub renders.
"""
import argparse
import difflib
import inspect
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO, "docs", "api.md")
# Document the checkout's library, not an installed copy.
sys.path.insert(0, REPO)

import noised_topk_jax as ntk  # pylint: disable=g-import-not-at-top,wrong-import-position

# Module order of the reference (users look for losses first); modules not listed follow alphabetically.
MODULE_ORDER = ("losses", "topk", "imbalance", "metrics")
MODULE_TITLES = {
    "losses": "Losses",
    "topk": "Top-k operators",
    "imbalance": "Class statistics",
    "metrics": "Metrics",
}
SECTIONS = ("Args", "Arguments", "Returns", "Yields", "Raises", "Example", "Examples", "Note", "Notes", "References",
            "Reference")
CODE_SECTIONS = ("Example", "Examples")
ITEM_SECTIONS = ("Args", "Arguments", "Raises")


def _module_name(name, obj):
  """Short name of the submodule defining `name` (functions: `__module__`; constants: the first module holding it)."""
  module = getattr(obj, "__module__", None) if callable(obj) else None
  if module and module.startswith(ntk.__name__ + "."):
    return module.split(".")[1]
  for short in MODULE_ORDER:
    mod = sys.modules.get(f"{ntk.__name__}.{short}")
    if mod is not None and vars(mod).get(name) is obj:
      return short
  for full in sorted(sys.modules):
    if full.startswith(ntk.__name__ + ".") and vars(sys.modules[full]).get(name) is obj:
      return full.split(".")[1]
  return "constants"


def _inline(text):
  r"""`:math:`x`` -> `$x$`; everything else is already Markdown (backticks, asterisks)."""
  return re.sub(r":math:`([^`]*)`", r"$\1$", text)


def _dedent(lines):
  indents = [len(l) - len(l.lstrip()) for l in lines if l.strip()]
  cut = min(indents) if indents else 0
  return [l[cut:] for l in lines]


def _strip_blank_edges(lines):
  while lines and not lines[0].strip():
    lines = lines[1:]
  while lines and not lines[-1].strip():
    lines = lines[:-1]
  return lines


def _items(lines):
  """`name: text` entries (continuation lines indented deeper) -> Markdown bullets."""
  out, current = [], None
  for line in _dedent(lines):
    if not line.strip():
      continue
    match = re.match(r"^(\*{0,2}[A-Za-z_][\w.]*)( \([^)]*\))?:\s*(.*)$", line) if not line.startswith(" ") else None
    if match:
      if current:
        out.append(current)
      current = f"- `{match.group(1)}`{match.group(2) or ''}: {_inline(match.group(3))}".rstrip()
    elif current is not None:
      current += " " + _inline(line.strip())
    else:
      out.append(_inline(line.strip()))
  if current:
    out.append(current)
  return out


def _text_block(lines):
  """Free text with `.. math::` directives turned into ```math blocks."""
  out, i = [], 0
  while i < len(lines):
    line = lines[i]
    if line.strip() == ".. math::":
      indent = len(line) - len(line.lstrip())
      block, i = [], i + 1
      while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
        block.append(lines[i])
        i += 1
      out += ["", "```math"] + _strip_blank_edges(_dedent(block)) + ["```", ""]
      continue
    out.append(_inline(line))
    i += 1
  return out


def docstring_to_markdown(doc):
  """Google-style docstring -> Markdown lines."""
  lines = doc.splitlines()
  out, body, section = [], [], None

  def flush():
    if section is None:
      out.extend(_text_block(body))
    elif section in CODE_SECTIONS:
      code = _strip_blank_edges(_dedent(body))
      out.extend([f"**{section}**", "", "```pycon"] + code + ["```"])
    elif section in ITEM_SECTIONS:
      out.extend([f"**{section}**", ""] + _items(body))
    else:
      text = _strip_blank_edges(_dedent(body))
      out.extend([f"**{section}**", ""] + _text_block(text))
    out.append("")

  for line in lines:
    match = re.match(r"^(\w+):\s*$", line)
    if match and match.group(1) in SECTIONS:
      flush()
      section, body = match.group(1), []
    else:
      body.append(line)
  flush()
  # Collapse runs of blank lines.
  collapsed = []
  for line in out:
    line = line.rstrip()
    if line or (collapsed and collapsed[-1]):
      collapsed.append(line)
  return _strip_blank_edges(collapsed)


def _short_annotations():
  """(long form, short form) of the annotations the library uses, longest first: `ArrayLike` is a long Union."""
  import typing  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  array_like = jax.typing.ArrayLike
  pairs = [(typing.Optional[array_like], "Optional[ArrayLike]"), (array_like, "ArrayLike"),
           (typing.Optional[jax.Array], "Optional[jax.Array]"), (jax.Array, "jax.Array"), (np.ndarray, "np.ndarray")]
  return [(inspect.formatannotation(a), short) for a, short in pairs]


def _signature(name, obj):
  try:
    text = f"{name}{inspect.signature(obj)}"
  except (TypeError, ValueError):
    return name
  for long, short in _short_annotations():
    text = text.replace(long, short)
  return text


def _users_of(name, functions):
  """Public functions whose signature, docstring or source mention the constant `name`."""
  users = []
  for fname, fn in functions:
    try:
      source = inspect.getsource(fn)
    except (OSError, TypeError):
      source = inspect.getdoc(fn) or ""
    if re.search(rf"\b{re.escape(name)}\b", source):
      users.append(fname)
  return users


def _anchor(name):
  return name.lower()


def render():
  """The full text of docs/api.md."""
  names = list(ntk.__all__)
  objects = {name: getattr(ntk, name) for name in names}
  groups = {}
  for name in names:
    groups.setdefault(_module_name(name, objects[name]), []).append(name)
  order = [m for m in MODULE_ORDER if m in groups] + sorted(m for m in groups if m not in MODULE_ORDER)
  functions = [(n, o) for n, o in objects.items() if callable(o)]

  def source_line(name):
    obj = objects[name]
    try:
      return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
      return 0  # constants first

  lines = [
      "# API reference",
      "",
      f"`noised_topk_jax` {ntk.__version__}: `import noised_topk_jax as ntk`. "
      "Generated from the docstrings by `python scripts/gen_api_docs.py`; do not edit by hand "
      "(`tests/test_api_docs.py` fails when this file is out of date).",
      "",
  ]
  lines += docstring_to_markdown(inspect.getdoc(ntk) or "")
  lines += ["", "## Contents", ""]
  for module in order:
    groups[module].sort(key=lambda n: (source_line(n), n))
    lines.append(f"- {MODULE_TITLES.get(module, module.capitalize())} (`noised_topk_jax.{module}`)")
    for name in groups[module]:
      doc = inspect.getdoc(objects[name]) if callable(objects[name]) else None
      summary = _inline(doc.split("\n\n")[0].replace("\n", " ")) if doc else f"`{objects[name]!r}`"
      lines.append(f"  - [`{name}`](#{_anchor(name)}): {summary}")
  for module in order:
    mod = sys.modules.get(f"{ntk.__name__}.{module}")
    lines += ["", f"## {MODULE_TITLES.get(module, module.capitalize())}", ""]
    if mod is not None and mod.__doc__:
      lines += docstring_to_markdown(inspect.cleandoc(mod.__doc__))
    for name in groups[module]:
      obj = objects[name]
      lines += ["", f"### {name}", ""]
      if callable(obj):
        lines += ["```python", f"ntk.{_signature(name, obj)}", "```", ""]
        lines += docstring_to_markdown(inspect.getdoc(obj) or "(no docstring)")
      else:
        lines += ["```python", f"ntk.{name} = {obj!r}", "```", ""]
        users = _users_of(name, functions)
        if users:
          lines.append("Used by: " + ", ".join(f"[`{u}`](#{_anchor(u)})" for u in users) + ".")
  return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output", default=DEFAULT_OUTPUT)
  parser.add_argument("--check", action="store_true", help="Compare instead of writing; exit 1 when different.")
  args = parser.parse_args(argv)
  text = render()
  if args.check:
    try:
      with open(args.output, encoding="utf-8") as f:
        current = f.read()
    except FileNotFoundError:
      current = ""
    if current != text:
      diff = difflib.unified_diff(current.splitlines(), text.splitlines(), args.output, "generated", lineterm="")
      print("\n".join(list(diff)[:60]))
      print(f"\n{args.output} is out of date: run `python scripts/gen_api_docs.py`.")
      return 1
    print(f"{args.output} is up to date.")
    return 0
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"Wrote {args.output}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
