"""SAEs on a transformer's residual stream: sweeps, evaluation, identifiability, probing.

Command::

    python experiments/sae_probe.py --out out/sae_probe [--lm-ckpt out/train_lm/ckpt]

Trains the default transformer of ``experiments/train_lm.py`` (or loads ``--lm-ckpt``),
streams activations at ``blocks.{layer}.hook_resid_post`` from fresh sequences through a
shuffled buffer, trains a vmapped sweep of SAEs per architecture (ReLU over L1 coefficients,
TopK and BatchTopK over k, JumpReLU over L0 coefficients), and evaluates every SAE on
held-out sequences (:mod:`jaxcrl.analysis.sae_probe`). Writes ``OUT/results.json``: per
architecture the headline SAE (L0 closest to ``--target-l0``) with ``l0``, ``fvu``,
``ce_loss_recovered``, ``dead_fraction``, ``latent_mcc``, ``sparse_probe_accuracy`` (top-1)
and the whole ``frontier``, plus ``raw_probe`` (the residual-channel baseline), and PNGs:
``frontier.png`` (FVU vs L0, and CE recovered vs L0), ``density.png``, ``mcc_matrix.png``.
Expected runtime: about 10 minutes on 2 CPU cores with the LM training (5 with a checkpoint).

Settings are the fields of :class:`SAEProbeExperiment` (``--set path=value``, e.g.
``--set probe.ks=[8,16]``); ``--lm-steps``, ``--layer``, ``--architectures``,
``--expansion``, ``--steps`` (SAE steps), ``--target-l0`` and ``--seed`` are short forms.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import matplotlib.pyplot as plt

from jaxcrl import plot
from jaxcrl.analysis.lm_runs import TINY_LM, trained_lm
from jaxcrl.analysis.sae_probe import SAEProbeConfig, run
from jaxcrl.config import parse_config
from jaxcrl.lm.training import LMTrainConfig
from jaxcrl.results import write_results
from jaxcrl.sae.metrics import plot_density
from jaxcrl.scm.language import TaskConfig


@dataclasses.dataclass(frozen=True)
class SAEProbeExperiment:
    """Settings of this script.

    Attributes:
      task: the language (``lm.task`` replaced by it, the model sized to it).
      lm: the transformer run: the default of ``experiments/train_lm.py``, 4000 steps.
      probe: the SAE sweeps and their evaluation (:class:`SAEProbeConfig`).
    """

    task: TaskConfig = TaskConfig()
    lm: LMTrainConfig = LMTrainConfig.default(steps=4000)
    probe: SAEProbeConfig = SAEProbeConfig()

    @classmethod
    def tiny(cls) -> SAEProbeExperiment:
        """A seconds-long run (tests)."""
        return cls(task=TaskConfig.tiny(),
                   lm=TINY_LM,
                   probe=SAEProbeConfig.tiny())


ALIASES = {"--lm-steps": "lm.steps", "--layer": "probe.layer",
           "--architectures": "probe.architectures", "--expansion": "probe.expansion",
           "--steps": "probe.steps", "--target-l0": "probe.target_l0",
           "--seed": ("lm.seed", "probe.seed")}


def parse(argv=None) -> tuple[argparse.Namespace, SAEProbeExperiment]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/sae_probe")
    p.add_argument("--lm-ckpt", default=None, help="LM run workdir or checkpoint to load")
    p.add_argument("--no-progress", action="store_true")
    return parse_config(p, SAEProbeExperiment(), argv, aliases=ALIASES,
                        tiny=SAEProbeExperiment.tiny())


def make_plots(out: str, res: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for arch, r in res["architectures"].items():
        f = r["frontier"]
        l0 = [p["l0"] for p in f]
        axes[0].plot(l0, [p["fvu"] for p in f], "o-", label=arch)
        axes[1].plot(l0, [p["ce_loss_recovered"] for p in f], "o-", label=arch)
    for ax, name in zip(axes, ("FVU", "CE loss recovered"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("L0")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    axes[0].set_title(f"FVU vs L0 at {res['hook']}")
    plot.savefig(fig, f"{out}/frontier.png")

    archs = list(res["architectures"])
    fig, axes = plt.subplots(1, len(archs), figsize=(4 * len(archs), 3), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        i = res["architectures"][arch]["headline_index"]
        plot_density(res["_arrays"][f"{arch}/{i}/density"], ax, title=arch)
    plot.savefig(fig, f"{out}/density.png")

    best = max(archs, key=lambda a: res["architectures"][a]["latent_mcc"])
    i = res["architectures"][best]["headline_index"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    plot.plot_matrix(res["_arrays"][f"{best}/{i}/corr"], ax,
                     title=f"|corr| posterior vs matched {best} latents",
                     xlabel="matched SAE latent", ylabel="p(z_i = k)")
    plot.savefig(fig, f"{out}/mcc_matrix.png")


def main(argv=None) -> dict:
    args, exp = parse(argv)
    t0 = time.perf_counter()
    model, params, task, lm_info = trained_lm(exp.lm.with_task(exp.task),
                                              checkpoint=args.lm_ckpt,
                                              progress=not args.no_progress)
    res = run(model, params, task, exp.probe, progress=not args.no_progress)
    write_results(args.out, {**dataclasses.asdict(exp), "lm_checkpoint": args.lm_ckpt},
                  res["architectures"], raw_probe=res["raw_probe"], hook=res["hook"],
                  lm=lm_info, wall_s=time.perf_counter() - t0)
    make_plots(args.out, res)
    print(f"hook {res['hook']}; raw-activation sparse probe: {res['raw_probe']}")
    head = f"{'arch':10s} {'knob':>14s} {'L0':>7s} {'FVU':>7s} {'CE rec':>7s} {'dead':>6s} " \
           f"{'MCC':>6s} {'probe top1':>10s}"
    print(head + "\n" + "-" * len(head))
    for arch, r in res["architectures"].items():
        for j, f in enumerate(r["frontier"]):
            mark = "*" if j == r["headline_index"] else " "
            knob = r["knob"]
            print(f"{arch:9s}{mark} {knob[:3] + '=' + format(f[knob], 'g'):>14s} "
                  f"{f['l0']:7.1f} {f['fvu']:7.3f} {f['ce_loss_recovered']:7.3f} "
                  f"{f['dead_fraction']:6.2f} {f['latent_mcc']:6.3f} "
                  f"{f['sparse_probe'].get('top1', float('nan')):10.3f}")
    print(f"wrote {args.out}/results.json ({time.perf_counter() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
