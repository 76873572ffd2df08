"""How tests reach the programs (``tools/*.py``, ``recipes/*.py``): loaded as modules from
their files, once per session (the ``program`` fixture of ``conftest.py``, or
:func:`load_program` in a child process). Programs are not a package, and no test imports
one another way."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_program(name: str) -> ModuleType:
    """The program ``name`` (``tools/fit_images``, ``recipes/gsclip_adapt``) as a module,
    registered in ``sys.modules`` under ``program.<folder>.<stem>``."""
    module_name = "program." + name.replace("/", ".")
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / f"{name}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no program {name}.py in {REPO}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
