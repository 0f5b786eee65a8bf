"""Soft-intervention fits by kind of node: is each latent inside the shear class the soft
likelihood cannot resolve (:mod:`jaxcrl.crl.equivalence`), and how close to its own true
latent? (issue 13)

    python experiments/crl_soft_classes.py experiments/results/crl_gen_v3_soft.json \
        experiments/results/crl_gen_v3_soft_l1.json --out out/crl_soft_classes.json

Reads summary files of ``experiments/crl_generalization.py`` (rows with soft interventions,
fitted with known targets, so learned latent ``j`` is true latent ``j``), rebuilds each row's
true graphs from its configuration and root seed (no data are simulated, nothing is
refitted) and groups the latents by their number of true parents: roots (a shear by any
non-descendant keeps the likelihood), single-parent nodes (by the parent), two or more
parents (identified). Per group: the count, the mean R² inside the class, the mean |corr|
with the same-index true latent, and how many of each are >= 0.9.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import jax
import numpy as np

from jaxcrl.crl.synthetic import variant
from jaxcrl.scm import dataset_scm

_spec = importlib.util.spec_from_file_location(
    "crl_generalization", Path(__file__).with_name("crl_generalization.py"))
_gen = importlib.util.module_from_spec(_spec)
sys.modules["crl_generalization"] = _gen
_spec.loader.exec_module(_gen)

GROUPS = ("root", "single parent", "two or more parents")


def true_graphs(setup_base: dict, row: str) -> np.ndarray:
    """[S, d, d] true DAGs of ``row`` at the summary's base seed and seed count."""
    base = dataclasses.replace(_gen.BASE, seed=int(setup_base["seed"]),
                               seeds=int(setup_base["seeds"]))
    cfg = variant(base, row)
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.seeds)
    return np.asarray(jax.vmap(lambda k: dataset_scm(k, cfg.data).adj)(keys))


def by_group(adj: np.ndarray, class_r2, labelled) -> dict:
    cr, lab = np.asarray(class_r2), np.asarray(labelled)
    n_pa = adj.sum(1)  # [S, d] parents of each node
    kind = np.where(n_pa == 0, 0, np.where(n_pa == 1, 1, 2))
    out = {}
    for g, name in enumerate(GROUPS):
        m = kind == g
        out[name] = {"n": int(m.sum()), "class_r2": float(cr[m].mean()),
                     "class_r2_ge_0.9": int((cr[m] >= 0.9).sum()),
                     "corr": float(lab[m].mean()), "corr_ge_0.9": int((lab[m] >= 0.9).sum())}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("summaries", nargs="+", help="generalization summary JSON files")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    result = {}
    for path in a.summaries:
        summary = json.loads(Path(path).read_text())
        for row, methods in summary["rows"].items():
            m = methods["latent_scm"]
            if "class_r2_per_latent" not in m:
                continue
            adj = true_graphs(summary["setup"]["base"], row)
            groups = by_group(adj, m["class_r2_per_latent"]["per_seed"],
                              m["mcc_labelled_per_latent"]["per_seed"])
            l1 = summary["setup"]["base"]["crl"]["l1"]
            result[f"{Path(path).name}: {row}"] = {"row": row, "l1": l1, "groups": groups}
            print(f"{row} (l1 {l1}, {Path(path).name})")
            for name, g in groups.items():
                print(f"  {name}: n {g['n']}, R² in class {g['class_r2']:.3f} "
                      f"({g['class_r2_ge_0.9']} >= 0.9), |corr| {g['corr']:.3f} "
                      f"({g['corr_ge_0.9']} >= 0.9)")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
