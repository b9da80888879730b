"""The package's shape, as the module map in quart_deferred/__init__.py describes it."""

from __future__ import annotations

import ast
from pathlib import Path

import quart_deferred

PACKAGE = Path(quart_deferred.__file__).parent


def imports() -> dict[str, set[tuple[str, str]]]:
    """Each module's imports from the package (type-only ones too), as (module, name) pairs."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in PACKAGE.glob("*.py"):
        pairs = found.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                pairs.update((node.module, alias.name) for alias in node.names)
    return found


def test_no_module_imports_itself_back() -> None:
    """No import cycles, not even through TYPE_CHECKING imports."""
    graph = {module: {target for target, _ in pairs} for module, pairs in imports().items()}
    cycles = []

    def visit(start: str, module: str, path: list[str]) -> None:
        for target in graph.get(module, ()):
            if target == start:
                cycles.append(" -> ".join([*path, start]))
            elif target not in path and target != "__init__":
                visit(start, target, [*path, target])

    for module in graph:
        visit(module, module, [module])
    assert not cycles


def test_no_private_name_is_imported_from_another_module() -> None:
    """What a module shares is public within the package; private names stay home."""
    private = sorted(
        f"{module} imports {name} from {target}"
        for module, pairs in imports().items()
        for target, name in pairs
        if name.startswith("_")
    )
    assert not private


def test_quarts_private_names_are_read_in_compat_only() -> None:
    """One module to change when Quart renames its internals."""
    readers = sorted(
        path.name
        for path in PACKAGE.glob("*.py")
        if path.stem != "_compat" and "quart.globals import _" in path.read_text()
    )
    assert not readers


# The runner and what it owns: its Admission, its Ledger, its batch runs, its drain, its
# threads (a plain job frees its key on its thread).
COUNTING = {"runner", "_admission", "_outcomes", "_batch_run", "_drain", "threads"}


def _names_counters_or_keys(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name.lstrip("_") in ("counters", "keys")


def test_only_the_runner_writes_counters_and_keys() -> None:
    """Counters and de-duplication keys have one writer: the runner, its admission and ledger."""
    writers = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            elif isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("claim", "release"):  # keys.claim(key)
                    targets = [node.func]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr":
                targets = [ast.Attribute(node.args[0], "?")]  # setattr(counters, ...)
            if any(
                isinstance(target, ast.Attribute) and _names_counters_or_keys(target.value)
                for target in targets
            ):
                writers.add(path.stem)
    assert writers - {"metrics"} == COUNTING


def test_every_module_is_in_the_module_map() -> None:
    """The map at the top of the package's docstring names every module."""
    doc = quart_deferred.__doc__ or ""
    missing = sorted(
        path.stem
        for path in PACKAGE.glob("*.py")
        if path.stem != "__init__" and f"``{path.stem}``" not in doc
    )
    assert not missing


def test_every_test_says_what_behaviour_it_pins() -> None:
    """Each test function has a docstring, so a failure reads as the promise it broke."""
    tests = Path(__file__).parent
    bare = sorted(
        f"{path.name}::{node.name}"
        for path in tests.glob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and not ast.get_docstring(node)
    )
    assert not bare
