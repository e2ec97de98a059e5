"""The import rules of DESIGN.md, read from the source (AST), for every module of every distribution.

- sdk imports no tier; device imports no edge, cloud or converters; edge imports no cloud
  (and reaches the converters only from its command modules); cloud imports only the sdk;
  converters import the sdk and the device runtimes.
- No tier imports coinfer.bench; no tier's library module imports a command module (``*.cli``).
- Heavy frameworks are never imported at module level where a device or edge box would pay
  for them: tensorflow/torch/transformers/keras/jax in sdk and device; tensorflow/torch/keras
  in edge.
- Every ``coinfer.*`` import names a module that exists in the tree (what mypy resolves).

Each rule is also run against a small tree that breaks it, so the test can fail.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = ("sdk", "device", "edge", "cloud", "converters", "bench")
TIERS = ("sdk", "device", "edge", "cloud", "converters")
#: tier -> the coinfer packages its modules may import
ALLOWED = {
    "sdk": {"sdk"},
    "device": {"sdk", "device"},
    "edge": {"sdk", "device", "edge", "converters"},
    "cloud": {"sdk", "cloud"},
    "converters": {"sdk", "device", "converters"},
    "bench": set(DISTRIBUTIONS),
}
#: tier -> frameworks its modules may not import at module level
HEAVY = {
    "sdk": {"tensorflow", "torch", "transformers", "keras", "jax"},
    "device": {"tensorflow", "torch", "transformers", "keras", "jax"},
    "edge": {"tensorflow", "torch", "keras", "jax"},
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported name (absolute)
    line: int
    top_level: bool  # executed when the module is imported (not inside a function)


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[Import]:
    """Every import in ``path`` (``from package import name`` counts as importing ``package``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top_level and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(module, alias.name, child.lineno, top_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append(Import(module, child.module, child.lineno, top_level))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # imports for type checkers only are never executed
            visit(child, inner)

    visit(tree, True)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def modules_of(root: Path) -> dict[str, Path]:
    """Every module of every distribution under ``root``: dotted name -> file."""
    found = {}
    for folder in DISTRIBUTIONS:
        src = root / folder / "src"
        for path in sorted(src.rglob("*.py")):
            found[module_name(path, src)] = path
    return found


def violations(root: Path) -> list[str]:
    modules = modules_of(root)
    problems = []
    for module, path in modules.items():
        tier = module.split(".")[1]
        is_command = ".cli." in f"{module}." and tier != "bench"
        where = f"{path.relative_to(root)}"
        for item in imports_of(path, module):
            parts = item.target.split(".")
            if parts[0] != "coinfer":
                if item.top_level and parts[0] in HEAVY.get(tier, set()):
                    problems.append(f"{where}:{item.line}: coinfer.{tier} imports {parts[0]} at module level")
                continue
            if len(parts) < 2:
                continue
            target = parts[1]
            if target not in ALLOWED[tier]:
                problems.append(f"{where}:{item.line}: coinfer.{tier} imports {item.target}")
            if target == "converters" and tier == "edge" and not is_command:
                problems.append(f"{where}:{item.line}: an edge library module imports {item.target} "
                                "(only the edge's commands may, lazily)")
            if tier in TIERS and not is_command and "cli" in parts[2:3]:
                problems.append(f"{where}:{item.line}: library module {module} imports command module "
                                f"{item.target}")
            if not _resolves(item.target, modules):
                problems.append(f"{where}:{item.line}: {item.target} does not exist in the tree")
    return problems


def _resolves(name: str, modules: dict[str, Path]) -> bool:
    """A module of the tree (``import coinfer.a.b`` also works when ``b`` is a package's name)."""
    return name in modules


def test_the_tree_follows_the_import_rules():
    assert violations(ROOT) == []


def test_the_device_app_sample_uses_only_the_device_tier():
    """samples/device_app ships on phones and Raspberry Pis with ``coinfer[device]`` alone: no
    edge, cloud or bench module, and no heavy framework, not even inside a function."""
    app = ROOT / "samples" / "device_app"
    modules = modules_of(ROOT)
    problems = []
    for path in sorted(app.glob("*.py")):
        where = path.relative_to(ROOT)
        for item in imports_of(path, path.stem):
            parts = item.target.split(".")
            tier = parts[1] if parts[0] == "coinfer" and len(parts) > 1 else None
            if parts[0] in HEAVY["device"] or tier not in (None, "sdk", "device"):
                problems.append(f"{where}:{item.line}: imports {item.target}")
            elif tier is not None and not _resolves(item.target, modules):
                problems.append(f"{where}:{item.line}: {item.target} does not exist in the tree")
    assert len(list(app.glob("*.py"))) >= 2 and problems == []


def test_every_distribution_has_modules():
    tiers = {name.split(".")[1] for name in modules_of(ROOT) if name.count(".") >= 1}
    assert tiers == set(DISTRIBUTIONS)


def _write(root: Path, module: str, text: str) -> None:
    folder = module.split(".")[1]
    path = root / folder / "src" / Path(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


BREAKS = [
    ("coinfer.sdk.algo", "from coinfer.edge.gateway import GatewayOptions\n",
     "coinfer.sdk imports coinfer.edge"),
    ("coinfer.device.run", "import coinfer.converters.export\n", "coinfer.device imports coinfer.converters"),
    ("coinfer.edge.serve", "from coinfer.cloud.stip.server import create_app\n",
     "coinfer.edge imports coinfer.cloud"),
    ("coinfer.cloud.serve", "from coinfer.bench.demo import run\n", "coinfer.cloud imports coinfer.bench"),
    ("coinfer.edge.algo", "def f():\n    from coinfer.converters.filters import export_filter\n",
     "an edge library module imports coinfer.converters"),
    ("coinfer.edge.algo", "from coinfer.sdk.cli.report import report\n", "imports command module"),
    ("coinfer.device.filter", "import torch\n", "coinfer.device imports torch at module level"),
    ("coinfer.sdk.train", "from coinfer.sdk.nothing import here\n", "coinfer.sdk.nothing does not exist"),
]


@pytest.mark.parametrize(("module", "text", "message"), BREAKS, ids=[b[2] for b in BREAKS])
def test_each_rule_fails_on_a_tree_that_breaks_it(tmp_path, module, text, message):
    for existing in ("coinfer.sdk.cli.report", "coinfer.edge.gateway", "coinfer.cloud.stip.server",
                     "coinfer.bench.demo", "coinfer.converters.export", "coinfer.converters.filters"):
        _write(tmp_path, existing, "")
    _write(tmp_path, module, text)
    found = violations(tmp_path)
    assert len(found) == 1 and message in found[0], found


def test_lazy_imports_and_type_checking_blocks_are_allowed_where_the_rules_allow(tmp_path):
    _write(tmp_path, "coinfer.sdk.train", "def fit():\n    import tensorflow\n")
    _write(tmp_path, "coinfer.edge.cli.export",
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
           "def run():\n    from coinfer.converters.filters import export_filter\n")
    _write(tmp_path, "coinfer.converters.filters", "")
    assert violations(tmp_path) == []
