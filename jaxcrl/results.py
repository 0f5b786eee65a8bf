"""Experiment results: per-seed summaries, ``results.json`` and a printed table.

Every experiment writes ``OUT/results.json`` as
``{"setup": {...}, "methods": {name: {metric: {"mean", "std", "per_seed"}, "wall_s": ...}}}``
so tables in README/BENCHMARKS.md can be regenerated from files, never typed by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def summarize(values: Sequence[float]) -> dict:
    """``{"mean", "std", "per_seed"}`` of per-seed values (NaNs kept in per_seed, skipped in
    mean/std; std is the population std over seeds)."""
    vals = [float(v) for v in values]
    finite = [v for v in vals if math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else float("nan")
    std = float(np.std(finite)) if finite else float("nan")
    return {"mean": mean, "std": std, "per_seed": vals}


def summarize_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict:
    """Turns a list (one dict of metrics per seed) into ``{metric: summarize(...)}``.

    A metric whose value is a list of length ``d`` (e.g. per-latent MCC) is summarized
    position by position: ``{"mean": [d], "std": [d], "per_seed": [[d], ...]}``.
    """
    keys = list(per_seed[0]) if per_seed else []
    out = {}
    for k in keys:
        vals = [m[k] for m in per_seed]
        if isinstance(vals[0], (list, tuple, np.ndarray)):
            cols = [summarize(c) for c in zip(*vals, strict=True)]
            out[k] = {"mean": [c["mean"] for c in cols], "std": [c["std"] for c in cols],
                      "per_seed": [[float(v) for v in row] for row in vals]}
        else:
            out[k] = summarize(vals)
    return out


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return np.asarray(obj).tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else obj
    return obj


def write_results(out: str | os.PathLike, setup: Any, methods: Mapping[str, Any],
                  **extra: Any) -> Path:
    """Writes ``out/results.json`` (creating ``out``) and returns its path; in a multi-host
    run only process 0 writes (the others return the same path)."""
    out = Path(out)
    import jax

    if jax.process_count() > 1 and jax.process_index() != 0:
        return out / "results.json"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    payload = {"setup": _jsonable(setup), "methods": _jsonable(methods), **_jsonable(extra)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path


def format_table(methods: Mapping[str, Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table: one row per method, ``mean ± std`` per metric column."""
    header = ["method", *columns]
    rows = []
    for name, metrics in methods.items():
        row = [name]
        for c in columns:
            v = metrics.get(c)
            if isinstance(v, Mapping):
                row.append(f"{v['mean']:.3f} ± {v['std']:.3f}")
            elif isinstance(v, (int, float)):
                row.append(f"{v:.3f}")
            else:
                row.append("-")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(s.ljust(w) for s, w in zip(r, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep, *map(fmt, rows)])
