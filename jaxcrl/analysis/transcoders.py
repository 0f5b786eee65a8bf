"""SAEs, Matryoshka SAEs, transcoders and CLTs side by side on the latent-SCM language.

The logic behind ``experiments/transcoders.py``. For a transformer trained on a latent-SCM
language (:mod:`jaxcrl.scm.language`), with activations of ``n_sequences`` sequences at
every position:

1. **Dictionaries.** Per layer ``l``: a TopK SAE and a Matryoshka BatchTopK SAE on the
   residual stream ``blocks.l.hook_resid_post``; per-layer transcoders and one cross-layer
   transcoder from the MLP inputs ``blocks.l.ln2.hook_normalized`` to the MLP outputs
   ``blocks.l.hook_mlp_out`` (all layers in one program); each also with the
   decoder-orthogonality penalty at every weight of ``ortho_coefficients``.
2. **Replacement.** Transcoders and CLTs spliced in place of the MLPs
   (:func:`jaxcrl.analysis.replacement.replacement_ce`): CE loss recovered per layer and for
   all layers at once, the fraction of the MLP output explained, L0 per layer.
3. **Identifiability.** Out-of-sample MCC (Hungarian matching on one half, scored on the
   other) between each layer's latents at the last position and the exact posterior beliefs
   ``p(z_i = 1 | tokens)``.
4. **Interventions.** For each latent ``z_i``, the dictionary feature matched to it is set
   to 0 and to its 95th percentile at every position (SAEs: ``x + (a − f(x)) d_f`` in the
   residual stream; transcoders/CLTs: the same write added to the MLP output of its layer
   and, for a CLT, of every later layer, the MLPs running as usual), and the model's beliefs
   about every latent are read (:func:`jaxcrl.analysis.latent_beliefs`). The effect matrix is
   scored against the true descendant relation (AUROC, :func:`~jaxcrl.analysis.score_effects`).
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
    score_effects,
)
from jaxcrl.analysis.probes import collect
from jaxcrl.analysis.replacement import mlp_hooks, replacement_ce
from jaxcrl.checkpoint import register_config
from jaxcrl.lm.model import replace_with, splice
from jaxcrl.metrics import mcc_out_of_sample
from jaxcrl.sae import clt
from jaxcrl.sae.clt import CLTConfig
from jaxcrl.sae.config import SAEConfig
from jaxcrl.sae.model import encode as sae_encode
from jaxcrl.sae.penalties import decoder_overlap
from jaxcrl.sae.source import array_source
from jaxcrl.sae.training import train as train_dict
from jaxcrl.scm.language import Task, sample_jit


@register_config
@dataclasses.dataclass(frozen=True)
class TranscoderStudyConfig:
    """Sizes of the study.

    Attributes:
      expansion: features per layer / d_model.
      k: active features per layer and token (TopK kinds; L0 <= k).
      steps, batch_size, lr: dictionary training.
      ortho_coefficients: orthogonality weights swept (0 = without the penalty).
      n_sequences: observational sequences (half to fit the matching, half to score).
      n_steer: sequences the intervention effects are averaged over.
      seed: root seed.
    """

    expansion: int = 4
    k: int = 16
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 1e-3
    ortho_coefficients: tuple[float, ...] = (0.0, 1.0, 10.0)
    n_sequences: int = 2048
    n_steer: int = 128
    seed: int = 0

    @classmethod
    def tiny(cls, **override) -> TranscoderStudyConfig:
        return cls(**{"expansion": 2, "k": 4, "steps": 60, "batch_size": 256, "lr": 3e-3,
                      "ortho_coefficients": (0.0, 1.0), "n_sequences": 128, "n_steer": 8,
                      **override})


@dataclasses.dataclass(frozen=True)
class CLTClamp:
    """``y_t -> y_t + (a − z_f(x_s)) W_dec[(s, t), f]`` at every position: feature ``f`` of
    layer ``s`` set to ``a`` (traced ``f``, ``a``), the MLP otherwise untouched."""

    cfg: CLTConfig
    source: int
    target: int

    def __call__(self, y, xs, params, f, a):
        cfg, s, t = self.cfg, self.source, self.target
        x = xs[0].reshape(-1, xs[0].shape[-1]).astype(jnp.float32)
        pre = x @ params["W_enc"][s] + params["b_enc"][s]
        z = cfg.arch.activate({n: params[n][s] for n in cfg.arch.init_extra(cfg)}, pre, cfg,
                              k=cfg.k, inference=True)
        zf = jnp.take(z, f, axis=1)
        lo, _ = cfg.block_range(s)
        w = jnp.take(params["W_dec"][lo + (t - s if cfg.cross_layer else 0)], f, axis=0)
        return (y + ((a - zf).reshape(y.shape[:-1]))[..., None] * w).astype(y.dtype)


def clt_clamp_hooks(cfg: CLTConfig, params: dict, layer: int, f: Any, a: Any) -> dict:
    """Hooks setting feature ``f`` of ``layer`` to ``a`` in the MLP outputs it writes."""
    targets = range(layer, cfg.n_layers) if cfg.cross_layer else (layer,)
    return {cfg.out_hooks[t]: splice(CLTClamp(cfg, layer, t), (cfg.in_hooks[layer],), params,
                                     f, a) for t in targets}


def _variables(post: np.ndarray) -> np.ndarray:
    return post[..., 1:].reshape(*post.shape[:-2], -1)


def run(model: Any, params: Any, task: Task, cfg: TranscoderStudyConfig, *,
        progress: bool = False) -> dict[str, Any]:
    """Trains, splices, matches and intervenes (see the module docstring)."""
    t_start = time.perf_counter()
    tc = task.cfg
    d, L, D = tc.n_latents, model.cfg.n_layers, model.cfg.d_model
    F = cfg.expansion * D
    root = jax.random.key(cfg.seed)
    k_obs, k_dict = jax.random.split(root)
    batch = sample_jit(task, k_obs, cfg.n_sequences, with_posterior=True)
    ins, outs = mlp_hooks(L)
    resid = [f"blocks.{i}.hook_resid_post" for i in range(L)]
    acts = collect(model, params, batch.tokens, [*ins, *outs, *resid])
    truth = _variables(np.asarray(batch.posterior)[:, -1])  # [N, d]
    half = cfg.n_sequences // 2
    adj = np.asarray(task.adj)
    steer = batch.tokens[-cfg.n_steer:]
    base_beliefs = latent_beliefs_jit(model, params, steer, task_cfg=tc)
    eval_tokens = batch.tokens[half:][:256]

    def beliefs(hooks):
        return latent_beliefs_jit(model, params, steer, task_cfg=tc, hooks=hooks)

    common = dict(k=cfg.k, d_sae=F, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                  warmup=min(100, cfg.steps // 10), dead_tokens=200_000)
    out: dict[str, Any] = {"layers": L, "d_model": D, "features_per_layer": F,
                           "dictionaries": {}, "_arrays": {"adj": adj}}

    def score(name, lat_last, layer_clamp, zfit_all):
        """MCC and intervention effects for one dictionary at one layer."""
        m = mcc_out_of_sample(truth, lat_last, split=0.5)
        matched = np.asarray(m.perm)[:d]
        feats = matched if (matched >= 0).all() else None
        res = {"mcc_oos": float(m.value)}
        if feats is not None:
            zf = zfit_all[:, feats]
            highs = np.array([np.percentile(zf[:, i][zf[:, i] > 0], 95)
                              if (zf[:, i] > 0).any() else 1.0 for i in range(d)])
            edits = {"f": jnp.repeat(jnp.asarray(feats)[:, None], 2, 1),
                     "a": jnp.stack([jnp.zeros(d), jnp.asarray(highs, jnp.float32)], 1)}
            e = np.asarray(effect_matrix(lambda ed: beliefs(layer_clamp(ed["f"], ed["a"])),
                                         edits, base_beliefs))
            res.update({k: v for k, v in score_effects(e, adj).items()})
            out["_arrays"][f"{name}/effects"] = e
        return res

    for oc in cfg.ortho_coefficients:
        tag = f"ortho{oc:g}"
        # -- SAEs (TopK, Matryoshka) on each layer's residual stream
        for arch in ("topk", "matryoshka_batchtopk"):
            for li in range(L):
                a = acts[resid[li]]
                flat = a.reshape(-1, D)
                scfg = SAEConfig(architecture=arch, d_in=D, ortho_coefficient=oc,
                                 hook_name=resid[li], **common)
                t0 = time.perf_counter()
                r = train_dict(scfg, array_source(flat, cfg.batch_size),
                               jax.random.fold_in(k_dict, li), progress=progress)
                p = r.params()
                z_all = np.asarray(sae_encode(p, jnp.asarray(flat), scfg, inference=True))
                z_last = z_all.reshape(len(a), -1, F)[:, -1]
                x_hat_fvu = float(r.history["fvu"][-1])

                def clamp(f, a_, p=p, scfg=scfg, li=li):
                    return {resid[li]: replace_with(SAEClamp(scfg), p, f, a_)}

                name = f"{'sae' if arch == 'topk' else 'matryoshka'}/{tag}/L{li}"
                res = score(name, z_last, clamp, z_last[:half])
                res.update({"l0": float((z_all > 0).sum(-1).mean()), "train_fvu": x_hat_fvu,
                            "ortho": decoder_overlap(p["W_dec"]), "layer": li,
                            "wall_s": time.perf_counter() - t0})
                out["dictionaries"][name] = res
        # -- per-layer transcoders and the CLT (all layers in one program each)
        rows = clt.pair_rows(np.stack([acts[h].reshape(-1, D) for h in ins], 1),
                             np.stack([acts[h].reshape(-1, D) for h in outs], 1))
        for kind, cross in (("transcoder", False), ("clt", True)):
            ccfg = CLTConfig(d_in=D, d_out=D, n_layers=L, cross_layer=cross, in_hooks=ins,
                             out_hooks=outs, ortho_coefficient=oc, **common)
            t0 = time.perf_counter()
            r = train_dict(ccfg, array_source(rows, cfg.batch_size),
                           jax.random.fold_in(k_dict, 100 + int(cross)), progress=progress)
            wall = time.perf_counter() - t0
            p = r.params()
            ev = clt.evaluate(p, rows, ccfg)
            ce = replacement_ce(model, params, eval_tokens, ccfg, p)
            x = jnp.asarray(np.stack([acts[h] for h in ins], 2).reshape(-1, L, D))
            z = np.asarray(clt.encode(p, x, ccfg, inference=True)).reshape(
                cfg.n_sequences, -1, L, F)
            for li in range(L):
                z_last = z[:, -1, li]

                def clamp(f, a_, p=p, ccfg=ccfg, li=li):
                    return clt_clamp_hooks(ccfg, p, li, f, a_)

                name = f"{kind}/{tag}/L{li}"
                res = score(name, z_last, clamp, z_last[:half])
                res.update({"l0": ev["l0_per_layer"][li], "fvu": ev["fvu_per_layer"][li],
                            "ce_loss_recovered": ce["layers"][li]["ce_loss_recovered"],
                            "mlp_explained": ce["layers"][li]["mlp_explained"],
                            "ce_loss_recovered_all_layers": ce["all"]["ce_loss_recovered"],
                            "ortho": decoder_overlap(np.concatenate(
                                list(np.asarray(p["W_dec"])))), "layer": li,
                            "wall_s": wall})
                out["dictionaries"][name] = res
    out["wall_s"] = time.perf_counter() - t_start
    return out


def format_table(res: dict) -> str:
    """One row per dictionary, orthogonality weight and layer."""
    head = (f"{'dictionary':34s} {'L0':>6s} {'CE rec.':>8s} {'MLP expl.':>9s} {'MCC':>6s} "
            f"{'AUROC':>6s} {'own':>6s} {'|cos|':>6s}")
    rows = [head, "-" * len(head)]
    for name, r in res["dictionaries"].items():
        rows.append(f"{name:34s} {r['l0']:6.1f} {r.get('ce_loss_recovered', float('nan')):8.3f}"
                    f" {r.get('mlp_explained', float('nan')):9.3f} {r['mcc_oos']:6.3f}"
                    f" {r.get('auroc_descendants', float('nan')):6.3f}"
                    f" {r.get('own_effect', float('nan')):6.3f}"
                    f" {r['ortho']['mean_abs_cos']:6.3f}")
    return "\n".join(rows)
