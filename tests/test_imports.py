"""The package's import graph has no cycle, and configuration reading stays free of torch."""

import ast
import shutil
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "workflow" / "imageclf"


# The layers, lowest first: a module may import its own layer and those below it, never one above.
# The package's top (cli.py, checks.py, __main__.py) is the entry layer, above them all.
LAYERS = ["core", "data", "models", "training", "evaluation", "report"]
ENTRY = len(LAYERS)


def module_name(path, package=PACKAGE) -> str:
    """A package file's dotted name under imageclf: core.config, cli, data (for data/__init__.py)."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(package=PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in the file (inside functions too),
    each by its dotted name under imageclf."""
    modules = {module_name(path, package): path for path in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                targets = [".".join(base + [alias.name]) for alias in node.names] + [".".join(base)]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imageclf."):
                base = node.module.split(".")[1:]
                targets = [".".join(base + [alias.name]) for alias in node.names] + [".".join(base)]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("imageclf.")]
            graph[name].update(target for target in targets if target in modules and target != name)
    return graph


def layer(module: str) -> int:
    """A module's layer: the index of its folder in LAYERS, or ENTRY for the package's top."""
    folder = module.split(".")[0]
    return LAYERS.index(folder) if "." in module or folder in LAYERS else ENTRY


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
    assert {"core.config", "checks", "models.factory", "models.architectures", "models.weights"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_sits_in_a_layer_folder_or_at_the_entry():
    graph = package_imports()
    top = sorted(module for module in graph if "." not in module and module not in LAYERS + [""])
    assert top == ["__main__", "checks", "cli"]
    assert all(module.split(".")[0] in LAYERS for module in graph if module not in top + [""])


def test_no_import_climbs_to_a_higher_layer():
    climbs = [f"{module} -> {target}" for module, targets in package_imports().items() for target in sorted(targets)
              if layer(target) > layer(module)]
    assert climbs == []


def test_the_layer_check_sees_an_import_that_climbs(tmp_path):
    """The check above would see a data module importing the report: copy the package, plant one."""
    copy = tmp_path / "imageclf"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "data" / "images.py").open("a") as f:
        f.write("\n\ndef _planted():\n    from ..report import stats  # noqa\n")
    assert "report.stats" in package_imports(copy)["data.images"]
    assert "report.stats" not in package_imports()["data.images"]
    assert layer("data.images") < layer("report.stats")


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_configuration_alone_imports_no_torch_and_opens_nothing():
    """core/config.py validates and merges: no torch, no checks of files or models."""
    code = ("import sys; import imageclf.core.config as c; "
            "print(sorted(m for m in ('torch', 'torchvision', 'imageclf.checks', 'imageclf.models.factory') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
