"""The docs site's sources are complete and current, checked without building it (`bash scripts/docs.sh` builds it).

- The API pages (docs/api/) document every name of `noised_topk_jax.__all__`, each on the page of its module.
- docs/training.md is what `python -m experiments.flags_doc` writes from the flag definitions now, and lists every
  flag of the binaries.
- Every Markdown page under docs/ sits in a table of contents, and every file a page includes exists (the build
  fails on both too; these tests say so in seconds).
- The examples gallery shows every example; the code of the getting-started page runs.
- The docs environment pins the JAX the tests run with.
"""
import fnmatch
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import noised_topk_jax as ntk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
API = os.path.join(DOCS, "api")
_DOCUMENTED = re.compile(r"^\.\. auto(?:function|data)::\s+(\w+)\s*$", re.MULTILINE)


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _api_pages():
  """{module short name: names documented on docs/api/<module>.md}."""
  pages = {}
  for path in sorted(glob.glob(os.path.join(API, "*.md"))):
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem != "index":
      pages[stem] = _DOCUMENTED.findall(_read(path))
  return pages


def _defining_module(name):
  """Short name of the public module that defines `name` (constants: the public module that holds the object)."""
  obj = getattr(ntk, name)
  if callable(obj):
    return obj.__module__.split(".")[-1]
  for module in _public_modules():
    if vars(importlib.import_module(f"noised_topk_jax.{module}")).get(name) is obj:
      return module
  raise AssertionError(f"{name} is not defined in any public module of noised_topk_jax")


def _public_modules():
  return sorted(os.path.splitext(os.path.basename(p))[0]
                for p in glob.glob(os.path.join(REPO, "noised_topk_jax", "*.py"))
                if not os.path.basename(p).startswith("_"))


def test_api_pages_document_every_public_name_once():
  documented = [name for names in _api_pages().values() for name in names]
  duplicated = sorted({n for n in documented if documented.count(n) > 1})
  assert not duplicated, f"documented twice in docs/api/: {duplicated}"
  missing = sorted(set(ntk.__all__) - set(documented))
  assert not missing, f"public names missing from docs/api/*.md (add an autofunction/autodata line): {missing}"
  unknown = sorted(set(documented) - set(ntk.__all__))
  assert not unknown, f"docs/api/ documents names that are not in noised_topk_jax.__all__: {unknown}"


def test_each_name_is_on_the_page_of_its_module():
  for page, names in _api_pages().items():
    for name in names:
      assert _defining_module(name) == page, f"{name} is on docs/api/{page}.md, defined in {_defining_module(name)}"


def test_every_public_module_has_a_page_in_the_api_index():
  pages = set(_api_pages())
  assert pages == set(_public_modules()), "one page per public module of noised_topk_jax"
  index = _read(os.path.join(API, "index.md"))
  listed = set(_toctree_entries(index))
  assert listed == pages, f"docs/api/index.md's toctree lists {sorted(listed)}, pages are {sorted(pages)}"


def test_training_md_is_up_to_date():
  from experiments import flags_doc  # pylint: disable=g-import-not-at-top
  with open(flags_doc.OUTPUT, encoding="utf-8") as f:
    current = f.read()
  assert current == flags_doc.render(), "docs/training.md is stale: run `python -m experiments.flags_doc`."
  assert REPO not in current


_LIST_FLAGS = """
import json
from absl import flags
from experiments import flags_doc
by_module = flags.FLAGS.flags_by_module_dict()
print(json.dumps({m: [f.name for f in defined] for m, defined in by_module.items() if m.startswith("experiments.")}))
"""


def test_training_md_lists_every_flag_of_the_binaries():
  # In a fresh process, so that only the flags the two binaries bring count (other tests import other binaries).
  proc = subprocess.run([sys.executable, "-c", _LIST_FLAGS], cwd=REPO, capture_output=True, text=True, check=False,
                        env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
  assert proc.returncode == 0, proc.stderr[-3000:]
  by_module = json.loads(proc.stdout.splitlines()[-1])
  from experiments import flags_doc  # pylint: disable=g-import-not-at-top
  from experiments import flags_lib  # pylint: disable=g-import-not-at-top
  from experiments import reproduce  # pylint: disable=g-import-not-at-top
  text = flags_doc.render()
  # Every flag a module of experiments/ defines once the binaries are imported: their own, the config fields of
  # flags_lib, and any that a module they import would add.
  expected = {name for names in by_module.values() for name in names}
  assert set(flags_lib.FIELD_TYPES) <= expected
  listed = re.findall(r"^\| `--(\w+)` \|", text, flags=re.MULTILINE)
  assert sorted(expected - set(listed)) == []
  # Every config flag appears once, in one group; reproduce repeats only its data flags.
  config_rows = [n for n in listed if n in flags_lib.FIELD_TYPES]
  assert sorted(config_rows) == sorted(list(flags_lib.FIELD_TYPES) + list(reproduce.DATA_FLAGS))
  for name in ("dataset", "loss", "k"):  # type, default and help are filled in
    assert re.search(rf"^\| `--{name}` \| \w[\w ]* \| `[^`]+` \| .+ \|$", text, flags=re.MULTILINE), name


def _pages():
  """Docnames (paths under docs/ without .md) of every Markdown page of the site."""
  paths = glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)
  return {os.path.relpath(p, DOCS)[:-3].replace(os.sep, "/") for p in paths
          if not os.path.relpath(p, DOCS).startswith("_build")}


def _toctree_entries(text):
  """Entries of the ```{toctree} blocks of a MyST page, as written (options and blank lines left out)."""
  entries = []
  for block in re.findall(r"^```\{toctree\}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
    entries += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith(":")]
  return entries


def test_every_page_is_in_a_table_of_contents():
  pages = _pages()
  reached = {"index"}
  for page in pages:
    folder = os.path.dirname(page)
    for entry in _toctree_entries(_read(os.path.join(DOCS, page + ".md"))):
      target = os.path.normpath(os.path.join(folder, entry)).replace(os.sep, "/")
      matched = fnmatch.filter(pages, target) if "*" in entry else [target]
      assert matched and set(matched) <= pages, f"docs/{page}.md's toctree names a missing page: {entry}"
      reached.update(matched)
  assert sorted(pages - reached) == [], "pages in no table of contents (add them to a toctree of docs/index.md)"


def test_included_files_exist():
  for page in _pages():
    text = _read(os.path.join(DOCS, page + ".md"))
    targets = re.findall(r"^```\{(?:include|literalinclude)\}\s+(\S+)", text, flags=re.MULTILINE)
    targets += re.findall(r"\{download\}`[^`<]*<([^>]+)>`", text)
    for target in targets:
      path = os.path.normpath(os.path.join(DOCS, os.path.dirname(page), target))
      assert os.path.isfile(path), f"docs/{page}.md includes {target}, which does not exist"


def test_examples_gallery_shows_every_example_and_notebook():
  text = _read(os.path.join(DOCS, "examples.md"))
  for path in sorted(glob.glob(os.path.join(REPO, "examples", "*.py"))):
    assert f"../examples/{os.path.basename(path)}" in text, f"docs/examples.md does not include {path}"
  for path in sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb"))):
    assert f"../notebooks/{os.path.basename(path)}" in text, f"docs/examples.md does not show {path}"


def test_benchmark_results_are_pages_of_the_site():
  for path in sorted(glob.glob(os.path.join(REPO, "benchmarks", "*.md"))):
    name = os.path.basename(path)
    page = os.path.join(DOCS, "performance", "index.md" if name == "README.md" else name)
    assert os.path.isfile(page), f"{path} has no page under docs/performance/"
    assert f"../../benchmarks/{name}" in _read(page)


def test_getting_started_code_runs():
  text = _read(os.path.join(DOCS, "getting_started.md"))
  blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
  assert blocks
  for block in blocks:
    code = compile(block, "docs/getting_started.md", "exec")
    exec(code, {"__name__": "getting_started"})  # pylint: disable=exec-used


def _pins(path):
  pins = {}
  for line in _read(path).splitlines():
    match = re.match(r"^([A-Za-z0-9_.-]+)\s*([=<>!~].*)?$", line.split("#")[0].strip())
    if match:
      pins[match.group(1).lower()] = (match.group(2) or "").strip()
  return pins


def test_docs_requirements_pin_the_tested_jax():
  docs, tested = _pins(os.path.join(DOCS, "requirements.txt")), _pins(os.path.join(REPO, "requirements.txt"))
  for name in ("jax", "jaxlib", "numpy"):
    assert docs[name] == tested[name], f"{name}: docs/requirements.txt {docs[name]}, requirements.txt {tested[name]}"
  for name in ("sphinx", "myst-parser", "furo", "docutils"):
    assert docs[name].startswith("=="), f"{name} is not pinned in docs/requirements.txt"


def test_layout_page_names_every_source_file():
  """docs/layout.md is the map of the checkout: a module or script added without a line there fails here."""
  text = _read(os.path.join(DOCS, "layout.md"))
  missing = []
  for folder, pattern in (("noised_topk_jax", "*.py"), ("experiments", "*.py"), ("experiments/configs", "*.py"),
                          ("scripts", "*"), ("benchmarks", "*.py"), ("examples", "*.py"), ("notebooks", "*.ipynb")):
    for path in sorted(glob.glob(os.path.join(REPO, folder, pattern))):
      name = os.path.basename(path)
      if name == "__init__.py" or not os.path.isfile(path):
        continue
      if f"`{name}`" not in text and f"`{os.path.splitext(name)[0]}" not in text:
        missing.append(f"{folder}/{name}")
  assert not missing, f"docs/layout.md does not mention: {missing}"
