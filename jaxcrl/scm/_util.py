"""Helpers shared by ``jaxcrl.scm``: config and shape validation, fast-compiling draws."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np


def check_choice(name: str, value: str, options: Sequence[str]) -> None:
    """Raises ValueError unless ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")


def check_range(name: str, low: float, high: float, *, min_low: float | None = None) -> None:
    """Raises ValueError unless ``low <= high`` and, if given, ``low > min_low``."""
    if not low <= high:
        raise ValueError(f"{name}: low must be <= high, got low={low}, high={high}")
    if min_low is not None and not low > min_low:
        raise ValueError(f"{name}: low must be > {min_low}, got {low}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raises ValueError unless ``value > 0`` (or ``>= 0`` with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_shape(name: str, x: object, shape: Sequence[int | None]) -> None:
    """Raises ValueError unless ``x`` has the given shape (``None`` matches any size)."""
    actual = np.shape(x)
    ok = len(actual) == len(shape) and all(
        s is None or s == a for s, a in zip(shape, actual, strict=True)
    )
    if not ok:
        dims = ", ".join("*" if s is None else str(s) for s in shape)
        expected = f"({dims},)" if len(shape) == 1 else f"({dims})"
        raise ValueError(f"{name} must have shape {expected}, got {actual}")


# Random draws are made 1-D and reshaped: with JAX's default partitionable threefry,
# multi-dimensional draws compile several times slower on CPU (~0.3-0.7 s each) than
# flat ones, and the simulators make dozens of draws per program.


def normal(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Standard normal ``float32`` draw of ``shape`` (drawn flat, then reshaped)."""
    return jax.random.normal(key, (math.prod(shape),)).reshape(shape)


def uniform(
    key: jax.Array, shape: Sequence[int], minval: float = 0.0, maxval: float = 1.0
) -> jax.Array:
    """Uniform ``float32`` draw on ``[minval, maxval)`` of ``shape`` (drawn flat, then reshaped)."""
    flat = jax.random.uniform(key, (math.prod(shape),), minval=minval, maxval=maxval)
    return flat.reshape(shape)
