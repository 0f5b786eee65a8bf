"""Do label swaps cost likelihood? (issue 13) A fit's latents re-paired with the environments.

The default row's stuck fits are label swaps: learned latent i is mostly true latent j and
vice versa, while the known targets tie environment e to latent e - 1 (the MCC matching is a
transposition, e.g. ``[1 0 2 3 4]``). For each transposition (i, j) of a fitted run this
script continues training from the fitted encoder, with a fresh prior, under the target mask
whose columns i and j are exchanged (equivalently: the encoder's outputs i and j swapped),
beside the unchanged mask (the control, same fresh prior and steps). If the likelihood
prefers the swap that undoes the label swap, a swap move chosen by likelihood (no ground
truth) would repair such fits.

    python experiments/crl_swap_diag.py --fit out/crl/ckpt_latent_scm --seed 0 --steps 4000

``--fit`` is a ``crl_synthetic.py --save`` checkpoint of the default row (root ``--seed``);
prints per data set and candidate: the mean training loss over the last 5% of the steps
(the restart criterion), the full-data NLL per sample (without the acyclicity penalty; the
prior's alone when frozen), and the MCC matching. The joint mode trains with
:func:`jaxcrl.crl.fit` from the fitted encoder (``init_params``); the figures in
BENCHMARKS.md's swap paragraph were made by this script's earlier loop (commit 75a6783),
which minibatched the same way with other keys and reported the negative ELBO.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcrl.config import apply_overrides
from jaxcrl.crl import fit
from jaxcrl.crl import prior as prior_lib
from jaxcrl.crl.models import flow_encoder
from jaxcrl.crl.svi import load_fit
from jaxcrl.crl.synthetic import SyntheticConfig
from jaxcrl.metrics import mcc
from jaxcrl.scm import make_dataset


def _prior_fit(a, d: int, n_envs: int, n_total: int):
    """Frozen mode, one compiled function for every data set and candidate: a fresh linear
    prior fitted on fixed latents ``z [N, d]`` under target mask ``tt``; returns ``(final
    loss, full-data prior NLL per sample)``."""
    tail = max(a.steps // 20, 1)

    def run(tt, k, z, env):
        prior = prior_lib.init_prior(k, d, n_envs)
        opt = optax.adam(optax.warmup_cosine_decay_schedule(
            0.0, 1e-2, min(200, a.steps - 1), a.steps, end_value=5e-4))

        def nll(pp, idx):
            return -prior_lib.log_prob(pp, z[idx], env[idx], targets=tt).mean()

        def step(carry, kk):
            pp, st, acc, i = carry
            idx = jax.random.randint(kk, (a.batch_size,), 0, n_total)
            loss, g = jax.value_and_grad(nll)(pp, idx)
            up, st = opt.update(g, st, pp)
            acc = acc + jnp.where(i >= a.steps - tail, loss, 0.0)
            return (optax.apply_updates(pp, up), st, acc, i + 1), None

        (pp, _, acc, _), _ = jax.lax.scan(step, (prior, opt.init(prior), 0.0, 0),
                                          jax.random.split(k, a.steps))
        return acc / tail, nll(pp, jnp.arange(n_total))

    return jax.jit(jax.vmap(run, in_axes=(0, 0, None, None)))


def _candidates(a, mcfg, net, x, env, masks, enc, pre, key):
    """Every candidate mask's fit: ``(final losses [C], full-data NLLs [C], encoded
    latents [C, N, d])``. Frozen: the fitted encoder and a fresh prior per candidate; else
    :func:`jaxcrl.crl.fit` from the fitted encoder with a fresh prior (all candidates in one
    program)."""
    xp = pre(x)
    n_cand, n_total = masks.shape[0], x.shape[0]
    ks = jax.random.split(key, n_cand)
    if a.frozen:
        z = net.apply({"params": enc}, xp)[0]
        final, full = _prior_fit(a, mcfg.latent_dim, mcfg.n_envs, n_total)(masks, ks, z, env)
        return np.asarray(final), np.asarray(full), np.broadcast_to(z, (n_cand, *z.shape))
    rep = lambda v: jnp.broadcast_to(v, (n_cand, *v.shape))  # noqa: E731
    res = fit(mcfg, rep(x), rep(env), targets=masks, key=ks, progress=False,
              eval_every=a.steps, init_params={"encoder$params": jax.tree.map(rep, enc)})
    if not jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.allclose(u, v)),
                                     jax.tree.map(lambda v: v[0], res.preprocess), pre)):
        raise ValueError("the fit's preprocessing differs from the saved one (a fit with "
                         "permute_restarts?): its encoder would see other inputs")
    z, logdet = jax.vmap(lambda p: net.apply({"params": p}, xp))(res.params["encoder$params"])
    soft = mcfg.intervention == "soft"
    nll = jax.vmap(lambda pp, zz, tt, ld: -jnp.mean(prior_lib.log_prob(
        pp, zz, env, targets=tt, soft=soft) + ld))(res.params["prior"], z, masks, logdet)
    return np.asarray(res.history["final_loss"]), np.asarray(nll), np.asarray(z)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fit", required=True)
    p.add_argument("--seed", type=int, default=0, help="root seed of the fitted data sets")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate (small: the encoder is already fitted)")
    p.add_argument("--only", default=None, help="comma-separated data-set indices")
    p.add_argument("--frozen", action="store_true",
                   help="keep the fitted encoder fixed: fit only a fresh linear prior per "
                        "candidate pairing on the fitted latents (the encoder's log-det is "
                        "the same for every candidate, so the prior NLL decides)")
    p.add_argument("--set", action="append", default=[],
                   help="data override of the fitted setting, e.g. data.n_per_env=300")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    res = load_fit(a.fit)
    n_sets = jax.tree.leaves(res.params)[0].shape[0]
    cfg = apply_overrides(SyntheticConfig(seeds=n_sets, seed=a.seed), a.set)
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.seeds)
    data = jax.jit(jax.vmap(lambda k: make_dataset(k, cfg.data)))(keys)
    z_hat = np.asarray(res.encode(data.x))
    d = res.cfg.latent_dim
    swaps = [None, *itertools.combinations(range(d), 2)]
    # the acyclicity weight held at its final value (no ramp: the encoder is fitted)
    mcfg = dataclasses.replace(res.cfg, steps=a.steps, batch_size=a.batch_size, restarts=1,
                               lr=a.lr, warm_steps=0, permute_restarts=False, holdout=0.0,
                               penalty_min=res.cfg.penalty_max)
    net = flow_encoder(mcfg)
    out = []
    for s in (range(n_sets) if a.only is None else map(int, a.only.split(","))):
        x, env, t = data.x[s], data.env[s], np.asarray(data.targets[s])
        pre = jax.tree.map(lambda v, s=s: v[s], res.preprocess)
        enc = jax.tree.map(lambda v, s=s: v[s], res.params["encoder$params"])
        m0 = mcc(np.asarray(data.z[s]), z_hat[s])
        masks = []
        for sw in swaps:
            cols = list(range(d))
            if sw is not None:
                cols[sw[0]], cols[sw[1]] = sw[1], sw[0]
            masks.append(t[:, cols])
        masks = jnp.asarray(np.stack(masks))

        final, full, zs = _candidates(a, mcfg, net, x, env, masks, enc, pre,
                                      jax.random.key(1000 + s))
        rows = []
        for c, sw in enumerate(swaps):
            mc = mcc(np.asarray(data.z[s]), zs[c])
            rows.append(dict(swap=sw, final_loss=float(final[c]), nll=float(full[c]),
                             mcc=float(mc.value), perm=np.asarray(mc.perm).tolist()))
        best = min(range(len(rows)), key=lambda c: rows[c]["final_loss"])
        rec = dict(data_set=s, fitted_mcc=float(m0.value), fitted_perm=np.asarray(m0.perm).tolist(),
                   chosen=rows[best]["swap"], candidates=rows)
        print(json.dumps({k: v for k, v in rec.items() if k != "candidates"}), flush=True)
        for r in rows:
            print("   ", json.dumps(r), flush=True)
        out.append(rec)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
