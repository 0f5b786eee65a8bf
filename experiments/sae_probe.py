"""SAEs on a transformer's residual stream: sweeps, evaluation, identifiability, probing.

Command::

    python experiments/sae_probe.py --out out/sae_probe [--lm-ckpt out/train_lm/ckpt]

Trains the default transformer of ``experiments/train_lm.py`` (or loads ``--lm-ckpt``),
streams activations at ``blocks.{layer}.hook_resid_post`` from fresh sequences through a
shuffled buffer, trains a vmapped sweep of SAEs per architecture (ReLU over L1 coefficients,
TopK and BatchTopK over k, JumpReLU over L0 coefficients), and evaluates every SAE on
held-out sequences (:mod:`jaxcrl.sae.pipeline`). Writes ``OUT/results.json``: per
architecture the headline SAE (L0 closest to ``--target-l0``) with ``l0``, ``fvu``,
``ce_loss_recovered``, ``dead_fraction``, ``latent_mcc``, ``sparse_probe_accuracy`` (top-1)
and the whole ``frontier``, plus ``raw_probe`` (the residual-channel baseline), and PNGs:
``frontier.png`` (FVU vs L0, and CE recovered vs L0), ``density.png``, ``mcc_matrix.png``.
Expected runtime: about 10 minutes on 2 CPU cores with the LM training (5 with a checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import matplotlib.pyplot as plt

from jaxcrl import plot
from jaxcrl.lm.tasks import TaskConfig
from jaxcrl.lm.training import LMTrainConfig, load, make_source, train
from jaxcrl.results import write_results
from jaxcrl.sae.evaluate import plot_density
from jaxcrl.sae.pipeline import KNOB, SAEProbeConfig, run


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/sae_probe")
    p.add_argument("--lm-ckpt", default=None, help="LM run workdir or checkpoint to load")
    p.add_argument("--lm-steps", type=int, default=4000)
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--architectures", default="relu,topk,batchtopk,jumprelu")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--target-l0", type=float, default=32.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (tests)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def get_model(args):
    if args.lm_ckpt:
        model, params, lm_cfg = load(args.lm_ckpt)
        task, _ = make_source(lm_cfg)
        return model, params, task, {"checkpoint": args.lm_ckpt}
    if args.tiny:
        lm_cfg = LMTrainConfig.for_task(TaskConfig.tiny(), d_model=32, n_layers=1, n_heads=2,
                                        steps=150, batch_size=32, warmup=10, eval_every=150,
                                        eval_batch=128)
    else:
        lm_cfg = LMTrainConfig.default(steps=args.lm_steps, seed=args.seed)
    r = train(lm_cfg, progress=not args.no_progress)
    info = {"final_eval_value_loss": float(r.history["eval_value_loss"][-1]),
            "bayes_value_loss": r.reference["bayes_value_loss"], "train_wall_s": r.wall_s}
    return r.model, r.params, r.source, info


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
    args = parse(argv)
    t0 = time.perf_counter()
    model, params, task, lm_info = get_model(args)
    archs = tuple(a.strip() for a in args.architectures.split(",") if a.strip())
    if args.tiny:
        cfg = SAEProbeConfig.tiny(seed=args.seed)
    else:
        cfg = SAEProbeConfig(layer=args.layer, architectures=archs, expansion=args.expansion,
                             steps=args.steps, target_l0=args.target_l0, seed=args.seed)
    res = run(model, params, task, cfg, progress=not args.no_progress)
    write_results(args.out, {**vars(args), "sae": dataclasses.asdict(cfg)},
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
            print(f"{arch:9s}{mark} {KNOB[arch][:3] + '=' + format(f[KNOB[arch]], 'g'):>14s} "
                  f"{f['l0']:7.1f} {f['fvu']:7.3f} {f['ce_loss_recovered']:7.3f} "
                  f"{f['dead_fraction']:6.2f} {f['latent_mcc']:6.3f} "
                  f"{f['sparse_probe'].get('top1', float('nan')):10.3f}")
    print(f"wrote {args.out}/results.json ({time.perf_counter() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
