"""Memory and time of ``FitResult.intervention_strength`` with and without the scan over
chunks of samples, at the contrastive d = 10, D = 100 row's size.

A short contrastive fit (the row's data: 11 environments x 50k samples, d = 10, D = 100;
its settings, ``--steps`` steps: the estimate's cost does not depend on how well it fits),
then :func:`jaxcrl.crl.svi.strength_per_env` on its encoded latents with ``chunk=8192``
(the default) and with one chunk of all N samples (what the estimate held before the
scan): XLA's own account of each compiled program's temporary buffers
(``memory_analysis().temp_size_in_bytes``) and the wall of a call after compiling.
Command::

    python experiments/bench/crl_strength_chunk.py --out out/bench_crl_strength_chunk.json

Writes JSON: per setting the temporary bytes (MiB) and the wall (s), and the largest
difference between the two settings' estimates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.crl import fit
from jaxcrl.crl.svi import strength_per_env
from jaxcrl.crl.synthetic import SyntheticConfig, simulate, variant

ROW = "contrastive, d=10, D=100, unknown targets"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/bench_crl_strength_chunk.json")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args(argv)
    cfg = variant(dataclasses.replace(SyntheticConfig(), seeds=args.seeds), ROW)
    data = simulate(cfg)
    mcfg = dataclasses.replace(cfg.method_config("contrastive"), steps=args.steps, warmup=1,
                               consensus_runs=0, encoder_freeze=0)
    result = fit(mcfg, data.x, data.env, key=jax.random.key(0), seeds=args.seeds,
                 progress=False)
    n = int(np.shape(data.x)[1])
    out = {"row": ROW, "n_samples": n, "seeds": args.seeds, "latent_dim": cfg.latent_dim,
           "n_envs": mcfg.n_envs, "settings": {}}
    z = result.encode(data.x)
    env = jnp.broadcast_to(jnp.asarray(data.env), z.shape[:2])
    t = jnp.asarray(result.targets(None), jnp.float32)
    prior = result.params["prior"]
    estimates = {}
    for name, chunk in (("chunk 8192", 8192), ("one chunk of all N", n)):
        compiled = strength_per_env.lower(result.cfg, prior, z, env, t, chunk=chunk).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
        jax.block_until_ready(strength_per_env(result.cfg, prior, z, env, t, chunk=chunk))
        t0 = time.perf_counter()
        estimates[name] = np.asarray(jax.block_until_ready(
            strength_per_env(result.cfg, prior, z, env, t, chunk=chunk)))
        wall = time.perf_counter() - t0
        out["settings"][name] = {"chunk": chunk, "wall_s": wall, "temp_mib": temp}
        print(name, out["settings"][name], flush=True)
    a, b = estimates.values()
    out["max_abs_difference_nats"] = float(np.max(np.abs(a - b)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
