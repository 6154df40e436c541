"""The shape of the package: layers import downward only, no cycles, modules of one job.

Imports are read from the source (function-level ones included: a lazy import is still a
dependency), so these checks need neither Ray nor torch.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "s4al_ray")
MAX_MODULE_LINES = 400

# Lowest first. A module may import from its own layer or any layer below, never above; a new
# module must be placed here (a prefix ending in "." covers a subpackage).
LAYERS = [
    # leaves: constants, storage, geometry, the two rule modules
    (
        "s4al_ray",
        "s4al_ray.storage",
        "s4al_ray.regions",
        "s4al_ray.superpixels",
        "s4al_ray.pseudo_labels",
        "s4al_ray.scores",
        "s4al_ray.yamlfile",
        "s4al_ray.config_schema",
    ),
    ("s4al_ray.config", "s4al_ray.config_help", "s4al_ray.layout", "s4al_ray.transfer"),
    (
        "s4al_ray.data",
        "s4al_ray.data.",
        "s4al_ray.region_maps",
        "s4al_ray.model",
        "s4al_ray.model.",
        "s4al_ray.losses",
        "s4al_ray.losses.",
    ),
    (
        "s4al_ray.evaluate",
        "s4al_ray.acquisition",
        "s4al_ray.acquisition_cutoff",
        "s4al_ray.acquisition_order",
        "s4al_ray.acquisition_diversity",
        "s4al_ray.region_embeddings",
        "s4al_ray.pool",
        "s4al_ray.pool.",
        "s4al_ray.report",
        "s4al_ray.report_figures",
        "s4al_ray.report_examples",
        "s4al_ray.sweep_report",
        "s4al_ray.tracking",
        "s4al_ray.mean_teacher",
    ),
    # the stages and what sizes them
    (
        "s4al_ray.progress",
        "s4al_ray.student",
        "s4al_ray.student_trainer",
        "s4al_ray.teacher",
        "s4al_ray.teacher_stages",
        "s4al_ray.scoring",
        "s4al_ray.runtime",
        "s4al_ray.run_lock",
        "s4al_ray.resume",
        "s4al_ray.visual_report",
    ),
    ("s4al_ray.jobs",),
    ("s4al_ray.experiment",),
    (
        "s4al_ray.annotate",
        "s4al_ray.evaluate_command",
        "s4al_ray.serve_predictions",
        "s4al_ray.sweep_space",
        "s4al_ray.sweep_callbacks",
        "s4al_ray.sweep_trial",
        "s4al_ray.sweep",
    ),
    ("s4al_ray.cli",),
]


def _modules() -> dict[str, str]:
    out = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                out[module.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(path: str) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "s4al_ray":
                for alias in node.names:  # ``from s4al_ray.data import synthetic`` is a module
                    child = f"{node.module}.{alias.name}"
                    deps.add(child if child in MODULES else node.module)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.split(".")[0] == "s4al_ray")
    return {d for d in deps if d in MODULES}


GRAPH = {module: _imports(path) - {module} for module, path in MODULES.items()}


def _layer(module: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(module == m or (m.endswith(".") and module.startswith(m)) for m in members):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: place it")


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_imports_go_downward_only():
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in GRAPH.items()
        for d in deps
        if _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_modules_stay_small():
    big = {
        m: n
        for m, p in MODULES.items()
        if (n := sum(1 for _ in open(p, encoding="utf-8"))) > MAX_MODULE_LINES
    }
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split by job): {big}"


def test_benchmarks_use_no_private_name():
    """Benchmarks build their inputs with the product's public functions (jobs.py, the
    Experiment's stages), so they cannot drift from what the round loop runs."""
    bench = os.path.join(ROOT, "benchmarks")
    found = []
    for name in sorted(os.listdir(bench)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(bench, name), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("s4al_ray"):
                found += [
                    f"{name}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{name}:{node.lineno}: .{node.attr}")
    assert not found, "\n".join(found)
