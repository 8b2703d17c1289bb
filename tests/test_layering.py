"""The package's import graph flows one way (scripts → library; model ← drafters ← training / inference).

The graph is read from the source with `ast`: every `import` and `from … import` in every module of dsv4, the ones
inside functions included (a lazy import is still a dependency). Importing `dsv4.a.b` from outside `dsv4.a` also
runs `dsv4/a/__init__.py`, so it adds an edge to `dsv4.a`. Checked: no cycle between modules, none between the
sub-packages (each top-level module counts as its own), and the lower layers import nothing from the upper ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dsv4"

# (lower, upper): nothing in `lower` may import anything from `upper`.
FORBIDDEN = [
  ("dsv4.kernels", "dsv4.model"), ("dsv4.kernels", "dsv4.parallel"),
  *[("dsv4.parallel", up) for up in ("dsv4.model", "dsv4.drafters", "dsv4.training", "dsv4.planning",
                                     "dsv4.inference", "dsv4.io", "dsv4.data")],
  *[("dsv4.model", up) for up in ("dsv4.drafters", "dsv4.training", "dsv4.inference", "dsv4.planning", "dsv4.io",
                                  "dsv4.data")],
  *[("dsv4.drafters", up) for up in ("dsv4.training", "dsv4.inference", "dsv4.planning", "dsv4.io")],
  *[("dsv4.io", up) for up in ("dsv4.training", "dsv4.planning")],
  ("dsv4.training", "dsv4.planning"),
  ("dsv4.errors", "dsv4"),
]

# Old import paths kept for branches that still use them: (importer, imported). Remove each with its shim.
SHIMS: set[tuple[str, str]] = set()


def module_names(root: Path) -> dict[str, Path]:
  names = {}
  for path in root.rglob("*.py"):
    parts = path.relative_to(root.parent).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return names


def _resolve(importer: str, is_pkg: bool, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  base = importer.split(".")
  base = base[:len(base) - node.level + (1 if is_pkg else 0)]
  return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
  """The dsv4 modules that importing `name` runs directly (its own imports and the packages they enter)."""
  is_pkg = path.name == "__init__.py"
  targets = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = _resolve(name, is_pkg, node)
      for a in node.names:
        targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
  edges = set()
  for t in targets:
    if not t.startswith("dsv4"):
      continue
    parts = t.split(".")
    for i in range(2, len(parts) + 1):  # the packages entered on the way (the root is always already running)
      prefix = ".".join(parts[:i])
      if prefix in modules and not (name == prefix or name.startswith(prefix + ".")):
        edges.add(prefix)
  return edges


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
  names = module_names(root)
  return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, …, a], or None (iterative DFS, white/grey/black)."""
  state: dict[str, int] = {}
  for start in sorted(graph):
    if state.get(start):
      continue
    stack, path = [(start, iter(sorted(graph.get(start, ()))))], [start]
    state[start] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        state[node] = 2
        stack.pop()
        path.pop()
      elif state.get(child) == 1:
        return path[path.index(child):] + [child]
      elif not state.get(child):
        state[child] = 1
        stack.append((child, iter(sorted(graph.get(child, ())))))
        path.append(child)
  return None


def package_of(module: str) -> str:
  """dsv4.model.moe → dsv4.model; dsv4.errors → dsv4.errors (a top-level module is its own unit)."""
  return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  out: dict[str, set[str]] = {}
  for src, dsts in graph.items():
    if src == "dsv4":  # the root re-exports from everything and nothing imports it
      continue
    out.setdefault(package_of(src), set()).update(package_of(d) for d in dsts if package_of(d) != package_of(src)
                                                  and d != "dsv4")
  return out


def violations(graph: dict[str, set[str]], forbidden=FORBIDDEN, shims=frozenset()) -> list[str]:
  """`importer -> imported` for each edge from a lower package into one above it (`shims` excepted)."""
  inside = lambda mod, pkg: mod == pkg or mod.startswith(pkg + ".")  # noqa: E731
  bad = []
  for src, dsts in sorted(graph.items()):
    for dst in sorted(dsts):
      if (src, dst) in shims:
        continue
      for lower, upper in forbidden:
        if inside(src, lower) and inside(dst, upper) and not (upper == "dsv4" and dst.startswith("dsv4.errors")):
          bad.append(f"{src} -> {dst} ({lower} must not import {upper})")
  return bad


def without_shims(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  return {src: {d for d in dsts if (src, d) not in SHIMS} for src, dsts in graph.items()}


@pytest.fixture(scope="module")
def graph():
  return import_graph()


def test_the_graph_sees_every_kind_of_import(graph):
  # A top-level import, a lazy one inside a method, and the package __init__ a submodule import runs.
  assert "dsv4.model.layers" in graph["dsv4.model.moe"]
  assert "dsv4.parallel.rules" in graph["dsv4.training.distill"]
  assert "dsv4.parallel" in graph["dsv4.training.distill"]
  assert "dsv4.inference.generate" in graph["dsv4"]  # inside `def generate` of dsv4/__init__.py
  assert "dsv4.errors" in graph["dsv4.model.config"]


def test_no_module_cycles(graph):
  assert find_cycle(without_shims(graph)) is None, " -> ".join(find_cycle(without_shims(graph)))


def test_no_package_cycles(graph):
  cycle = find_cycle(package_graph(without_shims(graph)))
  assert cycle is None, " -> ".join(cycle)


def test_lower_layers_import_nothing_above(graph):
  assert violations(graph, shims=SHIMS) == []


def test_shims_are_still_needed(graph):
  # A listed shim edge that no longer exists is stale: remove it from SHIMS.
  assert [s for s in SHIMS if s[1] not in graph.get(s[0], set())] == []


def test_checks_fail_on_a_bad_graph():
  cyclic = {"dsv4.a.x": {"dsv4.b.y"}, "dsv4.b.y": {"dsv4.b.z"}, "dsv4.b.z": {"dsv4.a.x"}, "dsv4.c": set()}
  assert find_cycle(cyclic) == ["dsv4.a.x", "dsv4.b.y", "dsv4.b.z", "dsv4.a.x"]
  assert find_cycle({"dsv4.a.x": {"dsv4.a.x"}}) == ["dsv4.a.x", "dsv4.a.x"]
  assert find_cycle({"dsv4.a.x": {"dsv4.b.y"}, "dsv4.b.y": set()}) is None
  # Modules without a cycle whose packages form one.
  assert find_cycle({"dsv4.a.x": {"dsv4.b.y"}, "dsv4.b.z": {"dsv4.a.w"}}) is None
  assert find_cycle(package_graph({"dsv4.a.x": {"dsv4.b.y"}, "dsv4.b.z": {"dsv4.a.w"}})) is not None
  upward = {"dsv4.parallel.rules": {"dsv4.training.distill"}, "dsv4.training.distill": {"dsv4.parallel.rules"}}
  assert violations(upward) == ["dsv4.parallel.rules -> dsv4.training.distill (dsv4.parallel must not import "
                                "dsv4.training)"]
  assert violations(upward, shims={("dsv4.parallel.rules", "dsv4.training.distill")}) == []


def test_the_graph_reads_lazy_and_relative_imports(tmp_path):
  pkg = tmp_path / "dsv4"
  (pkg / "a").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a" / "__init__.py").write_text("from . import x\n")
  (pkg / "a" / "x.py").write_text("def f():\n  from dsv4.b import y\n  return y\n")
  (pkg / "b.py").write_text("import dsv4.a.x\n")
  g = import_graph(pkg)
  assert g["dsv4.a"] == {"dsv4.a.x"}
  assert g["dsv4.a.x"] == {"dsv4.b"}
  assert g["dsv4.b"] == {"dsv4.a", "dsv4.a.x"}
  assert find_cycle(g) is not None


def test_every_dsv4_import_names_a_module_that_exists():
  """A lazy import of a moved module fails only when its function runs: catch it here, for every module."""
  names = module_names(ROOT)
  missing = []
  for name, path in names.items():
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        wanted = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = _resolve(name, is_pkg, node)
        wanted = [base] if base.startswith("dsv4") else []
      else:
        continue
      missing += [f"{name} imports {w}" for w in wanted if w.startswith("dsv4") and w not in names]
  assert not missing, "\n".join(missing)


def _outside_imports() -> list[tuple[Path, int, str, str | None]]:
  """(file, line, module, name or None) for every dsv4 import in scripts/, configs/, experiments/ and tests/."""
  found = []
  for folder in ("scripts", "configs", "experiments", "tests"):
    for path in sorted((ROOT.parent / folder).rglob("*.py")):
      for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
          found += [(path, node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "dsv4"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "dsv4":
          found += [(path, node.lineno, node.module, a.name) for a in node.names]
  return found


def test_every_dsv4_name_imported_by_scripts_configs_experiments_and_tests_exists():
  """Outside the package a stale import shows only when that script or experiment runs (a measurement script kept
  importing a function from the module it had left): import every module named and look each name up."""
  import importlib

  imports = _outside_imports()
  assert len({p.parts[len(ROOT.parent.parts)] for p, *_ in imports}) == 4  # every folder was read
  missing = []
  for path, line, module, name in imports:
    where = f"{path.relative_to(ROOT.parent)}:{line}"
    try:
      mod = importlib.import_module(module)
    except ImportError as e:
      missing.append(f"{where}: {module} ({e})")
      continue
    is_submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
    if name and name != "*" and not hasattr(mod, name) and not is_submodule:
      missing.append(f"{where}: {module} has no {name}")
  assert not missing, "\n".join(missing)
