"""The same latent-SCM code, untuned, across settings: one row per departure from the default.

Command::

    python experiments/crl_generalization.py --out out/crl_gen --seeds 3 --steps 10000

Each row runs ``experiments/crl_synthetic.py``'s pipeline (its ``run``) with one flag changed
from the default setup, writes ``OUT/<row>/results.json``, and the whole table goes to
``OUT/generalization.json`` and is printed as Markdown (the table in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import crl_synthetic  # noqa: E402

from jaxcrl.results import write_results  # noqa: E402

ROWS = {
    "default": [],
    "d=3": ["--latent-dim", "3"],
    "d=8": ["--latent-dim", "8"],
    "2 mixing layers": ["--mixing-layers", "2"],
    "5 mixing layers": ["--mixing-layers", "5"],
    "nonlinear SCM": ["--scm", "nonlinear"],
    "soft interventions": ["--intervention", "soft"],
    "unknown targets": ["--targets", "unknown"],
    "D=20 injective mixing": ["--obs-dim", "20"],
}
METRICS = ("mcc_pearson_oos", "mcc_spearman", "r2", "shd", "shd_svi", "edge_auroc")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_gen")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--methods", default="latent_scm")
    p.add_argument("--tag", default="", help="suffix of the summary file name")
    p.add_argument("--rows", default=None,
                   help=f"'|'-separated row names (default: all of {list(ROWS)})")
    args = p.parse_args(argv)
    table = {}
    names = list(ROWS) if args.rows is None else [r for r in args.rows.split("|") if r]
    unknown = set(names) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")
    for name in names:
        slug = name.replace(" ", "_").replace("=", "")
        argv_row = [*ROWS[name], "--seeds", str(args.seeds), "--steps", str(args.steps),
                    "--methods", args.methods, "--no-progress", "--out",
                    f"{args.out}/{slug}"]
        t = time.perf_counter()
        row_args = crl_synthetic.parse_args(argv_row)
        out = crl_synthetic.run(row_args)
        write_results(row_args.out, vars(row_args), out["methods"])
        table[name] = {m: {k: v[k] for k in (*METRICS, "wall_s") if k in v}
                       for m, v in out["methods"].items()}
        print(f"{name}: {time.perf_counter() - t:.0f}s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"generalization{args.tag}.json").write_text(json.dumps(
        {"setup": vars(args), "rows": table}, indent=2, default=str))
    cols = [c for c in METRICS]
    print("| setting | method | " + " | ".join(cols) + " | wall s |")
    print("|---" * (len(cols) + 3) + "|")
    for name, methods in table.items():
        for m, v in methods.items():
            cells = [f"{v[c]['mean']:.3f} ± {v[c]['std']:.3f}" if c in v else "-" for c in cols]
            print(f"| {name} | {m} | " + " | ".join(cells) + f" | {v['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
