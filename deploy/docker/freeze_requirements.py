"""Write the pinned requirements of the emseg image from a working environment.

Run it in an environment where emseg works (``scripts/setup.sh`` makes one)::

    python deploy/docker/freeze_requirements.py > deploy/docker/requirements.txt

It walks the dependency closure of emseg's requirements in ``pyproject.toml`` (with its ``ml`` extra)
and of torch, using the installed versions, and prints every distribution in it as
``name==version``, except torch itself, sam2 and the CUDA libraries: the Dockerfile installs torch
from the CUDA wheel index (torch pins its own CUDA libraries exactly) and sam2 without dependencies.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
#: extras of emseg that go into the image
EXTRAS = ("ml",)
#: installed by the Dockerfile itself, or pulled in by torch with exact pins of its own
SKIP = re.compile(r"^(emseg|torch|sam2|triton|nvidia-.*|cuda-.*)$")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name.

    >>> canonical("Connected_Components.3d")
    'connected-components-3d'
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, str]:
    """Installed ``{name: version}`` of every distribution the roots need, transitively."""
    seen: dict[str, str] = {}
    todo = [(canonical(name), set(extras)) for name, extras in roots]
    while todo:
        name, extras = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            print(f"# warning: {name} is required but not installed here", file=sys.stderr)
            continue
        first = name not in seen
        seen[name] = dist.version
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is not None:
                envs = [{"extra": e} for e in extras] or [{"extra": ""}]
                if not any(req.marker.evaluate(env) for env in envs):
                    continue
            child = canonical(req.name)
            if child not in seen or (first and req.extras):
                todo.append((child, set(req.extras)))
    return seen


def roots(pyproject: Path = PYPROJECT) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """emseg's own requirements (and those of :data:`EXTRAS`) as (name, extras)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    reqs = [Requirement(line) for line in lines]
    return tuple((r.name, tuple(sorted(r.extras))) for r in reqs if r.marker is None or r.marker.evaluate())


def main() -> int:
    pins = closure(roots())
    print("# Pinned Python packages of the emseg image (deploy/docker/Dockerfile), used as constraints")
    print("# for every pip install there. Regenerate: python deploy/docker/freeze_requirements.py")
    for name in sorted(pins):
        if not SKIP.match(name):
            print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
