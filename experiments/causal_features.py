"""Causal analysis of transformer features: are they the true causal variables, and do edits
on them respect the true graph?

Command::

    python experiments/causal_features.py --out out/causal_features

Trains (or, with ``--lm-ckpt DIR``, loads) the small default transformer
(:meth:`LMTrainConfig.default`) on a latent-SCM language (default: 5 binary latents on a
random DAG, 16 noisy (cue, value) reports per sequence), then,
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

The latent-SCM fit's input subspace: ``--set analysis.crl_reduce=envs --set
analysis.crl_flow_layers=0`` fits it on the directions that separate the environment means
(``CRLConfig.reduce="envs"``) with a linear encoder, measured better here than the default
top-variance (PCA) directions with a 4-layer flow (MCC 0.43 / 0.49 vs 0.29 / 0.20 after
block 0 / 1, 3 seeds; BENCHMARKS.md). ``experiments/causal_features_crl.py`` runs only that
fit, on cached activations of the same transformer.

Settings are the fields of :class:`CausalFeaturesExperiment` (``--set path=value``, e.g.
``--set task.graph.kind=chain --set lm.model.n_layers=3``); ``--lm-steps``, ``--sae-steps``,
``--crl-steps``, ``--sequences``, ``--architectures`` and ``--seed`` are short forms.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import matplotlib.pyplot as plt
import numpy as np

from jaxcrl import plot
from jaxcrl.analysis.causal_features import CausalFeaturesConfig, analyse, format_table
from jaxcrl.analysis.lm_runs import TINY_LM, trained_lm
from jaxcrl.config import parse_config
from jaxcrl.lm.training import LMTrainConfig
from jaxcrl.results import write_results
from jaxcrl.scm import GraphConfig
from jaxcrl.scm.graphs import transitive_closure
from jaxcrl.scm.language import TaskConfig


@dataclasses.dataclass(frozen=True)
class CausalFeaturesExperiment:
    """Settings of this script.

    Attributes:
      task: the language (binary latents, so each latent is one posterior variable).
      lm: the transformer run (``lm.task`` replaced by ``task``, the model sized to it).
      analysis: what to analyse and how much (:class:`CausalFeaturesConfig`).
    """

    task: TaskConfig = TaskConfig(n_values=2, graph=GraphConfig(kind="er", edge_prob=0.5))
    lm: LMTrainConfig = LMTrainConfig.default()
    analysis: CausalFeaturesConfig = CausalFeaturesConfig()

    @classmethod
    def tiny(cls) -> CausalFeaturesExperiment:
        """A seconds-long run (tests): tiny language and model, TopK SAEs only."""
        return cls(task=TaskConfig.tiny(),
                   lm=TINY_LM,
                   analysis=CausalFeaturesConfig.tiny())


ALIASES = {"--lm-steps": "lm.steps", "--sae-steps": "analysis.sae_steps",
           "--crl-steps": "analysis.crl_steps", "--sequences": "analysis.n_sequences",
           "--architectures": "analysis.architectures",
           "--seed": ("task.seed", "lm.seed", "analysis.seed")}


def parse(argv=None) -> tuple[argparse.Namespace, CausalFeaturesExperiment]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/causal_features")
    p.add_argument("--lm-ckpt", default=None, help="load this LM run (workdir or checkpoint)")
    p.add_argument("--no-progress", action="store_true")
    return parse_config(p, CausalFeaturesExperiment(), argv, aliases=ALIASES,
                        tiny=CausalFeaturesExperiment.tiny())


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
    args, exp = parse(argv)
    t0 = time.perf_counter()
    model, params, task, lm_info = trained_lm(exp.lm.with_task(exp.task), checkpoint=args.lm_ckpt,
                                              progress=not args.no_progress)
    if task.cfg.n_values != 2:
        print(f"note: K = {task.cfg.n_values} values per latent; the latent-SCM fit and "
              f"the MCC then compare d latents with d (K - 1) posterior variables")
    res = analyse(model, params, task, exp.analysis, progress=not args.no_progress)
    layers = {lab: res[lab] for lab in res["layers"]}
    write_results(args.out, {**dataclasses.asdict(exp), "lm_checkpoint": args.lm_ckpt}, layers,
                  lm=lm_info, true_graph=np.asarray(task.adj).tolist(),
                  wall_s=time.perf_counter() - t0)
    plot_effects(args.out, res)
    plot_identifiability(args.out, res)
    print(format_table(res))
    print(f"wrote {args.out}/results.json ({time.perf_counter() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
