"""Write cluster/constraints.txt: the exact versions of this package's runtime dependencies.

    .venv/bin/python cluster/lock_constraints.py          # rewrite cluster/constraints.txt
    .venv/bin/python cluster/lock_constraints.py --check  # exit 1 if the file is out of date

The pins are what the environment running this script has installed (the project's tested
`.venv`): every requirement in pyproject.toml's [project].dependencies, with its extras, and
everything they pull in, transitively, for this interpreter and platform (Linux x86_64,
Python 3.11: the same as the rayproject/ray:*-py311-gpu image). Test-only and optional extras of
this project (pytest, moto, ruff, tensorboard) and the project itself are left out. Reads only
installed metadata: no network, no pip resolver.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "cluster" / "constraints.txt"

HEADER = """\
# Exact versions of s4al-ray's runtime dependencies (pyproject.toml [project].dependencies and
# everything they pull in), as installed in the project's tested environment (.venv: Linux
# x86_64, Python 3.11, torch {torch} = the CUDA build from PyPI). cluster/Dockerfile installs
# the package with  pip install -c cluster/constraints.txt .  so every node runs these versions.
# Test-only packages (pytest, moto, ruff) and the project itself are not listed.
#
# GENERATED: do not edit by hand. After changing dependencies (pyproject.toml or the .venv):
#   .venv/bin/python cluster/lock_constraints.py            # rewrites this file
#   .venv/bin/python cluster/lock_constraints.py --check    # exit 1 if it is out of date
# then rebuild and push the image (cluster/README.md, "Image").
"""


def runtime_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version, for `roots` and all they require (with extras)."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, frozenset()) for r in roots]
    while todo:
        req, parent_extras = todo.pop()
        if not _applies(req, parent_extras):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{req} is required but not installed in {sys.prefix}: install it first")
        if not req.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"installed {req.name}=={dist.version} does not satisfy {req}")
        pinned[name] = dist.version
        for sub in dist.requires or []:
            todo.append((Requirement(sub), frozenset(req.extras)))
    pinned.pop(canonicalize_name("s4al-ray"), None)
    return pinned


def render(pinned: dict[str, str]) -> str:
    lines = [f"{name}=={version}" for name, version in sorted(pinned.items())]
    return HEADER.format(torch=pinned.get("torch", "?")) + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render(closure(runtime_requirements()))
    if args.check:
        if OUT.is_file() and OUT.read_text() == text:
            return 0
        print(f"{OUT.relative_to(ROOT)} is out of date: run {Path(__file__).name}", file=sys.stderr)
        return 1
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}: {text.count('==')} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
