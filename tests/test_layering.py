"""The package's layering, read from the source: imports point down only, no cycles, no private names across
modules. See docs/architecture.md for the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "diffprune"

#: lowest first; a module may import its own layer's modules and those of lower layers only
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "progress", "prompt_files", "history", "results", "anatomy", "_fs"),
    ("archs", "measure", "testbed", "integrity", "precision", "hub"),
    ("calibration", "conditioning", "formats", "io", "saving", "report"),
    ("weights", "layers", "tokens", "distill"),
    ("recipe",),
    ("evaluate",),
    ("demo", "bench"),
    ("cli", "__init__", "__main__"),
)
FAMILIES = ("weights", "layers", "tokens", "distill")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every diffprune import in the file, lazy ones included."""
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "diffprune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "diffprune":
                out.append((target, [a.name for a in node.names], node.lineno))
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    top = _top(module)
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py")


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(target: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The modules an import statement reads: ``from pkg import mod`` reads ``pkg.mod`` when it is a module."""
    found = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return found or [target]


def test_every_module_sits_in_a_layer():
    for module in _modules():
        _layer(module)


def test_imports_point_down_only():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        for target, names, line in _imports(path):
            for read in _resolve(target, names, modules):
                if read == "diffprune" and names:  # "from diffprune import x" reads x
                    continue
                if _layer(read) > _layer(module):
                    upward.append(f"{path.relative_to(SRC.parent)}:{line} imports {read}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_families_do_not_import_each_other_or_evaluation():
    crossing = []
    for module, path in _modules().items():
        if _top(module) not in FAMILIES:
            continue
        for target, _, line in _imports(path):
            if _top(target) in FAMILIES and _top(target) != _top(module) or _top(target) == "evaluate":
                crossing.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}")
    assert not crossing, "\n".join(crossing)


def test_no_import_cycles():
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for target, names, _ in _imports(path):
            for read in _resolve(target, names, modules):
                if read in modules and read != module and not (module.startswith(read + ".")):
                    graph[module].add(read)
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_across_modules():
    private = []
    for module, path in _modules().items():
        for target, names, line in _imports(path):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    private.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}.{name}")
    assert not private, "\n".join(private)


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_layers_name_real_modules(layer):
    tops = {_top(m) for m in _modules()}
    # a name may be reserved for a module still to come (distill, recipe, bench)
    assert set(LAYERS[layer]) & tops or layer == 4, LAYERS[layer]
