"""The same latent-SCM code, untuned, across settings: one row per departure from the default.

Command::

    python experiments/crl_generalization.py --out out/crl_gen --seeds 3 --steps 10000

Each row is a variant of :class:`jaxcrl.crl.synthetic.SyntheticConfig` with one field
changed (:data:`jaxcrl.crl.synthetic.GENERALIZATION_ROWS`), run by
:func:`jaxcrl.crl.synthetic.run`; it writes ``OUT/<row>/results.json``, and the whole table
goes to ``OUT/generalization.json`` and is printed as Markdown (the table in BENCHMARKS.md).
``--seeds``, ``--steps``, ``--methods`` and ``--set path=value`` change the base setting
of every row (a row's own overrides win: ``--set targets=known`` does not change a row that
sets ``targets=unknown``); ``--row-set path=value`` is applied after the row's overrides,
e.g. ``--row-set targets=known`` fits a row's data with the targets given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

from jaxcrl.config import apply_overrides, parse_config
from jaxcrl.crl.synthetic import GENERALIZATION_ROWS, SyntheticConfig, run, variant
from jaxcrl.results import write_results

METRICS = ("mcc_pearson_oos", "mcc_spearman", "r2", "shd", "shd_svi", "edge_auroc")
PER_LATENT = ("mcc_per_latent", "mcc_per_latent_topo", "class_r2", "class_r2_per_latent",
              "mcc_labelled_per_latent", "targets_right", "strength_per_latent")
ALIASES = {"--seeds": "seeds", "--steps": "crl.steps", "--methods": "methods"}
# The rows' base: the default setting with 3 seeds, 10k steps, the latent-SCM model only.
BASE = SyntheticConfig(seeds=3, methods=("latent_scm",),
                       crl=dataclasses.replace(SyntheticConfig().crl, steps=10_000))


def row_slug(name: str) -> str:
    """The row's directory name under ``--out``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name.replace("=", "")).strip("_")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_gen")
    p.add_argument("--tag", default="", help="suffix of the summary file name")
    p.add_argument("--row-set", action="append", default=[], metavar="PATH=VALUE",
                   help="override applied after each row's own overrides (repeatable)")
    p.add_argument("--rows", default=None,
                   help=f"'|'-separated row names (default: all of {list(GENERALIZATION_ROWS)})")
    p.add_argument("--save", action="store_true",
                   help="save each row's fitted runs to OUT/<row>/ckpt_<method> (for "
                        "experiments/crl_graph_rescore.py)")
    args, base = parse_config(p, BASE, argv, aliases=ALIASES)
    names = list(GENERALIZATION_ROWS) if args.rows is None else [
        r for r in args.rows.split("|") if r]
    unknown = set(names) - set(GENERALIZATION_ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {list(GENERALIZATION_ROWS)}")
    try:
        rows = {name: apply_overrides(variant(base, name), args.row_set) for name in names}
    except ValueError as err:
        p.error(str(err))
    table = {}
    for name, cfg in rows.items():
        slug = row_slug(name)
        t = time.perf_counter()
        out = run(cfg, progress=False, save_dir=f"{args.out}/{slug}" if args.save else None)
        write_results(f"{args.out}/{slug}", dataclasses.asdict(cfg), out["methods"])
        table[name] = {m: {k: v[k] for k in (*METRICS, *PER_LATENT, "wall_s") if k in v}
                       for m, v in out["methods"].items()}
        print(f"{name}: {time.perf_counter() - t:.0f}s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"generalization{args.tag}.json").write_text(json.dumps(
        {"setup": {"base": dataclasses.asdict(base), "rows": names}, "rows": table}, indent=2,
        default=str))
    cols = list(METRICS)
    print("| setting | method | " + " | ".join(cols) + " | wall s |")
    print("|---" * (len(cols) + 3) + "|")
    for name, methods in table.items():
        for m, v in methods.items():
            cells = [f"{v[c]['mean']:.3f} ± {v[c]['std']:.3f}" if c in v else "-" for c in cols]
            print(f"| {name} | {m} | " + " | ".join(cells) + f" | {v['wall_s']:.0f} |")
    print("\nPer-latent MCC (|Pearson| after matching; mean over seeds by position in a causal "
          "order of the true DAG, roots first; per seed by true-latent index):")
    for name, methods in table.items():
        for m, v in methods.items():
            if "mcc_per_latent_topo" in v:
                topo = " ".join(f"{c:.2f}" for c in v["mcc_per_latent_topo"]["mean"])
                seeds = "; ".join(" ".join(f"{c:.2f}" for c in row)
                                  for row in v["mcc_per_latent"]["per_seed"])
                print(f"- {name} / {m}: by causal position [{topo}]; per seed [{seeds}]")
            if "strength_per_latent" in v:  # the fit's own estimate: no ground truth
                own = "; ".join(" ".join(f"{c:.2f}" for c in row)
                                for row in v["strength_per_latent"]["per_seed"])
                print(f"  the fit's own intervention strength per learned latent (nats; under "
                      f"1 the data barely intervene on it), per seed [{own}]")
            if "class_r2_per_latent" in v:  # soft interventions: inside the shear class?
                cls = "; ".join(" ".join(f"{c:.3f}" for c in row)
                                for row in v["class_r2_per_latent"]["per_seed"])
                lab = "; ".join(" ".join(f"{c:.2f}" for c in row)
                                for row in v["mcc_labelled_per_latent"]["per_seed"])
                print(f"  R² inside the soft shear class (jaxcrl.crl.equivalence), per seed "
                      f"[{cls}]; |corr| with the same-index true latent [{lab}]")


if __name__ == "__main__":
    main()
