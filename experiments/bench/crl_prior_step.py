"""Benchmark: one training step's log-likelihood gradient of the flow prior, library vs the
straightforward formulation, with R runs vmapped as the fit trains them.

Command::

    python experiments/bench/crl_prior_step.py --out out/bench_crl_prior_step.json

Arms (same parameters, latents and environments; the values agree to float rounding and
the JSON records the largest difference):

* ``reference``: every environment's density of every sample
  (:func:`jaxcrl.crl.flow_prior.env_log_probs`, ``[n, E, d]`` intervened terms) read at
  the sample's own environment, and the per-node MLPs on explicitly gated parents
  (``einsum("nji,jik->njk")`` of ``[n, d, d]`` inputs): how the density is written down.
* ``library``: :func:`jaxcrl.crl.flow_prior.log_prob` (own environment only, ``[n, d]``
  terms; MLP pre-activations as one matmul with folded weights,
  :func:`jaxcrl.crl.prior.gated_pre_activations`).

Each arm times ``vmap(grad)`` of the summed log-likelihood over R runs, prior only and with
the fit's flow encoder in front (the whole model of a ``scm="flow"`` fit), median of
``--repeats`` timings of ``--iters`` calls after compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.crl import flow_prior as F
from jaxcrl.crl.nets import FlowEncoder


def _reference_log_prob(params, z, env, pos, *, targets, soft):
    """All environments' densities with explicitly gated MLP inputs, read at ``env``."""
    w = F.ordered_weights(params, pos)
    gated = z[:, None, :] * w.T[None]  # [n, j, i]

    def mlp(w1, b1, w2):
        pre = jnp.einsum("nji,jik->njk", gated, w1)
        return jnp.einsum("njk,jk->nj", jnp.tanh(pre + b1) - jnp.tanh(b1), w2)

    loc = z @ w + mlp(params.loc_w1, params.loc_b1, params.loc_w2)
    g = mlp(params.scale_w1, params.scale_b1, params.scale_w2)
    log_sc = params.log_scale + 3.0 * jnp.tanh(g / 3.0)
    lp_obs = F.noise_log_prob(params.noise, (z - loc) * jnp.exp(-log_sc)) - log_sc
    if soft:
        loc_i = params.int_factor[None] * loc[:, None] + params.int_mean[None]
        log_sc_i = log_sc[:, None] + params.int_log_scale[None]
        lp_int = F.noise_log_prob(params.noise, (z[:, None] - loc_i) * jnp.exp(-log_sc_i))
    else:
        log_sc_i = params.int_log_scale[None]
        lp_int = F.noise_log_prob(params.int_noise,
                                  (z[:, None] - params.int_mean[None]) * jnp.exp(-log_sc_i))
    lp_int = lp_int - log_sc_i
    t = targets.astype(z.dtype)
    lp = lp_obs.sum(-1)[:, None] + jnp.einsum("ned,ed->ne", lp_int - lp_obs[:, None], t)
    return jnp.take_along_axis(lp, env[:, None], 1)[:, 0]


def _time(f, args, iters: int, repeats: int) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / iters)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10, help="vmapped runs (5 seeds x 2 restarts)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--latent-dim", type=int, default=5)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--terms", type=int, default=8)
    p.add_argument("--flow-layers", type=int, default=8)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kinds", default="perfect,soft", help="intervention kinds to time")
    p.add_argument("--out", default="out/bench_crl_prior_step.json")
    args = p.parse_args(argv)
    r, n, d = args.runs, args.batch, args.latent_dim
    n_envs = d + 1
    key = jax.random.key(0)
    ks = jax.random.split(key, 4)
    targets = jnp.concatenate([jnp.zeros((1, d), bool), jnp.eye(d, dtype=bool)])
    prior = jax.vmap(lambda k: F.init_flow_prior(k, d, n_envs, hidden=args.hidden,
                                                 terms=args.terms))(jax.random.split(ks[0], r))
    prior = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(ks[1], a.shape), prior)
    x = jax.random.normal(ks[2], (r, n, d))
    env = jax.random.randint(ks[3], (r, n), 0, n_envs)
    encoder = FlowEncoder(args.flow_layers, args.terms, "dense")
    enc_params = jax.vmap(lambda k: encoder.init(k, x[0]))(jax.random.split(ks[1], r))
    results = {}
    for soft in [{"perfect": False, "soft": True}[k] for k in args.kinds.split(",")]:
        arms = {}
        values = {}
        for name, lp_fn in (("reference", _reference_log_prob), ("library", F.log_prob)):
            def prior_ll(pp, z, e, lp_fn=lp_fn, soft=soft):
                pos = F.implied_order(z, e, targets)
                return lp_fn(pp, z, e, pos, targets=targets, soft=soft).sum()

            def model_ll(pe, pp, xx, e, prior_ll=prior_ll):
                z, logdet = encoder.apply(pe, xx)
                return prior_ll(pp, z, e) + logdet.sum()

            values[name] = np.asarray(jax.jit(jax.vmap(prior_ll))(prior, x, env))
            prior_step = jax.jit(jax.vmap(jax.grad(prior_ll, argnums=(0, 1))))
            model_step = jax.jit(jax.vmap(jax.grad(model_ll, argnums=(0, 1))))
            arms[name] = {
                "prior_grad_ms": 1e3 * _time(prior_step, (prior, x, env), args.iters,
                                             args.repeats),
                "model_grad_ms": 1e3 * _time(model_step, (enc_params, prior, x, env),
                                             args.iters, args.repeats)}
        kind = "soft" if soft else "perfect"
        results[kind] = {
            **arms,
            "speedup_prior": arms["reference"]["prior_grad_ms"] / arms["library"]["prior_grad_ms"],
            "speedup_model": arms["reference"]["model_grad_ms"] / arms["library"]["model_grad_ms"],
            "max_rel_diff": float(np.max(np.abs(values["library"] - values["reference"])
                                         / np.abs(values["reference"])))}
        print(f"{kind:8s} prior grad: reference {arms['reference']['prior_grad_ms']:.1f} ms, "
              f"library {arms['library']['prior_grad_ms']:.1f} ms "
              f"({results[kind]['speedup_prior']:.2f}x); with the flow encoder: "
              f"{arms['reference']['model_grad_ms']:.1f} -> "
              f"{arms['library']['model_grad_ms']:.1f} ms "
              f"({results[kind]['speedup_model']:.2f}x)")
    out = {"benchmark": "crl_prior_step", "setup": vars(args), "results": results,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "jax": jax.__version__, "backend": jax.default_backend()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
