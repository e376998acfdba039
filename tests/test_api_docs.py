"""docs/api.md is generated from the docstrings by scripts/gen_api_docs.py and must be up to date."""
import importlib.util
import os
import re

import noised_topk_jax as ntk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_MD = os.path.join(REPO, "docs", "api.md")


def _load_generator():
  spec = importlib.util.spec_from_file_location("gen_api_docs", os.path.join(REPO, "scripts", "gen_api_docs.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_api_md_is_up_to_date():
  generated = _load_generator().render()
  with open(API_MD, encoding="utf-8") as f:
    current = f.read()
  assert current == generated, "docs/api.md is out of date: run `python scripts/gen_api_docs.py` and commit it."


def test_render_is_deterministic_and_complete():
  gen = _load_generator()
  text = gen.render()
  assert text == gen.render()
  headings = re.findall(r"^### (\w+)$", text, flags=re.MULTILINE)
  assert sorted(headings) == sorted(ntk.__all__)
  # Every function shows its signature, and no machine-specific path leaks into the file.
  for name in ntk.__all__:
    if callable(getattr(ntk, name)):
      assert f"ntk.{name}(" in text
  assert REPO not in text


def test_docstring_conversion():
  gen = _load_generator()
  doc = "\n".join([
      "Summary with :math:`x^2`.",
      "",
      ".. math::",
      "  \\ell = x",
      "",
      "Args:",
      "  a: first,",
      "    continued.",
      "  b: second.",
      "",
      "Returns:",
      "  The value.",
      "",
      "Example:",
      "  >>> 1 + 1",
      "  2",
  ])
  md = "\n".join(gen.docstring_to_markdown(doc))
  assert "Summary with $x^2$." in md
  assert "```math\n\\ell = x\n```" in md
  assert "- `a`: first, continued.\n- `b`: second." in md
  assert "**Returns**\n\nThe value." in md
  assert "```pycon\n>>> 1 + 1\n2\n```" in md
