"""Static tools resolve every ``coinfer.*`` import of the tree and find no type errors in it
(mypy, configured in pyproject.toml)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [f"{folder}/src" for folder in ("sdk", "device", "edge", "cloud", "converters", "bench")]
#: What mypy says when it cannot follow an import into coinfer (a missing module, a package
#: without py.typed, a name a module does not define).
UNRESOLVED = re.compile(r'(import-not-found|import-untyped|Module "coinfer[^"]*" has no attribute)')

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mypy(tmp_path_factory):
    """Run mypy over some paths; the result of the whole tree is kept for every test that asks."""
    pytest.importorskip("mypy")
    cache = tmp_path_factory.mktemp("mypy-cache")
    results: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}

    def run(*paths: str) -> subprocess.CompletedProcess[str]:
        if paths not in results:
            result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *paths],
                                    cwd=ROOT, capture_output=True, text=True)
            assert "checked" in result.stdout or "Success" in result.stdout, result.stdout + result.stderr
            results[paths] = result
        return results[paths]

    return run


def unresolved(result: subprocess.CompletedProcess[str]) -> list[str]:
    """mypy's lines about coinfer imports it could not resolve."""
    return [line for line in result.stdout.splitlines() if "coinfer" in line and UNRESOLVED.search(line)]


def test_mypy_resolves_every_coinfer_import(mypy):
    assert unresolved(mypy(*SOURCES)) == []


def test_mypy_finds_no_type_errors_in_the_tree(mypy):
    result = mypy(*SOURCES)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 0 and errors == [], "\n".join(errors) or result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("Success: no issues found"), result.stdout


def test_an_import_of_a_missing_coinfer_module_is_reported(mypy, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from coinfer.sdk.wire import encode\nfrom coinfer.edge.nothing import here\n"
                     "from coinfer.sdk.artifact import no_such_name\n")
    found = unresolved(mypy(str(probe)))
    assert len(found) == 2 and "coinfer.edge.nothing" in found[0] and "no_such_name" in found[1], found
