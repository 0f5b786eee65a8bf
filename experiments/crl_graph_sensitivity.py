"""How much latent error the graph step tolerates: the exact search on perturbed true latents.

Command::

    python experiments/crl_graph_sensitivity.py --out experiments/results/crl_graph_sensitivity.json

``--seed R`` takes the rows' data of root seed ``R``; ``--perturbations none:0`` only the
true latents themselves (the search's ceiling).

For each generalization row named (default: ``default``, ``d=8`` and the contrastive d = 10
row), the row's own data sets (same keys as :func:`jaxcrl.crl.synthetic.run`, 5 seeds)
have their true latents standardized and perturbed the ways a fitted encoder errs, then
the exact interventional-BIC search (:func:`jaxcrl.crl.discovery.pruned_dag_search`) runs
at every ``(min_r2, edge_threshold)`` pair:

- ``noise s``: ``z + s * eps``, independent Gaussian noise (the encoder's unexplained part);
- ``leak a``: ``z (I + a G)`` with ``G`` standard normal: every latent leaks ``a`` of every
  other one (the linear mixing left in a fit);
- ``tanh``: ``tanh(z / 2)``, a monotone distortion (MCC is not affected, the linear search is).

Writes the mean per-latent |Pearson| of each perturbation and the SHD per seed. The true
latents are the ceiling of the search; nothing here is fitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from crl_generalization import BASE

from jaxcrl.crl.discovery import pruned_dag_search
from jaxcrl.crl.synthetic import GENERALIZATION_ROWS, dataset_keys, variant
from jaxcrl.metrics import shd
from jaxcrl.scm.data import make_dataset

PERTURBATIONS = (("none", 0.0), ("noise", 0.1), ("noise", 0.2), ("leak", 0.03), ("leak", 0.1),
                 ("tanh", 1.0))


def perturb(z: np.ndarray, kind: str, size: float, rng: np.random.Generator) -> np.ndarray:
    d = z.shape[1]
    if kind == "none":
        return z
    if kind == "noise":
        return z + size * rng.standard_normal(z.shape)
    if kind == "leak":
        return z @ (np.eye(d) + size * rng.standard_normal((d, d)))
    if kind == "tanh":
        return np.tanh(z / 2.0)
    raise ValueError(f"unknown perturbation {kind!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_graph_sensitivity.json")
    p.add_argument("--rows", default="default|d=8|contrastive, d=10, D=100, unknown targets")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--min-r2", default="0,0.02,0.05")
    p.add_argument("--thresholds", default="0.3,0")
    p.add_argument("--seed", type=int, default=BASE.seed, help="root seed of the rows' data")
    p.add_argument("--perturbations", default=",".join(f"{k}:{v:g}" for k, v in PERTURBATIONS),
                   help="comma-separated kind:size (kinds: none, noise, leak, tanh)")
    args = p.parse_args(argv)
    try:
        perturbations = [(k, float(v)) for k, v in
                         (t.split(":") for t in args.perturbations.split(","))]
    except ValueError:
        p.error(f"--perturbations wants kind:size pairs, got {args.perturbations!r}")
    bad = sorted({k for k, _ in perturbations} - {k for k, _ in PERTURBATIONS})
    if bad:
        p.error(f"unknown perturbations {bad}")
    taus = [float(v) for v in args.min_r2.split(",")]
    ths = [float(v) for v in args.thresholds.split(",")]
    result = {"command": " ".join(["python", *(sys.argv if argv is None else ["", *argv])]),
              "seed": args.seed, "rows": {}}
    for name in [r for r in args.rows.split("|") if r]:
        if name not in GENERALIZATION_ROWS:
            p.error(f"unknown row {name!r}")
        cfg = dataclasses.replace(variant(BASE, name), seed=args.seed)
        keys = dataset_keys(dataclasses.replace(cfg, seeds=args.seeds))  # the rows' data
        t0 = time.perf_counter()
        cells: dict[str, dict] = {}
        edges = []
        for s in range(args.seeds):
            data = make_dataset(keys[s], cfg.data)
            z, env = np.asarray(data.z, np.float64), np.asarray(data.env)
            targets, adj = np.asarray(data.targets), np.asarray(data.adj) != 0
            z = z / z[env == 0].std(0)
            edges.append(int(adj.sum()))
            rng = np.random.default_rng(s)
            for kind, size in perturbations:
                zp = perturb(z, kind, size, rng)
                corr = float(np.mean([abs(np.corrcoef(zp[:, i], z[:, i])[0, 1])
                                      for i in range(z.shape[1])]))
                for tau in taus:
                    for th in ths:
                        w = pruned_dag_search(zp, env, targets, min_r2=tau, edge_threshold=th)
                        c = cells.setdefault(f"{kind} {size}|{tau}|{th}", {
                            "perturbation": kind, "size": size, "min_r2": tau,
                            "edge_threshold": th, "corr": [], "shd": []})
                        c["corr"].append(corr)
                        c["shd"].append(float(shd(adj, w)))
        for c in cells.values():
            c["shd_mean"] = float(np.mean(c["shd"]))
            c["corr_mean"] = float(np.mean(c["corr"]))
        result["rows"][name] = {"true_edges": edges, "cells": list(cells.values()),
                                "wall_s": time.perf_counter() - t0}
        print(f"## {name}: true edges {np.mean(edges):.1f} ({time.perf_counter() - t0:.0f} s)")
        print("| perturbation | mean corr | " + " | ".join(
            f"min_r2 {t}, prune {h}" for t in taus for h in ths) + " |")
        for kind, size in perturbations:
            row = [cells[f"{kind} {size}|{t}|{h}"]["shd_mean"] for t in taus for h in ths]
            corr = cells[f"{kind} {size}|{taus[0]}|{ths[0]}"]["corr_mean"]
            print(f"| {kind} {size} | {corr:.3f} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
