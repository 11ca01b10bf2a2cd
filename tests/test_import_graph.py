"""The modules form one DAG: no import cycle, and no module imports from a layer above its own.

Every `import` and `from ... import` in fgrpo/ and launchers/ counts, including those inside
functions (a lazy import is still a dependency). Layers, bottom-up, as torchtitan keeps
`distributed/` below `models/` below the trainer.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# Bottom-up; a module may import from its own layer or any layer below. The longest prefix decides.
LAYERS: list[tuple[str, ...]] = [
    ("fgrpo.fileio", "fgrpo.processes", "fgrpo.algorithm"),
    ("fgrpo.distributed",),
    ("fgrpo.data", "fgrpo.media", "fgrpo.miniature"),
    ("fgrpo.models", "fgrpo.miniature.pretrain"),
    ("fgrpo.recipe",),
    ("fgrpo.run_folder",),
    ("fgrpo.rewards",),
    ("fgrpo.recipe.validate",),  # checks a recipe against the models, prompts and rewards it names
    ("fgrpo.tracking",),  # metrics.jsonl, TensorBoard, W&B: reads run folders and recipes, never the trainer
    ("fgrpo.trainer", "fgrpo.export", "fgrpo.planner"),  # the planner runs the trainer's own code
    ("launchers",),
    ("fgrpo.report",),  # HTML reports of run folders: read-only, never the trainer (it runs the report as a process)
    ("fgrpo.sweep", "fgrpo.cli", "fgrpo.__main__", "fgrpo"),
]


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [*(REPO / "fgrpo").rglob("*.py"), *(REPO / "launchers").rglob("*.py")]
    return {module_name(f): f for f in files}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports (resolved to the longest known module)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_no_upward_imports():
    upward = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in graph().items()
        for b in targets
        if layer_of(b) > layer_of(a) and not a.startswith(b + ".")
    ]  # a package's own __init__ is fine
    assert not upward, "\n".join(sorted(upward))


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_graph_is_read():
    """The checks above would pass vacuously on an empty graph."""
    g = graph()
    assert "fgrpo.trainer.trainer" in g and "fgrpo.distributed.precision" in g["fgrpo.models.wan.parallelize"]


def test_the_checks_can_fail():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("fgrpo.trainer.trainer") > layer_of("fgrpo.models.wan.loading") > layer_of("fgrpo.distributed")
