"""Fit CRL methods on simulated multi-environment data and score them against the truth.

Command (defaults = CauCA's headline setup, :class:`jaxcrl.crl.synthetic.SyntheticConfig`:
d=5, ER p=0.5, linear-Gaussian SCM, 1 observational + 5 single-node perfect interventional
environments, 3-layer invertible leaky-ReLU mixing, D=d, 10k samples per environment,
5 seeds)::

    python experiments/crl_synthetic.py --out out/crl

Any config field is set with ``--set``, e.g. ``--set data.scm.mechanism=nonlinear
--set data.intervention.kind=soft --set crl.lr=3e-3``; the short flags ``--latent-dim``,
``--samples-per-env``, ``--seeds``, ``--steps``, ``--batch-size``, ``--restarts``,
``--methods`` and ``--seed`` set ``data.scm.latent_dim``, ``data.n_per_env``, ``seeds``,
``crl.steps``, ``crl.batch_size``, ``crl.restarts`` (all methods), ``methods``, ``seed``.

Every seed draws its own data set (graph, SCM, mixing, interventions) and its own
initialization; all seeds of a method train in ONE compiled program (vmap over runs).
Writes ``OUT/results.json`` (setup + per-method metrics with per-seed values, mean, std,
wall time, steps/s), ``OUT/graphs.png`` (true vs learned graph, seed 0),
``OUT/mcc_matrix.png`` and ``OUT/training.png``, and prints a table; with ``--save`` each
method's fitted runs go to ``OUT/ckpt_<method>`` in the one checkpoint format.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxcrl import plot
from jaxcrl.config import parse_config
from jaxcrl.crl.evaluate import standardized_graph
from jaxcrl.crl.synthetic import SyntheticConfig, run
from jaxcrl.metrics import mcc
from jaxcrl.results import format_table, write_results

ALIASES = {"--latent-dim": "data.scm.latent_dim", "--samples-per-env": "data.n_per_env",
           "--seeds": "seeds", "--steps": "crl.steps", "--batch-size": "crl.batch_size",
           "--restarts": ("crl.restarts", "baseline_restarts"), "--methods": "methods",
           "--seed": "seed"}


def parse_args(argv=None) -> tuple[argparse.Namespace, SyntheticConfig]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--save", action="store_true", help="save each method's fit in OUT/ckpt_*")
    return parse_config(p, SyntheticConfig(), argv, aliases=ALIASES)


def make_plots(out: str, data, fits: dict) -> None:
    plot_graphs(out, data, fits)
    plot_training(out, data, fits)


def plot_graphs(out: str, data, fits: dict) -> None:
    """True graph vs each learned DAG (exact search over the learned latents), seed 0."""
    first = jax.tree.map(lambda a: a[0], data)
    graph_fits = [m for m, f in fits.items() if f.cfg.learns_graph]
    fig, axes = plt.subplots(1, 1 + len(graph_fits), figsize=(4 * (1 + len(graph_fits)), 4))
    axes = np.atleast_1d(axes)
    plot.plot_graph(first.weights, axes[0], title="true graph (seed 0)")
    for ax, m in zip(axes[1:], graph_fits, strict=True):
        z_hat = np.asarray(fits[m].encode(first.x)[0])
        perm = mcc(np.asarray(first.z), z_hat).perm
        w_all = fits[m].discover_graph(data.x, data.env, data.targets)
        w = standardized_graph(w_all[0], z_hat[np.asarray(first.env) == 0])
        plot.plot_graph(w[np.ix_(perm, perm)], ax, title=f"{m}: learned DAG (aligned)")
    plot.savefig(fig, f"{out}/graphs.png")


def plot_training(out: str, data, fits: dict) -> None:
    first = jax.tree.map(lambda a: a[0], data)

    fig, axes = plt.subplots(1, len(fits), figsize=(4.2 * len(fits), 4))
    for ax, (m, f) in zip(np.atleast_1d(axes), fits.items(), strict=True):
        z_hat = np.asarray(f.encode(first.x)[0])
        res = mcc(np.asarray(first.z), z_hat)
        corr = res.corr[:, res.perm] if (res.perm >= 0).all() else res.corr
        plot.plot_matrix(corr, ax, title=f"{m} (MCC {res.value:.2f})", xlabel="learned (matched)",
                         ylabel="true")
    plot.savefig(fig, f"{out}/mcc_matrix.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m, f in fits.items():
        loss = np.asarray(f.history["loss"]).mean(1)
        axes[0].plot(loss, label=m)
        if "mcc" in f.history:
            axes[1].plot(f.history["eval_step"], np.asarray(f.history["mcc"]).mean(1), "o-",
                         label=m)
    axes[0].set(title="negative ELBO / sample (mean over seeds)", xlabel="step", yscale="symlog")
    axes[1].set(title="in-sample MCC during training", xlabel="step", ylim=(0, 1))
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    plot.savefig(fig, f"{out}/training.png")


def main(argv=None) -> dict:
    args, cfg = parse_args(argv)
    out = run(cfg, progress=not args.no_progress, save_dir=args.out if args.save else None)
    columns = ["mcc_pearson_oos", "mcc_spearman", "r2", "shd", "edge_auroc", "steps_per_s"]
    print(format_table(out["methods"], columns))
    path = write_results(args.out, dataclasses.asdict(cfg), out["methods"])
    make_plots(args.out, out["data"], out["fits"])
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
