"""Do restarts that start from other pairings of inputs with latents help, and does the
training likelihood pick the best restart? Per restart: final training loss and MCC.

The default CRL data (d = 5, known targets), ``latent_scm`` with ``R`` restarts per seed,
once with ``CRLConfig.permute_restarts`` off (restarts differ only in their small random
initial weights) and once on (restart ``r >= 1`` sees its inputs in a random order). The
restarts' MCC is recorded for diagnosis only; the fit chooses by likelihood. Command
(about 10 min on the 2 cores shared with other jobs)::

    python experiments/crl_restart_pairings.py --out out/crl_restart_pairings --steps 10000

Writes ``OUT/results.json``: per arm, ``loss [S, R]`` (mean over the last 5% of steps),
``mcc [S, R]`` at the end, the restart the likelihood chose per seed and its MCC.

Screening (``CRLConfig.screen_restarts``) is judged from the same runs: with
``--screen-steps T0 --screen-keep K`` every restart's screening criterion (its mean loss over
the last 10% of the first ``T0`` steps) is recorded, with the ``K`` that screening would
keep and the restart it would then choose, beside the choice among restarts ``0..K-1``
alone (what ``restarts=K`` without screening trains). ``--only 1,4`` fits only those data
sets (with the keys they have in the full run), ``--arms same`` only the unpermuted arm::

    python experiments/crl_restart_pairings.py --out out/crl_screen_diag --steps 40000 \
        --restarts 16 --arms same --only 1,4 --screen-steps 3000 --screen-keep 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from jaxcrl.config import parse_config
from jaxcrl.crl import fit
from jaxcrl.crl.synthetic import SyntheticConfig
from jaxcrl.scm import make_dataset

ALIASES = {"--steps": "crl.steps", "--restarts": "crl.restarts",
           "--batch-size": "crl.batch_size", "--seeds": "seeds", "--seed": "seed"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_restart_pairings")
    p.add_argument("--arms", default="same,permuted", help="same, permuted or both")
    p.add_argument("--only", default=None, help="comma-separated data-set indices")
    p.add_argument("--screen-steps", type=int, default=0)
    p.add_argument("--screen-keep", type=int, default=4)
    base = SyntheticConfig()
    base = dataclasses.replace(base, crl=dataclasses.replace(base.crl, restarts=4))
    args, cfg = parse_config(p, base, argv, aliases=ALIASES)
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.seeds)
    data = jax.jit(jax.vmap(lambda k: make_dataset(k, cfg.data)))(keys)
    run_keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 1), cfg.seeds)
    sets = (np.arange(cfg.seeds) if args.only is None
            else np.asarray([int(v) for v in args.only.split(",")]))
    data, run_keys = jax.tree.map(lambda a: a[sets], (data, run_keys))
    n = len(sets)
    arms = {}
    for permute in [a == "permuted" for a in args.arms.split(",")]:
        mcfg = dataclasses.replace(cfg.method_config("latent_scm"), permute_restarts=permute)
        r = fit(mcfg, data.x, data.env, targets=data.targets, key=run_keys,
                z_true=data.z, eval_every=max(mcfg.steps // 4, 1), progress=False)
        tail = max(mcfg.steps // 20, 1)
        loss = np.asarray(r.history["loss_restarts"])[-tail:].mean(0)
        mcc = np.asarray(r.history["mcc_restarts"])[-1]
        chosen = np.asarray(r.history["restart_chosen"])
        a = arms["permuted" if permute else "same order"] = {
            "data_sets": sets.tolist(), "loss": loss.tolist(), "mcc": mcc.tolist(),
            "chosen": chosen.tolist(), "chosen_mcc": mcc[np.arange(n), chosen].tolist(),
            "mean_mcc_restarts_after_first": float(mcc[:, 1:].mean()),
            "wall_s": r.wall_s}
        if args.screen_steps:
            t0, k = args.screen_steps, args.screen_keep
            window = max(t0 // 10, 1)
            crit = np.asarray(r.history["loss_restarts"])[t0 - window:t0].mean(0)
            kept = np.sort(np.argsort(crit, 1)[:, :k], 1)
            pick = kept[np.arange(n), np.argmin(np.take_along_axis(loss, kept, 1), 1)]
            first = np.argmin(loss[:, :k], 1)
            a.update(screen_loss=crit.tolist(), screen_kept=kept.tolist(),
                     screened_chosen=pick.tolist(),
                     screened_chosen_mcc=mcc[np.arange(n), pick].tolist(),
                     first_k_chosen=first.tolist(),
                     first_k_chosen_mcc=mcc[np.arange(n), first].tolist())
            print(f"screened to {k} at {t0}: kept {kept.tolist()}, chosen MCC "
                  f"{np.round(a['screened_chosen_mcc'], 3).tolist()}; restarts 0..{k - 1} "
                  f"alone: {np.round(a['first_k_chosen_mcc'], 3).tolist()}", flush=True)
        print(f"permute_restarts={permute}: chosen MCC {np.mean(a['chosen_mcc']):.3f} "
              f"{np.round(a['chosen_mcc'], 3).tolist()}, restarts >= 1 mean "
              f"{a['mean_mcc_restarts_after_first']:.3f}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "results.json").write_text(json.dumps(
        {"setup": {**vars(args), "config": dataclasses.asdict(cfg)}, "arms": arms}, indent=2))


if __name__ == "__main__":
    main()
