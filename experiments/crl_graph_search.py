"""Linear vs nonlinear exact DAG search, on the true latents and on a saved fit's latents.

Per data set of a setting: SHD of the linear interventional-BIC search
(:func:`jaxcrl.crl.discovery.exact_dag_search`, pruned at |standardized weight| >= 0.3, the
default ``CRLConfig.edge_threshold``) and of the random-feature search
(:func:`jaxcrl.crl.discovery.nonlinear_dag_search`, with additive and with location-scale
noise, pruned at partial R² >= tau for every ``--taus`` value), first on the true latents
with the true targets (what the search alone can do), then, with ``--fit``, on the latents
of a fit saved by ``crl_synthetic.py --save`` on the same setting (SHD after MCC
matching). Commands (the location-scale row of BENCHMARKS; the fit first, about 20 min on
the 2 cores)::

    python experiments/crl_synthetic.py --out out/ls --seeds 5 --methods latent_scm --save \
        --set data.scm.mechanism=location_scale --set scm_prior=flow --set crl.warm_steps=3000
    python experiments/crl_graph_search.py --out out/ls_graph.json --seeds 5 \
        --set data.scm.mechanism=location_scale --fit out/ls/ckpt_latent_scm

Writes a JSON list, one record per data set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from jaxcrl.config import parse_config
from jaxcrl.crl.discovery import exact_dag_search, nonlinear_dag_search
from jaxcrl.crl.evaluate import standardized_graph
from jaxcrl.crl.svi import load_fit
from jaxcrl.crl.synthetic import SyntheticConfig
from jaxcrl.metrics import mcc, shd
from jaxcrl.scm import make_dataset


def _searches(z, env, t, true, perm, taus) -> dict:
    w_std = standardized_graph(exact_dag_search(z, env, t)[0], z[env == 0])
    out = {"shd_linear": int(shd(true, np.abs(w_std) >= 0.3, perm=perm))}
    for noise, name in (("homoscedastic", "additive"), ("heteroscedastic", "location_scale")):
        eff, _ = nonlinear_dag_search(z, env, t, key=jax.random.key(0), noise=noise)
        out[f"shd_{name}"] = {str(tau): int(shd(true, np.where(eff >= tau, eff, 0.0), perm=perm))
                              for tau in taus}
        out[f"effects_{name}"] = eff.tolist()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_graph_search.json")
    p.add_argument("--fit", default=None, help="a checkpoint of crl_synthetic.py --save")
    p.add_argument("--taus", default="0,0.02,0.05,0.1")
    args, cfg = parse_config(p, SyntheticConfig(), argv, aliases={"--seeds": "seeds",
                                                                  "--seed": "seed"})
    taus = [float(v) for v in args.taus.split(",")]
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.seeds)
    data = jax.jit(jax.vmap(lambda k: make_dataset(k, cfg.data)))(keys)
    z_fit = None if args.fit is None else np.asarray(load_fit(args.fit).encode(data.x))
    rows = []
    for s in range(cfg.seeds):
        z, env = np.asarray(data.z[s], np.float64), np.asarray(data.env[s])
        t, true = np.asarray(data.targets[s]), np.asarray(data.weights[s]) != 0
        rec = {"seed": s, "true_latents": _searches(z, env, t, true, None, taus)}
        if z_fit is not None:
            m = mcc(z, z_fit[s])
            rec["fit"] = {"mcc": float(m.value),
                          **_searches(z_fit[s], env, t, true, m.perm, taus)}
        rows.append(rec)
        print(s, {k: {kk: vv for kk, vv in v.items() if not kk.startswith("effects")}
                  for k, v in rec.items() if k != "seed"}, flush=True)
    for part in ("true_latents", "fit"):
        if part in rows[0]:
            lin = np.mean([r[part]["shd_linear"] for r in rows])
            print(f"{part}: mean SHD linear (0.3) {lin:.1f}")
            for name in ("additive", "location_scale"):
                by_tau = {t: float(np.mean([r[part][f"shd_{name}"][t] for r in rows]))
                          for t in rows[0][part][f"shd_{name}"]}
                print(f"  nonlinear search, {name} noise, mean SHD by tau {by_tau}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
