"""Replacement models: transcoders and CLTs spliced into a transformer in place of its MLPs.

Every MLP output hook ``out_hooks[t]`` (e.g. ``blocks.t.hook_mlp_out``) is replaced, through
a :class:`jaxcrl.lm.Splice` hook, by the dictionary's prediction ``ŷ_t`` computed from the
inputs ``in_hooks[s]`` (``s <= t``) *of the same forward*: the replacement's own earlier
layers feed its later ones, attention and norms run as in the model. Scores:

- **CE loss recovered** ``(CE_zero − CE_replaced) / (CE_zero − CE_clean)`` with the MLP
  outputs zero-ablated as the baseline (:func:`replacement_ce`), for each layer alone and
  for all layers at once;
- **fraction of the MLP output explained** ``1 − FVU`` of the dictionary's prediction
  against the true MLP output on the clean forward (per layer).

With ``error=True`` the splice adds the dictionary's error ``y_t − ŷ_t`` of the *clean*
forward back (a constant), so the spliced model reproduces the original exactly; an edit of
a feature then moves only what the feature itself writes (the "local replacement" of
circuit tracing, used by :mod:`jaxcrl.analysis.attribution` and for clamping features).

Widths and layers are checked before anything compiles (:func:`check_splice`): a
dictionary spliced at a hook of another width, or asked for layers the model lacks, is a
clear ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.lm.model import splice
from jaxcrl.sae import clt
from jaxcrl.sae.clt import CLTConfig
from jaxcrl.sae.metrics import next_token_ce


def mlp_hooks(n_layers: int, layers: Sequence[int] | None = None, *,
              reads: str = "ln2.hook_normalized") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(in_hooks, out_hooks)`` of the MLPs of ``layers`` (default all): inputs
    ``blocks.{l}.{reads}`` (the MLP's input; ``hook_resid_mid`` reads the residual stream
    instead), outputs ``blocks.{l}.hook_mlp_out``."""
    layers = range(n_layers) if layers is None else layers
    return (tuple(f"blocks.{i}.{reads}" for i in layers),
            tuple(f"blocks.{i}.hook_mlp_out" for i in layers))


def _width(model: Any, params: Any, name: str) -> int:
    valid = set(model.hook_names)
    if name not in valid:
        n_layers = model.cfg.n_layers
        raise ValueError(f"hook {name!r} does not exist in this model ({n_layers} layers: "
                         f"blocks.0 .. blocks.{n_layers - 1}); a dictionary cannot be spliced "
                         "at layers the model lacks")
    toks = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    shape = jax.eval_shape(lambda p, t: model.run_with_cache(p, t, names=[name])[1][name],
                           params, toks).shape
    return int(np.prod(shape[2:]))


def check_splice(model: Any, params: Any, cfg: CLTConfig) -> None:
    """ValueError unless ``cfg`` names one existing input and output hook per layer, in
    forward order, with widths ``d_in`` and ``d_out``."""
    if len(cfg.in_hooks) != cfg.n_layers or len(cfg.out_hooks) != cfg.n_layers:
        raise ValueError(f"the dictionary needs in_hooks and out_hooks for its "
                         f"{cfg.n_layers} layer(s), got {cfg.in_hooks} and {cfg.out_hooks}")
    order = {n: i for i, n in enumerate(model.hook_names)}
    for hooks, d, what in ((cfg.in_hooks, cfg.d_in, "d_in"), (cfg.out_hooks, cfg.d_out, "d_out")):
        for h in hooks:
            w = _width(model, params, h)
            if w != d:
                raise ValueError(f"hook {h!r} has width {w} but the dictionary's {what} is "
                                 f"{d}: it cannot be spliced there")
    for s in range(cfg.n_layers):
        if order[cfg.in_hooks[s]] >= order[cfg.out_hooks[s]]:
            raise ValueError(f"in_hooks[{s}]={cfg.in_hooks[s]!r} must come before "
                             f"out_hooks[{s}]={cfg.out_hooks[s]!r} in the forward")
        if s and order[cfg.out_hooks[s - 1]] >= order[cfg.in_hooks[s]]:
            raise ValueError("layers must be in forward order: out_hooks[s-1] before in_hooks[s]")


@dataclasses.dataclass(frozen=True)
class LayerOutput:
    """Splice function: ``y -> ŷ_t`` (plus ``error``) from the inputs of layers ``<= t``."""

    cfg: CLTConfig
    target: int

    def __call__(self, y: jax.Array, xs: list[jax.Array], params: dict,
                 error: jax.Array | None = None) -> jax.Array:
        flat = [a.reshape(-1, a.shape[-1]).astype(jnp.float32) for a in xs]
        out = clt.layer_output(params, flat, self.cfg, self.target).reshape(y.shape)
        if error is not None:
            out = out + error
        return out.astype(y.dtype)


def replacement_hooks(cfg: CLTConfig, dict_params: dict, layers: Sequence[int] | None = None,
                      *, errors: dict | None = None) -> dict:
    """``{out_hooks[t]: Splice}`` replacing the MLP outputs of ``layers`` (default all).

    Args:
      cfg, dict_params: the dictionary (params on raw activations).
      errors: optional ``{t: [B, T, d_out]}`` added to layer ``t``'s prediction (the clean
        run's error, :func:`clean_errors`, for an exact local replacement).
    """
    layers = range(cfg.n_layers) if layers is None else layers
    hooks = {}
    for t in layers:
        if not 0 <= t < cfg.n_layers:
            raise ValueError(f"layer {t} is not one of the dictionary's {cfg.n_layers} layers")
        args = (dict_params,) if errors is None else (dict_params, errors[t])
        hooks[cfg.out_hooks[t]] = splice(LayerOutput(cfg, t), cfg.in_hooks[:t + 1], *args)
    return hooks


def clean_io(model: Any, params: Any, tokens: Any, cfg: CLTConfig
             ) -> tuple[list[jax.Array], list[jax.Array]]:
    """Inputs and outputs ``[B, T, d]`` of every layer on the clean forward."""
    _, cache = model.run_with_cache(params, tokens, names=[*cfg.in_hooks, *cfg.out_hooks])
    return [cache[h] for h in cfg.in_hooks], [cache[h] for h in cfg.out_hooks]


def clean_errors(model: Any, params: Any, tokens: Any, cfg: CLTConfig, dict_params: dict
                 ) -> dict[int, jax.Array]:
    """``{t: y_t − ŷ_t}`` on the clean forward (``[B, T, d_out]`` each)."""
    xs, ys = clean_io(model, params, tokens, cfg)
    out = {}
    for t in range(cfg.n_layers):
        pred = LayerOutput(cfg, t)(ys[t], xs[:t + 1], dict_params)
        out[t] = ys[t] - pred
    return out


def replacement_ce(model: Any, params: Any, tokens: Any, cfg: CLTConfig, dict_params: dict,
                   *, start_pos: int = 0) -> dict[str, Any]:
    """CE loss recovered and the fraction of MLP output explained, per layer and for all.

    Args:
      model, params: the transformer.
      tokens: ``[B, T]`` evaluation tokens.
      cfg, dict_params: the dictionary (raw-space params) with ``in_hooks``/``out_hooks``.
      start_pos: positions before it count in neither the FVU nor the CE (the forward is
        unchanged there only for the CE baseline; pass 0 to score every position).

    Returns:
      ``{"ce_clean", "layers": [{"layer", "ce_replaced", "ce_zero", "ce_loss_recovered",
      "fvu", "mlp_explained"}], "all": {"ce_replaced", "ce_zero", "ce_loss_recovered"}}``.
    """
    check_splice(model, params, cfg)
    tokens = jnp.asarray(tokens)

    def ce(hooks):
        logits = model.run_with_hooks(params, tokens, hooks) if hooks else model.apply(
            params, tokens)
        return float(next_token_ce(logits[:, start_pos:], tokens[:, start_pos:]))

    clean = ce(None)
    xs, ys = clean_io(model, params, tokens, cfg)
    zero = lambda layers: {cfg.out_hooks[t]: jnp.zeros_like for t in layers}
    rows = []
    for t in range(cfg.n_layers):
        pred = np.asarray(LayerOutput(cfg, t)(ys[t], xs[:t + 1], dict_params))[:, start_pos:]
        y = np.asarray(ys[t], np.float64)[:, start_pos:]
        y2 = y.reshape(-1, y.shape[-1])
        fvu = float(((y - pred) ** 2).sum() / ((y2 - y2.mean(0)) ** 2).sum())
        rep, zer = ce(replacement_hooks(cfg, dict_params, [t])), ce(zero([t]))
        rows.append({"layer": t, "ce_replaced": rep, "ce_zero": zer,
                     "ce_loss_recovered": _recovered(clean, rep, zer), "fvu": fvu,
                     "mlp_explained": 1.0 - fvu})
    rep, zer = ce(replacement_hooks(cfg, dict_params)), ce(zero(range(cfg.n_layers)))
    return {"ce_clean": clean, "layers": rows,
            "all": {"ce_replaced": rep, "ce_zero": zer,
                    "ce_loss_recovered": _recovered(clean, rep, zer)}}


def _recovered(clean: float, replaced: float, zero: float) -> float:
    return (zero - replaced) / (zero - clean) if zero != clean else float("nan")
