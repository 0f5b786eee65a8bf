"""Causal analysis of transformer features: are they the true causal variables, and do edits
on them respect the true graph?

Command::

    python experiments/causal_features.py --out out/causal_features

Trains (or, with ``--lm-ckpt DIR``, loads) a small transformer on a latent-SCM language
(default: 5 binary latents on a random DAG, 16 noisy (cue, value) reports per sequence), then,
for the residual stream after the embedding and after each block
(:mod:`jaxcrl.analysis.causal_features` has the details):

1. identifiability of the exact posterior beliefs ``p(z_i = 1 | tokens)`` from ridge probes,
   from the best-matched latents of SAEs (ReLU, TopK, BatchTopK, JumpReLU), and from the
   Part-1 latent-SCM model fitted on the activations with the generator's ``do(z_i)``
   sequences as environments (MCC, R²);
2. the graph that latent-SCM model learns (SHD, edge AUROC);
3. intervention-effect matrices: edit the representation of ``z_i`` (probe clamping; SAE
   latent clamping), read the model's beliefs about every latent, score against the true
   descendant relation (AUROC, SHD).

Expected runtime: about 8 minutes on 2 CPU cores (455 s measured; pass
``--lm-ckpt out/train_lm/ckpt`` style directories to reuse a model). Writes
``OUT/results.json``, ``OUT/effects.png`` (true graph and descendant relation beside the
effect matrices, one row per layer), ``OUT/identifiability.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import matplotlib.pyplot as plt
import numpy as np

from jaxcrl import plot
from jaxcrl.analysis.causal_features import CausalFeaturesConfig, analyse, format_table
from jaxcrl.lm.tasks import TaskConfig
from jaxcrl.lm.training import LMTrainConfig, load, make_source, train
from jaxcrl.results import write_results
from jaxcrl.scm import GraphConfig
from jaxcrl.scm.graphs import transitive_closure


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/causal_features")
    p.add_argument("--lm-ckpt", default=None, help="load this LM run (workdir or checkpoint)")
    p.add_argument("--latents", type=int, default=5)
    p.add_argument("--graph", choices=("er", "chain"), default="er")
    p.add_argument("--edge-prob", type=float, default=0.5)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--lm-steps", type=int, default=3000)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--architectures", default="relu,topk,batchtopk,jumprelu")
    p.add_argument("--sae-steps", type=int, default=3000)
    p.add_argument("--crl-steps", type=int, default=4000)
    p.add_argument("--sequences", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (tests)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def lm_config(args) -> LMTrainConfig:
    graph = (GraphConfig(kind="chain") if args.graph == "chain"
             else GraphConfig(kind="er", edge_prob=args.edge_prob))
    task = TaskConfig(n_latents=args.latents, n_values=2, graph=graph, n_pairs=args.pairs,
                      seed=args.seed)
    kw = dict(steps=args.lm_steps, d_model=args.d_model, n_layers=args.n_layers, n_heads=4,
              seed=args.seed)
    if args.tiny:
        task = dataclasses.replace(task, n_latents=3, graph=GraphConfig(kind="chain"),
                                   n_pairs=6)
        kw.update(steps=150, d_model=32, n_layers=1, n_heads=2, batch_size=32, warmup=10,
                  eval_every=150, eval_batch=128)
    return LMTrainConfig.for_task(task, **kw)


def analysis_config(args) -> CausalFeaturesConfig:
    archs = tuple(a.strip() for a in args.architectures.split(",") if a.strip())
    if args.tiny:
        return CausalFeaturesConfig.tiny(seed=args.seed)  # TopK only
    return CausalFeaturesConfig(architectures=archs, sae_steps=args.sae_steps,
                                crl_steps=args.crl_steps, n_sequences=args.sequences,
                                seed=args.seed)


def plot_effects(out: str, res: dict) -> None:
    """One row per layer: true graph, descendant relation, then every edit's effect matrix."""
    arrs = res["_arrays"]
    adj = arrs["adj"]
    layers = res["layers"]
    names = list(res[layers[-1]]["effects"])
    fig, axes = plt.subplots(len(layers), 2 + len(names),
                             figsize=(3.3 * (2 + len(names)), 3.2 * len(layers)), squeeze=False)
    desc = np.asarray(transitive_closure(adj)).astype(float)
    for row, layer in zip(axes, layers, strict=True):
        plot.plot_graph(adj, row[0], title="true graph")
        plot.plot_matrix(desc, row[1], title="descendants (truth)", xlabel="affected j",
                         ylabel="edited i")
        for ax, name in zip(row[2:], names, strict=True):
            e = arrs[f"{layer}/effects_{name}"]
            auroc = res[layer]["effects"][name]["auroc_descendants"]
            plot.plot_matrix(e, ax, title=f"{layer}: edit {name}\nAUROC {auroc:.2f}",
                             xlabel="affected j", ylabel="edited i",
                             vmax=max(float(e.max()), 1e-6))
    fig.tight_layout()
    plot.savefig(fig, f"{out}/effects.png")


def plot_identifiability(out: str, res: dict) -> None:
    layers = res["layers"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(layers, [res[lab]["probe"]["mcc_pearson"] for lab in layers], "o-", label="probe")
    for arch in res[layers[0]]["sae"]:
        ax.plot(layers, [res[lab]["sae"][arch]["mcc_pearson_oos"] for lab in layers], "s--",
                label=f"SAE {arch}")
    ax.plot(layers, [res[lab]["crl"].get("mcc_pearson_oos", np.nan) for lab in layers], "^:",
            label="latent SCM")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("MCC (Pearson) with posterior beliefs")
    ax.legend(fontsize=7)
    plot.savefig(fig, f"{out}/identifiability.png")


def main(argv=None) -> dict:
    args = parse(argv)
    t0 = time.perf_counter()
    if args.lm_ckpt:
        model, params, lm_cfg = load(args.lm_ckpt)
        task, _ = make_source(lm_cfg)
        lm_info = {"checkpoint": args.lm_ckpt}
    else:
        lm_cfg = lm_config(args)
        r = train(lm_cfg, progress=not args.no_progress)
        model, params, task = r.model, r.params, r.source
        lm_info = {"final_eval_value_loss": float(r.history["eval_value_loss"][-1]),
                   "bayes_value_loss": r.reference["bayes_value_loss"],
                   "unigram_value_loss": r.reference["unigram_value"],
                   "train_wall_s": r.wall_s}
    if task.cfg.n_values != 2:
        print(f"note: K = {task.cfg.n_values} values per latent; the latent-SCM fit and "
              f"the MCC then compare d latents with d (K - 1) posterior variables")
    cfg = analysis_config(args)
    res = analyse(model, params, task, cfg, progress=not args.no_progress)
    layers = {lab: res[lab] for lab in res["layers"]}
    write_results(args.out, {**vars(args), "analysis": dataclasses.asdict(cfg)}, layers,
                  lm=lm_info, true_graph=np.asarray(task.adj).tolist(),
                  wall_s=time.perf_counter() - t0)
    plot_effects(args.out, res)
    plot_identifiability(args.out, res)
    print(format_table(res))
    print(f"wrote {args.out}/results.json ({time.perf_counter() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
