"""Transcoders and CLTs on a known MLP: do they recover its features (MMCS)?

    python experiments/transcoders_toy.py --out out/transcoders_toy --seeds 3

A known MLP per layer (:func:`jaxcrl.sae.clt.make_toy_clt`): 24 sparse features (about 2
active, the correlated firing of :class:`jaxcrl.sae.ToyConfig`) read by 24 neurons
``h = ReLU(x·e_i − θ)`` from a 32-dimensional input, each writing a fixed direction to its
own layer's output and (CLT) every later layer's. TopK dictionaries with 48 features per
layer, k 3, 300 steps of 256 rows, lr 1e-2 (the settings of
``tests/test_sae_clt.py::test_transcoder_and_clt_recover_known_mlp_features``), for a
transcoder (1 layer) and a 2-layer CLT, at neuron thresholds 0.3 and 0.1, one seed per
``--seeds``. Writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from jaxcrl import sae
from jaxcrl.results import write_results
from jaxcrl.sae import clt


def run_one(layers: int, threshold: float, seed: int) -> dict:
    n = 24
    toy_sae = sae.make_toy(jax.random.key(100 * seed), sae.ToyConfig(
        n_features=n, dim=32, avg_active=2, corr_rank=4))
    cfg = sae.CLTConfig(d_in=32, d_out=32, d_sae=48, k=3, n_layers=layers, steps=300,
                        batch_size=256, lr=1e-2, warmup=10, dead_tokens=2000)
    toy = clt.make_toy_clt(jax.random.key(100 * seed + 1), cfg, n, threshold=threshold)
    gen = clt.toy_clt_generator(toy, toy_sae, cfg, 256)
    r = sae.train(cfg, sae.generator_source(gen, cfg.source_width, 256),
                  jax.random.key(100 * seed + 2), progress=False)
    m = clt.evaluate(r.params(), gen(jax.random.key(100 * seed + 9)), cfg)
    return {"mmcs": clt.mmcs_layers(r.params()["W_dec"], toy.dec, cfg),
            "fvu": float(m["fvu"]), "l0": float(m["l0"])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/transcoders_toy")
    p.add_argument("--seeds", type=int, default=3)
    a = p.parse_args(argv)
    rows = {}
    for name, layers in (("transcoder", 1), ("clt", 2)):
        for threshold in (0.3, 0.1):
            runs = [run_one(layers, threshold, s) for s in range(a.seeds)]
            mm = np.asarray([r["mmcs"] for r in runs])  # [seeds, layers]
            rows[f"{name}/{threshold}"] = {
                "dictionary": name, "threshold": threshold, "seeds": a.seeds,
                "mmcs_mean": mm.mean(0).tolist(), "mmcs_min": mm.min(0).tolist(),
                "fvu_mean": float(np.mean([r["fvu"] for r in runs])),
                "l0_mean": float(np.mean([r["l0"] for r in runs])), "runs": runs}
            print(f"{name:10s} threshold {threshold}: MMCS per layer mean "
                  f"{np.round(mm.mean(0), 3).tolist()} min {np.round(mm.min(0), 3).tolist()}"
                  f", FVU {rows[f'{name}/{threshold}']['fvu_mean']:.3f}", flush=True)
    write_results(Path(a.out), {"experiment": "transcoders_toy", "seeds": a.seeds}, rows)
    return rows


if __name__ == "__main__":
    main()
