"""The package's module graph, computed from the source: layers import downward only.

Every ``import`` counts, at module level or inside a function (and under ``TYPE_CHECKING``): a
deferred import still couples two modules, it only hides the cycle from the interpreter.
"""

import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGE = os.path.join(REPO, "vlpt")


def _modules() -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        out[module.removesuffix(".__init__")] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """vlpt module -> the vlpt modules it imports (``from pkg import mod`` names the module)."""
  modules = _modules()

  def resolve(name: str) -> str:
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name

  graph = {}
  for module, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets.update(resolve(a.name) for a in node.names if a.name.startswith("vlpt"))
      elif (
        isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vlpt")
      ):
        targets.update(resolve(f"{node.module}.{a.name}") for a in node.names)
    targets.discard(module)
    targets.discard("")
    graph[module] = targets
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  graph = import_graph()
  assert len(graph) > 60  # the walk found the package
  assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    for w in graph[todo.pop()]:
      if w not in seen:
        seen.add(w)
        todo.append(w)
  return seen


def test_layers_import_downward_only():
  graph = import_graph()
  assert graph["vlpt.config"] == set() and graph["vlpt.errors"] == set()
  upper = ("vlpt.train", "vlpt.cli", "vlpt.pretrained")
  for lower in ("vlpt.config", "vlpt.errors", "vlpt.registry", "vlpt.sharding"):
    assert graph[lower] <= {"vlpt.errors"}, (lower, graph[lower])
  for module in graph:
    if module.startswith(
      ("vlpt.models", "vlpt.losses", "vlpt.data", "vlpt.weights", "vlpt.evaluation", "vlpt.optim")
    ):
      assert not {t for t in _reachable(graph, module) if t.startswith(upper)}, module
  # models name logical axes only: no mesh, no sharding module
  for module in graph:
    if module.startswith("vlpt.models"):
      assert "vlpt.sharding" not in _reachable(graph, module), module
      with open(_modules()[module], encoding="utf-8") as f:
        assert "Mesh" not in f.read(), module


def test_config_loads_without_jax_or_other_vlpt_modules():
  code = (
    "import sys, vlpt.config as c; c.load_config(sys.argv[1]); "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vlpt', 'jax', 'flax')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, os.path.join(REPO, "configs", "clip.py:B16")],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
  ).stdout
  assert out.strip() == "['vlpt', 'vlpt.config']"
