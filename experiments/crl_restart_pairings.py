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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from jaxcrl.crl import fit
from jaxcrl.crl.synthetic import SyntheticConfig
from jaxcrl.scm import make_dataset


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_restart_pairings")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="root seed of the data sets")
    args = p.parse_args(argv)
    cfg = SyntheticConfig(seed=args.seed, seeds=args.seeds)
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.seeds)
    data = jax.jit(jax.vmap(lambda k: make_dataset(k, cfg.data)))(keys)
    arms = {}
    for permute in (False, True):
        mcfg = dataclasses.replace(cfg.method_config("latent_scm"), steps=args.steps,
                                   batch_size=args.batch_size, restarts=args.restarts,
                                   permute_restarts=permute)
        r = fit(mcfg, data.x, data.env, targets=data.targets,
                key=jax.random.fold_in(jax.random.key(cfg.seed), 1), seeds=cfg.seeds,
                z_true=data.z, eval_every=max(args.steps // 4, 1), progress=False)
        tail = max(args.steps // 20, 1)
        loss = np.asarray(r.history["loss_restarts"])[-tail:].mean(0)
        mcc = np.asarray(r.history["mcc_restarts"])[-1]
        chosen = np.asarray(r.history["restart_chosen"])
        arms["permuted" if permute else "same order"] = {
            "loss": loss.tolist(), "mcc": mcc.tolist(), "chosen": chosen.tolist(),
            "chosen_mcc": mcc[np.arange(cfg.seeds), chosen].tolist(),
            "mean_mcc_restarts_after_first": float(mcc[:, 1:].mean()),
            "wall_s": r.wall_s}
        a = arms["permuted" if permute else "same order"]
        print(f"permute_restarts={permute}: chosen MCC {np.mean(a['chosen_mcc']):.3f} "
              f"{np.round(a['chosen_mcc'], 3).tolist()}, restarts >= 1 mean "
              f"{a['mean_mcc_restarts_after_first']:.3f}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "results.json").write_text(json.dumps(
        {"setup": vars(args), "arms": arms}, indent=2))


if __name__ == "__main__":
    main()
