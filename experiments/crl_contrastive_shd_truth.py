"""SHD of the exact-search DAG on the *true* latents of a generalization row (default: the
contrastive d=10, D=100 row).

Commands::

    python experiments/crl_contrastive_shd_truth.py
    python experiments/crl_contrastive_shd_truth.py --row 'd=8'

For each of the row's 5 data sets: the exact interventional-BIC search
(:func:`jaxcrl.crl.discovery.exact_dag_search`) on the true latents with the true targets,
then the pruning of :meth:`jaxcrl.crl.svi.FitResult.discover_graph` (|standardized weight|
below a threshold) at several thresholds; prints the SHD to the true DAG. This is the best
any encoder can do under the scoring pipeline (about 10 s).
"""

import argparse

import jax
import numpy as np

from jaxcrl.config import apply_overrides
from jaxcrl.crl.discovery import exact_dag_search
from jaxcrl.crl.synthetic import SyntheticConfig, variant
from jaxcrl.metrics import shd
from jaxcrl.scm import make_dataset

ROW = "contrastive, d=10, D=100, unknown targets"
THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--row", default=ROW, help="a row of GENERALIZATION_ROWS")
    p.add_argument("--seed", type=int, default=0, help="root seed of the row's data sets")
    args = p.parse_args(argv)
    cfg = apply_overrides(variant(SyntheticConfig(seeds=5, seed=args.seed), args.row),
                          ["targets=known"])
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.seeds)
    print("seed, true edges, SHD at thresholds", THRESHOLDS)
    for s in range(cfg.seeds):
        ds = make_dataset(keys[s], cfg.data)
        z, env, t, adj = (np.asarray(a) for a in (ds.z, ds.env, ds.targets, ds.adj))
        w, _ = exact_dag_search(z, env, t)
        sd = z[env == 0].std(0)
        w_std = w * sd[:, None] / sd[None, :]
        perm = np.arange(z.shape[1])
        shds = [int(shd(adj, np.where(np.abs(w_std) >= th, w, 0.0), perm=perm))
                for th in THRESHOLDS]
        print(s, int(adj.sum()), shds, flush=True)


if __name__ == "__main__":
    main()
