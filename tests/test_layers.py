"""Imports flow one way: core <- training <- export, core <- server; no cycles (docs/ARCHITECTURE.md).

Read from the source with `ast`, so a lazy import inside a function counts as
much as one at the top (it runs just the same, only later). Imports under
`if TYPE_CHECKING:` do not count: they never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("core", "training", "export", "server", "client", "bench")
# What each layer may import of the project. bench/ measures everything, so it may import anything.
ALLOWED = {
    "core": set(),
    "training": {"core"},
    "export": {"core", "training"},
    "server": {"core", "training"},  # training only from the job process: JOB_PROCESS_MODULES
    "client": set(),
    "bench": {"core", "training", "export", "server", "client", "bench"},
}
# The one place server/ reaches into training/: the Gatys job process, a spawned process of its own.
JOB_PROCESS_MODULES = {"server.jobs.gatys_runner"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str) -> set[str]:
    """The project modules `name` imports (a package's __init__ when the name is the package itself)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` names the module a.b when there is one, else something in a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> str:
    return name.split(".", 1)[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walker_sees_lazy_and_relative_imports() -> None:
    assert "training.gatys" in GRAPH["server.jobs.gatys_runner"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert not cycles(GRAPH), f"import cycles: {cycles(GRAPH)}"


def test_each_layer_imports_only_the_layers_below_it() -> None:
    uphill = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if layer(target) != layer(name) and layer(target) not in ALLOWED[layer(name)]
    )
    assert not uphill, f"imports against the layers (docs/ARCHITECTURE.md): {uphill}"


def test_server_reaches_training_only_from_the_job_process() -> None:
    reaching = {
        name for name, targets in GRAPH.items() if layer(name) == "server" and "training" in map(layer, targets)
    }
    assert reaching <= JOB_PROCESS_MODULES, sorted(reaching - JOB_PROCESS_MODULES)


def test_architecture_page_names_every_server_jobs_module() -> None:
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = sorted(n for n in MODULES if n.startswith(("core.", "server.jobs.")))
    missing = [n for n in modules if not re.search(rf"\b{n.rsplit('.', 1)[1]}\.py\b", page)]
    assert not missing, f"docs/ARCHITECTURE.md does not describe {missing}"
    # The layer table says what each layer may import; it must say what this test checks.
    for package, allowed in ALLOWED.items():
        if package == "bench":
            continue
        row = re.search(rf"^\| `{package}/` \|.*\| (.*) \|$", page, re.MULTILINE)
        assert row, f"docs/ARCHITECTURE.md has no row for {package}/"
        named = set(re.findall(r"`(\w+)/`", row.group(1)))
        assert named == allowed, f"docs/ARCHITECTURE.md says {package}/ imports {sorted(named)}, the test {allowed}"
