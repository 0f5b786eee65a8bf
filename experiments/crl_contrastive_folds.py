"""Which latents of saved contrastive fits are folds ``|z_j - c|`` rather than ``z_j``.

Command::

    python experiments/crl_contrastive_folds.py --fit out/crl_gen_graph --fit out/crl_gen_gm \\
        --out experiments/results/crl_contrastive_folds.json

Each ``--fit`` is a ``crl_generalization.py --save`` output directory of the row
``contrastive, d=10, D=100, unknown targets`` (same row arguments, hence the same data). For
every true latent ``j`` it takes the best |Pearson| of any learned latent with ``|z_j - c|``
over 41 offsets ``c`` between ``z_j``'s 5th and 95th percentiles (every 5th sample), beside
``j``'s matched |Pearson| (the MCC matching). A fold: the former above 0.8 and above the
latter by more than 0.1. A diagnostic with the ground truth; nothing here is fitted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from crl_generalization import ALIASES, BASE, row_slug

from jaxcrl.config import apply_overrides, parse_config
from jaxcrl.crl.svi import load_fit
from jaxcrl.crl.synthetic import simulate, variant
from jaxcrl.metrics import mcc

ROW = "contrastive, d=10, D=100, unknown targets"


def fold_scores(z_true: np.ndarray, z_hat: np.ndarray, stride: int = 5) -> list[dict]:
    """Per true latent: matched |Pearson| and the best |Pearson| with a fold of it."""
    matched = mcc(z_true, z_hat).matched
    zh = z_hat[::stride]
    out = []
    for j in range(z_true.shape[1]):
        zj = z_true[::stride, j]
        best = 0.0
        for c in np.linspace(np.percentile(zj, 5), np.percentile(zj, 95), 41):
            corr = np.abs(np.corrcoef(np.abs(zj - c), zh.T)[0, 1:])
            best = max(best, float(np.nan_to_num(corr).max()))
        lin = float(matched[j])
        out.append({"latent": j, "linear": lin, "fold": best,
                    "is_fold": bool(best > 0.8 and best > lin + 0.1)})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fit", action="append", required=True, help="crl_generalization --out")
    p.add_argument("--out", default="out/crl_contrastive_folds.json")
    p.add_argument("--row-set", action="append", default=[], metavar="PATH=VALUE")
    args, base = parse_config(p, BASE, argv, aliases=ALIASES)
    cfg = apply_overrides(variant(base, ROW), args.row_set)
    data = simulate(cfg)  # the data jaxcrl.crl.synthetic.run fitted
    z_true = np.asarray(data.z)
    result = {}
    for d in args.fit:
        fit = load_fit(Path(d, row_slug(ROW), "ckpt_contrastive"))
        z_hat = np.asarray(fit.encode(data.x))
        per_seed = [fold_scores(z_true[r], z_hat[r]) for r in range(cfg.seeds)]
        folds = [(r, c["latent"], round(c["linear"], 2), round(c["fold"], 2))
                 for r, seed in enumerate(per_seed) for c in seed if c["is_fold"]]
        result[d] = {"gauss_moments": fit.cfg.gauss_moments, "per_seed": per_seed,
                     "folds": folds}
        print(f"{d} (gauss_moments={fit.cfg.gauss_moments}): folds (seed, latent, "
              f"matched |corr|, fold |corr|) {folds}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
