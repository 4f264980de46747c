"""Imports go one way: no cycle anywhere in the package, and no module imports a layer above its own.

The layers, bottom up (README, "Architecture"):

    0  errors, registry, records, io          what everything shares; import nothing above
    1  progress, config, store                the run's settings and its directory
    2  models, sampling, tasks, losses,       components that need no judge; metrics: the analyses' formulas
       metrics
    3  judges, pairing, games, environments   components built on those
    4  training                               the optimizer loop
    5  stages                                 one module per stage of a round
    6  plan, summary                          a config turned into components and stages; the round table
    7  driver, export, report, compare        runs the plan's stages; a run's pairs as a dataset; its HTML page;
                                              recipes on equal budgets over seeds
    8  cli, __main__                          the command

Every import counts, also those inside functions: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "iterpo"
LAYERS = [
    {"__init__", "errors", "registry", "records", "io"},
    {"progress", "config", "store"},
    {"models", "sampling", "tasks", "losses", "metrics"},
    {"judges", "pairing", "games", "environments"},
    {"training"},
    {"stages"},
    {"plan", "summary", "tracking"},
    {"driver", "export", "report", "compare"},
    {"cli", "__main__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["iterpo", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The iterpo modules a module imports, each as precisely as it names it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("iterpo"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if not base.startswith("iterpo"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m != name and m in MODULES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to the list above and to the README")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if _layer(b) > _layer(a)
    ]


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle met by a depth-first walk, as 'a -> b -> ... -> a'."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return cycles


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(GRAPH) == []


def test_no_import_cycles():
    assert find_cycles(GRAPH) == []


def test_the_checks_find_what_they_look_for():
    made_up = {
        "iterpo.config": {"iterpo.judges.base"},
        "iterpo.judges.base": {"iterpo.judges.cache"},
        "iterpo.judges.cache": {"iterpo.judges.base"},
    }
    assert upward_imports(made_up) == ["iterpo.config (layer 1) imports iterpo.judges.base (layer 3)"]
    assert find_cycles(made_up) == ["iterpo.judges.base -> iterpo.judges.cache -> iterpo.judges.base"]
    assert "iterpo.io" in GRAPH["iterpo.store"] and "iterpo.config" not in GRAPH["iterpo.store"]
