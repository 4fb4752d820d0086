"""The import graph is kvstore_cluster <- {kvstore_proxy, kvstore_sentinel, kvstore_admin}: no app imports another.

What the apps share (every record that crosses a process boundary, the node client, the cluster
operations) lives in kvstore_cluster, which imports none of them. Every import counts, including
those inside functions and those spelled as strings for importlib.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("kvstore_proxy", "kvstore_sentinel", "kvstore_admin")
PACKAGES = ("kvstore_cluster", *APPS)
ALLOWED = {"kvstore_cluster": {"kvstore_cluster"}, **{app: {app, "kvstore_cluster"} for app in APPS}}


def imported_modules(source: str) -> set[str]:
    """Every module ``source`` imports: import statements anywhere, and importlib/__import__ with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.add(node.args[0].value)
    return found


def package_imports(package: str) -> dict[str, set[str]]:
    """Source file -> the kvstore packages it imports."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        top = {m.split(".")[0] for m in imported_modules(path.read_text())}
        out[str(path.relative_to(ROOT))] = top & set(PACKAGES)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_itself_and_kvstore_cluster(package: str) -> None:
    wrong = {f: sorted(pkgs - ALLOWED[package]) for f, pkgs in package_imports(package).items()
             if pkgs - ALLOWED[package]}
    assert wrong == {}, f"{package} may import only {sorted(ALLOWED[package])}"


def test_relative_imports_stay_inside_their_package() -> None:
    # A relative import cannot name another package, but one climbing out of it could.
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            depth = len(path.relative_to(ROOT / package).parts)  # module in a subpackage: may climb that far
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert node.level < depth + 1, f"{path}: relative import climbs out of {package}"


@pytest.mark.parametrize(("source", "expected"), [
    ("import kvstore_admin.cli", {"kvstore_admin.cli"}),
    ("from kvstore_sentinel import probe", {"kvstore_sentinel"}),
    ("def f():\n    from kvstore_proxy.resp import error\n", {"kvstore_proxy.resp"}),
    ("import importlib\nimportlib.import_module('kvstore_admin.cli')", {"importlib", "kvstore_admin.cli"}),
    ("__import__('kvstore_sentinel')", {"kvstore_sentinel"}),
])
def test_the_checker_sees_every_kind_of_import(source: str, expected: set[str]) -> None:
    assert imported_modules(source) == expected
