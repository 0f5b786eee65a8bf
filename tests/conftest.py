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


# The slowest files first (their summed test times on the 2-core CI machine, longest first):
# `make test` hands whole files to its workers in collection order, so a long file collected
# last would run alone at the end while the other worker idles.
_SLOWEST_FIRST = (
    "test_notebooks.py", "test_mesh.py", "test_experiments.py", "test_crl_fit.py",
    "test_analysis_causal_features.py", "test_sae_experiments.py", "test_sae_train.py",
    "test_lm_train.py", "test_analysis_sae_probe.py", "test_crl_recovery.py",
    "test_crl_unknown_distinct.py", "test_sae_lm_experiment.py", "test_sae_clt.py",
)


# Marked ``slow`` (`make test` skips them, `make test-all` runs them): the notebooks, each
# executed in its own kernel, and the 8-device SPMD checks, each in its own subprocess. On
# this 2-core host the whole suite needs ~61 CPU-minutes, over the 30-minute CI budget; these
# two files are ~13 of them and re-run code the rest of the suite also covers.
_SLOW_FILES = ("test_notebooks.py", "test_mesh.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: notebooks, 8-device subprocesses, benchmark "
                            "smoke tests and one-off diagnostic scripts (run by "
                            "`make test-all`)")


def pytest_collection_modifyitems(config, items):
    import pytest

    rank = {name: i for i, name in enumerate(_SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable otherwise
    for item in items:
        if item.path.name in _SLOW_FILES:
            item.add_marker(pytest.mark.slow)
