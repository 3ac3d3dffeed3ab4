"""The shape of the code: one namespace, no import cycles, the library apart from Dask, small modules.

These read the source tree (``ast``, no imports) and install it once, as the Dockerfile does.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from emseg.pipeline import stages
from tests.conftest import REPO

PACKAGES = {"emseg.pipeline": REPO / "pipeline", "emseg.tasks": REPO / "tasks"}
#: modules allowed past 400 lines, each with its reason
LONG_MODULES = {
    "pipeline/config.py": "every config key with its default, bounds and meaning in one schema",
    "pipeline/io/volume.py": "one Volume over tensorstore's drivers: opening, metadata of five formats, reads, writes",
    "pipeline/stitching/agglomeration.py": "fragments, region graph and agglomeration: one algorithm, kept together",
    "pipeline/quality/phantom.py": "the synthetic EM volume: geometry, membranes, organelles, noise in one generator",
    "tasks/driver/run.py": "the driver's plan and execute: the checks before any work and the run itself",
}


def _modules() -> dict[str, Path]:
    out = {}
    for name, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """emseg modules imported anywhere in the file (also inside functions), as absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {n for n in found if n.startswith("emseg.")}


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {f"{name}{'.' + '.'.join(p.relative_to(root).parts) if p != root else ''}"
               for name, root in PACKAGES.items() for p in [root, *root.rglob("*")]
               if p.is_dir() and (p / "__init__.py").exists()}
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {"emseg.pipeline": "pipeline", "emseg.tasks": "tasks"}


def test_no_import_cycles_and_the_library_never_imports_the_driver():
    modules = _modules()
    graph = {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}
    for m, deps in graph.items():
        if m.startswith("emseg.pipeline"):
            assert not [d for d in deps if d.startswith("emseg.tasks")], f"{m} imports the driver: {deps}"
            text = modules[m].read_text()
            assert not re.search(r"^\s*(import|from) (dask|distributed)\b", text, re.M), f"{m} imports dask"
    # a package's __init__ may name its submodules; a cycle through it is not a real one
    graph = {m: {d for d in deps if not _is_package(d, modules)} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def test_modules_stay_small_or_say_why():
    long = {str(p.relative_to(REPO)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > 400}
    assert set(long) <= set(LONG_MODULES), f"modules over 400 lines without a reason in LONG_MODULES: {long}"


def test_stage_names_are_spelled_only_in_the_registry():
    pattern = re.compile("|".join(re.escape(f'"{s}"') + "|" + re.escape(f"'{s}'") for s in stages.ALL))
    offenders = [f"{p.relative_to(REPO)}:{i + 1}" for p in _modules().values() if p.name != "stages.py"
                 for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
    assert not offenders, offenders


def test_an_install_as_the_dockerfile_makes_it_gives_emseg_and_nothing_generic(tmp_path):
    """The Dockerfile's COPY lines into /opt/emseg/src, then its `pip install --no-deps` of that folder."""
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    src = tmp_path / "src"
    src.mkdir()
    copied = re.findall(r"^COPY ((?:\S+ )+)/opt/emseg/src/(\S*)$", dockerfile, re.M)
    assert copied, "the Dockerfile copies the sources to /opt/emseg/src"
    import shutil

    for sources, dest in copied:
        for s in sources.split():
            target = src / dest if dest else src / Path(s).name
            (shutil.copytree if (REPO / s).is_dir() else shutil.copy)(REPO / s, target)
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(site), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".egg-info")) and p.name != "bin"}
    assert top == {"emseg"}, top
    assert not (site / "emseg" / "__init__.py").exists()  # a namespace package
    assert (site / "emseg" / "pipeline" / "models" / "forest_fib25.skops").exists()  # bundled models come along
    check = subprocess.run([sys.executable, "-c", "import emseg.tasks.cli, emseg.pipeline.io.checkpoints as c; "
                            "print(c.BUNDLED_DIR.is_dir())"], capture_output=True, text=True,
                           env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert check.returncode == 0 and check.stdout.strip() == "True", check.stderr[-2000:]
