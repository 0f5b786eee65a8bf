"""Does a latent's recovery follow the strength of its interventions? Per-latent MCC of
recorded fits against the KL divergence each latent's interventions cause.

Command (685 s on 2 CPU cores; without ``--result`` it reads ``DEFAULT_RESULTS``,
the issue-13 tables' files at the current defaults; ``--result FILE::ROW`` picks a row of
a ``crl_generalization.py`` file, a plain ``FILE`` takes a file with ``methods``)::

    python experiments/crl_intervention_strength.py \\
        --out experiments/results/crl_intervention_strength.json

For every data set of every file, the data are simulated again from the file's own
``setup.data`` (read as ``--set``-style values through the typed config parser, so the file
cannot name anything to import or call; the rebuilt config must equal the recorded one, or
the script stops), and :func:`jaxcrl.scm.strength.dataset_intervention_kl` gives each
latent's *strength*: the symmetric KL ``KL(p_e || p_0) + KL(p_0 || p_e)`` of the latent
distribution, summed over the environments that target the latent. Each latent's recorded
``mcc_per_latent`` (|Pearson| of the matched pair, by true-latent index) is paired with it.

Writes ``--out``: ``records`` (one per latent: file, row, root seed, data set, latent,
strength, forward and reverse KL, in- and out-degree, MCC, row family, and the fit's own
estimate ``fitted_strength`` where the file records ``strength_per_latent`` with labelled
slots) and ``summary``, ``by_family``, ``by_result``: the Spearman correlation of strength
with MCC, the mean MCC of weak (< 1 nat) and other latents, how many of the latents below
``--lost`` (0.8) are weak, per strength bin the number of latents, their mean MCC and the
fraction lost, and (``fitted``) how the fits' own estimate tracks the true strength and
the MCC: a latent it puts under 1 nat is *flagged*.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from scipy import stats

from jaxcrl.config import apply_overrides
from jaxcrl.crl.synthetic import SyntheticConfig, simulate, variant
from jaxcrl.scm.strength import dataset_intervention_kl

BINS = (0.0, 0.3, 1.0, 3.0, float("inf"))
_R = "experiments/results/"
_FLOW2 = ("nonlinear SCM, two perfect interventions per node, flow prior",
          "location-scale SCM, two perfect interventions per node, flow prior")
# The results files of BENCHMARKS' issue-13 tables at the current defaults (every root);
# d = 8 (roots 0-2) and the contrastive row's root 0 re-run with the fits' own strength
# recorded (``crl_d8_strength_seedS.json``, ``crl_contrastive_d10_D100_strength.json``).
DEFAULT_RESULTS = (
    [f"{_R}crl_synthetic_v2{s}.json" for s in ("", *(f"_seed{i}" for i in range(1, 6)))]
    + [f"{_R}crl_gen_v3.json::{row}" for row in (
        "d=3", "2 mixing layers", "5 mixing layers", "unknown targets", "D=20 injective mixing")]
    + [f"{_R}crl_d8_strength_seed{s}.json" for s in range(3)]
    + [f"{_R}crl_contrastive_d10_D100_strength.json"]
    + [f"{_R}crl_contrastive_d10_D100_consensus_avg{s}.json" for s in ("_seed1", "_seed2")]
    + [f"{_R}crl_synthetic_{m}_flow_v3{s}.json" for m in ("ls", "nl")
       for s in ("", "_seed1", "_seed2", "_seed3")]
    + [f"{_R}crl_gen_v3_flow2{s}.json::{row}" for s in ("", "_seed2", "_seed3", "_seed4")
       for row in _FLOW2]
    + [f"{_R}crl_gen_v3_flow2_seed1.json::{_FLOW2[0]}",
       f"{_R}crl_gen_v3_flow2_ls_seed1.json::{_FLOW2[1]}"])


def _flatten(prefix: str, tree: dict) -> list[str]:
    """``{"scm": {"latent_dim": 5}}`` -> ``["<prefix>.scm.latent_dim=5"]`` (JSON values)."""
    out = []
    for name, value in tree.items():
        path = f"{prefix}.{name}"
        out += _flatten(path, value) if isinstance(value, dict) else [
            f"{path}={json.dumps(value)}"]
    return out


def _jsonable(tree):
    return json.loads(json.dumps(tree))


def load_result(spec: str) -> tuple[dict, dict, str, str]:
    """``(setup, method summary, label, row)`` of ``FILE`` or ``FILE::ROW`` (a row's setup
    is the file's ``setup.base``; the row's own changes come from its name)."""
    path, _, row = spec.partition("::")
    r = json.loads(Path(path).read_text())
    if row:
        if row not in r.get("rows", {}):
            raise ValueError(f"{path}: no row {row!r}; rows: {sorted(r.get('rows', {}))}")
        setup, methods = r["setup"]["base"], r["rows"][row]
    else:
        if "methods" not in r:
            raise ValueError(f"{path} is a file of rows; name one as {path}::ROW")
        setup, methods = r["setup"], r["methods"]
    method = next(m for m in ("latent_scm", "contrastive") if m in methods)
    return setup, methods[method], f"{Path(path).name}{'::' + row if row else ''}", row


def rebuild_config(setup: dict, row: str = "") -> SyntheticConfig:
    """The data-generating config of a results file's ``setup`` (typed parsing only), with
    the generalization row ``row``'s changes (:func:`jaxcrl.crl.synthetic.variant`) if
    given: a row file records only the base, so the row's data are rebuilt from the row's
    current definition."""
    cfg = apply_overrides(SyntheticConfig(), _flatten("data", setup["data"]) + [
        f"seed={int(setup['seed'])}", f"seeds={int(setup['seeds'])}"])
    if _jsonable(dataclasses.asdict(cfg.data)) != _jsonable(setup["data"]):
        raise ValueError("the rebuilt data config differs from the file's setup.data")
    return variant(cfg, row) if row else cfg


def latent_records(spec: str, key: jax.Array, n: int) -> list[dict]:
    """One record per (data set, latent) of the results file ``spec``."""
    setup, summary, label, row = load_result(spec)
    per_seed = summary["mcc_per_latent"]["per_seed"]
    cfg = rebuild_config(setup, row)
    if len(per_seed) != cfg.seeds:
        raise ValueError(f"{label}: {len(per_seed)} per-seed MCC lists for {cfg.seeds} seeds")
    d = cfg.data.scm.latent_dim
    if any(len(m) != d for m in per_seed):
        raise ValueError(f"{label}: per-latent MCC lists are not of length d = {d}")
    fitted = summary.get("strength_per_latent", {}).get("per_seed")
    if fitted is not None and summary.get("config", {}).get("targets") == "unknown":
        fitted = None  # learned slots are not labelled by the targets; no pairing
    data = simulate(cfg)
    records = []
    for s in range(cfg.seeds):
        ds = jax.tree.map(lambda a, s=s: a[s], data)
        forward, reverse = (np.asarray(a) for a in dataset_intervention_kl(
            ds, jax.random.fold_in(key, s), n))
        adj = np.asarray(ds.adj)
        for j, m in enumerate(per_seed[s]):
            records.append(dict(
                result=label, root=cfg.seed, data_set=s, latent=j,
                strength=float(forward[:, j].sum() + reverse[:, j].sum()),
                kl_forward=float(forward[:, j].sum()), kl_reverse=float(reverse[:, j].sum()),
                in_degree=int(adj[:, j].sum()), out_degree=int(adj[j].sum()), mcc=float(m),
                family=family(label),
                fitted_strength=None if fitted is None else float(fitted[s][j])))
    return records


def family(label: str) -> str:
    """The row family a results label belongs to (the BENCHMARKS table's rows)."""
    if "contrastive" in label:
        return "contrastive, d=10, D=100"
    if "flow2" in label:
        return "flow prior, two interventions per node"
    if "_flow_v3" in label:
        return "flow prior, one intervention per node"
    if "d8" in label or "d=8" in label:
        return "d=8, linear prior"
    return "d<=5, linear prior"


def fitted_summary(records: list[dict], lost: float) -> dict | None:
    """How the fits' own strength estimate (no ground truth) tracks the true one and MCC."""
    rs = [r for r in records if r["fitted_strength"] is not None]
    if len(rs) < 3:
        return None
    f = np.array([r["fitted_strength"] for r in rs])
    t = np.array([r["strength"] for r in rs])
    m = np.array([r["mcc"] for r in rs])
    flag = f < 1.0
    return dict(n=len(rs), spearman_true=float(stats.spearmanr(f, t).statistic),
                spearman_mcc=float(stats.spearmanr(f, m).statistic),
                flagged=int(flag.sum()),
                mean_mcc_flagged=float(m[flag].mean()) if flag.any() else None,
                mean_mcc_unflagged=float(m[~flag].mean()) if (~flag).any() else None,
                lost=int((m < lost).sum()), lost_flagged=int(((m < lost) & flag).sum()))


def summarize(records: list[dict], lost: float) -> dict:
    """Spearman correlation of strength with MCC and the MCC per strength bin."""
    s = np.array([r["strength"] for r in records])
    m = np.array([r["mcc"] for r in records])
    root = np.array([r["in_degree"] == 0 for r in records])
    rho = stats.spearmanr(s, m)
    bins = []
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        sel = (s >= lo) & (s < hi)
        bins.append(dict(low=lo, high=hi, n=int(sel.sum()), roots=int((sel & root).sum()),
                         mean_mcc=float(m[sel].mean()) if sel.any() else None,
                         lost=float((m[sel] < lost).mean()) if sel.any() else None))
    weak = s < 1.0
    fitted = fitted_summary(records, lost)
    return dict(fitted=fitted, mean_mcc_weak=float(m[weak].mean()) if weak.any() else None,
                mean_mcc_strong=float(m[~weak].mean()) if (~weak).any() else None,
                lost_n=int((m < lost).sum()), lost_weak=int(((m < lost) & weak).sum()),
                n=len(records), spearman=float(rho.statistic), spearman_p=float(rho.pvalue),
                mean_mcc=float(m.mean()), mean_mcc_roots=float(m[root].mean()) if root.any()
                else None, mean_mcc_non_roots=float(m[~root].mean()) if (~root).any() else None,
                weak_share=float(weak.mean()),
                weak_share_of_lost=float(weak[m < lost].mean()) if (m < lost).any() else None,
                bins=bins)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--result", action="append", metavar="FILE[::ROW]",
                   help="results file (repeatable); default: DEFAULT_RESULTS, every issue-13 "
                        "table at the current defaults")
    p.add_argument("--out", default="out/crl_intervention_strength.json")
    p.add_argument("--n", type=int, default=100_000, help="Monte-Carlo samples per KL")
    p.add_argument("--lost", type=float, default=0.8, help="MCC below which a latent is lost")
    p.add_argument("--seed", type=int, default=0, help="Monte-Carlo key")
    args = p.parse_args(argv)
    args.result = args.result or list(DEFAULT_RESULTS)
    t0 = time.perf_counter()
    key = jax.random.key(args.seed)
    records = []
    for spec in args.result:
        records += latent_records(spec, key, args.n)
        print(f"{spec}: {len(records)} latents so far, {time.perf_counter() - t0:.0f} s",
              flush=True)
    groups = {}
    for r in records:
        groups.setdefault(r["result"], []).append(r)
    result = dict(results=args.result, n_samples=args.n, lost_below=args.lost,
                  summary=summarize(records, args.lost),
                  by_result={g: summarize(rs, args.lost) for g, rs in groups.items()},
                  by_family={g: summarize([r for r in records if r["family"] == g], args.lost)
                             for g in dict.fromkeys(r["family"] for r in records)},
                  fitted=fitted_summary(records, args.lost),
                  records=records, wall_s=time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    sm = result["summary"]
    print(f"{sm['n']} latents: Spearman(strength, MCC) {sm['spearman']:.3f} "
          f"(p {sm['spearman_p']:.1e}); weak (< 1 nat) {sm['weak_share']:.2f} of all, "
          f"{sm['weak_share_of_lost']} of the lost")
    for b in sm["bins"]:
        print(f"  strength [{b['low']:g}, {b['high']:g}): n {b['n']} (roots {b['roots']}), "
              f"mean MCC {b['mean_mcc']}, lost {b['lost']}")
    for g, sg in result["by_family"].items():
        print(f"  [{g}] n {sg['n']}, Spearman {sg['spearman']:.3f}, mean MCC "
              f"{sg['mean_mcc']:.3f}, weak {sg['mean_mcc_weak']} / strong "
              f"{sg['mean_mcc_strong']}, lost {sg['lost_weak']}/{sg['lost_n']} weak; "
              f"fitted {sg['fitted']}")
    for g, sg in result["by_result"].items():
        print(f"  {g}: n {sg['n']}, Spearman {sg['spearman']:.3f}, mean MCC "
              f"{sg['mean_mcc']:.3f}, lost share weak {sg['weak_share_of_lost']}")
    print(f"wrote {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
