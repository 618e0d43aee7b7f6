"""The recipes ccn ships inside the package (src/ccn/configs): run configs and study grids, by name.

    ccn train --config cifar10_cpu_10min                 a packaged run config (configs/NAME.yaml)
    ccn experiment --config digits_quick                 a packaged grid (configs/experiments/NAME.yaml)
    ccn train --config my.yaml                           a file of your own
    ccn configs                                          lists the packaged recipes; `ccn configs NAME` prints one

The rule: a --config that names an existing file is that file (a path always wins); otherwise it is
looked up among the packaged recipes by name, with or without `.yaml` and with or without a leading
`configs/` (so the commands of the README and docs/results, `--config configs/experiments/X.yaml`,
work from an installed wheel outside any checkout). Only the listed recipes can be named this way:
a name is matched against the files the package holds, never joined to a path.

Python only imports this module: no torch, so `ccn configs` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ccn.errors import ConfigError

PACKAGED = Path(__file__).with_name("configs")
GRIDS = "experiments"  # the subfolder of PACKAGED that holds the study grids (ccn experiment)
KINDS = {"config": ("run config", "ccn train --config NAME"), "grid": ("grid", "ccn experiment --config NAME")}


def packaged(kind: str) -> dict[str, Path]:
    """name -> file of the packaged run configs (kind "config") or grids (kind "grid"), sorted by name."""
    folder = PACKAGED / GRIDS if kind == "grid" else PACKAGED
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def recipe_name(value: str) -> str:
    """`configs/experiments/x.yaml` -> `experiments/x`, `x.yaml` -> `x`: what a name may be written as."""
    name = value.replace("\\", "/")
    for prefix in ("./", "configs/", "src/ccn/configs/"):
        name = name[len(prefix):] if name.startswith(prefix) else name
    for suffix in (".yaml", ".yml"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def find(value: str, kind: str) -> Optional[Path]:
    """The packaged recipe `value` names, or None. A grid may also be named `experiments/NAME`."""
    name = recipe_name(value)
    if kind == "grid" and name.startswith(GRIDS + "/"):
        name = name[len(GRIDS) + 1:]
    return packaged(kind).get(name)


def resolve(value: Optional[str], kind: str) -> Optional[Path]:
    """The file a --config names: the path itself when something is there, else the packaged recipe of
    that name; ConfigError naming the packaged ones when neither exists."""
    if value is None:
        return None
    path = Path(value)
    if path.exists() or path.is_symlink():  # a path wins; a folder or a broken link is named by the reader
        return path
    recipe = find(value, kind)
    if recipe is not None:
        return recipe
    what = KINDS[kind][0]
    other = "grid" if kind == "config" else "config"
    hint = (f" ({recipe_name(value)} is a packaged {KINDS[other][0]}: `{KINDS[other][1]}`)"
            if find(value, other) else "")
    raise ConfigError(f"--config {value}: no such file, and no packaged {what} of that name{hint}: give a YAML file "
                      f"path, or one of {', '.join(packaged(kind))} (`ccn configs` lists them)")


def summary(path: Path) -> str:
    """The first comment line of a recipe: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def listing() -> list[str]:
    """The lines `ccn configs` prints: each packaged recipe with its first comment line."""
    lines = []
    for kind, (what, usage) in KINDS.items():
        recipes = packaged(kind)
        lines.append(f"{what}s ({usage}):")
        width = max(map(len, recipes))
        lines += [f"  {name:<{width}}  {summary(path)}" for name, path in recipes.items()]
    lines.append(f"(files in {PACKAGED}; `ccn configs NAME` prints one, to copy and edit)")
    return lines


def show(name: str) -> str:
    """The text of the packaged recipe `name` (a run config first, then a grid)."""
    path = find(name, "config") or find(name, "grid")
    if path is None:
        names = [*packaged("config"), *(f"{GRIDS}/{n}" for n in packaged("grid"))]
        raise ConfigError(f"no packaged recipe is named {name!r}: choose one of {', '.join(names)}")
    return path.read_text(encoding="utf-8")
