"""Are a transformer's features the true causal variables, and do edits respect the graph?

The end-to-end analysis behind ``experiments/causal_features.py``. A transformer trained on
a latent-SCM language (:mod:`jaxcrl.scm.language`) is read at its residual stream, layer by layer
(``embed`` = ``blocks.0.hook_resid_pre``, ``L{l}`` = ``blocks.{l}.hook_resid_post``):

1. **Identifiability.** The ground-truth variables are what a Bayes-optimal reader of the
   sequence knows: the exact posterior marginals ``p(z_i = v | tokens)`` at the last position
   (``v = 1..K-1``; one variable per latent when ``K = 2``). They are compared (out of
   sample, MCC with Hungarian matching, Pearson and Spearman, and R²) with
   (a) ridge-probe read-outs, (b) the best-matched latents of SAEs of each architecture
   (trained on that layer's activations at every position), and (c) the latents of the
   Part-1 latent-SCM model (:func:`jaxcrl.crl.fit`, exact-likelihood flow) fitted on the
   last-position activations, with the generator's interventional sequences as
   environments: env 0 observational, env ``i + 1`` ``do(z_i = v)`` with ``v`` uniform.
   The flow sees a ``d``-dim subspace of the ``D``-dim stream: the top-variance (PCA)
   directions by default, or with ``crl_reduce="envs"`` the directions that separate the
   environment means (``CRLConfig.reduce``), which a residual stream's large nuisance
   variance does not hide.
2. **Graph recovery from the model**: the DAG learned in (c) against the truth (SHD after
   MCC alignment, edge AUROC).
3. **Interventions inside the model**: for each latent ``i``, edit the layer so that the
   model's representation of ``z_i`` changes, run the rest of the model, and read its
   beliefs about every latent (:func:`jaxcrl.analysis.latent_beliefs`). Two kinds of edit:
   *probe clamping* (the minimum-norm edit moving only ``z_i``'s linear read-out,
   :func:`~jaxcrl.analysis.steering_deltas`) and *SAE clamping* (set the SAE latent matched
   to ``z_i`` to 0 or to a high value, ``x + (a - f(x)) d_f``). The effect matrix is scored
   against the descendant relation (:func:`~jaxcrl.analysis.score_effects`).

Note what the reference answer is. The language is observational: a Bayes-optimal model
updates its belief about a cause when it sees evidence about an effect, so a model that
simply *represents beliefs* may move ancestors as well as descendants when a belief is
edited. Effects confined to descendants would mean the model's computation runs along the
causal direction. The scores say which happens; they are not expected to be perfect.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.analysis.interventions import (
    SAEClamp,
    effect_matrix,
    latent_beliefs_jit,
    probe_readout,
    score_effects,
    steering_deltas,
)
from jaxcrl.analysis.probes import collect, residual_names
from jaxcrl.checkpoint import register_config
from jaxcrl.crl import CRLConfig, fit
from jaxcrl.crl.evaluate import score_fit
from jaxcrl.lm import HookedTransformer, add_vector, replace_with
from jaxcrl.metrics import fit_ridge, mcc, mcc_out_of_sample, predict_linear, r2_score
from jaxcrl.sae.config import SAEConfig
from jaxcrl.sae.model import encode, forward
from jaxcrl.sae.source import array_source
from jaxcrl.sae.training import train as train_sae
from jaxcrl.scm.language import Task, do, posterior_marginals, sample, sample_jit


@register_config
@dataclasses.dataclass(frozen=True)
class CausalFeaturesConfig:
    """What to analyse and how much of it.

    Attributes:
      architectures: SAE architectures (one SAE per layer and architecture).
      sae_expansion: SAE width / d_model.
      sae_k: active latents of TopK/BatchTopK.
      sae_steps, sae_batch: SAE training length and batch (activation vectors).
      n_sequences: observational sequences for probes and SAE scoring (half fit, half test).
      crl_per_env: sequences per environment for the latent-SCM fit.
      crl_steps: latent-SCM training steps (one program for all layers).
      crl_reduce: the latent-SCM flow's input subspace (``CRLConfig.reduce``): ``pca``
        (top-variance directions; the default, the original analysis) or ``envs`` (the
        directions separating the environment means; measured better on this
        transformer's residual stream, see BENCHMARKS.md).
      crl_flow_layers: flow encoder depth (``CRLConfig.flow_layers``; 0 = linear).
      n_steer: sequences the intervention effects are averaged over.
      probe_scale: probability mass a probe edit moves within the edited latent.
      seed: root seed of everything here.
    """

    architectures: tuple[str, ...] = ("relu", "topk", "batchtopk", "jumprelu")
    sae_expansion: int = 4
    sae_k: int = 8
    sae_steps: int = 3000
    sae_batch: int = 1024
    n_sequences: int = 4096
    crl_per_env: int = 2000
    crl_steps: int = 4000
    crl_reduce: str = "pca"
    crl_flow_layers: int = 4
    n_steer: int = 256
    probe_scale: float = 1.0
    seed: int = 0

    @classmethod
    def tiny(cls, **override) -> CausalFeaturesConfig:
        return cls(**{"architectures": ("topk",), "sae_steps": 100, "sae_batch": 256,
                      "n_sequences": 256, "crl_per_env": 200, "crl_steps": 100,
                      "n_steer": 16, **override})


def _variables(post: np.ndarray) -> np.ndarray:
    """``[..., d, K]`` posterior marginals -> ``[..., d (K - 1)]`` variables (drop ``v = 0``)."""
    return post[..., 1:].reshape(*post.shape[:-2], -1)


def _ident(truth: np.ndarray, est: np.ndarray) -> dict:
    out = {"mcc_pearson": float(mcc(truth, est).value),
           "mcc_spearman": float(mcc(truth, est, "spearman").value)}
    return out


def _environment_batches(task: Task, key: jax.Array, n_per_env: int):
    """Tokens and env index: env 0 observational, env i+1 do(z_i = v), v uniform."""
    d, k = task.cfg.n_latents, task.cfg.n_values
    toks, envs = [], []
    keys = jax.random.split(key, d + 1)
    toks.append(sample(task, keys[0], n_per_env).tokens)
    envs.append(np.zeros(n_per_env, np.int32))
    for i in range(d):
        per = [n_per_env // k + (v < n_per_env % k) for v in range(k)]
        for v in range(k):
            kv = jax.random.fold_in(keys[i + 1], v)
            toks.append(sample(task, kv, per[v], do(task.cfg, {i: v})).tokens)
        envs.append(np.full(n_per_env, i + 1, np.int32))
    return jnp.concatenate(toks), np.concatenate(envs)


def analyse(model: HookedTransformer, params: Any, task: Task, cfg: CausalFeaturesConfig,
            *, progress: bool = False) -> dict:
    """Runs the whole analysis (see the module docstring).

    Args:
      model, params: the trained transformer.
      task: the latent-SCM language it was trained on (observational).
      cfg: sizes.
      progress: progress bars in the SAE and CRL training.

    Returns:
      ``{"layers": [...], "truth": {...}, label: {"probe", "sae", "crl", "effects"}, ...}``
      plus arrays for plotting under ``"_arrays"`` (effect matrices, true graph).
    """

    t_start = time.perf_counter()
    tc = task.cfg
    d, K = tc.n_latents, tc.n_values
    root = jax.random.key(cfg.seed)
    k_obs, k_env, k_sae, k_crl, k_steer = jax.random.split(root, 5)
    names = residual_names(model.cfg.n_layers)
    labels = list(names)

    # -- observational data: activations at every position, exact posteriors
    batch = sample_jit(task, k_obs, cfg.n_sequences, with_posterior=True)
    acts = collect(model, params, batch.tokens, list(names.values()))
    post = np.asarray(batch.posterior)  # [N, T, d, K]
    truth_last = _variables(post[:, -1])  # [N, m]
    n_fit = cfg.n_sequences // 2
    adj = np.asarray(task.adj)

    # -- environments for the latent-SCM fit (last position)
    env_tokens, env = _environment_batches(task, k_env, cfg.crl_per_env)
    env_acts = collect(model, params, env_tokens, list(names.values()))
    env_truth = _variables(np.asarray(posterior_marginals(task, env_tokens))[:, -1])
    targets = np.concatenate([np.zeros((1, d), bool), np.eye(d, dtype=bool)])

    out: dict[str, Any] = {"layers": labels, "_arrays": {"adj": adj}}
    steer_tokens = batch.tokens[-cfg.n_steer:]
    base = latent_beliefs_jit(model, params, steer_tokens, task_cfg=tc)

    def beliefs_with(hook_name):
        # params and tokens are arguments of the jitted function, not constants closed
        # over by a new jitted closure: one compiled program per hook structure
        def fn(hook):
            return latent_beliefs_jit(model, params, steer_tokens, task_cfg=tc,
                                      hooks={hook_name: hook})
        return fn

    # -- (c) one latent-SCM fit per layer, all layers in one program
    crl_cfg = CRLConfig(latent_dim=d, n_envs=d + 1, steps=cfg.crl_steps, restarts=1,
                        reduce=cfg.crl_reduce, flow_layers=cfg.crl_flow_layers,
                        batch_size=min(1024, len(env)))
    x_layers = np.stack([env_acts[h][:, -1] for h in names.values()])  # [L+1, N, D]
    t0 = time.perf_counter()
    crl_fit = fit(crl_cfg, x_layers, np.broadcast_to(env, (len(labels), len(env))),
                  key=k_crl, targets=np.broadcast_to(targets, (len(labels), *targets.shape)),
                  progress=progress, eval_every=max(cfg.crl_steps // 10, 1))
    crl_scores = score_fit(crl_fit, x_layers, np.broadcast_to(
        env_truth, (len(labels), *env_truth.shape)), np.broadcast_to(env, (len(labels),
                                                                         len(env))),
        adj_true=np.broadcast_to(adj, (len(labels), d, d)),
        targets_true=np.broadcast_to(targets, (len(labels), *targets.shape)))
    crl_wall = time.perf_counter() - t0

    for li, (lab, hook) in enumerate(names.items()):
        a = acts[hook]  # [N, T, D]
        a_last = a[:, -1]
        res: dict[str, Any] = {"hook": hook}

        # (a) probes, out of sample
        p = fit_ridge(a_last[:n_fit], truth_last[:n_fit])
        pred = predict_linear(p, a_last[n_fit:])
        res["probe"] = {**_ident(truth_last[n_fit:], pred),
                        "r2": float(r2_score(truth_last[n_fit:], pred).mean())}

        # (b) SAEs on every position of this layer
        res["sae"] = {}
        flat = a.reshape(-1, a.shape[-1])
        sae_params = {}
        for arch in cfg.architectures:
            scfg = SAEConfig(architecture=arch, d_in=a.shape[-1],
                             d_sae=cfg.sae_expansion * a.shape[-1], k=cfg.sae_k,
                             steps=cfg.sae_steps, batch_size=cfg.sae_batch, hook_name=hook)
            t0 = time.perf_counter()
            tr = train_sae(scfg, array_source(flat, cfg.sae_batch),
                           jax.random.fold_in(k_sae, li), progress=progress)
            wall = time.perf_counter() - t0
            sp = tr.params()
            z_fit = np.asarray(encode(sp, jnp.asarray(a_last[:n_fit]), scfg, inference=True))
            z_test = np.asarray(encode(sp, jnp.asarray(a_last[n_fit:]), scfg, inference=True))
            xh, aux = forward(sp, jnp.asarray(a_last[n_fit:]), scfg, inference=True)
            xt = a_last[n_fit:]
            fvu = float(((xt - np.asarray(xh)) ** 2).sum() / ((xt - xt.mean(0)) ** 2).sum())
            # match on the fit half, score the matched latents on the test half
            m_oos = mcc_out_of_sample(truth_last, np.concatenate([z_fit, z_test]),
                                      split=n_fit / len(truth_last))
            matched = np.asarray(m_oos.perm)
            res["sae"][arch] = {
                "mcc_pearson_oos": m_oos.value,
                "mcc_pearson": float(mcc(truth_last[:n_fit], z_fit).value),
                "l0": float((np.asarray(aux["z"]) > 0).sum(-1).mean()),
                "fvu": fvu,
                "matched_latents": matched.tolist(),
                "wall_s": wall,
            }
            sae_params[arch] = (scfg, sp, matched, z_fit)

        # (c) latent-SCM model
        res["crl"] = {k: v for k, v in crl_scores[li].items()
                      if k in ("mcc_pearson", "mcc_pearson_oos", "mcc_spearman", "r2_linear",
                               "shd", "shd_svi", "edge_auroc", "mcc_per_latent")}

        # (3) interventions: probe clamping
        post_all = post[:n_fit, 1::2].reshape(-1, d * K)  # cue positions
        a_all = a[:n_fit, 1::2].reshape(-1, a.shape[-1])
        w = probe_readout(a_all, post_all)
        deltas = steering_deltas(w, n_latents=d, n_values=K, scale=cfg.probe_scale)
        bel = beliefs_with(hook)
        e_probe = np.asarray(effect_matrix(lambda dl, bel=bel: bel(add_vector(dl)), deltas,
                                           base))
        res["effects"] = {"probe": {**score_effects(e_probe, adj),
                                    "matrix": np.round(e_probe, 5).tolist()}}
        out["_arrays"][f"{lab}/effects_probe"] = e_probe

        # SAE clamping: the latent matched to z_i (first variable of latent i) set to 0 or
        # to its 95th percentile of firing values
        for arch, (scfg, sp, matched, z_fit) in sae_params.items():
            feats = np.asarray(matched[:: K - 1][:d]) if len(matched) >= d else None
            if feats is None:
                continue
            highs = np.array([np.percentile(z_fit[:, f][z_fit[:, f] > 0], 95)
                              if (z_fit[:, f] > 0).any() else 1.0 for f in feats])
            edits = {"f": jnp.repeat(jnp.asarray(feats)[:, None], 2, 1),
                     "a": jnp.stack([jnp.zeros(d), jnp.asarray(highs, jnp.float32)], 1)}
            def clamp_beliefs(e, sp=sp, clamp=SAEClamp(scfg), bel=bel):
                return bel(replace_with(clamp, sp, e["f"], e["a"]))

            e_sae = np.asarray(effect_matrix(clamp_beliefs, edits, base))
            res["effects"][f"sae_{arch}"] = {**score_effects(e_sae, adj),
                                             "matrix": np.round(e_sae, 5).tolist()}
            out["_arrays"][f"{lab}/effects_sae_{arch}"] = e_sae
        out[lab] = res

    out["crl_wall_s"] = crl_wall
    out["wall_s"] = time.perf_counter() - t_start
    return out


def format_table(res: dict) -> str:
    """One row per layer: identifiability (probe, SAEs, latent-SCM), graph, interventions."""
    archs = list(res[res["layers"][0]]["sae"])
    head = (f"{'layer':6s} {'probe MCC':>9s} {'probe R2':>8s} "
            + " ".join(f"{'SAE ' + a:>13s}" for a in archs)
            + f" {'CRL MCC':>8s} {'CRL SHD':>8s} {'CRL AUROC':>9s} {'edit AUROC(probe)':>17s}"
            + " ".join(f" {'edit AUROC(' + a + ')':>18s}" for a in archs))
    rows = [head, "-" * len(head)]
    for lab in res["layers"]:
        r = res[lab]
        line = (f"{lab:6s} {r['probe']['mcc_pearson']:9.3f} {r['probe']['r2']:8.3f} "
                + " ".join(f"{r['sae'][a]['mcc_pearson_oos']:13.3f}" for a in archs)
                + f" {r['crl'].get('mcc_pearson_oos', float('nan')):8.3f}"
                f" {r['crl'].get('shd', float('nan')):8.1f}"
                f" {r['crl'].get('edge_auroc', float('nan')):9.3f}"
                f" {r['effects']['probe']['auroc_descendants']:17.3f}"
                + " ".join(f" {_edit_auroc(r, 'sae_' + a):18.3f}" for a in archs))
        rows.append(line)
    return "\n".join(rows)


def _edit_auroc(r: dict, name: str) -> float:
    return r["effects"].get(name, {}).get("auroc_descendants", float("nan"))
