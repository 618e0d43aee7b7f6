"""The package's imports follow the method's order, so each stage can be read (and tested) without
the ones after it: nothing imports a later stage, and there are no import circles."""

import ast
from pathlib import Path

import ccn

PACKAGE = Path(ccn.__file__).parent

# the method's order; a module may import only from its own layer or an earlier one
LAYERS = [
    {"errors", "files", "validate", "config", "dist", "checkpoint", "tracking", "progress", "locks",
     "provenance"},
    {"data"},
    {"models"},
    {"hierarchy"},
    {"heads"},
    {"network"},
    {"ema", "train"},
    {"evaluate"},
    {"runs", "predict", "plots", "export"},
    {"pipeline"},
    {"experiment", "report"},
    {"cli", "__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def stage(module: str) -> str:
    """ccn.hierarchy.tree -> hierarchy: the top-level part of the package a module belongs to."""
    return module.split(".")[1]


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def ccn_imports(path: Path) -> set[str]:
    """Every ccn module imported anywhere in the file, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ccn.") and node.level == 0:
            # `from ccn.models import fastnet` imports the submodule ccn.models.fastnet
            found.update(f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                         for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ccn."))
    return found


def module_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name == "ccn":  # the package facade re-exports the public API; it is nobody's dependency
            continue
        graph[name] = {m for m in ccn_imports(path) if m not in ("ccn", name)}
    return graph


def test_every_stage_is_placed_in_the_order():
    stages = {stage(name) for name in module_graph()}
    assert stages <= set(LAYER_OF), f"place these in LAYERS: {sorted(stages - set(LAYER_OF))}"


def test_imports_go_only_to_earlier_stages():
    wrong = [(a, b) for a, deps in module_graph().items() for b in deps
             if LAYER_OF[stage(b)] > LAYER_OF[stage(a)]]
    assert not wrong, f"imports against the method's order: {wrong}"


def test_no_import_circles():
    graph = module_graph()
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError(f"import circle: {' -> '.join(trail + [node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in graph.get(node, ()):
            # importing a package runs its __init__, so a package depends on what its __init__ imports
            visit(dep, trail + [node])
        state[node] = 2

    for name in graph:
        visit(name, [])
