"""The package's import graph has no cycle, and configuration reading stays free of torch."""

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "workflow" / "imageclf"


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in the file (inside functions too)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    graph[name].add(node.module.split(".")[0])
                else:
                    graph[name].update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imageclf."):
                graph[name].add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                graph[name].update(a.name.split(".")[1] for a in node.names if a.name.startswith("imageclf."))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = package_imports()
    assert {"config", "checks", "models", "architectures", "weights"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_configuration_alone_imports_no_torch_and_opens_nothing():
    """config.py validates and merges: no torch, no checks of files or models."""
    code = ("import sys; import imageclf.config as c; "
            "print(sorted(m for m in ('torch', 'torchvision', 'imageclf.checks', 'imageclf.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
