"""The package's layers: errors/io -> data, networks, metrics -> engines -> experiments. A lower layer never imports
a higher one, and every network (``nn.Module``) is defined in ``oct_foundation.networks``."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import torch

import oct_foundation

ROOT = Path(oct_foundation.__file__).parent
HIGHER = {
    "data": ("oct_foundation.engines", "oct_foundation.experiments", "oct_foundation.networks"),
    "networks": ("oct_foundation.engines", "oct_foundation.experiments"),
    "metrics": ("oct_foundation.engines", "oct_foundation.experiments"),
    "engines": ("oct_foundation.experiments",),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


@pytest.mark.parametrize("layer", sorted(HIGHER))
def test_no_module_imports_a_higher_layer(layer):
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in sorted((ROOT / layer).glob("*.py"))
           for line, mod in _imports(p) if mod.startswith(HIGHER[layer])]
    assert not bad, "\n".join(bad)


def test_every_network_lives_in_networks():
    outside = []
    for info in pkgutil.walk_packages([str(ROOT)], prefix="oct_foundation."):
        if info.name.startswith("oct_foundation.networks") or info.ispkg:
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and obj.__module__ == info.name:
                outside.append(f"{info.name}.{name}")
    assert not outside, f"nn.Module classes outside oct_foundation.networks: {outside}"


def test_the_top_level_holds_only_the_foundation_modules():
    """Drivers and tools live in their layer; beside the subpackages only the modules every layer may use."""
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert top == ["__init__", "config", "errors", "io"], f"top-level modules: {top}"
