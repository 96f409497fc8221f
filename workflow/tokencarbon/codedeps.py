"""Which package modules a workflow script runs: its imports within tokencarbon, followed transitively.

Snakemake's code trigger sees only a rule's `script:`; the package modules that script imports are
invisible to it. A rule lists them as inputs, so a code change reruns exactly the jobs whose results
it can change (style.md). Hand-kept lists went stale (issue 10 §2); this module derives them from
the source with `ast`, so nothing is kept by hand.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "tokencarbon"


def module_file(name: str, root: Path) -> Path | None:
    """The file that defines module `name` (dotted) under `root`, or None if it is no module there.

    A package `a.b` is `root/a/b/__init__.py`, a module `a.b.c` is `root/a/b/c.py`.
    """
    base = Path(root).joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """(dotted name, is_package) of a module file under root; a file outside root is '__main__'."""
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return "__main__", False
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _prefixes(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first: every prefix is executed."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class _Imports:
    modules: frozenset[str]  # package modules the file imports (and the packages above them)
    names: frozenset[tuple[str, str]]  # (module, name): `from module import name`, name no module
    lazy: frozenset[str]  # modules imported inside a module-level __getattr__ (PEP 562)


def _imports_in(nodes, path: Path, name: str, here: list[str]) -> tuple[set[str], set[tuple[str, str]]]:
    modules: set[str] = set()
    names: set[tuple[str, str]] = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules.update(_prefixes(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if name == "__main__" or node.level - 1 > len(here):
                    raise ImportError(f"{path} line {node.lineno}: relative import outside the package")
                base = here[: len(here) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            modules.update(_prefixes(module))
            # `from a.b import c` imports the submodule a.b.c where c is one (else c is a name in a.b)
            for alias in node.names:
                if alias.name != "*":
                    modules.add(f"{module}.{alias.name}")
                    names.add((module, alias.name))
    return modules, names


def _direct_imports(path: Path, root: Path) -> _Imports:
    """What `path` imports anywhere: at top level or inside functions (a lazy import runs too),
    except inside a module-level `__getattr__` (PEP 562), whose imports run only when one of its
    attributes is asked for (kept apart in `lazy`)."""
    return _parsed_imports(path, root, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _parsed_imports(path: Path, root: Path, mtime_ns: int) -> _Imports:
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    name, is_package = _module_name(path, root)
    here = name.split(".") if is_package else name.split(".")[:-1]
    getattr_defs = [
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
    ]
    others = [n for n in tree.body if n not in getattr_defs]
    modules, names = _imports_in(others, path, name, here)
    lazy, _ = _imports_in(getattr_defs, path, name, here)

    def ours(found):
        return frozenset(
            n for n in found if n.split(".")[0] == PACKAGE and module_file(n, root) is not None
        )

    return _Imports(
        modules=ours(modules),
        names=frozenset((m, n) for m, n in names if ours([m]) and not ours([f"{m}.{n}"])),
        lazy=ours(lazy),
    )


def package_modules(script: Path | str, root: Path | str) -> list[Path]:
    """Every file of the package under `root` that running `script` may import, transitively.

    script: a workflow script (workflow/scripts/<name>.py) or a package module.
    root: the folder holding the package (workflow/), so that `root/tokencarbon/__init__.py` exists.
    Returns absolute paths under `root` as given (symlinks not resolved), sorted, package
    __init__ files included; the script itself is not among them unless it is a package module.
    An import inside a function counts (it may run); one inside a package's module-level
    `__getattr__` (PEP 562 lazy attributes) counts only where a file does `from <package> import
    <that attribute>`. Not seen: importlib calls and `python -m` subprocesses (a module run only
    that way must also be imported by its caller).
    Raises FileNotFoundError if `script` is missing, SyntaxError if a file does not parse,
    ImportError for a relative import leaving the package.
    """
    given = Path(root).absolute()
    root = given.resolve()
    start = Path(script).resolve()
    if not start.is_file():
        raise FileNotFoundError(f"{start}: no such script")
    seen: set[Path] = set()
    todo = [start]
    while todo:
        imports = _direct_imports(todo.pop(), root)
        found = set(imports.modules)
        for module, _ in imports.names:  # a name asked of a package may be one of its lazy ones
            found |= _direct_imports(module_file(module, root), root).lazy
        for name in found:
            dep = module_file(name, root).resolve()
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    # spelled under root as the caller gave it (a symlinked checkout stays inside its folder)
    return sorted(given / p.relative_to(root) for p in seen)
