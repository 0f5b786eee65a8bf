"""Benchmark: where the time of one sparse TopK SAE step goes, phase by phase.

Command (the BENCHMARKS.md "Training speed" phase table)::

    python experiments/bench/sae_speed_phases.py --shape 768x24576 \
        --out experiments/results/bench_sae_speed_phases.json

Times, each as its own jit-ed function (best of ``--repeats`` after compilation), at batch
4096, k 32, aux_k = d_in / 2, every ``--dead-every``-th latent dead (default half): the
encoder matmul (float32 and bfloat16), the TopK selection (``lax.top_k``, the bitwise
search), the AuxK selection, the sparse kernels (gather-decode, row dots, scatter-adds) at
k and at aux_k, the AuxK loss and its gradient (over all columns with sparse and dense
kernels, and over the dead columns only, :mod:`jaxcrl.sae.auxk`), Adam over the params,
and whole steps (AuxK idle; AuxK active over the dead columns, and over all columns with
sparse and with dense AuxK). The phases overlap and XLA fuses across them, so they do not
add up exactly to a step; they say which part dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxcrl import sae
from jaxcrl.sae import auxk, sparse, training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="768x24576", help="d_in x d_sae")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dead-every", type=int, default=2,
                   help="every n-th latent is dead (2: half, 20: 5%%)")
    p.add_argument("--out", default="experiments/results/bench_sae_speed_phases.json")
    args = p.parse_args(argv)
    d, s = (int(v) for v in args.shape.split("x"))
    B, k, aux_k = args.batch, args.k, d // 2
    x = jax.random.normal(jax.random.key(0), (B, d))
    cfg = sae.SAEConfig(d_in=d, d_sae=s, k=k, batch_size=B, steps=1000, decoder="sparse",
                        grad_clip=1.0)
    params = sae.init_params(jax.random.key(1), cfg)
    dead = jnp.arange(s) % args.dead_every == 0
    pre = jax.jit(lambda p, x: sae.pre_activations(p, x, cfg))(params, x)
    acts = jnp.where(dead, jax.nn.relu(pre), 0.0)
    rows = {}

    def t(name, f, *a):
        f = jax.jit(f)
        jax.block_until_ready(f(*a))
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            best = min(best, time.perf_counter() - t0)
        rows[name] = best
        print(f"{name:58s} {best * 1e3:9.0f} ms", flush=True)

    bf = jnp.bfloat16
    t("encoder matmul x @ W_enc, float32", lambda x, w: x @ w, x, params["W_enc"])
    t("encoder matmul, bfloat16 inputs, float32 accumulation",
      lambda x, w: jnp.matmul(x.astype(bf), w.astype(bf), preferred_element_type=jnp.float32),
      x, params["W_enc"])
    t(f"TopK selection lax.top_k(pre, {k})", lambda a: lax.top_k(a, k), pre)
    t("TopK threshold, 31-pass bitwise search (traced k)",
      lambda a: sae.model.kth_largest_nonneg(jax.nn.relu(a), jnp.int32(k)), pre)
    t(f"AuxK selection: dead mask + lax.top_k(., {aux_k})",
      lambda a: lax.top_k(jnp.where(dead, jax.nn.relu(a), 0.0), aux_k), pre)
    for K in (k, aux_k):
        vals, idx = lax.top_k(acts if K == aux_k else pre, K)
        v = jax.nn.relu(vals)
        t(f"K={K}: gather-decode sum_j v W_dec[idx] (fori_loop)",
          lambda v, w, i: sparse._combine(v, w, i), v, params["W_dec"], idx)
        t(f"K={K}: row dots <g, W_dec[idx]>", lambda y, w, i: sparse._rowdot(y, w, i),
          x, params["W_dec"], idx)
        t(f"K={K}: scatter-add into [d_sae, d_in] (a weight gradient)",
          lambda v, y, i: sparse._scatter(v, y, i, s), v, x, idx)
    resid = x * 0.1
    for name, ratio in (("sparse", 1), ("dense", 10**9)):
        def aux_grad(p, pre, ratio=ratio):
            old = sparse.AUX_SPARSE_MIN_RATIO
            sparse.AUX_SPARSE_MIN_RATIO = ratio  # read at trace time
            try:
                return jax.grad(lambda p: sparse.auxk_loss(p, x, pre, resid, dead, aux_k,
                                                           cfg))(p)
            finally:
                sparse.AUX_SPARSE_MIN_RATIO = old
        t(f"AuxK loss + gradient, {name} kernels (pre given)", aux_grad, params, pre)
    t("AuxK loss + gradient, over the dead columns only (sae.auxk.loss)",
      lambda p, pre: jax.grad(lambda p: auxk.loss(p, x, pre, resid, dead, cfg,
                                                  sparse_path=True))(p), params, pre)
    opt = training.make_optimizer(cfg)
    ost = opt.init(params)

    def adam(p, st):
        u, st = opt.update(p, st, p)
        return optax.apply_updates(p, u), st

    t("Adam (+ global-norm clip) over all params", adam, params, ost)
    st = training.init_state(jax.random.key(2), cfg, x)
    st_dead = st._replace(since_fired=jnp.where(dead, cfg.dead_tokens, 0).astype(jnp.int32))
    t("whole step, AuxK idle", lambda st, x: training._update(st, x, cfg, False), st, x)
    for name, ratio, compact in (("over the dead columns", 1, auxk.COMPACT_MIN_D_SAE),
                                 ("all columns, sparse", 1, 10**9),
                                 ("all columns, dense", 10**9, 10**9)):
        sparse.AUX_SPARSE_MIN_RATIO, old = ratio, sparse.AUX_SPARSE_MIN_RATIO
        auxk.COMPACT_MIN_D_SAE, old_c = compact, auxk.COMPACT_MIN_D_SAE
        t(f"whole step, AuxK active, {name} AuxK",
          lambda st, x: training._update(st, x, cfg, True), st_dead, x)
        sparse.AUX_SPARSE_MIN_RATIO, auxk.COMPACT_MIN_D_SAE = old, old_c
    out = {"benchmark": "sae_speed_phases", "d_in": d, "d_sae": s, "batch": B, "k": k,
           "aux_k": aux_k, "dead_fraction": 1 / args.dead_every, "repeats": args.repeats,
           "seconds": rows, "loadavg_at_end": os.getloadavg(), "cpu_count": os.cpu_count(),
           "backend": jax.default_backend(), "jax": jax.__version__}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
