"""Benchmark: cross-layer transcoder training throughput at the GPT-2-small shape.

Command::

    python experiments/bench/clt_speed.py --out out/bench_clt_speed.json

One CLT over all 12 layers (d_in = d_out = 768, ``--features`` per layer, TopK ``k`` per
layer, cross-layer decoders to every later layer: 78 decoder blocks) trains as **one
compiled program**: the training step of :func:`jaxcrl.sae.train` (the same compiled
``lax.scan`` chunk, ``jaxcrl.train.loop``) on random activation rows of width
``12 (768 + 768)``. Reported: tokens/s (best of ``--repeats`` chunks of ``--steps`` steps
after compilation), the number of traces of the step (1: one program for all layers),
FLOPs per token (dense forward + backward, ``3 · 2 · (L d_in F + P F d_out)``) as a
fraction of the float32 matmul peak measured in the same run, and the same for per-layer
transcoders (``cross_layer=False``: 12 decoder blocks) for scale. Expected runtime on the
2-core reference machine: a few minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxcrl import sae
from jaxcrl.sae import training
from jaxcrl.train.loop import compiled_chunk


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def bench(cfg: sae.CLTConfig, steps: int, repeats: int) -> dict:
    source = sae.generator_source(
        lambda key: jax.random.normal(key, (cfg.batch_size, cfg.source_width)),
        cfg.source_width, cfg.batch_size)
    k_src, k_sample, k_params, k_data = jax.random.split(jax.random.key(0), 4)
    src = source.init(k_src)
    x0 = source.sample(src, k_sample)[1]
    state = cfg.family.init_state(k_params, cfg, x0)
    traces = [0]

    def step(carry, key):
        traces[0] += 1
        s, st = carry
        s, x = source.sample(s, key)
        st, m = training.update(st, x, cfg)
        return (s, st), m

    chunk = compiled_chunk(step, (src, state), k_data, size=steps, batched=False)
    carry = jax.tree.map(jnp.copy, (src, state))  # the chunk donates its input buffers
    t = time.perf_counter()
    carry, _ = chunk(carry, k_data, 0, steps)
    jax.block_until_ready(carry)
    first = time.perf_counter() - t
    best = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        carry, m = chunk(carry, k_data, (r + 1) * steps, steps)
        jax.block_until_ready(carry)
        best = min(best, time.perf_counter() - t)
    tokens = cfg.batch_size * steps
    flops = 6 * (cfg.n_layers * cfg.d_in * cfg.d_sae + cfg.n_blocks * cfg.d_sae * cfg.d_out)
    return {"n_layers": cfg.n_layers, "d_in": cfg.d_in, "d_out": cfg.d_out,
            "features_per_layer": cfg.d_sae, "k": cfg.k, "decoder_blocks": cfg.n_blocks,
            "batch_tokens": cfg.batch_size, "s_per_step": best / steps,
            "tokens_per_s": tokens / best, "compile_and_first_chunk_s": first,
            "traces": traces[0], "flops_per_token": flops,
            "gflops": flops * tokens / best / 1e9,
            "final_l0_per_layer": float(jnp.asarray(m["l0"])[-1])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/bench_clt_speed.json")
    p.add_argument("--features", type=int, default=3072)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    peak = matmul_peak()
    res = {"peak_gflops_before": peak, "runs": {}}
    for name, cross in (("clt", True), ("per_layer_transcoders", False)):
        cfg = sae.CLTConfig(d_in=args.d, d_out=args.d, d_sae=args.features, k=args.k,
                            n_layers=args.layers, cross_layer=cross, batch_size=args.batch,
                            steps=10_000, warmup=10, aux_k=0)
        r = bench(cfg, args.steps, args.repeats)
        r["fraction_of_peak"] = r["gflops"] / peak
        res["runs"][name] = r
        print(f"{name}: {r['tokens_per_s']:.0f} tokens/s, {r['s_per_step']:.2f} s/step, "
              f"{r['gflops']:.1f} GFLOP/s ({100 * r['fraction_of_peak']:.0f}% of peak "
              f"{peak:.0f}), traces {r['traces']}")
    res["peak_gflops_after"] = matmul_peak()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
