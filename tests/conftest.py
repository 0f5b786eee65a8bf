"""Test configuration: pin JAX to the CPU and keep float32 so results match across machines."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def load_experiment(rel: str):
    """Imports an experiment script (``experiments/...py``) as a module, by path."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / rel
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses and typing.get_type_hints look the module up
    spec.loader.exec_module(mod)
    return mod
