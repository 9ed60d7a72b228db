"""The chart's image (docker/Dockerfile), as far as it can be checked without a Docker engine.

The Dockerfile's COPY sources, filtered by docker/Dockerfile.dockerignore, make a build context;
its install step (`pip install --no-deps . ./clients/python`) must yield packages that hold every
module the front end, the job driver and the CLI import, and the `llc` command the chart runs.
"""
from __future__ import annotations

import configparser
import fnmatch
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
IGNORE = ROOT / "docker" / "Dockerfile.dockerignore"


def copy_sources() -> list[str]:
    """Source paths of the Dockerfile's COPY instructions (without --from: those read the context)."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        words = shlex.split(line.split("#", 1)[0]) if line.startswith("COPY") else []
        args = [w for w in words[1:] if not w.startswith("--")]
        if words and not any(w.startswith("--from") for w in words):
            sources += args[:-1]
    return sources


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in IGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, for the pattern forms the file uses: a pattern matches the path or a parent
    of it; `**/` matches any depth."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def build_context(target: Path) -> None:
    patterns = ignore_patterns()
    for source in copy_sources():
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            relative = f.relative_to(ROOT).as_posix()
            if not ignored(relative, patterns):
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target / relative)


def test_copy_sources_exist_and_survive_the_ignore_file():
    sources = copy_sources()
    assert {"requirements.txt", "pyproject.toml", "clients/python", "cluster", "service", "docker/healthcheck.py"} <= set(sources)
    patterns = ignore_patterns()
    for source in sources:
        assert (ROOT / source).exists(), f"docker/Dockerfile copies {source}, which does not exist"
        assert not ignored(source, patterns), f"docker/Dockerfile.dockerignore drops {source}, which the Dockerfile copies"
    # The filter does what it is for: caches and local state stay out of the image.
    for path in (".venv/bin/python", "cluster/__pycache__/spec.cpython-311.pyc", "clients/python/build/lib/llc/cli.py",
                 "llc-jobs.sqlite", ".cache/helm/2.2.2/helm"):
        assert ignored(path, patterns), path


def test_the_torch_pin_matches_the_setup_script():
    setup = (ROOT / "scripts" / "setup").read_text()
    pinned = setup.split("LLC_TORCH_VERSION:-", 1)[1].split("}", 1)[0]
    assert f"ARG TORCH_VERSION={pinned}" in DOCKERFILE.read_text()


@pytest.mark.slow  # builds two wheels (~10 s)
def test_the_images_install_step_yields_the_commands_and_modules_the_chart_runs(tmp_path):
    context, wheels, site = tmp_path / "context", tmp_path / "wheels", tmp_path / "site"
    build_context(context)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          str(context), str(context / "clients" / "python"), "-w", str(wheels)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    built = sorted(wheels.glob("*.whl"))
    assert [w.name.split("-")[0] for w in built] == ["llc_client", "llc_service"]
    for wheel in built:
        zipfile.ZipFile(wheel).extractall(site)
    # The `llc` command (the front end's container command, the helm test pod's too).
    (entry_points,) = site.glob("llc_client-*.dist-info/entry_points.txt")
    scripts = configparser.ConfigParser()
    scripts.read(entry_points)
    assert scripts["console_scripts"]["llc"] == "llc.cli:main"
    # What the front end, the driver (`python -m cluster.driver` on the head) and the chains import,
    # from the installed packages rather than this checkout.
    modules = ["service.serve", "service.server", "service.store", "cluster.driver", "cluster.chains", "cluster.workers",
               "cluster.engine", "cluster.models", "cluster.datasets", "llc.cli", "llc.v1.llc_pb2_grpc"]
    code = "import importlib, sys\nfor m in sys.argv[1:]: print(importlib.import_module(m).__file__)"
    out = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    files = out.stdout.split()
    assert len(files) == len(modules) and all(f.startswith(str(site)) for f in files), out.stdout
