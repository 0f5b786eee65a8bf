"""Benchmark: the cost of caching activations, in memory and on disk.

Command::

    python experiments/bench/lm_cache.py --out out/bench_lm_cache.json

Two parts, on one random GPT-2-shaped model (``--d-model``, ``--layers``, ``--vocab``):

1. **In-memory cache of one layer.** Same params and tokens, each arm compiled once before
   timing, best of ``--repeats``: plain ``apply``; ``run_with_cache`` of every hook of
   block ``--layer`` (resid_pre/mid/post, attention pattern, attn_out, mlp.hook_post,
   mlp_out); the same with ``stop_at_layer`` (what an activation cache runs); and one hook
   with ``stop_at_layer``. Overhead = time / time(apply).
2. **Disk cache** (:func:`jaxcrl.sae.cache.cache_activations`) of the ``[B, T, d]`` hooks of
   that layer over ``--seqs`` sequences: wall time and MB/s written, against the forward
   passes alone (same batches, same ``stop_at_layer``) so the I/O share is visible; then
   reading back: a sequential pass over one hook (``ActivationCache.read``) and the random
   subset across shards that :func:`jaxcrl.sae.cache.cache_source` gathers
   (``--subset`` of the rows), in MB/s. Reads hit the page cache the write just filled:
   they are upper bounds for cold disks.

Expected runtime on 2 CPU cores: about a minute. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxcrl.lm import HookedTransformer, TransformerConfig
from jaxcrl.sae.cache import cache_activations, cache_source


def best_times(fns: dict, repeats: int) -> dict:
    """Best wall time of each ``fn()`` over ``repeats`` rounds (after one compiling call);
    rounds visit the arms in turn so load from other processes hits all arms alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def layer_hooks(layer: int, *, rows_only: bool = False) -> list[str]:
    b = f"blocks.{layer}"
    names = [f"{b}.hook_resid_pre", f"{b}.attn.hook_pattern", f"{b}.hook_attn_out",
             f"{b}.hook_resid_mid", f"{b}.mlp.hook_post", f"{b}.hook_mlp_out",
             f"{b}.hook_resid_post"]
    return [n for n in names if not (rows_only and "pattern" in n)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layer", type=int, default=1)
    p.add_argument("--seqs", type=int, default=256, help="sequences cached to disk")
    p.add_argument("--seqs-per-shard", type=int, default=64)
    p.add_argument("--subset", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", default=None, help="where to write the disk cache (a temp dir)")
    p.add_argument("--out", default="out/bench_lm_cache.json")
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    cfg = TransformerConfig(vocab_size=args.vocab, n_ctx=args.seq, d_model=args.d_model,
                            n_layers=args.layers, n_heads=args.heads)
    if not 0 <= args.layer < cfg.n_layers:
        raise ValueError(f"--layer must be in [0, {cfg.n_layers}), got {args.layer}")
    model = HookedTransformer(cfg)
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq), 0, args.vocab)
    hooks = layer_hooks(args.layer)
    stop = args.layer + 1
    one = f"blocks.{args.layer}.hook_resid_post"
    arms = best_times({
        "apply": lambda: model.apply(params, tokens),
        "cache_layer": lambda: model.run_with_cache(params, tokens, names=hooks),
        "cache_layer_stop": lambda: model.run_with_cache(params, tokens, names=hooks,
                                                         stop_at_layer=stop),
        "cache_one_stop": lambda: model.run_with_cache(params, tokens, names=[one],
                                                       stop_at_layer=stop),
    }, args.repeats)
    memory = {n: {"seconds": s, "tokens_per_s": args.batch * args.seq / s,
                  "overhead_vs_apply": s / arms["apply"]} for n, s in arms.items()}

    # disk: write, then read back
    all_tokens = np.asarray(jax.random.randint(jax.random.key(2), (args.seqs, args.seq), 0,
                                               args.vocab), np.int32)
    row_hooks = layer_hooks(args.layer, rows_only=True)
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="jaxcrl_bench_"))
    target = tmp / "acts"
    if target.exists():
        shutil.rmtree(target)

    def forwards():
        for i in range(0, args.seqs, args.batch):
            _, c = model.run_with_cache(params, all_tokens[i:i + args.batch], names=row_hooks,
                                        stop_at_layer=stop)
            jax.device_get(c)

    forwards()  # compile
    t = time.perf_counter()
    forwards()
    fwd_s = time.perf_counter() - t
    t = time.perf_counter()
    cache = cache_activations(model, params, all_tokens, row_hooks, target,
                              seqs_per_shard=args.seqs_per_shard, batch_size=args.batch,
                              progress=False)
    write_s = time.perf_counter() - t
    nbytes = sum(cache.n_rows(h) * cache.d(h) * 4 for h in row_hooks)
    t = time.perf_counter()
    cache_activations(model, params, all_tokens, row_hooks, target,
                      seqs_per_shard=args.seqs_per_shard, batch_size=args.batch,
                      progress=False)
    resume_s = time.perf_counter() - t
    h = row_hooks[-1]
    hook_bytes = cache.n_rows(h) * cache.d(h) * 4
    t = time.perf_counter()
    full = cache.read(h)
    seq_s = time.perf_counter() - t
    m = int(args.subset * cache.n_rows(h))
    src = cache_source(cache, h, 256, max_rows=m)
    jax.block_until_ready(src.init(jax.random.key(4)))  # compiles the key -> seed op
    t = time.perf_counter()
    jax.block_until_ready(src.init(jax.random.key(3)))
    subset_s = time.perf_counter() - t
    assert full.shape == (cache.n_rows(h), cache.d(h))
    disk = {"hooks": row_hooks, "seqs": args.seqs, "rows_per_hook": cache.n_rows(h),
            "bytes_written": nbytes, "shards_per_hook": cache.n_shards(h),
            "forward_only_s": fwd_s, "cache_write_s": write_s,
            "write_overhead_vs_forward": write_s / fwd_s,
            "write_mb_per_s": nbytes / write_s / 1e6,
            "tokens_per_s_cached": args.seqs * args.seq / write_s,
            "resume_complete_cache_s": resume_s,
            "read_sequential_mb_per_s": hook_bytes / seq_s / 1e6,
            "read_random_subset_rows": m,
            "read_random_subset_mb_per_s": m * cache.d(h) * 4 / subset_s / 1e6}
    if not args.dir:
        shutil.rmtree(tmp)

    print(f"model d={cfg.d_model} L={cfg.n_layers} V={cfg.vocab_size}, batch {args.batch} x "
          f"seq {args.seq}; hooks of block {args.layer}")
    print(f"{'arm':18s} {'ms':>9s} {'tokens/s':>11s} {'overhead':>9s}")
    for name, row in memory.items():
        print(f"{name:18s} {1e3 * row['seconds']:9.1f} {row['tokens_per_s']:11.0f} "
              f"{row['overhead_vs_apply']:8.2f}x")
    print(f"disk: {len(row_hooks)} hooks x {disk['rows_per_hook']} rows = "
          f"{nbytes / 1e6:.1f} MB in {write_s:.2f} s ({disk['write_mb_per_s']:.0f} MB/s; "
          f"forwards alone {fwd_s:.2f} s, {disk['write_overhead_vs_forward']:.2f}x); "
          f"resume of a complete cache {resume_s:.2f} s")
    print(f"read: sequential {disk['read_sequential_mb_per_s']:.0f} MB/s, random "
          f"{args.subset:.0%} subset across shards "
          f"{disk['read_random_subset_mb_per_s']:.0f} MB/s (page cache warm)")
    out = {"benchmark": "lm_cache", "config": {**cfg.__dict__, **vars(args)},
           "memory": memory, "disk": disk, "wall_seconds": time.perf_counter() - t_start,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "jax": jax.__version__, "backend": jax.default_backend()}}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
