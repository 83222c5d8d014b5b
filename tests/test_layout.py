"""The package layout: no import circles, and only ``det_al/inference/`` runs a model.

Both checks read the source with :mod:`ast`; nothing is imported.

- Import graph: an edge ``a -> b`` for every ``import det_al.b`` / ``from det_al.b import x``
  (``from det_al.pkg import mod`` points at the module ``det_al.pkg.mod`` when it is one) at
  *module level*, including ``if TYPE_CHECKING:`` blocks and ``try:`` bodies. Imports inside a
  function or method are not edges: they run at call time, after every module is loaded, and
  some exist precisely to keep ``import det_al`` cheap. A cycle among module-level imports fails.
- Forward calls: a call ``model(...)``, ``<anything>.model(...)`` or ``<anything>.forward(...)``
  in a module outside ``det_al/inference/`` fails. This is syntactic (it does not follow a model
  passed under another name), so it catches the plain way of calling a detector. The one
  exception is the training step (``det_al/loop/training.py``), whose ``model(images, targets)``
  is the loss forward of a model in ``train()`` mode, not a scoring pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "det_al"
FORWARD_ALLOWED = {"det_al.loop.training"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _module_level(tree: ast.Module):
    """Statements run on import: the module body, descending into if/try/with, not into defs."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        if isinstance(node, ast.ClassDef):
            stack.extend(node.body)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _module_level(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def forward_calls(path: Path) -> list[str]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Name) and f.id == "model") or (isinstance(f, ast.Attribute) and f.attr in ("model", "forward")):
            calls.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return calls


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["det_al.inference.passes"], "the graph should see det_al's modules and imports"
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_find_cycle_sees_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_inference_calls_the_model():
    offending = []
    for name, path in _modules().items():
        if name.startswith("det_al.inference") or name in FORWARD_ALLOWED:
            continue
        offending += forward_calls(path)
    assert not offending, "model forward outside det_al/inference/:\n" + "\n".join(offending)
    # the check does see the calls it is meant to find
    assert forward_calls(ROOT / "inference" / "passes.py")
    assert forward_calls(ROOT / "loop" / "training.py")


def test_top_level_holds_subpackages_and_a_few_small_modules():
    modules = sorted(p.name for p in ROOT.glob("*.py"))
    assert modules == ["__init__.py", "__main__.py", "api.py", "config.py", "errors.py", "scores.py"]
