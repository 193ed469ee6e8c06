"""Import a benchmark script as a module, for its tests (pytest puts benchmarks/ on the path, see pyproject.toml)."""
import importlib


def load(name: str):
    return importlib.import_module(name)
