"""Quickstart: simulate a latent SCM, push it through a nonlinear mixing, score reference unmixings.

Command (``make demo`` runs it)::

    python experiments/quickstart.py --out out/quickstart

Expected runtime: well under a minute on 2 CPU cores. Expected result: the oracle inverse of
the mixing scores MCC 1.0 (the metrics and the simulator agree); identity/PCA/FastICA on x
score clearly below 1, because the latents are causally dependent, Gaussian and nonlinearly
mixed: the gap a CRL method (``experiments/crl_synthetic.py``) has to close.

It writes ``OUT/results.json`` (setup + per-method metrics over seeds), ``OUT/true_graph.png``
and ``OUT/mcc_matrix.png``, and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxcrl import plot
from jaxcrl.config import parse_config
from jaxcrl.crl import fast_ica, pca
from jaxcrl.crl.synthetic import SyntheticConfig
from jaxcrl.metrics import mcc, score_latents
from jaxcrl.results import format_table, summarize_seeds, write_results
from jaxcrl.scm import DatasetConfig, invert_mixing, make_dataset


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """Settings (``--set path=value``): CRL's default data family with 2000 samples per
    environment (:class:`jaxcrl.crl.synthetic.SyntheticConfig`), 3 seeds."""

    data: DatasetConfig = dataclasses.replace(SyntheticConfig().data, n_per_env=2000)
    seeds: int = 3
    seed: int = 0


ALIASES = {"--latent-dim": "data.scm.latent_dim", "--graph-prob": "data.scm.graph.edge_prob",
           "--mixing-layers": "data.mixing.n_layers", "--samples-per-env": "data.n_per_env",
           "--seeds": "seeds", "--seed": "seed"}


def reference_unmixings(x: jax.Array, z_true: jax.Array, ds, key: jax.Array) -> dict:
    """Estimates of z from x by each reference method, ``{name: [n, d]}``."""
    d = z_true.shape[1]
    return {
        "oracle_inverse": invert_mixing(ds.mixing, x),
        "identity": x[:, :d],
        "pca": pca(x, d)(x),
        "fast_ica": fast_ica(x, d, key)(x),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/quickstart")
    args, exp = parse_config(p, QuickstartConfig(), argv, aliases=ALIASES)

    cfg = exp.data
    t0 = time.perf_counter()
    keys = jax.random.split(jax.random.key(exp.seed), exp.seeds)
    # All seeds' datasets in one compiled program: vmap over keys.
    datasets = jax.jit(jax.vmap(lambda k: make_dataset(k, cfg)))(keys)
    jax.block_until_ready(datasets.x)
    sim_s = time.perf_counter() - t0

    per_method: dict[str, list[dict]] = {}
    wall: dict[str, float] = {}
    for s in range(exp.seeds):
        ds = jax.tree.map(lambda a, s=s: a[s], datasets)
        ica_key = jax.random.fold_in(keys[s], 1)
        estimates = reference_unmixings(ds.x, ds.z, ds, ica_key)
        for name, z_hat in estimates.items():
            t = time.perf_counter()
            scores = score_latents(np.asarray(ds.z), np.asarray(z_hat), seed=s)
            per_method.setdefault(name, []).append(scores)
            wall[name] = wall.get(name, 0.0) + time.perf_counter() - t
        if s == 0:
            first, first_estimates = ds, estimates

    methods = {name: {**summarize_seeds(v), "wall_s": wall[name]}
               for name, v in per_method.items()}
    columns = ["mcc_pearson_oos", "mcc_spearman", "r2_linear", "r2_kernel"]
    print(f"{exp.seeds} seeds, d={cfg.scm.latent_dim}, {cfg.mixing.n_layers}-layer mixing, "
          f"{cfg.n_per_env} samples/env; simulation {sim_s:.2f}s (vmapped over seeds)")
    print(format_table(methods, columns))
    path = write_results(args.out, exp, methods, simulation_s=sim_s)

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    plot.plot_graph(first.weights, axes[0], title="true latent graph (seed 0)")
    res = mcc(np.asarray(first.z), np.asarray(first_estimates["fast_ica"]))
    plot.plot_matrix(res.corr, axes[1], title=f"|corr| true vs FastICA (MCC {res.value:.2f})",
                     xlabel="estimated", ylabel="true")
    plot.savefig(fig, f"{args.out}/mcc_matrix.png")
    ax = plot.plot_graph(first.weights, title="true latent graph (seed 0)")
    plot.savefig(ax, f"{args.out}/true_graph.png")
    print(f"wrote {path}")
    return methods


if __name__ == "__main__":
    main()
