"""Where the contrastive d=10, D=100 fit goes wrong: the start, not the data (issue 13).

Command::

    python experiments/crl_contrastive_starts.py --out out/crl_contrastive_starts

The row ``contrastive, d=10, D=100, unknown targets`` with the targets given, 50k samples
per environment (5x the row's; with them the training and fresh-sample losses agree, so
nothing below is overfitting), weight decay 0.1, 10k steps, seeds 0 and 1:

* ``random``: ``--runs`` independent fits from random starts (fit keys ``fold_in(key, 100 +
  k)``) on the same data: each run's MCC and final training loss, the run the loss would
  choose, and a per-latent *consensus* of the runs (for each latent slot, the run whose slot
  correlates best on average with the other runs' same slot, :func:`jaxcrl.crl.consensus.
  slot_consensus`; slots are aligned by the known targets). No ground truth is used to
  choose.
* ``true_start``: the encoder first regressed onto the standardized true latents
  (:func:`jaxcrl.crl.consensus.distill_encoder`, 4000 Adam steps, MCC 0.999), then the
  same contrastive fit from there (prior and decoder random): does the fit keep the true
  latents, and at what loss?

``--freeze K``: every fit keeps its encoder frozen for its first K steps
(``CRLConfig.encoder_freeze``) while the prior and decoder adapt.

Both also report the classification loss of the true latents under the true SCM (``truth``).
Writes ``OUT/results.json``; about 5 + 2 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from crl_contrastive_diagnostics import _ce, _true_prior

from jaxcrl.config import apply_overrides
from jaxcrl.crl import fit
from jaxcrl.crl.consensus import distill_encoder, slot_consensus
from jaxcrl.crl.models import contrastive_encoder
from jaxcrl.crl.svi import make_preprocess
from jaxcrl.crl.synthetic import SyntheticConfig, variant
from jaxcrl.metrics import mcc
from jaxcrl.scm import make_dataset

ROW = "contrastive, d=10, D=100, unknown targets"
SETTINGS = ("targets=known", "data.n_per_env=50000", "crl.weight_decay=0.1")


def _setup(seeds: int, steps: int, freeze: int = 0):
    base = SyntheticConfig(seeds=seeds, crl=dataclasses.replace(SyntheticConfig().crl,
                                                                steps=steps, restarts=1))
    cfg = apply_overrides(variant(base, ROW), [*SETTINGS, "crl.consensus_runs=0",
                                               f"crl.encoder_freeze={freeze}"])
    keys = jax.random.split(jax.random.key(cfg.seed), seeds)
    data = jax.jit(jax.vmap(lambda k: make_dataset(k, cfg.data)))(keys)
    return cfg, data, cfg.method_config("contrastive")


def _truth_ce(data, s: int) -> float:
    ds = jax.tree.map(lambda a: a[s], data)
    return _ce(_true_prior(ds, ds.z.shape[-1]), ds.z, ds.env, ds.targets)


def random_starts(seeds: int, steps: int, runs: int, freeze: int = 0) -> dict:
    cfg, data, m = _setup(seeds, steps, freeze)
    zs, losses = [], []
    for k in range(runs):
        r = fit(m, data.x, data.env, targets=data.targets, seeds=seeds, progress=False,
                key=jax.random.fold_in(jax.random.key(cfg.seed), 100 + k))
        zs.append(np.asarray(r.encode(data.x)))
        losses.append(np.asarray(r.history["final_loss"]))
    out = {}
    for s in range(seeds):
        zt = np.asarray(data.z[s])
        run_mcc = [float(mcc(zt, z[s]).value) for z in zs]
        loss = [float(v[s]) for v in losses]
        zc, chosen = slot_consensus(jnp.stack([z[s] for z in zs]))
        out[f"seed{s}"] = {"mcc": run_mcc, "final_loss": loss,
                           "by_loss_mcc": run_mcc[int(np.argmin(loss))],
                           "consensus_mcc": float(mcc(zt, np.asarray(zc)).value),
                           "consensus_runs": np.asarray(chosen).tolist(),
                           "truth_loss": _truth_ce(data, s)}
    return out


def true_start(seeds: int, steps: int, freeze: int = 0, sup_steps: int = 4000) -> dict:
    cfg, data, m = _setup(seeds, steps, freeze)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    # the fit's own input preprocessing, and an encoder regressed onto the true latents
    pre = jax.vmap(lambda x: make_preprocess(x, m.latent_dim, flow=False, pca_dim=m.pca_dim))(
        data.x)
    p_sup = jax.jit(jax.vmap(lambda p, x, z: distill_encoder(m, p, x, z, jax.random.key(5),
                                                             steps=sup_steps)))(
        pre, data.x, data.z)
    mlp = contrastive_encoder(m)
    z_sup = np.asarray(jax.vmap(lambda p, q, x: mlp.apply({"params": p}, q(x)))(
        p_sup, pre, data.x))
    r = fit(m, data.x, data.env, targets=data.targets, key=key, seeds=seeds, progress=False,
            init_params={"encoder$params": p_sup}, z_true=data.z, eval_every=steps // 10)
    z = np.asarray(r.encode(data.x))
    hist = np.asarray(r.history["mcc"])
    out = {}
    for s in range(seeds):
        zt = np.asarray(data.z[s])
        res = mcc(zt, z[s])
        out[f"seed{s}"] = {"start_mcc": float(mcc(zt, z_sup[s]).value),
                           "mcc_history": hist[:, s].round(4).tolist(),
                           "mcc": float(res.value), "per_latent": res.matched.round(3).tolist(),
                           "perm": res.perm.tolist(),
                           "final_loss": float(r.history["final_loss"][s]),
                           "truth_loss": _truth_ce(data, s)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_contrastive_starts")
    p.add_argument("--parts", default="random,true_start")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--freeze", type=int, default=0,
                   help="crl.encoder_freeze of the fits (steps with the encoder frozen)")
    args = p.parse_args(argv)
    res = {"settings": [ROW, *SETTINGS, f"crl.steps={args.steps}",
                        f"crl.encoder_freeze={args.freeze}"]}
    if "random" in args.parts:
        res["random"] = random_starts(args.seeds, args.steps, args.runs, args.freeze)
    if "true_start" in args.parts:
        res["true_start"] = true_start(args.seeds, args.steps, args.freeze)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
