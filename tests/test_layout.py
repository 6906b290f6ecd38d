"""The house rules of the layout, checked on the source: imports run one way
(``app → resolvers → (schema, services) → models``) and no module imports itself
back through others, not even lazily inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "resolvers", "schema", "services", "models")
# What each package may import of ours (besides itself).
ALLOWED = {
    "models": set(),
    "services": {"models"},
    "schema": {"models"},
    "resolvers": {"schema", "services", "models"},
    "app": {"resolvers", "schema", "services", "models"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def test_imports_follow_the_layers() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in _imports().items()
        for target in targets
        if (a := module.split(".")[0]) != (b := target.split(".")[0]) and b not in ALLOWED[a]
    ]
    assert wrong == []


def test_no_import_circles() -> None:
    graph = _imports()
    # A package's __init__ re-exporting its modules is not a circle of ours.
    edges = {m: {t for t in ts if not (t == m.rsplit(".", 1)[0])} for m, ts in graph.items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert circles == []


# What only resolvers/mutations/common.py may do: open the write transaction, read the
# organization row and ask the process clock for now. Every other module that defines
# mutations goes through its ``transaction``/``idempotent``/``reading`` and ``Work``,
# so one change there (the organization's own clock, say) reaches every mutation.
PATTERN_HOME = ROOT / "resolvers" / "mutations" / "common.py"


def _by_hand_calls(tree: ast.AST) -> list[str]:
    """``x.transaction()``, ``get_organization(...)`` and ``x.clock.now()`` calls (the
    bare ``transaction(info)`` of common.py is the pattern itself)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = func.value
            on_clock = isinstance(owner, ast.Attribute) and owner.attr == "clock"
            if func.attr in ("transaction", "get_organization") or (
                func.attr == "now" and on_clock
            ):
                found.append(f"{ast.unparse(func)}() line {node.lineno}")
        elif isinstance(func, ast.Name) and func.id == "get_organization":
            found.append(f"get_organization() line {node.lineno}")
    return found


def test_mutation_modules_use_the_one_pattern() -> None:
    offenders = {}
    for path in (ROOT / "resolvers").rglob("*.py"):
        source = path.read_text()
        if path == PATTERN_HOME or "strawberry.mutation" not in source:
            continue
        if calls := _by_hand_calls(ast.parse(source)):
            offenders[str(path.relative_to(ROOT))] = calls
    assert offenders == {}


def test_the_pattern_check_sees_a_mutation_done_by_hand() -> None:
    by_hand = ast.parse(
        "async def m(info):\n"
        "    async with context(info).transaction() as session:\n"
        "        org = await get_organization(session, 1)\n"
        "        now = ctx.clock.now()\n"
    )
    assert len(_by_hand_calls(by_hand)) == 3
    assert _by_hand_calls(ast.parse("async with transaction(info) as w: pass")) == []
