"""Packaging: `pip install -e .` and a wheel build work in a fresh virtualenv that has none of the dependencies.

The metadata used to need PyYAML: without a [build-system] in pyproject.toml, the pip and setuptools of a stock
Python 3.9 venv built it with setuptools 58, whose `version = attr:` imported exekutor/__init__ and so PyYAML,
gevent and the rest, which pip installs only after it has the metadata.
"""
import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from exekutor.version import __version__
from tests.conftest import ROOT

# What `python3.9 -m venv` gives (the pip and setuptools that Python 3.9's ensurepip bundles): the tools the failure
# was seen with, on whatever interpreter runs the tests.
STOCK_PY39_TOOLS = ("pip==23.0.1", "setuptools==58.1.0")
SOURCE_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md")


def run(*args):
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def copy_source(dest):
    """The files a build reads, outside the checkout: building writes build/ and *.egg-info beside them."""
    dest.mkdir()
    for name in SOURCE_FILES:
        if Path(ROOT, name).exists():
            shutil.copy(Path(ROOT, name), dest / name)
    shutil.copytree(Path(ROOT, "exekutor"), dest / "exekutor", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_version_module_imports_nothing():
    # setup.cfg reads the version from this file; it must stay readable without the package's dependencies.
    tree = ast.parse(Path(ROOT, "exekutor", "version.py").read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.mark.slow  # about 20 s: a virtualenv, two pip installs and two isolated builds
@pytest.mark.timeout(300)
def test_install_and_wheel_build_need_no_dependency_for_the_metadata(tmp_path):
    source = copy_source(tmp_path / "src")
    env = tmp_path / "venv"
    run(sys.executable, "-m", "venv", env)
    python = env / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *STOCK_PY39_TOOLS)

    run(python, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "-e", source)
    version = run(python, "-c", "import importlib.metadata as m; print(m.version('exekutor-gevent'))")
    assert version.stdout.strip() == __version__
    missing = subprocess.run([python, "-c", "import yaml"], capture_output=True, text=True)
    assert "No module named 'yaml'" in missing.stderr, "the venv must lack the dependencies for this to prove it"

    run(python, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "-w", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("exekutor_gevent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"exekutor_gevent-{__version__}.dist-info/METADATA" in names
    assert any(name.startswith("exekutor/db/migrations/") and name.endswith(".sql") for name in names)


# Which releases have a manylinux x86_64 wheel for each Python, as PyPI listed them on 2026-12-06 (checked with
# `pip index versions P --python-version V` for the newest release pip may pick, and `pip download --no-deps
# --only-binary=:all: --python-version V --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 P` for the
# newest with a wheel). Where they differ pip would build the newest from source: gevent 26.4.0-26.7.0 and
# setproctitle 1.3.8 accept Python 3.9 but ship no cp39 wheel. psycopg2-binary (2.9.12 on 3.9, 2.9.13 on 3.10+),
# PyYAML (6.0.3, 6.0.4), greenlet and zope.interface have a wheel for every supported Python.
NEWEST_WITH_WHEEL = {
    "3.9": {"gevent": "25.9.1", "setproctitle": "1.3.7"},
    **{v: {"gevent": "26.9.0", "setproctitle": "1.3.8"} for v in ("3.10", "3.11", "3.12", "3.13", "3.14")},
}
SOURCE_ONLY = {"3.9": {"gevent": ("26.4.0", "26.5.0", "26.7.0"), "setproctitle": ("1.3.8",)}}


def test_every_supported_python_gets_a_wheel_of_the_compiled_dependencies():
    from packaging.requirements import Requirement
    from setuptools.config.setupcfg import read_configuration

    requirements = [
        Requirement(line) for line in read_configuration(Path(ROOT, "setup.cfg"))["options"]["install_requires"]
    ]
    for python, newest in NEWEST_WITH_WHEEL.items():
        env = {"python_version": python, "python_full_version": f"{python}.0"}
        active = [req for req in requirements if req.marker is None or req.marker.evaluate(env)]
        for name, version in newest.items():
            (req,) = [req for req in active if req.name == name]
            assert req.specifier.contains(version), (python, str(req))
            for source_only in SOURCE_ONLY.get(python, {}).get(name, ()):
                assert not req.specifier.contains(source_only), (python, str(req), "would build from source")
