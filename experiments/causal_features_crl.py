"""The latent-SCM part of ``experiments/causal_features.py`` alone, on cached activations.

Command::

    python experiments/causal_features_crl.py --out out/causal_features_crl \
        --design pca:4 --design envs:0 --seeds 4 --ceiling

Trains the same transformer as ``experiments/causal_features.py`` (same defaults, same seed;
or loads ``--lm-ckpt``), collects the last-position residual stream of every layer on the
same environment sequences (env 0 observational, env ``i + 1`` ``do(z_i = v)``, ``v``
uniform; the same keys as :func:`jaxcrl.analysis.causal_features.analyse`) together with
the exact posterior beliefs, and caches them to ``OUT/acts.npz``. A later call reuses the
cache and only fits: per ``--design REDUCE:FLOW_LAYERS`` (``CRLConfig.reduce``, the
``d``-dim subspace the flow sees, and ``CRLConfig.flow_layers``, 0 = a linear encoder) and
seed one latent-SCM fit, all layers in one program, scored against the beliefs
(MCC out of sample and per latent, on the pooled environments and on environment 0 alone,
next to a ridge probe fitted on the same data) and the language's graph (SHD of the exact
interventional-BIC DAG after MCC alignment). Writes ``OUT/results.json``.

CRL settings are ``--set crl.FIELD=VALUE`` (:class:`jaxcrl.crl.CRLConfig` fields, e.g.
``--set crl.flow_layers=1 --set crl.restarts=4 --set crl.holdout=0.2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.analysis.causal_features import _environment_batches, _variables
from jaxcrl.analysis.lm_runs import trained_lm
from jaxcrl.analysis.probes import collect, residual_names
from jaxcrl.crl import CRLConfig, fit
from jaxcrl.crl.evaluate import score_fit
from jaxcrl.crl.svi import make_preprocess
from jaxcrl.metrics import fit_ridge, mcc, mcc_out_of_sample, predict_linear
from jaxcrl.scm.language import posterior_marginals, sample_jit


def _experiment_module():
    """``experiments/causal_features.py`` imported by path (its defaults are the ones here)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent / "causal_features.py"
    spec = importlib.util.spec_from_file_location("causal_features", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)
    spec.loader.exec_module(mod)
    return mod


def cache_activations(path: str, lm_ckpt: str | None, progress: bool,
                      tiny: bool = False) -> dict:
    """Trains (or loads) the transformer of ``causal_features.py`` and caches, per layer,
    the last-position activations ``x [L+1, N, D]`` of the environment sequences, their
    beliefs ``truth [N, d]``, ``env [N]``, ``targets [E, d]``, the true ``adj [d, d]`` and
    the observational probe data ``obs_x [L+1, M, D]``, ``obs_truth [M, d]``."""
    cf = _experiment_module()
    exp = cf.CausalFeaturesExperiment.tiny() if tiny else cf.CausalFeaturesExperiment()
    model, params, task, info = trained_lm(exp.lm.with_task(exp.task), checkpoint=lm_ckpt,
                                           progress=progress)
    cfg = exp.analysis
    d = task.cfg.n_latents
    # the keys of analyse(): root -> (obs, env, sae, crl, steer)
    k_obs, k_env, _, k_crl, _ = jax.random.split(jax.random.key(cfg.seed), 5)
    names = residual_names(model.cfg.n_layers)
    batch = sample_jit(task, k_obs, cfg.n_sequences, with_posterior=True)
    obs = collect(model, params, batch.tokens, list(names.values()))
    obs_truth = _variables(np.asarray(batch.posterior)[:, -1])
    env_tokens, env = _environment_batches(task, k_env, cfg.crl_per_env)
    acts = collect(model, params, env_tokens, list(names.values()))
    truth = _variables(np.asarray(posterior_marginals(task, env_tokens))[:, -1])
    data = {
        "x": np.stack([acts[h][:, -1] for h in names.values()]).astype(np.float32),
        "truth": truth.astype(np.float32), "env": env.astype(np.int32),
        "targets": np.concatenate([np.zeros((1, d), bool), np.eye(d, dtype=bool)]),
        "adj": np.asarray(task.adj), "layers": np.array(list(names)),
        "obs_x": np.stack([obs[h][:, -1] for h in names.values()]).astype(np.float32),
        "obs_truth": obs_truth.astype(np.float32),
        "crl_key": np.asarray(jax.random.key_data(k_crl)),
        "lm_info": json.dumps(info),
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path, **data)
    return data


def distinct_beliefs(truth: np.ndarray, tol: float = 0.99) -> np.ndarray:
    """Indices of the belief columns not (|Pearson| >= tol) a copy of an earlier one: a
    near-deterministic edge makes two latents' posterior beliefs the same variable, and a
    one-to-one matching of d learned latents to them cannot score both."""
    c = np.abs(np.corrcoef(truth.T))
    return np.array([j for j in range(truth.shape[1]) if not (c[j, :j] >= tol).any()])


def probe_scores(x: np.ndarray, truth: np.ndarray, env: np.ndarray) -> dict:
    """Ridge probe on even samples, scored on odd ones (pooled, and environment 0)."""
    tr, te = np.arange(len(x)) % 2 == 0, np.arange(len(x)) % 2 == 1
    pred = predict_linear(fit_ridge(x[tr], truth[tr]), x[te])
    obs = env[te] == 0
    keep = distinct_beliefs(truth)
    return {"mcc_pooled": float(mcc(truth[te], pred).value),
            "mcc_env0": float(mcc(truth[te][obs], pred[obs]).value),
            "mcc_pooled_distinct": float(mcc(truth[te][:, keep], pred[:, keep]).value)}


def crl_scores(z_hat: np.ndarray, truth: np.ndarray, env: np.ndarray, score: dict) -> dict:
    """MCC of learned latents: pooled (out of sample, per latent), against the distinct
    beliefs only (:func:`distinct_beliefs`, a rectangular matching), and on env 0 alone."""
    obs = env == 0
    m0 = mcc(truth[obs], z_hat[obs])
    keep = distinct_beliefs(truth)
    return {"mcc_pooled_oos": float(score["mcc_pearson_oos"]),
            "mcc_distinct_oos": float(mcc_out_of_sample(truth[:, keep], z_hat).value),
            "mcc_pooled": float(score["mcc_pearson"]),
            "mcc_per_latent": [round(v, 4) for v in score["mcc_per_latent"]],
            "mcc_env0": float(m0.value),
            "mcc_env0_oos": float(mcc_out_of_sample(truth[obs], z_hat[obs]).value),
            "mcc_env0_per_latent": [round(float(v), 4) for v in m0.matched],
            "shd": float(score["shd"]), "shd_svi": float(score["shd_svi"]),
            "edge_auroc": float(score["edge_auroc"])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/causal_features_crl")
    p.add_argument("--lm-ckpt", default=None)
    p.add_argument("--design", action="append", default=None,
                   help="REDUCE[:FLOW_LAYERS] to fit (repeatable; default envs:0), e.g. pca:4")
    p.add_argument("--seeds", type=int, default=1,
                   help="fits per design (seed 0: analyse's; 0: no fits)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--set", action="append", default=[], metavar="crl.FIELD=VALUE")
    p.add_argument("--layers", default=None, help="comma-separated layer labels (default all)")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    p.add_argument("--ceiling", action="store_true",
                   help="also fit the beliefs themselves: x = logit(beliefs) @ M, M random")
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long run (tests): tiny language and model, 100 steps")
    p.add_argument("--ceiling-seeds", type=int, default=1,
                   help="ceiling fits per encoder (seed s: mixing and key s)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps = min(args.steps, 100)
    t0 = time.perf_counter()
    path = os.path.join(args.out, "acts.npz")
    if os.path.exists(path):
        data = dict(np.load(path))
    else:
        data = cache_activations(path, args.lm_ckpt, not args.no_progress, args.tiny)
    layers = [str(s) for s in data["layers"]]
    keep = ([layers.index(s) for s in args.layers.split(",")] if args.layers
            else list(range(len(layers))))
    x, truth, env = data["x"][keep], data["truth"], data["env"]
    targets, adj = data["targets"], data["adj"]
    d = truth.shape[-1]
    over = {}
    for s in args.set:
        k, v = s.split("=", 1)
        k = k.removeprefix("crl.")
        field = {f.name: f for f in dataclasses.fields(CRLConfig)}[k]
        over[k] = type(getattr(CRLConfig(), field.name))(
            v if not isinstance(getattr(CRLConfig(), k), bool) else v == "true")
    key = jax.random.wrap_key_data(data["crl_key"])
    results: dict = {"layers": [layers[i] for i in keep], "n_true_edges": int(adj.sum()),
                     "probe": {layers[i]: probe_scores(data["x"][i], truth, env)
                               for i in keep},
                     "probe_obs": {}, "fits": {}}
    n_obs = len(data["obs_truth"]) // 2
    for i in keep:  # the causal_features.py probe: observational sequences, half / half
        ox, ot = data["obs_x"][i], data["obs_truth"]
        pred = predict_linear(fit_ridge(ox[:n_obs], ot[:n_obs]), ox[n_obs:])
        results["probe_obs"][layers[i]] = float(mcc(ot[n_obs:], pred).value)
    # Diagnostic with the truth (not used by any fit): how much of the beliefs is linear in
    # the d-dim input each reduction hands the flow (least squares, in sample), and the MCC of
    # that best linear read-out: the most a linear encoder on that input could reach.
    results["subspace_oracle"] = {}
    for li in keep:
        row = {}
        for reduce in ("pca", "envs"):
            pre = make_preprocess(jnp.asarray(data["x"][li]), d, True, jnp.asarray(env),
                                  reduce=reduce, n_envs=d + 1)
            xp = np.asarray(pre(jnp.asarray(data["x"][li])))
            a = np.c_[xp, np.ones(len(xp))]
            pred = a @ np.linalg.lstsq(a, truth, rcond=None)[0]
            r2 = 1 - ((truth - pred) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
            row[reduce] = {"r2_per_belief": [round(float(v), 4) for v in r2],
                           "mcc_linear_readout": float(mcc(truth, pred).value)}
        results["subspace_oracle"][layers[li]] = row
        print(f"{layers[li]:6s} beliefs linear in the flow input (oracle read-out MCC): "
              + ", ".join(f"{k} {v['mcc_linear_readout']:.3f} (R2 {v['r2_per_belief']})"
                          for k, v in row.items()), flush=True)
    L = len(keep)
    for design in (args.design or ["envs:0"]) if args.seeds > 0 else []:
        reduce, _, fl = design.partition(":")
        cfg = CRLConfig(**{"latent_dim": d, "n_envs": d + 1, "steps": args.steps,
                           "restarts": 1, "batch_size": min(1024, len(env)),
                           **over, "reduce": reduce,
                           **({"flow_layers": int(fl)} if fl else {})})
        fit_res: dict = {"config": dataclasses.asdict(cfg), "seeds": []}
        for s in range(args.seeds):  # seed 0: the key of analyse()
            tf = time.perf_counter()
            r = fit(cfg, x, np.broadcast_to(env, (L, len(env))),
                    key=key if s == 0 else jax.random.fold_in(key, s),
                    targets=np.broadcast_to(targets, (L, *targets.shape)),
                    progress=not args.no_progress, eval_every=max(cfg.steps // 10, 1))
            sc = score_fit(r, x, np.broadcast_to(truth, (L, *truth.shape)),
                           np.broadcast_to(env, (L, len(env))),
                           adj_true=np.broadcast_to(adj, (L, d, d)),
                           targets_true=np.broadcast_to(targets, (L, *targets.shape)))
            z = np.asarray(r.encode(x))
            dag = r.discover_graph(x, np.broadcast_to(env, (L, len(env))),
                                   np.broadcast_to(targets, (L, *targets.shape)))
            seed_res = {"wall_s": time.perf_counter() - tf}
            for j, li in enumerate(keep):
                seed_res[layers[li]] = crl_scores(z[j], truth, env, sc[j])
                # the exact-search DAG with its nodes in true-latent order (MCC matching)
                perm = np.asarray(mcc(truth, z[j]).perm)
                seed_res[layers[li]]["dag_aligned"] = (
                    np.abs(dag[j])[np.ix_(perm, perm)] > 0).astype(int).tolist()
            fit_res["seeds"].append(seed_res)
            for li in keep:
                f = seed_res[layers[li]]
                print(f"{design:7s} seed {s} {layers[li]:6s} MCC pooled(oos) "
                      f"{f['mcc_pooled_oos']:.3f} distinct {f['mcc_distinct_oos']:.3f}"
                      f" env0 {f['mcc_env0']:.3f} per-latent {f['mcc_per_latent']} "
                      f"SHD {f['shd']:.0f} (svi {f['shd_svi']:.0f}) AUROC "
                      f"{f['edge_auroc']:.2f}", flush=True)
        for li in keep:
            lab = layers[li]
            fit_res[lab] = {k: [float(np.mean([sr[lab][k] for sr in fit_res["seeds"]])),
                                float(np.std([sr[lab][k] for sr in fit_res["seeds"]]))]
                            for k in ("mcc_pooled_oos", "mcc_distinct_oos", "mcc_env0", "shd",
                                      "edge_auroc")}
            m = fit_res[lab]
            pr = results["probe"][lab]
            print(f"{design:7s} {lab:6s} mean over {args.seeds} seeds: MCC pooled(oos) "
                  f"{m['mcc_pooled_oos'][0]:.3f}+-{m['mcc_pooled_oos'][1]:.3f} distinct "
                  f"{m['mcc_distinct_oos'][0]:.3f} SHD {m['shd'][0]:.1f} | probe pooled "
                  f"{pr['mcc_pooled']:.3f} distinct {pr['mcc_pooled_distinct']:.3f} obs "
                  f"{results['probe_obs'][lab]:.3f}", flush=True)
        results["fits"][design] = fit_res
    if args.ceiling:
        # The model's ceiling here: the latent SCM fitted on the beliefs themselves (their
        # logits, randomly linearly mixed, D = d), with the same environments and targets.
        lg = np.log(np.clip(truth, 1e-3, 1 - 1e-3) / np.clip(1 - truth, 1e-3, 1 - 1e-3))
        results["ceiling"] = {}
        for fl in sorted({0, over.get("flow_layers", CRLConfig().flow_layers)}):
            cfg = CRLConfig(**{"latent_dim": d, "n_envs": d + 1, "steps": args.steps,
                               "restarts": 1, "batch_size": min(1024, len(env)),
                               **over, "flow_layers": fl, "reduce": "pca"})
            per_seed = []
            for s in range(args.ceiling_seeds):  # seed s: mixing seed s, fit key as above
                rng = np.random.default_rng(s)
                xc = (lg @ rng.normal(size=(d, d)) + 0.01 * rng.normal(size=lg.shape)
                      ).astype(np.float32)
                r = fit(cfg, xc, env, key=key if s == 0 else jax.random.fold_in(key, s),
                        targets=targets, progress=False)
                sc = score_fit(r, xc, truth, env, adj_true=adj, targets_true=targets)[0]
                f = crl_scores(np.asarray(r.encode(xc))[0], truth, env, sc)
                per_seed.append(f)
                print(f"ceiling (beliefs as data) flow_layers={fl} seed {s}: MCC pooled(oos) "
                      f"{f['mcc_pooled_oos']:.3f} distinct {f['mcc_distinct_oos']:.3f} "
                      f"per-latent {f['mcc_per_latent']} SHD {f['shd']:.0f}", flush=True)
            results["ceiling"][f"flow_layers={fl}"] = {
                **per_seed[0], "seeds": per_seed,
                "mean": {k: [float(np.mean([f[k] for f in per_seed])),
                             float(np.std([f[k] for f in per_seed]))]
                         for k in ("mcc_pooled_oos", "mcc_distinct_oos", "shd")}}
    results["distinct_beliefs"] = distinct_beliefs(truth).tolist()
    results["wall_s"] = time.perf_counter() - t0
    results["lm"] = json.loads(str(data["lm_info"]))
    out = os.path.join(args.out, f"results{args.tag}.json")
    with open(out, "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"wrote {out} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
