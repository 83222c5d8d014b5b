"""The package layout: no import circles at any level, folders in pipeline order, and only
``det_al/inference/`` runs a model.

The checks read the source with :mod:`ast`; nothing is imported.

- Import graph: an edge ``a -> b`` for every ``import det_al.b`` / ``from det_al.b import x``
  (``from det_al.pkg import mod`` points at the module ``det_al.pkg.mod`` when it is one)
  anywhere in the module: at module level, in ``if TYPE_CHECKING:`` blocks and ``try:`` bodies,
  and inside functions and methods too (an import deferred to call time to dodge a circle is
  still a circle to a reader). A cycle among modules fails.
- Folders: the same edges between the folders of ``det_al/`` (each top-level module is its own
  node) must go down :data:`LAYERS`, the pipeline order, so no two folders import each other.
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
#: The folders (and top-level modules) of det_al, lowest first: each imports only those before it.
LAYERS = (
    "det_al", "det_al.errors", "config", "data", "models", "inference", "scoring", "run", "selection",
    "det_al.scores", "annotation", "det_al.api", "loop", "report", "serve", "cli", "det_al.__main__",
)


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


def import_graph(function_level: bool = True) -> dict[str, set[str]]:
    """Module -> the det_al modules it imports (``function_level``: imports inside functions too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree) if function_level else _module_level(tree):
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


def folder(module: str) -> str:
    """The node of ``module`` in the folder graph: its folder under det_al/, or itself at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) else module


def folder_edges(graph: dict[str, set[str]]) -> set[tuple[str, str, str, str]]:
    """``(folder a, folder b, module a, module b)`` for every import between two folders."""
    return {(folder(a), folder(b), a, b) for a, targets in graph.items() for b in targets if folder(a) != folder(b)}


def test_no_import_cycle_even_inside_functions():
    graph = import_graph()
    assert len(graph) > 40 and graph["det_al.inference.passes"], "the graph should see det_al's modules and imports"
    # datasets imports the augmentations (albumentations) only when a training item needs them
    assert "det_al.data.augment" in graph["det_al.data.datasets"], "imports inside functions should be edges"
    assert "det_al.data.augment" not in import_graph(function_level=False)["det_al.data.datasets"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_folders_import_only_folders_below_them():
    nodes = {folder(m) for m in _modules()}
    assert nodes == set(LAYERS), f"LAYERS should name every folder and top-level module: {sorted(nodes ^ set(LAYERS))}"
    upward = sorted(f"{ma} ({a}) -> {mb} ({b})" for a, b, ma, mb in folder_edges(import_graph())
                    if LAYERS.index(b) > LAYERS.index(a))
    assert not upward, "imports against the pipeline order:\n" + "\n".join(upward)


def test_folder_check_sees_a_loop():
    graph = {"det_al.data.a": {"det_al.loop.b"}, "det_al.loop.b": {"det_al.data.c"}, "det_al.data.c": set()}
    edges = {(a, b) for a, b, _, _ in folder_edges(graph)}
    assert edges == {("data", "loop"), ("loop", "data")}  # no module cycle, yet a folder loop
    assert find_cycle(graph) is None


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
    assert modules == ["__init__.py", "__main__.py", "api.py", "errors.py", "scores.py"]
