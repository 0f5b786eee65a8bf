"""Scores :func:`jaxcrl.crl.polish.polish_fit` on saved fits: a linear map of the latents.

Command::

    python experiments/crl_generalization.py --out out/d8_s0 --seeds 5 --set seed=0 \\
        --save --rows 'd=8'
    python experiments/crl_linear_polish.py --out out/d8_s0 --seeds 5 --set seed=0 --rows 'd=8'

The graph step's sensitivity study (BENCHMARKS.md) found that a small *linear* leak of
latents into one another (``z (I + a G)``) is what the exact DAG search cannot tell from an
edge. :mod:`jaxcrl.crl.polish` fits, per run and without ground truth, the linear map of the
latents that maximizes the linear-Gaussian SCM likelihood with the known targets (in full
batch, to convergence) and folds it into the encoder. This script rebuilds a row's data from
the row's arguments (same keys), loads its fits from ``OUT/<row>/ckpt_<method>``, polishes
them (every run, ``keep="always"``), and scores MCC and SHD before and after, and with the
library's rule (``kept``: a run's polish only where it does not lower the fit's
likelihood), per data set, at the row's graph step (exact
search, prune 0.3) and at every ``--graph MIN_R2:THRESHOLD`` pair, into
``OUT/<row>/linear_polish<tag>.json``. Nothing read from the files chooses code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from crl_generalization import ALIASES, BASE, row_slug

from jaxcrl.config import apply_overrides, parse_config
from jaxcrl.crl.discovery import pruned_dag_search
from jaxcrl.crl.polish import linear_polish, polish_fit
from jaxcrl.crl.svi import load_fit
from jaxcrl.crl.synthetic import GENERALIZATION_ROWS, simulate, variant
from jaxcrl.metrics import mcc, shd
from jaxcrl.metrics.identifiability import score_latents


def score(z_true, z, env, targets, adj, seed: int, graphs) -> dict:
    """MCC (out of sample) and SHD of latents ``z``: the row's graph step (``shd``) and every
    ``(min_r2, threshold)`` of ``graphs`` (``shd_graphs``)."""
    matched = mcc(z_true, z)

    def one(min_r2, threshold):
        w = pruned_dag_search(z, env, targets, min_r2=min_r2, edge_threshold=threshold)
        return float(shd(adj, w, perm=matched.perm))

    return {"mcc_pearson_oos": score_latents(z_true, z, seed=seed)["mcc_pearson_oos"],
            "shd": one(0.0, 0.3), "shd_graphs": [one(m, t) for m, t in graphs],
            "mcc_per_latent": [float(c) for c in matched.matched]}


def polish_row(cfg, fit_dir: Path, graphs) -> dict:
    """Scores of every run before the polish, after it (``keep="always"``) and with the
    library's rule (``"kept"``: the polish where it does not lower the likelihood).

    A ``contrastive`` fit (``targets="unknown_distinct"``) has no density of ``x``: its
    latents are polished alone (:func:`jaxcrl.crl.polish.linear_polish` with the fit's
    canonical targets), and ``kept`` is the unpolished fit (no rule to keep by)."""
    method = cfg.methods[0]
    data = simulate(cfg)
    fit = load_fit(fit_dir / f"ckpt_{method}")
    fit_targets = np.asarray(fit.targets(data.targets), bool)  # the labels the fit learned
    z_fit = np.asarray(fit.encode(data.x))
    t0 = time.perf_counter()
    if fit.cfg.method == "contrastive":
        pols = [linear_polish(z_fit[r], data.env[r], fit_targets[r]) for r in range(cfg.seeds)]
        z_pol = np.stack([p(z_fit[r]) for r, p in enumerate(pols)])
        rounds, ll = [p.history for p in pols], np.full((cfg.seeds, 2), np.nan)
        kept = np.zeros(cfg.seeds, bool)
    else:
        polished = polish_fit(fit, data.x, data.env, data.targets, keep="always")
        z_pol = np.asarray(polished.encode(data.x))
        rounds, ll = polished.history["polish"], polished.history["polish_loglik"]
        kept = ll[:, 1] >= ll[:, 0]  # the rule of polish_fit's default keep="likelihood"
    wall = time.perf_counter() - t0
    per_seed = []
    for r in range(cfg.seeds):
        z_true, env = np.asarray(data.z[r]), np.asarray(data.env[r])
        adj = np.asarray(data.adj[r]) != 0
        before = score(z_true, z_fit[r], env, fit_targets[r], adj, r, graphs)
        after = score(z_true, z_pol[r], env, fit_targets[r], adj, r, graphs)
        per_seed.append({"before": before, "after": after,
                         "kept": after if kept[r] else before, "polish_kept": bool(kept[r]),
                         "loglik_before": None if np.isnan(ll[r, 0]) else float(ll[r, 0]),
                         "loglik_after": None if np.isnan(ll[r, 1]) else float(ll[r, 1]),
                         "history": rounds[r]})
        print(f"seed {r}: MCC {before['mcc_pearson_oos']:.3f} -> {after['mcc_pearson_oos']:.3f}, "
              f"SHD {before['shd']:.0f} -> {after['shd']:.0f}, log-likelihood "
              f"{ll[r, 0]:.4f} -> {ll[r, 1]:.4f} ({'kept' if kept[r] else 'not kept'})",
              flush=True)
    whens = ("before", "after", "kept")
    mean = {f"{k}_{when}": float(np.mean([s[when][k] for s in per_seed]))
            for when in whens for k in ("mcc_pearson_oos", "shd")}
    graph_means = [{"graph_min_r2": m, "edge_threshold": t, **{
        f"shd_{when}": float(np.mean([s[when]["shd_graphs"][i] for s in per_seed]))
        for when in whens}} for i, (m, t) in enumerate(graphs)]
    return {"method": method, "per_seed": per_seed, **mean, "graphs": graph_means,
            "polish_wall_s": wall}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the fits' --out of crl_generalization.py")
    p.add_argument("--tag", default="")
    p.add_argument("--rows", required=True, help="'|'-separated row names")
    p.add_argument("--row-set", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--graph", action="append", default=[], metavar="MIN_R2:THRESHOLD",
                   help="another graph-step setting to score before and after (repeatable)")
    args, base = parse_config(p, BASE, argv, aliases=ALIASES)
    names = [r for r in args.rows.split("|") if r]
    unknown = set(names) - set(GENERALIZATION_ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {list(GENERALIZATION_ROWS)}")
    try:
        graphs = [tuple(float(v) for v in g.split(":")) for g in args.graph]
    except ValueError:
        p.error(f"--graph takes MIN_R2:THRESHOLD, got {args.graph}")
    if any(len(g) != 2 for g in graphs):
        p.error(f"--graph takes MIN_R2:THRESHOLD, got {args.graph}")
    for name in names:
        cfg = apply_overrides(variant(base, name), args.row_set)
        fit_dir = Path(args.out, row_slug(name))
        res = polish_row(cfg, fit_dir, graphs)
        path = fit_dir / f"linear_polish{args.tag}.json"
        path.write_text(json.dumps({"row": name, "seed": cfg.seed, **res}, indent=2))
        print(f"{name}: MCC {res['mcc_pearson_oos_before']:.3f} -> "
              f"{res['mcc_pearson_oos_after']:.3f} (kept by likelihood: "
              f"{res['mcc_pearson_oos_kept']:.3f}), SHD {res['shd_before']:.1f} -> "
              f"{res['shd_after']:.1f} ({res['shd_kept']:.1f}): {path}", flush=True)


if __name__ == "__main__":
    main()
