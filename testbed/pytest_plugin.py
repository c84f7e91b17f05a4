"""pytest plugin (`-p testbed.pytest_plugin`): the repo root is a ComfyUI pack whose __init__.py needs ComfyUI,
so it is collected as a plain folder instead of being imported as a test package. In-process tests load the pack
through ComfyUI's own loader (tests/conftest.py)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    return pytest.Dir.from_parent(parent, path=path) if path == ROOT else None
