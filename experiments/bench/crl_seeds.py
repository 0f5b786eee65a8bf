"""Benchmark: S seeds trained by vmap in one program vs S sequential single-seed fits.

Command::

    python experiments/bench/crl_seeds.py --out out/bench_crl_seeds.json

Same data (d=5 default setup, 10k samples/env), same config and keys in both arms; both
arms include compilation (a user running seeds one after another pays it each time, since
each ``fit`` builds its program). Writes JSON with wall times and the ratio
``vmapped_S / sequential_S`` per S, plus the ratio to one seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax

from jaxcrl.crl import CRLConfig, fit
from jaxcrl.scm import DatasetConfig, MixingConfig, SCMConfig, make_dataset


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="1,4,10")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--samples-per-env", type=int, default=10000)
    p.add_argument("--out", default="out/bench_crl_seeds.json")
    args = p.parse_args(argv)
    data_cfg = DatasetConfig(scm=SCMConfig(latent_dim=5), mixing=MixingConfig(n_layers=3),
                             n_per_env=args.samples_per_env)
    ds = make_dataset(jax.random.key(0), data_cfg)
    cfg = CRLConfig(latent_dim=5, n_envs=6, steps=args.steps, restarts=1)
    rows = []
    for s in [int(v) for v in args.seeds.split(",")]:
        keys = jax.random.split(jax.random.key(1), s)
        t = time.perf_counter()
        r = fit(cfg, ds.x, ds.env, targets=ds.targets, key=keys, progress=False)
        jax.block_until_ready(r.params)
        vmapped = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(s):
            r1 = fit(cfg, ds.x, ds.env, targets=ds.targets, key=keys[i:i + 1], progress=False)
            jax.block_until_ready(r1.params)
        sequential = time.perf_counter() - t
        rows.append({"seeds": s, "vmapped_s": vmapped, "sequential_s": sequential,
                     "speedup": sequential / vmapped})
        print(f"S={s:3d}  vmapped {vmapped:7.1f}s  sequential {sequential:7.1f}s  "
              f"speedup {sequential / vmapped:5.2f}x")
    one = rows[0]["vmapped_s"]
    for row in rows:
        row["vmapped_over_one_seed"] = row["vmapped_s"] / one
    out = {"benchmark": "crl_seeds", "steps": args.steps, "config": str(cfg),
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "jax": jax.__version__, "backend": jax.default_backend()},
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
