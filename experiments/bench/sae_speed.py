"""Benchmark: TopK SAE training speed, jaxcrl vs SAELens in the same run, and a vmapped sweep.

Command (the BENCHMARKS.md figures)::

    python experiments/bench/sae_speed.py --steps 2 --repeats 2 --sweep-steps 2 \
        --out experiments/results/bench_sae_speed.json

Measures, in one run on the same machine, each timing in a fresh subprocess (so peak
memory is per library and shape):

1. the float32 matmul peak (jit-ed 2048x2048 @ 2048x2048), before and after;
2. for each shape in ``--shapes`` (default d_in 512 / d_sae 4096 and the GPT-2-small
   shape d_in 768 / d_sae 24,576; batch 4096, k 32):

   - jaxcrl: the jit-ed ``lax.scan`` chunk of :func:`jaxcrl.sae.make_step` (the step
     ``sae.train`` runs: batch drawn from an in-memory array, forward, AuxK, backward,
     decoder projection, gradient clipping at 1.0 as SAELens' trainer does, Adam), with
     ``decoder="auto"`` (sparse at these shapes) and ``decoder="dense"``;
   - SAELens (``sae_lens`` ``TopKTrainingSAE``, its defaults): what its trainer's
     ``_train_step`` does per step: ``training_forward_pass`` (AuxK included), firing
     statistics, ``backward``, ``clip_grad_norm_(1.0)``, ``torch.optim.Adam.step``,
     ``zero_grad``; on a batch indexed from an in-memory tensor of the same data;

   each in three AuxK regimes: ``idle`` (no dead latent: both libraries skip the AuxK
   computation, the usual state after warm-up), ``few`` (every 20th latent held dead at
   every step) and ``active`` (every other latent held dead), so both compute AuxK with
   ``aux_k = d_in / 2``. Reported:
   seconds per step (best of ``--repeats`` chunks of ``--steps`` steps, after
   compilation / warm-up), tokens/s (= batch / s per step), peak resident memory of the
   subprocess (and its resident memory before the first step), and for jaxcrl XLA's
   temporary-buffer size of the compiled chunk;
3. S=4 SAEs (k = 16, 24, 32, 48) as one vmapped program vs 4 sequential programs at the
   first shape (``--sweep-ks ''`` skips it).

``--architecture jumprelu`` times JumpReLU instead (jaxcrl's sparse path vs its dense one
vs SAELens' ``JumpReLUTrainingSAE``, L0 penalty with the step STE, bandwidth 1e-3): both
start from unit-norm decoder rows (encoder = decoder transposed) and one threshold for all
latents, ``t`` with ``P(N(0, 1) > t) = k / d_sae``, so about ``k`` latents fire per example
on the standard-normal data; AuxK off on both (SAELens' JumpReLU has none), so only the
``idle`` regime applies::

    python experiments/bench/sae_speed.py --architecture jumprelu --auxk-regimes idle \
        --sweep-ks '' --steps 2 --repeats 2 --out experiments/results/bench_sae_speed_jumprelu.json

Expected on the shared 2-CPU machine: see BENCHMARKS.md "Training speed".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxcrl import sae
from jaxcrl.sae import training

SHAPES = "512x4096,768x24576"


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` float32 GFLOP/s of a jit-ed ``n x n`` matmul."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _rss_mb() -> float:
    """Current resident memory of this process in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data(rows: int, d: int):
    return jax.random.normal(jax.random.key(2), (rows, d))


#: Latents held dead at every step in each AuxK regime: every n-th one (``idle``: none).
DEAD_EVERY = {"active": 2, "few": 20}


def _dead_mask(d_sae: int, regime: str):
    """Latents held dead in an AuxK regime (None for ``idle``)."""
    if regime not in DEAD_EVERY:
        return None
    return jnp.arange(d_sae) % DEAD_EVERY[regime] == 0


def _chunk(step, n_steps, hold_dead=None, dead_tokens=0):
    """Jit-ed scan of ``n_steps`` steps; ``hold_dead`` ``[d_sae]`` keeps those latents dead."""
    def run(carry, key):
        def body(c, t):
            if hold_dead is not None:
                src, st = c
                since = jnp.where(hold_dead, dead_tokens, 0).astype(jnp.int32)
                c = (src, st._replace(since_fired=since))
            return step(c, jax.random.fold_in(key, t))

        return jax.lax.scan(body, carry, jnp.arange(n_steps))

    return jax.jit(run, donate_argnums=0)


def _init(cfgs, source, key, sweep):
    """The state ``sae.train`` builds (same keys), without running it."""
    k_src, k_sample, k_params, _ = jax.random.split(key, 4)
    src = source.init(k_src)
    x0 = training._init_sample(source, src, k_sample, 4096)
    cfg = training._check_cfgs(cfgs)
    if sweep:
        hp = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[training.hparams(c) for c in cfgs])
        state = jax.vmap(lambda h: training.init_state(k_params, cfg, x0, h))(hp)
    else:
        state = training.init_state(k_params, cfg, x0)
    return cfg, (src, state)


def time_training(cfgs, source, key, steps, sweep, repeats=2, hold_dead=None):
    """(s/step after compilation, s including compilation, XLA temp bytes of the chunk,
    mean L0 of the last step)."""
    t0 = time.perf_counter()
    cfg, carry = _init(cfgs, source, key, sweep)
    carry = jax.tree_util.tree_map(jnp.copy, carry)  # the chunk donates its input
    chunk = _chunk(training.make_step(cfg, source, sweep=sweep), steps, hold_dead,
                   cfg.dead_tokens)
    compiled = chunk.lower(carry, key).compile()
    mem = compiled.memory_analysis()
    temp = None if mem is None else int(mem.temp_size_in_bytes)
    carry, m = compiled(carry, key)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    best = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        carry, m = compiled(carry, jax.random.fold_in(key, r + 1))
        jax.block_until_ready(m)
        best = min(best, time.perf_counter() - t)
    if hold_dead is not None:
        assert float(m["aux_loss"].min()) > 0, "AuxK was not computed"
    return best / steps, first, temp, float(jnp.mean(m["l0"][-1]))


# --------------------------------------------------------------------------- workers


def jumprelu_threshold(k: int, d_sae: int) -> float:
    """One threshold for all latents at which ~``k`` of ``d_sae`` N(0, 1) pre-activations fire."""
    from scipy.stats import norm

    return float(norm.isf(k / d_sae))


def worker_jaxcrl(args) -> dict:
    d, s, b = args.d_in, args.d_sae, args.batch
    source = sae.array_source(_data(args.rows, d), b)
    extra = {}
    if args.architecture == "jumprelu":
        extra = dict(threshold_init=jumprelu_threshold(args.k, s), l0_coefficient=1.0,
                     aux_k=0)
    cfg = sae.SAEConfig(architecture=args.architecture, d_in=d, d_sae=s, k=args.k,
                        batch_size=b, steps=10_000, decoder=args.decoder,
                        compute_dtype=args.compute_dtype,
                        grad_clip=1.0, **extra)  # SAELens' trainer clips at 1.0: same work
    hold = _dead_mask(s, args.auxk)
    rss0 = _rss_mb()
    per_step, first, temp, l0 = time_training([cfg], source, jax.random.key(3), args.steps,
                                          sweep=False, repeats=args.repeats, hold_dead=hold)
    return {"s_per_step": per_step, "compile_and_first_chunk_s": first,
            "xla_temp_mb": None if temp is None else temp / 2**20,
            "rss_before_mb": rss0, "peak_rss_mb": _peak_rss_mb(), "l0_last_step": l0,
            "sparse": sae.sparse.use_sparse(cfg)}


def worker_saelens(args) -> dict:
    import numpy as np
    import torch
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d, s, b = args.d_in, args.d_sae, args.batch
    torch.manual_seed(0)
    data = torch.from_numpy(np.asarray(_data(args.rows, d)))
    coefficients = {}
    if args.architecture == "jumprelu":
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

        model = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            d_in=d, d_sae=s, jumprelu_init_threshold=jumprelu_threshold(args.k, s),
            jumprelu_bandwidth=1e-3, l0_coefficient=1.0, decoder_init_norm=1.0,
            dtype="float32", device="cpu"))
        coefficients = {"l0": 1.0}
    else:
        model = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=s, k=args.k,
                                                      dtype="float32", device="cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.9, 0.999))
    hold = _dead_mask(s, args.auxk)
    dead = (torch.zeros(s, dtype=torch.bool) if hold is None
            else torch.from_numpy(np.asarray(hold)))
    since_fired = torch.zeros(s)
    gen = torch.Generator().manual_seed(1)
    n_step = [0]

    def step():
        x = data[torch.randint(0, data.shape[0], (b,), generator=gen)]
        out = model.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients=coefficients, dead_neuron_mask=dead, n_training_steps=n_step[0],
            is_logging_step=False))
        with torch.no_grad():  # the trainer's firing statistics
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        n_step[0] += 1
        return out

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    out = step()  # warm-up (allocations, Adam state)
    first = time.perf_counter() - t0
    if hold is not None:
        assert float(out.losses["auxiliary_reconstruction_loss"]) > 0, "AuxK was not computed"
    best = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        best = min(best, time.perf_counter() - t)
    l0 = float(out.feature_acts.bool().float().sum(-1).mean())
    return {"s_per_step": best / args.steps, "first_step_s": first, "rss_before_mb": rss0,
            "peak_rss_mb": _peak_rss_mb(), "l0_last_step": l0, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def _run_worker(args, lib: str, d: int, s: int, **kw) -> dict:
    cmd = [sys.executable, __file__, "--worker", lib, "--d-in", str(d), "--d-sae", str(s),
           "--batch", str(args.batch), "--k", str(args.k), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--rows", str(args.rows),
           "--architecture", args.architecture]
    for name, value in kw.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if out.returncode != 0:
        raise RuntimeError(f"worker {lib} {d}x{s} {kw} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["tokens_per_s"] = args.batch / res["s_per_step"]
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=SHAPES, help="comma-separated d_in x d_sae")
    p.add_argument("--d-in", type=int, default=512, help="(worker)")
    p.add_argument("--d-sae", type=int, default=4096, help="(worker)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="steps per timed chunk")
    p.add_argument("--repeats", type=int, default=3, help="timed chunks (best is kept)")
    p.add_argument("--auxk-regimes", default="idle,few,active",
                   help="idle: no dead latent; few: 5%% held dead; active: 50%% held dead")
    p.add_argument("--jax-decoders", default="auto,dense")
    p.add_argument("--compute-dtype", default="float32")
    p.add_argument("--no-saelens", action="store_true")
    p.add_argument("--sweep-ks", default="16,24,32,48")
    p.add_argument("--sweep-steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=32768, help="rows of the in-memory data")
    p.add_argument("--architecture", default="topk", choices=["topk", "jumprelu"])
    p.add_argument("--out", default="out/bench_sae_speed.json")
    p.add_argument("--worker", choices=["jaxcrl", "saelens"], help=argparse.SUPPRESS)
    p.add_argument("--decoder", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--auxk", default="idle", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        fn = worker_jaxcrl if args.worker == "jaxcrl" else worker_saelens
        print(json.dumps(fn(args)))
        return

    peak = matmul_peak()
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")]
    regimes = args.auxk_regimes.split(",")
    results = []
    for d, s in shapes:
        for auxk in regimes:
            row = {"d_in": d, "d_sae": s, "batch": args.batch, "k": args.k, "auxk": auxk}
            for dec in args.jax_decoders.split(","):
                row[f"jaxcrl_{dec}"] = _run_worker(args, "jaxcrl", d, s, decoder=dec, auxk=auxk,
                                                   compute_dtype=args.compute_dtype)
            if not args.no_saelens:
                row["saelens"] = _run_worker(args, "saelens", d, s, auxk=auxk)
            line = f"d_in {d} d_sae {s} AuxK {auxk}:"
            for name, r in row.items():
                if isinstance(r, dict):
                    line += (f" {name} {r['s_per_step']:.3f} s/step {r['tokens_per_s']:,.0f} tok/s"
                             f" peak {r['peak_rss_mb']:,.0f} MB;")
            if "saelens" in row:
                for name in list(row):
                    if name.startswith("jaxcrl_"):
                        row[f"speedup_{name}_vs_saelens"] = (row[name]["tokens_per_s"]
                                                             / row["saelens"]["tokens_per_s"])
                        line += f" {name}/saelens {row[f'speedup_{name}_vs_saelens']:.2f}x"
            print(line, flush=True)
            results.append(row)

    sweep = None
    if args.sweep_ks:
        d, s = shapes[0]
        ks = [int(v) for v in args.sweep_ks.split(",")]
        source = sae.array_source(_data(args.rows, d), args.batch)
        cfg = sae.SAEConfig(architecture="topk", d_in=d, d_sae=s, k=args.k,
                            batch_size=args.batch, steps=10_000)
        cfgs = [dataclasses.replace(cfg, k=k) for k in ks]
        key = jax.random.key(3)
        t = time.perf_counter()
        vm_step, _, _, _ = time_training(cfgs, source, key, args.sweep_steps, sweep=True,
                                      repeats=args.repeats)
        vm_total = time.perf_counter() - t
        seq_step, seq_total = 0.0, 0.0
        for c in cfgs:
            t = time.perf_counter()
            st, _, _, _ = time_training([c], source, key, args.sweep_steps, sweep=False,
                                     repeats=args.repeats)
            seq_total += time.perf_counter() - t
            seq_step += st
        print(f"sweep of {len(ks)} (k={ks}) at {d}x{s}: vmapped {vm_step:.3f} s/step vs "
              f"sequential {seq_step:.3f} s/step -> {seq_step / vm_step:.2f}x; with "
              f"compilation {vm_total:.1f} s vs {seq_total:.1f} s", flush=True)
        sweep = {"S": len(ks), "ks": ks, "d_in": d, "d_sae": s,
                 "vmapped_s_per_step": vm_step, "sequential_s_per_step": seq_step,
                 "speedup": seq_step / vm_step, "vmapped_total_s_with_compile": vm_total,
                 "sequential_total_s_with_compile": seq_total}

    peak_after = matmul_peak()
    print(f"matmul peak after: {peak_after:.1f} GFLOP/s", flush=True)
    out = {
        "benchmark": "sae_speed",
        "setup": {"architecture": args.architecture, "batch": args.batch, "k": args.k,
                  "steps_per_chunk": args.steps, "repeats": args.repeats,
                  "compute_dtype": args.compute_dtype, "rows": args.rows,
                  "auxk_regimes": {"idle": "no dead latent", "few": "every 20th latent held dead",
                                   "active": "every other latent held dead"},
                  "saelens_step": "training_forward_pass, firing stats, backward, "
                                  "clip_grad_norm_(1.0), Adam.step, zero_grad"},
        "matmul_peak_gflops_before_after": [peak, peak_after],
        "results": results,
        "sweep": sweep,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "device": str(jax.devices()[0]),
                    "loadavg_at_end": os.getloadavg()},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
