"""SAEs on a transformer's residual stream, end to end: stream, sweep, evaluate, probe.

The logic behind ``experiments/sae_probe.py``. For a model trained on a latent-SCM language
(:mod:`jaxcrl.scm.language`):

1. activations at ``hook`` stream from the transformer (fresh sequences sampled on device,
   ``run_with_cache`` with ``stop_at_layer``) through a shuffled buffer;
2. per architecture, a sweep of SAEs differing in their sparsity knob (``k`` for TopK and
   BatchTopK, the L1 coefficient for ReLU, the L0 coefficient for JumpReLU) trains as one
   vmapped program sharing every activation batch;
3. every SAE is evaluated on held-out sequences: L0, FVU, dead/dense fractions, latent
   density, and cross-entropy loss recovered when its reconstruction is spliced into the
   forward pass (against zero-ablation);
4. identifiability: MCC between SAE latents and the exact posterior marginals
   ``p(z_i = k | prefix)`` at every position (the variables a Bayes-optimal reader holds);
5. SAEBench-style sparse probing: for each latent ``z_i``, the binary task
   ``z_i == 0`` from mean-pooled activations of a sequence, on the top-``k`` SAE latents by
   class-mean difference (and on raw residual channels as the baseline).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.analysis.interventions import sae_hook
from jaxcrl.checkpoint import register_config
from jaxcrl.sae import model as sae_model
from jaxcrl.sae.architectures import ARCHITECTURES
from jaxcrl.sae.architectures import get as get_architecture
from jaxcrl.sae.config import SAEConfig
from jaxcrl.sae.metrics import ce_loss_recovered, evaluate
from jaxcrl.sae.probe import identifiability, sparse_probe
from jaxcrl.sae.source import generator_source, transformer_generator
from jaxcrl.sae.training import train_sweep
from jaxcrl.scm.language import sample, sample_jit


@register_config(aliases=("jaxcrl.sae.pipeline:SAEProbeConfig",))  # before the move
@dataclasses.dataclass(frozen=True)
class SAEProbeConfig:
    """What to train and evaluate.

    Attributes:
      layer: residual stream after block ``layer`` (``blocks.{layer}.hook_resid_post``).
      architectures: SAE architectures (one vmapped sweep each).
      expansion: ``d_sae / d_model``.
      ks: swept ``k`` of TopK/BatchTopK.
      l1_coefficients: swept L1 coefficients of ReLU SAEs.
      l0_coefficients: swept L0 coefficients of JumpReLU SAEs.
      dead_tokens: tokens without firing after which a latent counts as dead and gets the
        AuxK loss (SAEConfig's 10M default is longer than these short runs).
      steps, lr: SAE training.
      seqs_per_batch: sequences per streamed batch (``seqs_per_batch * T`` activations).
      buffer_batches: shuffle-buffer size in batches.
      n_eval: held-out sequences for evaluation, probing and CE recovered.
      target_l0: the L0 the headline row of each architecture is closest to.
      seed: root seed.
    """

    layer: int = 0
    architectures: tuple[str, ...] = ("relu", "topk", "batchtopk", "jumprelu")
    expansion: int = 8
    ks: tuple[int, ...] = (4, 8, 16, 32)
    l1_coefficients: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)
    l0_coefficients: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    dead_tokens: int = 200_000
    steps: int = 2000
    lr: float = 1e-3
    seqs_per_batch: int = 32
    buffer_batches: int = 8
    n_eval: int = 512
    target_l0: float = 32.0
    seed: int = 0

    @classmethod
    def tiny(cls, **override) -> SAEProbeConfig:
        return cls(**{"architectures": ("topk", "relu"), "expansion": 4, "ks": (4, 8),
                      "l1_coefficients": (1.0, 5.0), "steps": 100, "seqs_per_batch": 8,
                      "buffer_batches": 2, "n_eval": 64, "target_l0": 8.0, **override})

    def sweep(self, arch: str) -> dict[str, tuple]:
        knob = get_architecture(arch).knob
        values = {"k": self.ks, "l1_coefficient": self.l1_coefficients,
                  "l0_coefficient": self.l0_coefficients}[knob]
        return {knob: tuple(values)}


def run(model, params, task, cfg: SAEProbeConfig, *, progress: bool = False) -> dict:
    """Trains, evaluates and probes SAEs at ``blocks.{cfg.layer}.hook_resid_post``.

    Returns:
      ``{"hook", "raw_probe", "architectures": {arch: {headline metrics, "frontier": [...]}}}``
      plus ``"_arrays"`` (densities, the best MCC matrix) for plotting.
    """
    t_start = time.perf_counter()
    hook = f"blocks.{cfg.layer}.hook_resid_post"
    d_model = model.cfg.d_model
    seq_len = task.cfg.seq_len
    d, K = task.cfg.n_latents, task.cfg.n_values
    k_train, k_eval, k_sae = jax.random.split(jax.random.key(cfg.seed), 3)
    rows = cfg.seqs_per_batch * seq_len

    def sample_tokens(key):
        return sample(task, key, cfg.seqs_per_batch).tokens

    gen = transformer_generator(model, params, sample_tokens, hook,
                                stop_at_layer=cfg.layer + 1)
    source = generator_source(gen, d_model, rows, buffer_size=rows * cfg.buffer_batches)

    # held-out data: tokens, activations at every position, exact posteriors, true latents
    ev = sample_jit(task, k_eval, cfg.n_eval, with_posterior=True)
    _, cache = model.run_with_cache(params, ev.tokens, names=[hook])
    acts = np.asarray(cache[hook])  # [N, T, D]
    flat = acts.reshape(-1, d_model)
    post = np.asarray(ev.posterior).reshape(-1, d * K)  # per position
    z = np.asarray(ev.latents)
    half = cfg.n_eval // 2
    labels = (z == 0).astype(np.float32)  # [N, d] binary tasks

    def probe_tasks(features):  # features [N, F], mean-pooled per sequence
        accs: dict[str, list] = {}
        for i in range(d):
            y = labels[:, i]
            if y[:half].min() == y[:half].max() or y[half:].min() == y[half:].max():
                continue
            r = sparse_probe(features[:half], y[:half], features[half:], y[half:])
            for k, v in r["k"].items():
                accs.setdefault(f"top{k}", []).append(v)
            accs.setdefault("full", []).append(r["full"])
        return {k: float(np.mean(v)) for k, v in accs.items()}

    out: dict[str, Any] = {"hook": hook, "d_model": d_model,
                           "raw_probe": probe_tasks(acts.mean(1)), "architectures": {},
                           "_arrays": {}}
    sub = np.linspace(0, flat.shape[0] - 1, min(flat.shape[0], 4000)).astype(int)
    for arch in cfg.architectures:
        base = SAEConfig(architecture=arch, d_in=d_model, d_sae=cfg.expansion * d_model,
                         k=max(cfg.ks), steps=cfg.steps, batch_size=rows, lr=cfg.lr,
                         dead_tokens=cfg.dead_tokens, hook_name=hook)
        t0 = time.perf_counter()
        arch_seed = list(ARCHITECTURES).index(arch)  # registration order: relu, topk, ...
        res = train_sweep(base, source, jax.random.fold_in(k_sae, arch_seed),
                          values=cfg.sweep(arch), progress=progress)
        wall = time.perf_counter() - t0
        frontier = []
        knob = get_architecture(arch).knob
        for i, c in enumerate(res.cfgs):
            p = res.params(i)
            ev_m = evaluate(p, flat, c)
            ce = ce_loss_recovered(model, params, ev.tokens, hook, sae_hook(p, c))
            zs = np.asarray(sae_model.encode(p, jnp.asarray(flat), c, inference=True))
            ident = identifiability(zs[sub], post[sub])
            pooled = zs.reshape(cfg.n_eval, seq_len, -1).mean(1)
            frontier.append({
                knob: getattr(c, knob), "l0": ev_m["l0"], "fvu": ev_m["fvu"],
                "dead_fraction": ev_m["dead_fraction"],
                "dense_fraction": ev_m["dense_fraction"],
                "ce_loss_recovered": ce["ce_loss_recovered"], "ce_sae": ce["ce_sae"],
                "ce_clean": ce["ce_clean"], "ce_zero": ce["ce_zero"],
                "latent_mcc": float(ident["mcc"]), "latent_r2": float(ident["r2"]),
                "sparse_probe": probe_tasks(pooled)})
            out["_arrays"][f"{arch}/{i}/density"] = ev_m["density"]
            out["_arrays"][f"{arch}/{i}/corr"] = _matched_corr(zs[sub], post[sub], ident)
        best = int(np.argmin([abs(np.log(max(f["l0"], 1e-3) / cfg.target_l0))
                              for f in frontier]))
        head = frontier[best]
        out["architectures"][arch] = {
            "l0": head["l0"], "fvu": head["fvu"], "ce_loss_recovered": head["ce_loss_recovered"],
            "dead_fraction": head["dead_fraction"], "latent_mcc": head["latent_mcc"],
            "sparse_probe_accuracy": head["sparse_probe"].get("top1", float("nan")),
            "sparse_probe": head["sparse_probe"], "headline_index": best,
            "knob": knob, knob: head[knob], "frontier": frontier, "train_wall_s": wall,
            "steps_per_s": cfg.steps / max(res.history.get("wall_s", wall), 1e-9)}
    out["wall_s"] = time.perf_counter() - t_start
    return out


def _matched_corr(zs: np.ndarray, post: np.ndarray, ident: dict) -> np.ndarray:
    """``|corr|`` between each true variable and its matched SAE latent's neighbours:
    ``[d_true, d_true]`` matrix over the matched latents (diagonal = matched pairs)."""
    perm = np.asarray(ident["perm"])
    cols = np.where(perm >= 0, perm, 0)
    a = (post - post.mean(0)) / (post.std(0) + 1e-12)
    b = zs[:, cols]
    b = (b - b.mean(0)) / (b.std(0) + 1e-12)
    c = np.abs(a.T @ b) / len(a)
    c[:, perm < 0] = 0.0
    return c
