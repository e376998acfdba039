"""Sphinx configuration of the docs site: `bash scripts/docs.sh` builds it into docs/_build/html.

The API pages (docs/api/) are generated from the docstrings by autodoc + napoleon, as optax's and chex's are; the
other pages are the repository's Markdown files, read by myst-parser. The build runs with warnings as errors
(`-W --keep-going -n`), so a broken cross-reference, a link to a missing page or a page in no table of contents
fails it.
"""
import os
import re
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
# Document the checkout's library, not an installed copy.
sys.path.insert(0, os.path.dirname(DOCS))

import noised_topk_jax  # pylint: disable=g-import-not-at-top,wrong-import-position

project = "noised_topk_jax"
author = "noised_topk_jax contributors"
copyright = "noised_topk_jax contributors"  # pylint: disable=redefined-builtin
release = version = noised_topk_jax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "requirements.txt", "**/runs.csv", "**/table.csv"]

# The docstrings write code in single backquotes, as Markdown does (see `_literal_code_spans` below).
default_role = "code"

# Docstrings: Google style with optax's sections (Args, Returns, Raises, Example, References).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False
add_module_names = False

# Markdown pages.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# The grid tables written by `experiments.aggregate` (docs/results/<grid>/table.md) go from their title (#) to
# sections of level 3 (###): a style remark about generated files, not a broken page, so it is not an error here.
suppress_warnings = ["myst.header"]

# Nitpicky mode checks every cross-reference; those into other projects' docs cannot resolve offline (no
# intersphinx inventories are fetched), so they are listed here. Everything of this project must resolve.
nitpicky = True
nitpick_ignore_regex = [
    ("py:class", r"(jax|jaxlib|numpy|np|typing|collections\.abc)\..*"),
]

# Straight quotes: in this API, "auto" is a value to type, not prose.
smartquotes = False

html_theme = "furo"
html_title = f"noised_topk_jax {release}"
html_static_path = []
html_show_sourcelink = False

# The docstrings write code in single backquotes, as Markdown does (`labels.shape[:-1]`); `default_role` renders them
# as code. Napoleon 9 no longer shields single-backquote spans when it splits a Returns line at its first colon
# ("type: description"), so `scores.shape[:-1]` would be cut in two. Turning each span into an RST literal before
# napoleon reads the docstring (priority 400 < napoleon's 500) renders the same and keeps it whole; `:math:` roles
# are left alone.
_CODE_SPAN = re.compile(r"(?<![`:\\])`([^`\n]+)`(?![`_])")


def _literal_code_spans(app, what, name, obj, options, lines):
  del app, name, options
  if what == "data" and "\n".join(lines).strip() == (type(obj).__doc__ or "").strip():
    lines[:] = []  # a constant (a tuple) has no docstring of its own; the page says what it holds
    return
  lines[:] = [_CODE_SPAN.sub(r"``\1``", line) for line in lines]


# The annotations are evaluated, so `jax.typing.ArrayLike` reaches autodoc as the Union it stands for (eight types)
# and `jax.Array` as `jax.jaxlib._jax.Array`; the signatures show the names the source writes instead.
def _annotation_names():
  import jax  # pylint: disable=g-import-not-at-top
  from sphinx.util import typing as sphinx_typing  # pylint: disable=g-import-not-at-top
  pairs = []
  for mode, prefix in (("smart", "~"), ("fully-qualified-except-typing", ""), ("fully-qualified", "")):
    for annotation, name in ((jax.typing.DTypeLike, "jax.typing.DTypeLike"),
                             (jax.typing.ArrayLike, "jax.typing.ArrayLike"), (jax.Array, "jax.Array")):
      pairs.append((sphinx_typing.stringify_annotation(annotation, mode), prefix + name))
  return pairs


_ANNOTATION_NAMES = _annotation_names()


def _short_annotations(app, what, name, obj, options, signature, return_annotation):
  del app, what, name, obj, options
  for long, short in _ANNOTATION_NAMES:
    signature = signature and signature.replace(long, short)
    return_annotation = return_annotation and return_annotation.replace(long, short)
  return signature, return_annotation


def setup(app):
  app.connect("autodoc-process-docstring", _literal_code_spans, priority=400)
  app.connect("autodoc-process-signature", _short_annotations)
