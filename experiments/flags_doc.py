"""Writes docs/training.md, the flag reference of the training binaries, from the flag definitions themselves.

    python -m experiments.flags_doc           # regenerate docs/training.md
    python -m experiments.flags_doc --check   # exit 1 if docs/training.md is stale (tests/test_docs.py runs this)

Every flag of `experiments.train`, `experiments.reproduce`, `experiments.tune` and `experiments.tuned` is listed with its type, default and help, read from
the absl flag objects the binaries define at import. The config flags (one per field of `experiments.config.Config`,
`experiments/flags_lib.py`) are grouped by the section comments of the `Config` dataclass, in its order, and their
default is the value of the embedded default preset (`--config=default`), what a run gets without flags. The page
depends only on the source, never on the machine, so it is reproducible byte for byte.
"""
import argparse
import dataclasses
import difflib
import inspect
import os
import re
import sys

from absl import flags

from experiments import config as config_lib
from experiments import configs
from experiments import flags_lib
from experiments import reproduce
from experiments import train
from experiments import tune
from experiments import tuned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "docs", "training.md")
COMMAND = "python -m experiments.flags_doc"

FLAGS = flags.FLAGS
_PRESET_SUFFIX = " Overrides the preset."
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "string", tuple: "list of int"}


def _escape(text, chars="|<*$"):
  """Markdown text: `chars` escaped outside code spans (`<grid>` is not an HTML tag, `|` not a table column, `$`
  not the start of a formula)."""
  parts = re.split(r"(`[^`]*`)", text)
  for i in range(0, len(parts), 2):
    parts[i] = re.sub(f"([{re.escape(chars)}])", r"\\\1", parts[i])
  return "".join(parts).replace("\n", " ")


def _value(value):
  """A default as it is typed on the command line."""
  if value is None:
    return "unset"
  if isinstance(value, bool):
    return "`true`" if value else "`false`"
  if isinstance(value, (tuple, list)):
    return "`" + ",".join(str(v) for v in value) + "`"
  return f"`{value}`"


def _help(flag):
  text = flag.help
  if text.endswith(_PRESET_SUFFIX):
    text = text[:-len(_PRESET_SUFFIX)]
  values = getattr(flag.parser, "enum_values", None)
  if values:  # absl writes an enum's values as a "<a|b|c>: " prefix of its help
    text = re.sub(r"^<[^>]*>: ", "", text) + " One of " + ", ".join(f"`{v}`" for v in values) + "."
  return _escape(text)


def _absl_type(flag):
  if getattr(flag.parser, "enum_values", None):
    return "enum"
  return {"comma separated list of strings": "list of string"}.get(flag.flag_type(), flag.flag_type())


def _table(rows):
  lines = ["| flag | type | default | help |", "|---|---|---|---|"]
  lines += [f"| `--{name}` | {type_} | {default} | {help_} |" for name, type_, default, help_ in rows]
  return lines


def _flag_rows(names):
  """Rows of flags that have their own absl default (the binaries' own flags, not the config fields)."""
  return [(name, _absl_type(FLAGS[name]), _value(FLAGS[name].default), _help(FLAGS[name])) for name in names]


def _config_rows(names, preset_config):
  return [(name, _TYPE_NAMES.get(flags_lib.FIELD_TYPES[name], "string"), _value(getattr(preset_config, name)),
           _help(FLAGS[name])) for name in names]


def _split_comment(comment):
  """A section comment of `Config` -> (heading, note): the heading is its text up to the first ": ", " (" or
  ". "; the note, the whole comment, unless the heading already says it all."""
  title = re.split(r":\s|\s\(|\.\s", comment, maxsplit=1)[0].rstrip(".")
  return title, "" if comment.rstrip(".") == title else comment


def config_groups():
  """[(title, note, [field names])] from the section comments of `Config`, in the order of its fields."""
  fields = [f.name for f in dataclasses.fields(config_lib.Config)]
  groups, comment, seen = [], [], set()
  for line in inspect.getsource(config_lib.Config).splitlines():
    standalone = re.match(r"^  # ?(.*)$", line)
    field = re.match(r"^  (\w+)\s*:", line)
    if standalone:
      comment.append(standalone.group(1).strip())
    elif field and field.group(1) in fields:
      if comment or not groups:
        groups.append((*_split_comment(" ".join(comment)), []) if comment else ("Other", "", []))
        comment = []
      groups[-1][2].append(field.group(1))
      seen.add(field.group(1))
    elif line.strip():
      comment = []
  missing = [name for name in fields if name not in seen]
  if missing:
    groups.append(("Other", "", missing))
  return [(title, note, [n for n in names if n in FLAGS]) for title, note, names in groups]


def _docstring(module):
  """A module docstring as Markdown: indented lines become a bash block, the rest stays text."""
  out, block = [], []
  for line in inspect.cleandoc(module.__doc__).splitlines():
    if line.startswith("  "):
      block.append(line[2:])
      continue
    if block:
      out += ["```bash"] + block + ["```"]
      block = []
    out.append(_escape(line, "<$"))
  if block:
    out += ["```bash"] + block + ["```"]
  return out


def _own_flags(binary):
  """The flags `binary` defines itself and those it shares with the other binaries (flags_lib.SHARED_FLAGS)."""
  names = list(binary.SHARED_FLAGS) + [f.name for f in FLAGS.flags_by_module_dict()[binary.__name__]]
  return sorted(names, key=lambda name: name == "worker_index")  # stable: the internal flag last


def render():
  """The full text of docs/training.md."""
  default = configs.get_preset("default").config
  train_own = _own_flags(train)
  reproduce_own = _own_flags(reproduce)
  tune_own = _own_flags(tune)
  tuned_own = _own_flags(tuned)
  lines = [
      "# Training binaries: every flag",
      "",
      f"Generated from the flag definitions by `{COMMAND}`; do not edit by hand (`tests/test_docs.py` fails",
      "when this page is stale). Flags are absl flags: `--name=value`, and for a bool also `--name` / `--noname`;",
      "`--helpfull` prints them in the terminal. A list is comma-separated.",
      "",
      "## `python -m experiments.train`",
      "",
  ]
  lines += _docstring(train)
  lines += ["", "### Run flags", ""] + _table(_flag_rows(train_own))
  lines += ["", "`--config` takes the name of a preset: the [presets](#presets) are listed at the end of this page."]
  lines += [
      "",
      "### Config flags",
      "",
      "Every other flag sets one field of the run's `Config` (`experiments/config.py`) and overrides the preset's "
      "value of it; a flag not given keeps the preset's. The default column is the value of the embedded default "
      "preset (`--config=default`), which is what `python -m experiments.train` runs with no flag. `validate` "
      "rejects unknown values and inconsistent combinations before anything runs, naming the field.",
  ]
  for title, note, names in config_groups():
    if not names:
      continue
    lines += ["", f"#### {title}", ""]
    if note:
      lines += [note, ""]
    lines += _table(_config_rows(names, default))
  lines += ["", "## `python -m experiments.reproduce`", ""]
  lines += _docstring(reproduce)
  lines += ["", "### Flags", ""] + _table(_flag_rows(reproduce_own))
  lines += [
      "",
      "Passed on to every run (the training binary's flags of the same names, unset by default):",
      "",
  ]
  lines += _table([(n, t, "unset", h) for n, t, _, h in _config_rows(reproduce.DATA_FLAGS, default)])
  lines += ["", "## `python -m experiments.tune`", ""]
  lines += _docstring(tune)
  lines += ["", "### Flags", ""] + _table(_flag_rows(tune_own))
  lines += ["", "Every config flag of `experiments.train` is accepted too: it overrides the preset and fixes the field "
            "(it is not searched). The search space is on [tuning](tuning.md)."]
  lines += ["", "## `python -m experiments.tuned`", ""]
  lines += _docstring(tuned)
  lines += ["", "### Flags", ""] + _table(_flag_rows(tuned_own))
  lines += [
      "",
      "## Presets",
      "",
      f"`python -m experiments.train --config=NAME` runs one of {len(configs.PRESETS)} presets, each a `Config` for "
      "one experiment (its settings are in `experiments/configs/`), with the flags of the last column where it "
      "needs data or weights; flags given after it override its fields. `python -m experiments.train "
      "--config=list` prints the same list, and a grid of `experiments.reproduce` runs a set of them over seeds.",
      "",
      "| preset | what it trains | flags its command adds |",
      "|---|---|---|",
  ]
  for p in configs.PRESETS.values():
    extra = p.command.split(f"--config={p.name}", 1)[1].strip()
    lines.append(f"| `{p.name}` | {_escape(p.description)} | {f'`{extra}`' if extra else ''} |")
  return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output", default=OUTPUT)
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
      print(f"\n{args.output} is out of date: run `{COMMAND}`.")
      return 1
    print(f"{args.output} is up to date.")
    return 0
  with open(args.output, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"Wrote {args.output}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
