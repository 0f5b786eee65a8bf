"""Choose a seed's restart by agreement with its other restarts instead of by likelihood?

The default CRL data (known targets, so restart ``r``'s latent ``i`` is tied to the same
environment in every restart and the restarts' latents are aligned slot by slot).
``latent_scm`` with ``R`` restarts per data set: each restart is fitted as its own run, with
exactly the key it has as restart ``r`` of a multi-restart fit (``fold_in(k_s, r)``), so the
runs are those of ``--restarts R``. Per restart: the final training loss (the library's
criterion), the out-of-sample MCC (diagnostic only), and its *agreement*: the mean over the
other restarts and the latents of ``|Pearson(z_r,i, z_r',i)|`` on the data (no ground
truth). The medoid (highest agreement) is compared with the lowest loss, and with the
per-slot consensus of all restarts (:func:`jaxcrl.crl.consensus.slot_consensus`: each slot
from its own medoid restart, ``average = 0``, or averaged over the restarts whose slot agrees
with the medoid's at |Pearson| >= ``tau``, ``--taus``), scored like a run: out-of-sample MCC
and the SHD of the same pruned exact search over the consensus latents. Command::

    python experiments/crl_restart_agreement.py --out out/crl_restart_agreement \
        --restarts 4 --seed 4

Writes ``OUT/results.json``: per data set ``loss [R]``, ``mcc [R]``, ``agreement [R]``,
the restart each criterion chooses and its MCC and SHD, (``first_two_by_loss``) what
the default's 2 restarts, the same runs as restarts 0 and 1 here, choose, and per ``tau``
(``consensus``) the consensus's MCC, SHD and each slot's medoid restart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxcrl.config import parse_config
from jaxcrl.crl import fit
from jaxcrl.crl.consensus import slot_consensus
from jaxcrl.crl.discovery import pruned_dag_search
from jaxcrl.crl.evaluate import score_fit
from jaxcrl.crl.synthetic import SyntheticConfig, simulate
from jaxcrl.metrics import mcc as match
from jaxcrl.metrics import mcc_out_of_sample
from jaxcrl.metrics import shd as shd_of

ALIASES = {"--steps": "crl.steps", "--restarts": "crl.restarts", "--seeds": "seeds",
           "--seed": "seed"}


def agreement(z: np.ndarray) -> np.ndarray:
    """[R] mean |Pearson| of each restart's latents with the same slots of the others
    (z: [R, N, d] aligned restarts)."""
    n_rep, _, d = z.shape
    zs = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
    corr = np.abs(np.einsum("rni,qni->rqi", zs, zs) / z.shape[1])  # [R, R, d]
    off = ~np.eye(n_rep, dtype=bool)
    return np.array([corr[r][off[r]].mean() for r in range(n_rep)])


def consensus_scores(z, z_true, env, targets, adj, tau: float, *, cfg, seed: int) -> dict:
    """The per-slot consensus of one data set's aligned restarts ``z [R, N, d]`` scored
    like a run: out-of-sample Pearson MCC against ``z_true [N, d]`` (split ``seed``), the
    SHD to ``adj [d, d]`` of the pruned exact search (``cfg``'s ``graph_min_r2`` and
    ``edge_threshold``) over the consensus latents with the known ``targets [E, d]``, and
    each slot's medoid restart."""
    zc, chosen = slot_consensus(z, average=tau)
    zc, zt = np.asarray(zc), np.asarray(z_true)
    w = pruned_dag_search(zc, np.asarray(env), np.asarray(targets), min_r2=cfg.graph_min_r2,
                          edge_threshold=cfg.edge_threshold)
    return {"mcc": mcc_out_of_sample(zt, zc, "pearson", key=seed).value,
            "shd": float(shd_of(np.asarray(adj), w, perm=match(zt, zc).perm)),
            "chosen": np.asarray(chosen).tolist()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_restart_agreement")
    p.add_argument("--taus", default="0,0.5,0.8,0.9",
                   help="comma-separated consensus thresholds (0: each slot's medoid)")
    base = SyntheticConfig()
    base = dataclasses.replace(base, crl=dataclasses.replace(base.crl, restarts=4))
    args, cfg = parse_config(p, base, argv, aliases=ALIASES)
    n_rep, n_sets = cfg.crl.restarts, cfg.seeds
    if n_rep < 3:
        raise ValueError(f"--restarts must be >= 3 for a medoid, got {n_rep}")
    data = simulate(cfg)
    seed_keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 1), n_sets)
    keys = jax.vmap(lambda k: jax.vmap(lambda r: jax.random.fold_in(k, r))(
        np.arange(n_rep)))(seed_keys).reshape(-1)  # restart r of data set s: fold_in(k_s, r)
    rep = argparse.Namespace(**{f: np.repeat(np.asarray(getattr(data, f)), n_rep, axis=0)
                                for f in ("x", "env", "targets", "z", "adj")})
    mcfg = dataclasses.replace(cfg.method_config("latent_scm"), restarts=1)
    t0 = time.perf_counter()
    result = fit(mcfg, rep.x, rep.env, targets=rep.targets, key=keys, progress=False)
    wall = time.perf_counter() - t0
    scores = score_fit(result, rep.x, rep.z, rep.env, adj_true=rep.adj,
                       targets_true=rep.targets)
    loss = np.asarray(result.history["final_loss"]).reshape(n_sets, n_rep)
    mcc = np.array([s["mcc_pearson_oos"] for s in scores]).reshape(n_sets, n_rep)
    shd = np.array([s["shd"] for s in scores]).reshape(n_sets, n_rep)
    z = np.asarray(result.encode(rep.x)).reshape(n_sets, n_rep, *rep.x.shape[1:2], -1)
    agree = np.stack([agreement(z[s]) for s in range(n_sets)])
    by_loss, by_agree = loss.argmin(1), agree.argmax(1)
    idx = np.arange(n_sets)
    out = {"loss": loss.tolist(), "mcc": mcc.tolist(), "shd": shd.tolist(),
           "agreement": agree.tolist(),
           "by_loss": {"chosen": by_loss.tolist(), "mcc": mcc[idx, by_loss].tolist(),
                       "shd": shd[idx, by_loss].tolist()},
           "by_agreement": {"chosen": by_agree.tolist(), "mcc": mcc[idx, by_agree].tolist(),
                            "shd": shd[idx, by_agree].tolist()},
           "best_mcc": mcc.max(1).tolist(), "wall_s": wall}
    out["consensus"] = {}
    for tau in [float(t) for t in args.taus.split(",")]:
        rows = [consensus_scores(z[s], data.z[s], data.env[s], data.targets[s], data.adj[s],
                                 tau, cfg=mcfg, seed=s * n_rep) for s in range(n_sets)]
        row = {k: [r[k] for r in rows] for k in ("mcc", "shd", "chosen")}
        out["consensus"][str(tau)] = row
        print(f"consensus tau={tau}: MCC {np.mean(row['mcc']):.3f} "
              f"{np.round(row['mcc'], 3).tolist()}, SHD {np.mean(row['shd']):.1f}", flush=True)
    first2 = loss[:, :2].argmin(1)  # what the default's 2 restarts choose (same runs)
    out["first_two_by_loss"] = {"chosen": first2.tolist(), "mcc": mcc[idx, first2].tolist(),
                                "shd": shd[idx, first2].tolist()}
    for name in ("first_two_by_loss", "by_loss", "by_agreement"):
        print(f"{name}: MCC {np.mean(out[name]['mcc']):.3f} "
              f"{np.round(out[name]['mcc'], 3).tolist()}, SHD {np.mean(out[name]['shd']):.1f}",
              flush=True)
    print(f"best restart: MCC {np.mean(out['best_mcc']):.3f}; fit {wall:.0f} s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "results.json").write_text(json.dumps(
        {"setup": {"out": args.out, "config": dataclasses.asdict(cfg)}, "restarts": out},
        indent=2))


if __name__ == "__main__":
    main()
