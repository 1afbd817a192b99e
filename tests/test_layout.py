"""The package's layout rules (issue 16): no private names across modules; README names all."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lcdask"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in _modules():
        name = _module_name(path)
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> lcdask module imported whole
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcdask"):
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and node.module != name:
                        found.append(f"{path.name}: from {node.module} import {alias.name}")
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("lcdask") and alias.asname:
                        aliases[alias.asname] = alias.name
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcdask"):
                for alias in node.names:  # `from lcdask import calibrate as cal`
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not found, found


_CLUSTER_CALLS = {
    "submit",
    "map",
    "compute",
    "scatter",
    "gather",
    "persist",
    "run",
    "run_on_scheduler",
}
_TALKS_TO_THE_CLUSTER = {"lcdask.stages._parallel", "lcdask.cluster"}
"""The parallel layer, and the module that starts, warms and stops clusters."""


def _client_calls(tree: ast.AST) -> list[str]:
    """Calls that give work to a cluster: ``client.submit(...)`` (any name holding a client),
    ``dask.compute``/``dask.persist``, ``fire_and_forget``, ``get_client``/``worker_client``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if node.func.attr in _CLUSTER_CALLS and "client" in owner_name.lower():
                found.append(f"{owner_name}.{node.func.attr}")
            if owner_name == "dask" and node.func.attr in ("compute", "persist"):
                found.append(f"dask.{node.func.attr}")
        names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
        found += [n for n in names if n in ("fire_and_forget", "get_client", "worker_client")]
    return found


def test_only_the_parallel_layer_gives_work_to_the_cluster():
    found = {}
    for path in _modules():
        name = _module_name(path)
        if name not in _TALKS_TO_THE_CLUSTER and (
            calls := _client_calls(ast.parse(path.read_text()))
        ):
            found[name] = calls
    assert not found, found
    # the scan sees the layer's own calls (it cannot pass by seeing nothing)
    assert "client.submit" in _client_calls(
        ast.parse((PACKAGE / "stages/_parallel.py").read_text())
    )


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 5)] if "\n## " in layout[5:] else layout
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", layout))
    missing = []
    for path in _modules():
        if path.name == "__init__.py":
            path = path.parent
        stem = path.stem if path.suffix else path.name
        if stem not in words:
            missing.append(str(path.relative_to(PACKAGE)))
    assert not missing, f"README's Layout section does not name {missing}"
