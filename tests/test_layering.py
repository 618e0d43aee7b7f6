"""The package's imports follow the method's order, so each stage can be read (and tested) without
the ones after it: nothing imports a later stage, and there are no import circles."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import ccn

PACKAGE = Path(ccn.__file__).parent
README = PACKAGE.parents[1] / "README.md"

# the method's order; a module may import only from its own layer or an earlier one. README's
# "Layout" table lists the files in the same order (test_readme_layout_follows_the_layers).
LAYERS = [
    {"errors", "files", "file_checks", "config", "dist", "checkpoint", "tracking", "progress", "locks",
     "provenance", "recipes", "runfiles", "records"},
    {"data"},
    {"models"},
    {"hierarchy"},
    {"heads"},
    {"network", "model_init"},
    {"ema", "train"},
    {"plan"},
    {"evaluate"},
    {"runs", "predict", "plots", "export", "predictor"},
    {"pipeline"},
    {"grid", "grid_statistics", "experiment", "report"},
    {"cli", "__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def stage(module: str) -> str:
    """ccn.hierarchy.tree -> hierarchy: the top-level part of the package a module belongs to."""
    return module.split(".")[1]


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_from(package: str, name: str) -> str:
    """The module `from package import name` depends on: the submodule package.name if there is
    one; for the facade `ccn`, the module a re-exported name comes from; else package itself."""
    if is_module(f"{package}.{name}"):
        return f"{package}.{name}"
    if package == "ccn":
        return ccn._PUBLIC.get(name, "ccn")
    return package


def absolute_package(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The package a relative import (`from . import x`, `from ..y import z`) starts from."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[:len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def ccn_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every ccn module that `module` (whose text is `source`) imports anywhere, function-level
    imports, `from ccn import X` and relative imports included."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            package = absolute_package(module, is_package, node) if node.level else node.module
            if package == "ccn" or package.startswith("ccn."):
                found.update(imported_from(package, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ccn."))
    return found


def module_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name == "ccn":  # the package facade re-exports the public API lazily; it is nobody's dependency
            continue
        imports = ccn_imports(path.read_text(), name, is_package=path.name == "__init__.py")
        graph[name] = {m for m in imports if m not in ("ccn", name)}
    return graph


def against_the_order(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, deps in graph.items() for b in deps if LAYER_OF[stage(b)] > LAYER_OF[stage(a)]]


def test_every_stage_is_placed_in_the_order():
    stages = {stage(name) for name in module_graph()}
    assert stages <= set(LAYER_OF), f"place these in LAYERS: {sorted(stages - set(LAYER_OF))}"


def test_imports_go_only_to_earlier_stages():
    wrong = against_the_order(module_graph())
    assert not wrong, f"imports against the method's order: {wrong}"


PLANTED = [  # (module, is a package, text): each imports a later stage in a way a plain scan misses
    ("ccn.dist", False, "def spawn():\n    from ccn import pipeline\n    return pipeline\n"),
    ("ccn.dist", False, "from . import pipeline\n"),
    ("ccn.dist", False, "from .pipeline import MethodRun\n"),
    ("ccn.hierarchy.tree", False, "from .. import heads\n"),
    ("ccn.hierarchy.tree", False, "from ..network import build_network\n"),
    ("ccn.data", True, "from ..models import create_backbone\n"),
    ("ccn.data.base", False, "from ccn import ThreeLevelHead  # re-exported by the facade from heads\n"),
]


def test_the_checker_catches_planted_imports():
    for module, is_package, text in PLANTED:
        graph = {module: ccn_imports(text, module, is_package)}
        assert against_the_order(graph), f"missed: {text!r} in {module}"
    # and reads the harmless forms as harmless
    ok = {"ccn.hierarchy.tree": ccn_imports("from . import groups_file\nfrom ccn import CCNError\n", "ccn.hierarchy.tree")}
    assert ok == {"ccn.hierarchy.tree": {"ccn.hierarchy.groups_file", "ccn.errors"}} and not against_the_order(ok)


def readme_layout_stages() -> list[str]:
    """The stage of each file README's "Layout" table names, in the table's order."""
    text = README.read_text()
    table = text[text.index("## Layout"):].split("\n\n")[2]
    stages, folder = [], None
    for row in table.splitlines()[2:]:
        files = re.findall(r"`([\w/]+\.py)`", row.split("|")[2])
        for file in files:
            if "/" in file:
                folder = file.split("/")[0]
                stages.append(folder)
            elif folder and (PACKAGE / folder / file).is_file():
                stages.append(folder)  # `builtin.py` after `data/base.py`: the same folder
            else:
                folder = None
                stages.append(file.removesuffix(".py"))
    return stages


def test_readme_layout_follows_the_layers():
    stages = readme_layout_stages()
    assert set(stages) == set(LAYER_OF) - {"__main__"}, "README's Layout table and LAYERS name other stages"
    layers = [LAYER_OF[s] for s in stages]
    out_of_order = [(a, b) for a, b in zip(stages, stages[1:]) if LAYER_OF[b] < LAYER_OF[a]]
    assert layers == sorted(layers), f"README's Layout table lists a later stage first: {out_of_order}"


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


def test_the_config_module_is_always_cfgmod():
    """`config` always names a Config instance; the module ccn.config, imported whole, is `cfgmod`
    (see ccn/config.py), in the package, the tests and the benchmarks alike."""
    wrong = []
    for folder in ("src", "tests", "benchmarks"):
        for path in (PACKAGE.parents[1] / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module == "ccn" and node.level == 0:
                    names = [a for a in node.names if a.name == "config"]
                elif isinstance(node, ast.Import):
                    names = [a for a in node.names if a.name == "ccn.config"]
                wrong += [f"{path.name}:{node.lineno}" for a in names if a.asname != "cfgmod"]
    assert not wrong, f"import the config module as cfgmod: {wrong}"


# What reads a finished run's or grid's files for a report: none of it may load torch and the model stack.
WITHOUT_TORCH = ("ccn.report", "ccn.grid", "ccn.grid_statistics", "ccn.runfiles", "ccn.hierarchy.tree",
                 "ccn.hierarchy.truth")


def test_reading_a_finished_grid_imports_no_torch():
    """`import ccn.report` imported ccn.runs, and with it torch and every network, only to read
    results.json; a report of a finished grid needs the numbers alone."""
    code = f"import sys; import {', '.join(WITHOUT_TORCH)}; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
