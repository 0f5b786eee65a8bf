"""Latent-sharded SAE memory and collectives on 8 simulated CPU devices.

    python experiments/bench/sharding.py --out out/bench_sharding.json

Per-device bytes of SAE params + Adam state at d_in 768, d_sae 24,576 (the GPT-2-small
shape) for 1, 2, 4, 8 latent shards (``jaxcrl.sae.sharded``), and the collectives in the HLO
of one compiled training step at each mesh shape. The script re-executes itself with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` when fewer than 8 devices are visible.
Step time on simulated devices is not a speed measure (they share the same cores) and is
not reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/bench_sharding.json")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args(argv)

    import jax

    if len(jax.devices()) < 8 and os.environ.get("_JAXCRL_BENCH_CHILD") != "1":
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
                   JAX_PLATFORMS="cpu", _JAXCRL_BENCH_CHILD="1")
        subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:])], env=env,
                       check=True)
        return json.loads(Path(a.out).read_text())

    import jax.numpy as jnp
    import optax

    from jaxcrl.sae import sharded
    from jaxcrl.train.mesh import MeshConfig, make_mesh, per_device_bytes

    opt = optax.adam(1e-4)
    res = {"d_in": a.d_in, "d_sae": a.d_sae, "k": a.k, "batch": a.batch,
           "devices": len(jax.devices()), "shards": {}}
    for m in (1, 2, 4, 8):
        mesh = make_mesh(MeshConfig(data=8 // m, model=m))
        k = jax.random.split(jax.random.key(0), 2)
        params = sharded.shard_params(mesh, {
            "W_enc": jax.random.normal(k[0], (a.d_in, a.d_sae)) * 0.01,
            "b_enc": jnp.zeros(a.d_sae),
            "W_dec": jax.random.normal(k[1], (a.d_sae, a.d_in)) * 0.01,
            "b_dec": jnp.zeros(a.d_in)})
        opt_state = opt.init(params)
        per_dev = per_device_bytes({"params": params, "opt": opt_state})
        x = jax.random.normal(jax.random.key(1), (a.batch, a.d_in))
        step = sharded.make_train_step(mesh, a.k, opt)
        hlo = step.lower(params, opt_state, x).compile().as_text()
        coll = {c: hlo.count(c + "(") + hlo.count(c + "-start(")
                for c in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                          "collective-permute")}
        res["shards"][m] = {"mesh": {"data": 8 // m, "model": m},
                            "max_bytes_per_device": max(per_dev.values()),
                            "gib_per_device": max(per_dev.values()) / 2**30,
                            "collectives_per_step": coll}
        print(f"{m} latent shard(s) (data {8 // m}): "
              f"{max(per_dev.values()) / 2**30:.3f} GiB per device, collectives {coll}")
    base = res["shards"][1]["max_bytes_per_device"]
    for r in res["shards"].values():
        r["fraction_of_one_shard"] = r["max_bytes_per_device"] / base
    res["trainer"] = trainer_steps(a)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    return res


def trainer_steps(a) -> dict:
    """The step of ``sae.train(..., mesh=)`` itself (GSPMD: the state placed by
    ``place_sae_state``, the batch constrained over "data"; the dense TopK/BatchTopK of the
    architecture registry): per-device bytes and the collectives in its compiled HLO (static
    count: one inside the bitwise k-th-largest loop runs once per pass)."""
    import jax

    from jaxcrl import sae
    from jaxcrl.sae import training as tr
    from jaxcrl.train.mesh import MeshConfig, make_mesh, per_device_bytes

    x = jax.random.normal(jax.random.key(0), (4 * a.batch, a.d_in))
    src = sae.array_source(x, a.batch)
    out = {}
    for arch in ("topk", "batchtopk"):
        for m in (1, 2, 4, 8):
            mesh = make_mesh(MeshConfig(data=8 // m, model=m))
            cfg = sae.SAEConfig(architecture=arch, d_in=a.d_in, d_sae=a.d_sae, k=a.k,
                                batch_size=a.batch, steps=10)
            st = tr.place_sae_state(mesh, tr.init_state(jax.random.key(1), cfg, x,
                                                        tr.hparams(cfg)), a.d_sae)
            step = tr.make_step(cfg, src, mesh=mesh)
            hlo = jax.jit(step).lower((src.init(None), st), jax.random.key(2)).compile(
                ).as_text()
            coll = {c: hlo.count(c + "(") + hlo.count(c + "-start(")
                    for c in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                              "collective-permute")}
            per_dev = per_device_bytes(st)
            out[f"{arch}/{m}"] = {"architecture": arch, "mesh": {"data": 8 // m, "model": m},
                                  "gib_per_device": max(per_dev.values()) / 2**30,
                                  "collectives_in_hlo": coll}
            print(f"sae.train step, {arch}, {m} latent shard(s): "
                  f"{max(per_dev.values()) / 2**30:.3f} GiB per device, collectives {coll}")
    return out


if __name__ == "__main__":
    main()
