"""SAEs, Matryoshka SAEs, transcoders and cross-layer transcoders on a language whose causes
are known: replacement CE, identifiability and isolated interventions, with and without a
decoder-orthogonality penalty.

Command::

    python experiments/transcoders.py --out out/transcoders --no-progress

Trains (or, with ``--lm-ckpt DIR``, loads) the default transformer of
``experiments/causal_features.py`` (5 binary latents on a random ER DAG, 2 layers, width
64), then per layer trains a TopK SAE and a Matryoshka BatchTopK SAE on the residual stream,
per-layer transcoders and one cross-layer transcoder from the MLP inputs to the MLP outputs,
each at every orthogonality weight, and reports (:mod:`jaxcrl.analysis.transcoders`): CE
loss recovered with the transcoders spliced in place of the MLPs (per layer and all at
once), the fraction of MLP output explained, L0 per layer, out-of-sample MCC of the features
with the exact posterior beliefs, and the AUROC of intervention effects against the true
descendant relation. Writes ``OUT/results.json``, ``OUT/effects.png`` and prints a table.

Settings are the fields of :class:`TranscodersExperiment` (``--set path=value``);
``--lm-steps``, ``--steps``, ``--ortho`` and ``--seed`` are short forms.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import matplotlib.pyplot as plt
import numpy as np

from jaxcrl import plot
from jaxcrl.analysis.lm_runs import TINY_LM, trained_lm
from jaxcrl.analysis.transcoders import TranscoderStudyConfig, format_table, run
from jaxcrl.config import parse_config
from jaxcrl.lm.training import LMTrainConfig
from jaxcrl.results import write_results
from jaxcrl.scm import GraphConfig
from jaxcrl.scm.language import TaskConfig


@dataclasses.dataclass(frozen=True)
class TranscodersExperiment:
    """Settings: the language, the transformer run and the study's sizes."""

    task: TaskConfig = TaskConfig(n_values=2, graph=GraphConfig(kind="er", edge_prob=0.5))
    lm: LMTrainConfig = LMTrainConfig.default()
    study: TranscoderStudyConfig = TranscoderStudyConfig()

    @classmethod
    def tiny(cls) -> TranscodersExperiment:
        return cls(task=TaskConfig.tiny(), lm=TINY_LM, study=TranscoderStudyConfig.tiny())


ALIASES = {"--lm-steps": "lm.steps", "--steps": "study.steps",
           "--ortho": "study.ortho_coefficients",
           "--seed": ("task.seed", "lm.seed", "study.seed")}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/transcoders")
    p.add_argument("--lm-ckpt", default=None, help="load this LM run (workdir or checkpoint)")
    p.add_argument("--no-progress", action="store_true")
    return parse_config(p, TranscodersExperiment(), argv, aliases=ALIASES,
                        tiny=TranscodersExperiment.tiny())


def plot_effects(out: str, res: dict) -> None:
    arrs = res["_arrays"]
    names = [n for n in res["dictionaries"] if f"{n}/effects" in arrs]
    if not names:
        return
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        r = res["dictionaries"][name]
        plot.plot_matrix(arrs[f"{name}/effects"], ax,
                         title=f"{name}\nAUROC {r['auroc_descendants']:.2f}",
                         xlabel="affected j", ylabel="edited i")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    plot.savefig(fig, f"{out}/effects.png")


def main(argv=None) -> dict:
    args, exp = parse(argv)
    t0 = time.perf_counter()
    model, params, task, lm_info = trained_lm(exp.lm.with_task(exp.task),
                                              checkpoint=args.lm_ckpt,
                                              progress=not args.no_progress)
    res = run(model, params, task, exp.study, progress=not args.no_progress)
    write_results(args.out, {**dataclasses.asdict(exp), "lm_checkpoint": args.lm_ckpt},
                  res["dictionaries"], lm=lm_info, true_graph=np.asarray(task.adj).tolist(),
                  wall_s=time.perf_counter() - t0)
    plot_effects(args.out, res)
    print(format_table(res))
    print(f"wrote {args.out}/results.json ({time.perf_counter() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
