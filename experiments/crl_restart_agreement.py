"""Choose a seed's restart by agreement with its other restarts instead of by likelihood?

The default CRL data (known targets, so restart ``r``'s latent ``i`` is tied to the same
environment in every restart and the restarts' latents are aligned slot by slot).
``latent_scm`` with ``R`` restarts per data set: each restart is fitted as its own run, with
exactly the key it has as restart ``r`` of a multi-restart fit (``fold_in(k_s, r)``), so the
runs are those of ``--restarts R``. Per restart: the final training loss (the library's
criterion; with ``--set crl.holdout=F`` the loss on the held-out samples is, and it then
stands for "loss" below), the out-of-sample MCC (diagnostic only), and its *agreement*: the
mean over the other restarts and the latents of ``|Pearson(z_r,i, z_r',i)|`` on the data (no
ground truth). The medoid (highest agreement) is compared with the lowest loss, and with the
per-slot consensus of all restarts (:func:`jaxcrl.crl.consensus.slot_consensus`: each slot
from its own medoid restart, ``average = 0``, or averaged over the restarts whose slot
agrees with the medoid's at |Pearson| >= ``tau``, ``--taus``), scored like a run:
out-of-sample MCC and the SHD of the same pruned exact search over the consensus latents;
and with the per-slot majority (:func:`jaxcrl.crl.consensus.slot_majority`: each slot from
the largest cluster of restarts agreeing at |Pearson| >= ``t``, ``--majority``, a tie going
to the cluster that holds the lowest loss); and with the lowest *acyclicity* ``h(W)`` of
the restart's fitted linear SCM (``by_acyclicity``; :func:`jaxcrl.crl.prior.acyclicity`,
0 iff a DAG: the linear prior is a normalized density for any ``W``, and the default row's
stuck fits were found to end with cyclic ``W``). With ``--restarts 2`` (the default's
restarts) only the loss and the acyclicity choose: agreement needs three. Commands::

    python experiments/crl_restart_agreement.py --out out/crl_restart_agreement \
        --restarts 4 --seed 4 --save-latents
    python experiments/crl_restart_agreement.py --out out/rescored --restarts 4 --seed 4 \
        --rescore out/crl_restart_agreement   # the scores again from the saved latents

Writes ``OUT/results.json``: per data set ``loss [R]``, ``mcc [R]``, ``agreement [R]``,
``acyclicity [R]``, the restart each criterion chooses and its MCC and SHD,
(``first_two_by_loss``) what the default's 2 restarts, the same runs as restarts 0 and 1
here, choose, and per ``tau``
(``consensus``) the consensus's MCC, SHD and each slot's medoid restart, and per ``t``
(``majority``) the majority's MCC, SHD, each slot's cluster centre and members. With
``--save-latents`` also ``OUT/latents.npz`` (every restart's latents and the truth), which
``--rescore`` reads back instead of fitting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxcrl.config import parse_config
from jaxcrl.crl import fit
from jaxcrl.crl.consensus import slot_consensus, slot_majority
from jaxcrl.crl.discovery import pruned_dag_search
from jaxcrl.crl.evaluate import score_fit
from jaxcrl.crl.synthetic import SyntheticConfig, simulate
from jaxcrl.metrics import mcc as match
from jaxcrl.metrics import mcc_out_of_sample
from jaxcrl.metrics import shd as shd_of

ALIASES = {"--steps": "crl.steps", "--restarts": "crl.restarts", "--seeds": "seeds",
           "--seed": "seed"}


def agreement(z: np.ndarray) -> np.ndarray:
    """[R] mean |Pearson| of each restart's latents with the same slots of the others
    (z: [R, N, d] aligned restarts)."""
    n_rep, _, d = z.shape
    zs = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
    corr = np.abs(np.einsum("rni,qni->rqi", zs, zs) / z.shape[1])  # [R, R, d]
    off = ~np.eye(n_rep, dtype=bool)
    return np.array([corr[r][off[r]].mean() for r in range(n_rep)])


def consensus_scores(z, z_true, env, targets, adj, tau: float, *, cfg, seed: int,
                     loss=None) -> dict:
    """The per-slot consensus of one data set's aligned restarts ``z [R, N, d]`` scored
    like a run: out-of-sample Pearson MCC against ``z_true [N, d]`` (split ``seed``), the
    SHD to ``adj [d, d]`` of the pruned exact search (``cfg``'s ``graph_min_r2`` and
    ``edge_threshold``) over the consensus latents with the known ``targets [E, d]``, and
    each slot's chosen restart. ``loss=None``: :func:`slot_consensus` at ``average=tau``;
    ``loss [R]``: :func:`slot_majority` at ``threshold=tau`` (its ``members [d, R]`` too)."""
    if loss is None:
        zc, chosen = slot_consensus(z, average=tau)
        extra = {}
    else:
        zc, chosen, members = slot_majority(z, loss, threshold=tau)
        extra = {"members": np.asarray(members).astype(int).tolist()}
    zc, zt = np.asarray(zc), np.asarray(z_true)
    w = pruned_dag_search(zc, np.asarray(env), np.asarray(targets), min_r2=cfg.graph_min_r2,
                          edge_threshold=cfg.edge_threshold)
    return {"mcc": mcc_out_of_sample(zt, zc, "pearson", key=seed).value,
            "shd": float(shd_of(np.asarray(adj), w, perm=match(zt, zc).perm)),
            "chosen": np.asarray(chosen).tolist(), **extra}


#: what ``--save-latents`` writes and ``--rescore`` reads back (plain arrays only), and
#: ``heldout_loss [S, R]`` when the fit held samples out (``--set crl.holdout=...``)
LATENT_FIELDS = ("z", "loss", "mcc", "shd", "z_true", "env", "targets", "adj")
OPTIONAL_FIELDS = ("heldout_loss", "acyclicity")  # [S, R] each, when the fit has them


def fit_restarts(cfg) -> tuple[dict, float]:
    """Fits every restart of every data set as its own run. Returns the arrays of
    :data:`LATENT_FIELDS` (``z [S, R, N, d]``, ``loss``/``mcc``/``shd`` ``[S, R]``, the
    truth per data set) and the fit's wall time in seconds."""
    n_rep, n_sets = cfg.crl.restarts, cfg.seeds
    data = simulate(cfg)
    seed_keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 1), n_sets)
    keys = jax.vmap(lambda k: jax.vmap(lambda r: jax.random.fold_in(k, r))(
        np.arange(n_rep)))(seed_keys).reshape(-1)  # restart r of data set s: fold_in(k_s, r)
    rep = argparse.Namespace(**{f: np.repeat(np.asarray(getattr(data, f)), n_rep, axis=0)
                                for f in ("x", "env", "targets", "z", "adj")})
    mcfg = dataclasses.replace(cfg.method_config("latent_scm"), restarts=1)
    t0 = time.perf_counter()
    result = fit(mcfg, rep.x, rep.env, targets=rep.targets, key=keys, progress=False)
    wall = time.perf_counter() - t0
    scores = score_fit(result, rep.x, rep.z, rep.env, adj_true=rep.adj,
                       targets_true=rep.targets)
    arrays = {
        "z": np.asarray(result.encode(rep.x)).reshape(n_sets, n_rep, *rep.x.shape[1:2], -1),
        "loss": np.asarray(result.history["final_loss"]).reshape(n_sets, n_rep),
        "mcc": np.array([s["mcc_pearson_oos"] for s in scores]).reshape(n_sets, n_rep),
        "shd": np.array([s["shd"] for s in scores]).reshape(n_sets, n_rep),
        "z_true": np.asarray(data.z), "env": np.asarray(data.env),
        "targets": np.asarray(data.targets), "adj": np.asarray(data.adj)}
    if all("acyclicity" in s for s in scores):  # h(W) of each restart's fitted SCM
        arrays["acyclicity"] = np.array([s["acyclicity"] for s in scores]).reshape(
            n_sets, n_rep)
    if "heldout_loss" in result.history:  # the library's restart criterion then
        arrays["heldout_loss"] = np.asarray(result.history["heldout_loss"]).reshape(n_sets, n_rep)
    return arrays, wall


def load_latents(directory, cfg) -> tuple[dict, float | None]:
    """Reads back what ``--save-latents`` wrote to ``directory`` (``latents.npz``, never
    pickles; the wall time from its ``results.json`` if that holds a number) and checks the
    shapes against ``cfg`` (``--restarts``, ``--seeds``)."""
    path = Path(directory, "latents.npz")
    if not path.is_file():
        raise FileNotFoundError(f"--rescore: no {path} (write it with --save-latents)")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in LATENT_FIELDS if k not in f.files]
        if missing:
            raise ValueError(f"--rescore: {path} lacks {missing}")
        arrays = {k: np.asarray(f[k]) for k in (*LATENT_FIELDS, *OPTIONAL_FIELDS)
                  if k in f.files}
    want = (cfg.seeds, cfg.crl.restarts)
    if (arrays["z"].ndim != 4 or arrays["z"].shape[:2] != want
            or any(arrays[k].shape != want for k in ("loss", *OPTIONAL_FIELDS)
                   if k in arrays)):
        raise ValueError(f"--rescore: {path} holds z {arrays['z'].shape}, loss "
                         f"{arrays['loss'].shape}; --seeds/--restarts ask for {want}")
    n_sets, _, n, d = arrays["z"].shape
    if arrays["z_true"].shape != (n_sets, n, d) or arrays["env"].shape != (n_sets, n):
        raise ValueError(f"--rescore: {path} holds z {arrays['z'].shape} but z_true "
                         f"{arrays['z_true'].shape}, env {arrays['env'].shape}")
    wall = None
    res = Path(directory, "results.json")
    if res.is_file():  # only a plain number is taken from it
        doc = json.loads(res.read_text())
        rest = doc.get("restarts") if isinstance(doc, dict) else None
        w = rest.get("wall_s") if isinstance(rest, dict) else None
        wall = float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else None
    return arrays, wall


def score_restarts(a: dict, cfg, taus, majority) -> dict:
    """Every criterion's choice over the restarts ``a`` (:func:`fit_restarts`' arrays):
    the lowest loss (of all restarts, and of the first two, the default's; the held-out
    loss when ``a`` has one, as the library chooses then, else the final training loss), the
    highest agreement, the per-slot consensus at each ``taus`` and the per-slot majority at
    each ``majority`` threshold (agreement, consensus and majority with >= 3 restarts
    only), and the lowest acyclicity ``h(W)`` when ``a`` has it."""
    mcc, shd, z = a["mcc"], a["shd"], a["z"]
    loss = a.get("heldout_loss", a["loss"])  # the restart criterion
    n_sets, n_rep = loss.shape
    mcfg = dataclasses.replace(cfg.method_config("latent_scm"), restarts=1)
    idx = np.arange(n_sets)
    out = {"loss": a["loss"].tolist(), "mcc": mcc.tolist(), "shd": shd.tolist(),
           "criterion": "heldout_loss" if "heldout_loss" in a else "final_loss"}
    for k in OPTIONAL_FIELDS:
        if k in a:
            out[k] = a[k].tolist()
    first2 = loss[:, :2].argmin(1)  # what the default's 2 restarts choose (same runs)
    choices = [("by_loss", loss.argmin(1)), ("first_two_by_loss", first2)]
    if n_rep >= 3:
        agree = np.stack([agreement(z[s]) for s in range(n_sets)])
        out["agreement"] = agree.tolist()
        choices.append(("by_agreement", agree.argmax(1)))
    else:
        taus = majority = ()
    if "acyclicity" in a:
        choices.append(("by_acyclicity", a["acyclicity"].argmin(1)))
    for name, chosen in choices:
        out[name] = {"chosen": chosen.tolist(), "mcc": mcc[idx, chosen].tolist(),
                     "shd": shd[idx, chosen].tolist()}
    out["best_mcc"] = mcc.max(1).tolist()
    for key, values, use_loss in (("consensus", taus, False), ("majority", majority, True)):
        out[key] = {}
        for tau in values:
            rows = [consensus_scores(z[s], a["z_true"][s], a["env"][s], a["targets"][s],
                                     a["adj"][s], tau, cfg=mcfg, seed=s * n_rep,
                                     loss=loss[s] if use_loss else None)
                    for s in range(n_sets)]
            out[key][str(tau)] = {k: [r[k] for r in rows] for k in rows[0]}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/crl_restart_agreement")
    p.add_argument("--taus", default="0,0.5,0.8,0.9",
                   help="comma-separated consensus thresholds (0: each slot's medoid)")
    p.add_argument("--majority", default="0.8,0.9,0.95",
                   help="comma-separated slot_majority thresholds (empty: none)")
    p.add_argument("--save-latents", action="store_true",
                   help="also write OUT/latents.npz: every restart's latents z [S, R, N, d] "
                        "and the truth (z_true, env, targets, adj), to study other criteria")
    p.add_argument("--rescore", default=None, metavar="DIR",
                   help="no fit: score the restarts a --save-latents run wrote to DIR")
    base = SyntheticConfig()
    base = dataclasses.replace(base, crl=dataclasses.replace(base.crl, restarts=4))
    args, cfg = parse_config(p, base, argv, aliases=ALIASES)
    if cfg.crl.restarts < 2:
        raise ValueError(f"--restarts must be >= 2 to choose among, got {cfg.crl.restarts}")
    taus = [float(t) for t in args.taus.split(",") if t.strip()]
    majority = [float(t) for t in args.majority.split(",") if t.strip()]
    if args.rescore is None:
        arrays, wall = fit_restarts(cfg)
    else:
        arrays, wall = load_latents(args.rescore, cfg)
    out = score_restarts(arrays, cfg, taus, majority)
    out["wall_s"] = wall
    for name in ("first_two_by_loss", "by_loss", "by_agreement", "by_acyclicity"):
        if name not in out:
            continue
        print(f"{name}: MCC {np.mean(out[name]['mcc']):.3f} "
              f"{np.round(out[name]['mcc'], 3).tolist()}, SHD {np.mean(out[name]['shd']):.1f}",
              flush=True)
    for key in ("consensus", "majority"):
        for tau, row in out[key].items():
            print(f"{key} {tau}: MCC {np.mean(row['mcc']):.3f} "
                  f"{np.round(row['mcc'], 3).tolist()}, SHD {np.mean(row['shd']):.1f}",
                  flush=True)
    print(f"best restart: MCC {np.mean(out['best_mcc']):.3f}"
          + (f"; fit {wall:.0f} s" if wall is not None else ""), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.save_latents and args.rescore is None:
        np.savez_compressed(Path(args.out, "latents.npz"),
                            **{k: (v.astype(np.float32) if k == "z" else v)
                               for k, v in arrays.items()})
    setup = {"out": args.out, "config": dataclasses.asdict(cfg)}
    if args.rescore is not None:
        setup["rescored"] = str(args.rescore)
    Path(args.out, "results.json").write_text(json.dumps(
        {"setup": setup, "restarts": out}, indent=2))


if __name__ == "__main__":
    main()
