"""The shape the code keeps (issue 13): imports between `core` modules run one way at module level, and `core`
never imports Streamlit."""

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
MAX_MODULE_LINES = 620


def test_no_module_of_core_or_the_pages_is_over_about_600_lines() -> None:
    root = CORE.parent
    paths = [*CORE.glob("*.py"), *(root / "pages").glob("*.py"), root / "app.py"]
    long = {path.name: count for path in paths
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"over {MAX_MODULE_LINES} lines: {long}"
