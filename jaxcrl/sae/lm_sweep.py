"""TopK SAE sweeps on a pretrained language model's activations over real text.

The logic behind ``experiments/sae_lm.py``. Given a hooked model, its params and packed text
contexts (:func:`jaxcrl.lm.text.token_dataset`):

1. **one forward pass** over the training contexts writes the activations at every
   requested hook to an on-disk cache (:mod:`jaxcrl.sae.cache`; resumable);
2. per hook, a sweep of TopK SAEs over ``k`` trains as one vmapped program
   (:func:`jaxcrl.sae.train_sweep`) from a shuffled source over the cache's shards;
3. every SAE is evaluated on held-out contexts: L0, FVU, MSE, dead/dense fractions, and
   cross-entropy loss recovered with its reconstruction spliced into the forward pass at
   its hook, against zero-ablation (``(CE_zero − CE_sae) / (CE_zero − CE_clean)``);
4. each SAE is exported in the SAELens layout (``saes/{hook}/k{k}``).

Rerunning on the same ``workdir`` resumes: complete cache shards are skipped and each sweep
continues from its latest checkpoint (``ckpt/{hook}``).

Positions ``< start_pos`` (BOS, whose residual norms are outliers) are neither trained on
nor spliced: the clean activation stays there in the CE runs, for the SAE and the zero
baseline alike.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.checkpoint import register_config
from jaxcrl.sae.cache import cache_activations, cache_source
from jaxcrl.sae.config import SAEConfig
from jaxcrl.sae.metrics import evaluate, next_token_ce
from jaxcrl.sae.model import Reconstruct
from jaxcrl.sae.saelens import export_saelens
from jaxcrl.sae.training import train_sweep


@register_config
@dataclasses.dataclass(frozen=True)
class LMSweepConfig:
    """What to cache, train and evaluate.

    Attributes:
      hooks: TransformerLens hook names (``[B, T, d]`` activations), all cached in one pass.
      ks: swept TopK ``k`` (one vmapped program per hook).
      expansion: ``d_sae / d_in``.
      steps, batch_size, lr: SAE training (Adam).
      dead_tokens: tokens without firing after which a latent gets the AuxK loss.
      start_pos: first position trained on and spliced (1 skips BOS).
      seqs_per_shard, forward_batch: cache layout and sequences per forward pass.
      max_rows: cached rows held on the device at once (a random subset across shards,
        redrawn every ``refresh_every`` steps when the cache is larger).
      refresh_every: steps between redraws (None: ``steps // 4``).
      eval_batch: sequences per evaluation forward pass.
      save_every: steps between SAE checkpoints (``workdir/ckpt/{hook}``; a rerun resumes
        the activation cache and every sweep from where it stopped).
      seed: root seed.
    """

    hooks: tuple[str, ...] = ("blocks.0.hook_resid_post",)
    ks: tuple[int, ...] = (16, 32, 64)
    expansion: int = 8
    steps: int = 2000
    batch_size: int = 4096
    lr: float = 3e-4
    dead_tokens: int = 1_000_000
    start_pos: int = 1
    seqs_per_shard: int = 64
    forward_batch: int = 16
    max_rows: int = 1_000_000
    refresh_every: int | None = None
    eval_batch: int = 8
    save_every: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("LMSweepConfig.hooks must name at least one hook")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"LMSweepConfig.ks must be positive, got {self.ks}")
        for name in ("expansion", "steps", "batch_size", "seqs_per_shard", "forward_batch",
                     "max_rows", "eval_batch", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LMSweepConfig.{name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if self.seqs_per_shard % self.forward_batch:
            raise ValueError(f"LMSweepConfig.forward_batch={self.forward_batch} must divide "
                             f"seqs_per_shard={self.seqs_per_shard}")
        if self.start_pos < 0:
            raise ValueError(f"LMSweepConfig.start_pos must be >= 0, got {self.start_pos}")

    @classmethod
    def tiny(cls, **override) -> LMSweepConfig:
        """Seconds on a CPU (tests)."""
        return cls(**{"ks": (2, 4), "expansion": 2, "steps": 60, "batch_size": 64,
                      "lr": 3e-3, "dead_tokens": 2000, "seqs_per_shard": 4,
                      "forward_batch": 4, "eval_batch": 4, **override})


def _splice(fn: Callable[[jax.Array], jax.Array], start_pos: int
            ) -> Callable[[jax.Array], jax.Array]:
    """``x [B, T, ...] -> x`` with ``fn`` applied at positions ``>= start_pos`` only."""
    if start_pos == 0:
        return fn

    def hook(x):
        return jnp.concatenate([x[:, :start_pos], fn(x[:, start_pos:])], axis=1)

    return hook


def _recovered(clean: float, spliced: float, zero: float) -> float:
    """``(zero − spliced) / (zero − clean)``; NaN when zero-ablation costs nothing."""
    return (zero - spliced) / (zero - clean) if zero != clean else float("nan")


def _last(history: Any) -> Any:
    """Last row of a per-step history (None when this call resumed a finished sweep)."""
    return None if history is None or len(history) == 0 else np.asarray(history[-1]).tolist()


def mean_ce(model: Any, params: Any, tokens: np.ndarray, batch: int,
            hooks: dict | None = None) -> float:
    """Mean next-token cross-entropy over ``tokens`` ``[N, T]`` in batches of ``batch``
    sequences (with ``hooks`` applied; equal-size batches weighted alike)."""
    total, n = 0.0, 0
    for i in range(0, len(tokens), batch):
        toks = jnp.asarray(tokens[i:i + batch])
        logits = (model.apply(params, toks) if not hooks
                  else model.run_with_hooks(params, toks, hooks=hooks))
        total += float(next_token_ce(logits, toks)) * len(toks)
        n += len(toks)
    return total / n


def eval_activations(model: Any, params: Any, tokens: np.ndarray, hooks: tuple[str, ...],
                     batch: int, start_pos: int) -> dict[str, np.ndarray]:
    """``{hook: [N * (T - start_pos), d]}`` float32 activations on ``tokens`` ``[N, T]``."""
    parts: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    for i in range(0, len(tokens), batch):
        _, cache = model.run_with_cache(params, jnp.asarray(tokens[i:i + batch]),
                                        names=list(hooks))
        for h in hooks:
            a = np.asarray(cache[h], np.float32)[:, start_pos:]
            parts[h].append(a.reshape(-1, int(np.prod(a.shape[2:]))))
    return {h: np.concatenate(v) for h, v in parts.items()}


def run(model: Any, params: Any, train_tokens: Any, eval_tokens: Any, cfg: LMSweepConfig,
        workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Caches activations, trains a TopK sweep per hook, evaluates and exports every SAE.

    Args:
      model: ``HookedTransformer``-like (``apply``, ``run_with_cache``, ``run_with_hooks``).
      params: its params.
      train_tokens: int ``[N, T]`` training contexts (cached to disk in one pass).
      eval_tokens: int ``[M, T]`` held-out contexts.
      cfg: the sweep.
      workdir: holds ``acts/`` (the activation cache), ``ckpt/`` (SAE checkpoints; a rerun
        resumes both) and ``saes/`` (SAELens exports).
      progress: progress bars.

    Returns:
      ``{"hooks": {hook: {"runs": [{"k", "l0", "fvu", "mse", "dead_fraction",
      "dense_fraction", "ce_sae", "ce_loss_recovered", "sae_dir"}], "ce_zero",
      "train_wall_s", "d_in", "d_sae"}}, "ce_clean", "cache": {...}, "wall_s"}``.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    train_tokens, eval_tokens = np.asarray(train_tokens), np.asarray(eval_tokens)
    if eval_tokens.ndim != 2 or eval_tokens.shape[1] != train_tokens.shape[1]:
        raise ValueError(f"eval_tokens {eval_tokens.shape} must be [M, T] with the T of "
                         f"train_tokens {train_tokens.shape}")
    if cfg.start_pos >= train_tokens.shape[1] - 1:
        raise ValueError(f"start_pos={cfg.start_pos} leaves no positions in contexts of "
                         f"{train_tokens.shape[1]}")
    t0 = time.perf_counter()
    cache = cache_activations(model, params, train_tokens, cfg.hooks, workdir / "acts",
                              seqs_per_shard=cfg.seqs_per_shard, batch_size=cfg.forward_batch,
                              start_pos=cfg.start_pos, progress=progress)
    cache_wall = time.perf_counter() - t0
    ev_acts = eval_activations(model, params, eval_tokens, cfg.hooks, cfg.eval_batch,
                               cfg.start_pos)
    ce_clean = mean_ce(model, params, eval_tokens, cfg.eval_batch)
    root = jax.random.key(cfg.seed)
    out: dict[str, Any] = {"ce_clean": ce_clean, "hooks": {}, "cache": {
        "rows_per_hook": cache.n_rows(cfg.hooks[0]), "shards": cache.n_shards(cfg.hooks[0]),
        "wall_s": cache_wall, "dir": str(cache.root)}}
    for j, hook in enumerate(cfg.hooks):
        d = cache.d(hook)
        batch = min(cfg.batch_size, cache.n_rows(hook))
        base = SAEConfig(architecture="topk", d_in=d, d_sae=cfg.expansion * d,
                         k=max(cfg.ks), steps=cfg.steps, batch_size=batch, lr=cfg.lr,
                         warmup=min(100, cfg.steps // 10), dead_tokens=cfg.dead_tokens,
                         hook_name=hook)
        src = cache_source(cache, hook, batch, max_rows=cfg.max_rows)
        every = cfg.refresh_every or max(1, cfg.steps // 4)
        t0 = time.perf_counter()
        res = train_sweep(base, src, jax.random.fold_in(root, j), values={"k": list(cfg.ks)},
                          refresh_every=every, progress=progress,
                          workdir=workdir / "ckpt" / hook, save_every=cfg.save_every)
        wall = time.perf_counter() - t0
        ce_zero = mean_ce(model, params, eval_tokens, cfg.eval_batch,
                          {hook: _splice(jnp.zeros_like, cfg.start_pos)})
        runs = []
        for i, c in enumerate(res.cfgs):
            p = res.params(i)
            m = evaluate(p, ev_acts[hook], c)
            ce_sae = mean_ce(model, params, eval_tokens, cfg.eval_batch,
                             {hook: _splice(functools.partial(Reconstruct(c), params=p),
                                                   cfg.start_pos)})
            sae_dir = export_saelens(workdir / "saes" / hook / f"k{c.k}", p, c,
                                     extra={"start_pos": cfg.start_pos})
            runs.append({"k": c.k, "l0": m["l0"], "fvu": m["fvu"], "mse": m["mse"],
                         "dead_fraction": m["dead_fraction"],
                         "dense_fraction": m["dense_fraction"], "ce_sae": ce_sae,
                         "ce_loss_recovered": _recovered(ce_clean, ce_sae, ce_zero),
                         "sae_dir": str(sae_dir)})
        out["hooks"][hook] = {"runs": runs, "ce_zero": ce_zero, "train_wall_s": wall,
                              "d_in": d, "d_sae": base.d_sae,
                              "final_train_fvu": _last(res.history.get("fvu"))}
    out["wall_s"] = time.perf_counter() - t_start
    return out
