"""The import structure of `experiments/`, read from the source with `ast` (nothing is imported): no module imports
another that imports it back, directly or through others, and the configuration does not import the data generator."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "experiments"


def _modules():
  """`{dotted name relative to experiments (e.g. "config", "configs.cifar_lt"): path}`; a package is named by its
  folder (`configs` is `configs/__init__.py`)."""
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    rel = os.path.relpath(folder, os.path.join(ROOT, PACKAGE))
    prefix = () if rel == "." else tuple(rel.split(os.sep))
    for f in files:
      if f.endswith(".py"):
        parts = prefix if f == "__init__.py" else prefix + (f[:-3],)
        if parts:
          out[".".join(parts)] = os.path.join(folder, f)
  return out


def _imports(path, modules):
  """The modules of `experiments/` that the file at `path` imports anywhere in it (functions included): `import
  experiments.a`, `from experiments import a`, `from experiments.a import name`, `from experiments.pkg import mod`."""

  def resolve(dotted):
    # The longest prefix that is a module: `experiments.configs.cifar_lt` is configs.cifar_lt, and
    # `experiments.config.Config` is config.
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
      return None
    for end in range(len(parts), 1, -1):
      if ".".join(parts[1:end]) in modules:
        return ".".join(parts[1:end])
    return None

  found = set()
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(resolve(a.name) for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{path}:{node.lineno}: a relative import"
      found.update(resolve(f"{node.module}.{a.name}") for a in node.names)
  return found - {None}


def _graph():
  modules = _modules()
  return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph):
  """One import cycle of `graph` as a list of modules (first == last), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_graph_is_read():
  graph = _graph()
  assert {"train", "train_lib", "config", "set_eval", "configs", "configs.cifar_lt"} <= set(graph)
  assert {"config", "input_pipeline", "set_eval"} <= graph["train_lib"]
  assert "config" in graph["configs.cifar_lt"] and "configs.cifar_lt" in graph["configs.vs_loss"]


def test_cycle_finder_finds_a_pair_and_a_longer_circle():
  assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_two_modules_of_experiments_import_each_other():
  graph = _graph()
  pairs = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
  assert not pairs, f"modules that import each other: {pairs}"
  cycle = _cycle(graph)
  assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_configuration_does_not_import_the_data_generator():
  # config.py takes the generator's defaults from synthetic_lt_spec, which the generator imports too.
  graph = _graph()
  reached, todo = set(), ["config"]
  while todo:
    for nxt in graph[todo.pop()] - reached:
      reached.add(nxt)
      todo.append(nxt)
  assert "synthetic_lt" not in reached, f"config imports synthetic_lt (it reaches {sorted(reached)})"
  assert "synthetic_lt_spec" in graph["config"] and "synthetic_lt_spec" in graph["synthetic_lt"]
