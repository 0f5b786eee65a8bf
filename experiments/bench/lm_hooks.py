"""Benchmark: forward throughput of the hookable transformer and the cost of its hooks.

Command::

    python experiments/bench/lm_hooks.py --out out/bench_lm_hooks.json

Arms (same params and tokens, each compiled once before timing; the best of ``--repeats``
timed calls): plain ``apply``; ``run_with_cache`` of one hook, of all hooks, and of one
hook with ``stop_at_layer`` (what an SAE activation store runs); ``run_with_hooks`` with
one identity hook (a plain Python callable) and with one library hook (``add_vector`` of
zeros, a traced pytree). Overhead = time / time(apply).

Model FLOPs of a forward: ``2 * N_nonembed * tokens`` (block matmuls) ``+ 4 * B * T^2 * D * L``
(scores and pattern-value products, full square) ``+ 2 * tokens * D * V`` (unembedding).
MFU = model FLOP/s / the float32 matmul peak measured in the same run (``jax.jit`` of a
2048x2048 @ 2048x2048 matmul, best of repeats). A larger model is timed too (``--large-*``).
Expected runtime on 2 CPU cores: about 1-2 minutes. Writes JSON and prints a table.
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

from jaxcrl.lm import HookedTransformer, TransformerConfig, add_vector, count_params


def best_times(fns: dict, repeats: int) -> dict:
    """Best wall time of each ``fn()`` (blocked until ready) over ``repeats`` rounds, after
    one warm-up call each that compiles. Rounds visit the arms in turn, so load from other
    processes on a shared machine hits all arms alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def best_time(fn, repeats: int) -> float:
    return best_times({"fn": fn}, repeats)["fn"]


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of ``jax.jit(a @ b)`` with ``[n, n]`` operands."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    return 2 * n**3 / best_time(lambda: mm(a, b), repeats)


def model_flops(cfg: TransformerConfig, params, batch: int, seq: int) -> float:
    """Forward FLOPs (see module docstring)."""
    tokens = batch * seq
    n_nonembed = count_params(params, embeddings=False)
    attn = 4 * batch * seq**2 * cfg.d_model * cfg.n_layers
    return 2 * n_nonembed * tokens + attn + 2 * tokens * cfg.d_model * cfg.vocab_size


def bench_model(cfg: TransformerConfig, batch: int, seq: int, repeats: int, peak: float,
                arms: bool = True) -> dict:
    model = HookedTransformer(cfg)
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, seq), 0, cfg.vocab_size)
    mid = f"blocks.{cfg.n_layers // 2}.hook_resid_post"
    runs = {"apply": lambda: model.apply(params, tokens)}
    if arms:
        zeros = jnp.zeros(cfg.d_model)
        runs.update({
            "cache_one": lambda: model.run_with_cache(params, tokens, names=[mid]),
            "cache_all": lambda: model.run_with_cache(params, tokens, names=None),
            "cache_one_stop": lambda: model.run_with_cache(
                params, tokens, names=[mid], stop_at_layer=cfg.n_layers // 2 + 1),
            "hook_identity": lambda: model.run_with_hooks(params, tokens, {mid: _identity}),
            "hook_add_vector": lambda: model.run_with_hooks(params, tokens,
                                                            {mid: add_vector(zeros)}),
        })
    flops = model_flops(cfg, params, batch, seq)
    rows = {name: {"seconds": sec, "tokens_per_s": batch * seq / sec}
            for name, sec in best_times(runs, repeats).items()}
    base = rows["apply"]["seconds"]
    for row in rows.values():
        row["overhead_vs_apply"] = row["seconds"] / base
    rows["apply"]["model_gflop"] = flops / 1e9
    rows["apply"]["model_gflops_per_s"] = flops / base / 1e9
    rows["apply"]["mfu"] = flops / base / peak
    return {"config": {**cfg.__dict__, "batch": batch, "seq": seq,
                       "params": count_params(params),
                       "params_nonembed": count_params(params, embeddings=False)},
            "model_gflop_per_forward": flops / 1e9, "arms": rows}


def _identity(x):
    return x


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--large-d-model", type=int, default=512)
    p.add_argument("--large-layers", type=int, default=4)
    p.add_argument("--large-vocab", type=int, default=4096)
    p.add_argument("--large-batch", type=int, default=32)
    p.add_argument("--large-seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-n", type=int, default=2048)
    p.add_argument("--out", default="out/bench_lm_hooks.json")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    peak = matmul_peak(args.peak_n, args.repeats)
    print(f"float32 matmul peak ({args.peak_n}^2, jit): {peak / 1e9:.1f} GFLOP/s")
    cfg = TransformerConfig(vocab_size=args.vocab, n_ctx=args.seq, d_model=args.d_model,
                            n_layers=args.layers, n_heads=args.heads)
    default = bench_model(cfg, args.batch, args.seq, args.repeats, peak)
    large_cfg = TransformerConfig(vocab_size=args.large_vocab, n_ctx=args.large_seq,
                                  d_model=args.large_d_model, n_layers=args.large_layers,
                                  n_heads=max(1, args.large_d_model // 64))
    large = bench_model(large_cfg, args.large_batch, args.large_seq, max(2, args.repeats // 2),
                        peak, arms=False)
    # Re-measure the peak at the end: the machine is shared, so report both.
    peak_end = matmul_peak(args.peak_n, args.repeats)

    print(f"\nmodel d={cfg.d_model} L={cfg.n_layers} V={cfg.vocab_size}, batch {args.batch} x "
          f"seq {args.seq} ({default['model_gflop_per_forward']:.2f} GFLOP/forward)")
    print(f"{'arm':18s} {'ms':>9s} {'tokens/s':>11s} {'overhead':>9s}")
    for name, row in default["arms"].items():
        print(f"{name:18s} {1e3 * row['seconds']:9.1f} {row['tokens_per_s']:11.0f} "
              f"{row['overhead_vs_apply']:8.2f}x")
    for label, res in (("default", default), ("large", large)):
        a = res["arms"]["apply"]
        c = res["config"]
        print(f"MFU {label:8s} (d={c['d_model']} L={c['n_layers']} B={c['batch']} "
              f"T={c['seq']}): {a['model_gflops_per_s']:.1f} GFLOP/s = {100 * a['mfu']:.1f}% "
              f"of peak, {a['tokens_per_s']:.0f} tokens/s")
    print(f"peak at end: {peak_end / 1e9:.1f} GFLOP/s")

    out = {"benchmark": "lm_hooks", "peak_gflops_start": peak / 1e9,
           "peak_gflops_end": peak_end / 1e9, "default": default, "large": large,
           "wall_seconds": time.perf_counter() - t0,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "jax": jax.__version__, "backend": jax.default_backend()}}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
