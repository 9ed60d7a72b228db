"""The package boundaries, checked on the source: what each layer may import, anywhere in a module
(function-level imports included), so a boundary cannot be crossed by a lazy import either."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def imported_modules(package: str) -> dict[str, set[str]]:
    """Top-level package names each module of `package` (a path under the root) imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "/v1/" in path.as_posix():  # generated gRPC stubs
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, allowed) -> dict[str, list[str]]:
    bad = {m: sorted(n for n in names if not allowed(n)) for m, names in imported_modules(package).items()}
    return {m: names for m, names in bad.items() if names}


STDLIB = set(sys.stdlib_module_names)


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_contract_imports_only_the_standard_library_re2_and_itself():
    assert offenders("cluster/contract", lambda n: top(n) in STDLIB | {"re2"} or n.startswith("cluster.contract")) == {}


def test_the_engine_never_imports_ray_grpc_the_service_or_the_cluster_runtime():
    def allowed(n: str) -> bool:
        return not (top(n) in {"ray", "grpc", "service", "llc"} or
                    (top(n) == "cluster" and not n.startswith(("cluster.contract", "cluster.engine"))))

    assert offenders("cluster/engine", allowed) == {}


@pytest.mark.parametrize("heavy", ["torch", "transformers", "deepspeed", "cluster.engine", "cluster.models",
                                   "cluster.workers", "cluster.datasets"])
def test_the_front_end_never_imports_torch_or_the_workers_side(heavy):
    assert offenders("service", lambda n: not (n == heavy or n.startswith(heavy + "."))) == {}


def test_the_sdk_never_imports_the_server_or_the_cluster():
    assert offenders("clients/python/llc", lambda n: top(n) not in {"service", "cluster", "testbeds", "torch"}) == {}


def test_product_packages_never_import_the_testbeds():
    for package in ("service", "cluster", "clients/python/llc"):
        assert offenders(package, lambda n: top(n) not in {"testbeds", "tests"}) == {}, package


def test_every_front_end_module_and_the_contract_import_without_torch_ray_workers():
    modules = sorted(
        str(p.relative_to(ROOT).with_suffix("")).replace("/", ".")
        for pkg in ("service", "cluster/contract") for p in (ROOT / pkg).rglob("*.py") if p.name != "__main__.py"
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'deepspeed'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
