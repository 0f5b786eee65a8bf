"""The consensus of the contrastive row's first-stage runs: medoid slots vs averaged slots.

Command::

    python experiments/crl_consensus_average.py --set seed=0 \\
        --out experiments/results/crl_consensus_average_seed0.json

Runs the first stage of :func:`jaxcrl.crl.consensus.consensus_fit` exactly as the row
``contrastive, d=10, D=100, unknown targets`` of ``crl_generalization.py`` does (same data,
keys and settings; ``--set``/``--seeds``/``--steps`` as there, ``--row-set`` after the
row's own overrides), encodes a random subsample of ``x`` with every run, and scores the
consensus of :func:`jaxcrl.crl.consensus.slot_consensus` at each ``--average`` (0 = the
medoid slot; ``tau`` = the mean of the runs whose slot has |Pearson| >= ``tau`` with the
medoid's) against the true latents: MCC (Pearson, in sample) per data set. A diagnostic
with the ground truth, for choosing ``CRLConfig.consensus_average``; the fit never sees it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from crl_generalization import ALIASES, BASE

from jaxcrl.config import apply_overrides, parse_config
from jaxcrl.crl.consensus import first_stage, slot_consensus
from jaxcrl.crl.synthetic import simulate, variant
from jaxcrl.metrics import mcc

ROW = "contrastive, d=10, D=100, unknown targets"


def score_rules(zs: np.ndarray, z_true: np.ndarray, averages: list[float]) -> dict:
    """MCC against ``z_true [N, d]`` of each run ``zs [R, N, d]`` and of each consensus."""
    out = {"runs": [mcc(z_true, z).value for z in zs]}
    for a in averages:
        z, chosen = slot_consensus(jnp.asarray(zs), average=a)
        out[f"average={a:g}"] = mcc(z_true, np.asarray(z)).value
        out["chosen"] = np.asarray(chosen).tolist()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_consensus_average.json")
    p.add_argument("--row-set", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--average", type=float, action="append",
                   help="consensus_average values to score (repeatable; default 0 0.3 0.4 "
                        "0.5 0.6 0.7 0.8 0.9)")
    p.add_argument("--subsample", type=int, default=60_000, help="samples encoded and scored")
    args, base = parse_config(p, BASE, argv, aliases=ALIASES)
    averages = args.average or [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    cfg = apply_overrides(variant(base, ROW), args.row_set)
    mcfg = cfg.method_config("contrastive")
    data = simulate(cfg)  # the data jaxcrl.crl.synthetic.run fits
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)  # run's key for the method
    n = data.x.shape[1]
    idx = np.sort(np.random.default_rng(0).choice(n, min(args.subsample, n), replace=False))
    t0 = time.perf_counter()
    fits = first_stage(mcfg, data.x, data.env, key=key, targets=data.targets,
                       seeds=cfg.seeds, progress=False)
    zs = np.stack([np.asarray(f.encode(data.x[:, idx])) for f in fits], 1)  # [S, R, n, d]
    z_true = np.asarray(data.z)[:, idx]
    per_seed = [score_rules(zs[s], z_true[s], averages) for s in range(cfg.seeds)]
    summary = {f"average={a:g}": float(np.mean([r[f"average={a:g}"] for r in per_seed]))
               for a in averages}
    result = {"row": ROW, "root_seed": cfg.seed, "seeds": cfg.seeds, "runs": mcfg.consensus_runs,
              "consensus_steps": mcfg.consensus_steps, "subsample": len(idx),
              "wall_s": time.perf_counter() - t0, "mean": summary, "per_seed": per_seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
