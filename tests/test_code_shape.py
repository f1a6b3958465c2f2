"""The shape the code keeps (issue 13): imports between `core` modules run one way, at module level and inside
functions alike, and `core` never imports Streamlit."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"


def _module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The `core` modules `path` imports at module level (imports inside functions are left out)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "core":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("core."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("core.")}
    return found & modules


def test_core_modules_import_each_other_one_way_at_module_level() -> None:
    modules = {path.stem for path in CORE.glob("*.py")}
    graph = {name: _module_level_imports(CORE / f"{name}.py", modules) for name in modules}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            assert state.get(imported) != "open", f"import cycle: {' -> '.join([*path, imported])}"
            if imported not in state:
                visit(imported, [*path, imported])
        state[name] = "done"

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])


def test_core_never_imports_streamlit() -> None:
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(name.split(".")[0] == "streamlit" for name in names), path.name


#: The issue's "no module over ~600 lines": a module past this has grown a second idea and wants splitting.
MAX_MODULE_LINES = 600


def test_no_module_of_core_or_the_pages_is_over_about_600_lines() -> None:
    root = CORE.parent
    paths = [*CORE.glob("*.py"), *(root / "pages").glob("*.py"), root / "app.py"]
    long = {path.name: count for path in paths
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"over {MAX_MODULE_LINES} lines: {long}"


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): a block only a type checker reads."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_that_run(path: Path, modules: set[str]) -> dict[str, int]:
    """The `core` modules `path` imports anywhere it can run one, inside functions too, each with its first line.

    Blocks under `if TYPE_CHECKING:` are left out: Python never runs them (a name there only types an annotation).
    """
    found: dict[str, int] = {}
    pending: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module == "core":
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("core.")]
        for name in names:
            if name in modules and name != path.stem:
                found[name] = min(found.get(name, node.lineno), node.lineno)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _a_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle of `graph` as its modules in order (the first is repeated at the end), or None."""
    finished: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        branches = [iter([start])]
        while branches:
            following = next(branches[-1], None)
            if following is None:
                branches.pop()
                if path:
                    finished.add(path[-1])
                    on_path.discard(path.pop())
            elif following in on_path:
                return [*path[path.index(following):], following]
            elif following not in finished:
                path.append(following)
                on_path.add(following)
                branches.append(iter(sorted(graph[following])))
    return None


def test_core_modules_import_each_other_one_way_counting_imports_inside_functions() -> None:
    """An import inside a function closes a cycle as surely as one at the top: when two modules need each other,
    what both need moves down into a third, lower module (`core.metrics`, `core._job_file`)."""
    modules = {path.stem for path in CORE.glob("*.py")}
    graph = {name: _imports_that_run(CORE / f"{name}.py", modules) for name in modules}
    cycle = _a_cycle(graph)
    edges = [f"core/{importer}.py:{graph[importer][imported]} imports core.{imported}"
             for importer, imported in zip(cycle or [], (cycle or [])[1:], strict=False)]
    assert cycle is None, "import cycle in core: " + "; ".join(edges)
