"""Re-scores the graph step of saved generalization-row fits under other search settings.

Command::

    python experiments/crl_generalization.py --out out/crl_gen_graph --seeds 5 --save --rows 'd=8'
    python experiments/crl_graph_rescore.py --out out/crl_gen_graph --seeds 5 --rows 'd=8' \\
        --min-r2 0,0.01,0.02,0.05 --thresholds 0.3,0

The same row arguments as the fit rebuild the row's data (same keys, so the same data set
per seed) and load ``OUT/<row>/ckpt_<method>``. For every ``(graph_min_r2,
edge_threshold)`` pair it runs :meth:`jaxcrl.crl.svi.FitResult.discover_graph` on the
fitted latents, and the same search on the *true* latents (the graph step's ceiling: what
the search gets when the latents are exact), and writes the SHD per seed to
``OUT/<row>/graph_rescore<tag>.json``. The encoder is not refitted: only the graph step
changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from crl_generalization import ALIASES, BASE, row_slug

from jaxcrl.config import apply_overrides, parse_config
from jaxcrl.crl.discovery import pruned_dag_search
from jaxcrl.crl.svi import load_fit
from jaxcrl.crl.synthetic import GENERALIZATION_ROWS, simulate, variant
from jaxcrl.metrics import mcc, shd


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def rescore(cfg, fit_dir: Path, min_r2s, thresholds) -> dict:
    data = simulate(cfg)  # the data jaxcrl.crl.synthetic.run fitted
    adj = np.asarray(data.adj) != 0
    env = np.asarray(data.env)
    z_true = np.asarray(data.z)
    out = {}
    for method in cfg.methods:
        fit = load_fit(fit_dir / f"ckpt_{method}")
        z_hat = np.asarray(fit.encode(data.x))
        perms = [mcc(z_true[r], z_hat[r]).perm for r in range(cfg.seeds)]
        rows = []
        for tau in min_r2s:
            for th in thresholds:
                t0 = time.perf_counter()
                probe = dataclasses.replace(
                    fit, cfg=dataclasses.replace(fit.cfg, graph_min_r2=tau, edge_threshold=th))
                w = probe.discover_graph(data.x, data.env, data.targets)
                fitted = [float(shd(adj[r], w[r], perm=perms[r])) for r in range(cfg.seeds)]
                truth = []
                for r in range(cfg.seeds):  # the search on the exact latents, same settings
                    wt = pruned_dag_search(z_true[r], env[r], np.asarray(data.targets[r]),
                                           min_r2=tau, edge_threshold=th)
                    truth.append(float(shd(adj[r], wt)))
                rows.append({"graph_min_r2": tau, "edge_threshold": th,
                             "shd": fitted, "shd_mean": float(np.mean(fitted)),
                             "edges": [int((w[r] != 0).sum()) for r in range(cfg.seeds)],
                             "shd_true_latents": truth,
                             "shd_true_latents_mean": float(np.mean(truth)),
                             "wall_s": time.perf_counter() - t0})
                print(f"{method} min_r2={tau} threshold={th}: SHD {np.mean(fitted):.1f} "
                      f"{fitted} (true latents {np.mean(truth):.1f})", flush=True)
        out[method] = {"true_edges": [int(a.sum()) for a in adj], "settings": rows}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_gen_graph")
    p.add_argument("--tag", default="")
    p.add_argument("--rows", required=True, help="'|'-separated row names")
    p.add_argument("--row-set", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--min-r2", default="0,0.01,0.02,0.05", type=_floats)
    p.add_argument("--thresholds", default="0.3,0", type=_floats)
    args, base = parse_config(p, BASE, argv, aliases=ALIASES)
    names = [r for r in args.rows.split("|") if r]
    unknown = set(names) - set(GENERALIZATION_ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {list(GENERALIZATION_ROWS)}")
    for name in names:
        cfg = apply_overrides(variant(base, name), args.row_set)
        fit_dir = Path(args.out, row_slug(name))
        res = rescore(cfg, fit_dir, args.min_r2, args.thresholds)
        path = fit_dir / f"graph_rescore{args.tag}.json"
        path.write_text(json.dumps({"row": name, "methods": res}, indent=2))
        print(f"{name}: {path}", flush=True)


if __name__ == "__main__":
    main()
