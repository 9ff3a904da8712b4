"""The project's modules import one another without a cycle: data flows one way. An import inside a
function counts as any other, so a cycle cannot hide behind a late import."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("scaling", "analysis", "launch", "configs", "bench")


def _modules() -> dict[str, pathlib.Path]:
  """Every module of the project's packages, by dotted name (a package by its own name)."""
  out = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
      out[name.removesuffix(".__init__")] = path
  return out


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
  """module -> the project's modules that it imports anywhere in its file (at the top or in a function)."""

  def project_module(name: str) -> str | None:  # The module itself, or the package that holds `name`.
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for name, path in modules.items():
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        found |= {project_module(a.name) for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        # `from scaling import grid` imports the module scaling.grid; `from scaling.grid import Run` scaling.grid.
        found |= {project_module(f"{node.module}.{a.name}") or project_module(node.module) for a in node.names}
    graph[name] = found - {None, name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_projects_modules_import_one_another_without_a_cycle():
  graph = import_graph(_modules())
  assert len(graph) > 60 and "scaling.kinds" in graph["launch.local"]  # The graph is the project's.
  assert cycles(graph) == [], "import cycles (each a set of modules that import one another)"


@pytest.mark.parametrize(
  "sources, want",
  [
    ({"a": "from b import x", "b": "def f():\n  import a"}, [["a", "b"]]),  # Hidden in a function: found.
    ({"a": "import b.c", "b": "", "b.c": "from a import y"}, [["a", "b.c"]]),
    ({"a": "import b", "b": "import c", "c": ""}, []),
  ],
)
def test_a_cycle_is_found_wherever_its_imports_are(tmp_path, sources, want):
  modules = {}
  for name, text in sources.items():
    modules[name] = tmp_path / f"{name}.py"
    modules[name].write_text(text)
  assert cycles(import_graph(modules)) == want
