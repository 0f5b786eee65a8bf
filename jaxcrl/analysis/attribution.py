"""Attribution graphs for one prompt through a transcoder/CLT replacement model.

Following Anthropic's circuit tracing (Ameisen et al. 2025), the *local replacement model*
of a prompt is the transformer with every MLP output replaced by the dictionary's
prediction plus the dictionary's error on that prompt (so it reproduces the model exactly),
with the **attention patterns** (``attn.hook_pattern``) and the **norm scales**
(``*.hook_scale``) frozen at the original forward's values. With feature activations
injected as inputs, this model is *affine* in its inputs: token embeddings (one node per
position), feature activations (one node per active feature, layer and position) and error
vectors (one node per layer and position). The graph's edges are its exact linear
effects: the weight of the edge ``source -> target`` is ``J[target, source] · a_source``,
where ``J`` is the Jacobian (one ``jax.jacfwd``) of the targets, i.e. every active
feature's pre-activation and the chosen logits at the target position, with respect to the
inputs, and ``a_source`` the source's value (its activation; 1 for embeddings and errors,
which enter as whole vectors). Only direct paths count: other features are inputs, held
fixed.

Pruning by influence (as in circuit tracing): with ``Â`` the absolute adjacency matrix
normalised to unit incoming weight per node, ``B = (I − Â)⁻¹ − I`` sums the influence of
every path; a node's influence on the output is ``wᵀ B`` with ``w`` the logit nodes'
probabilities. Features are kept in order of influence until ``node_threshold`` of the
total is covered, edges (scored by ``influence(target) · Â``) until ``edge_threshold``.

:func:`attribution_graph` returns a JSON-able dict (nodes with kind, layer, position,
feature, activation, influence; edges with weights), :func:`write_graph` /
:func:`plot_graph` save it, :func:`ablate_feature` checks a node against the full model
(the exact local replacement with attention and norms live).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.analysis.replacement import check_splice, clean_errors, clean_io
from jaxcrl.lm.model import patch_from, replace_with, splice
from jaxcrl.sae import clt
from jaxcrl.sae.clt import CLTConfig


def _scale_positions(x: jax.Array, u: jax.Array) -> jax.Array:
    return x * u.astype(x.dtype)[None, :, None]


@dataclasses.dataclass(frozen=True)
class _InjectedMLP:
    """``y -> b_dec[t] + Σ_{s≤t} Z[s] W_dec[(s,t)] (+ x_t W_skip[t]) + w_err[:, None] err``."""

    cfg: CLTConfig
    target: int

    def __call__(self, y, xs, params, z, w_err, err):
        cfg, t = self.cfg, self.target
        out = params["b_dec"][t] + jnp.zeros(y.shape[1:], jnp.float32)  # [T, d_out]
        for s in (range(t + 1) if cfg.cross_layer else (t,)):
            lo, _ = cfg.block_range(s)
            out = out + z[s] @ params["W_dec"][lo + (t - s if cfg.cross_layer else 0)]
        if cfg.skip:
            out = out + xs[0][0].astype(jnp.float32) @ params["W_skip"][t]
        out = out + w_err[:, None] * err[0]
        return out[None].astype(y.dtype)


def frozen_names(model: Any) -> list[str]:
    """The hook points frozen in the local replacement: attention patterns, norm scales."""
    return [n for n in model.hook_names if n.endswith((".hook_pattern", ".hook_scale"))]


def local_replacement(model: Any, params: Any, tokens: Any, cfg: CLTConfig,
                      dict_params: dict):
    """The affine local replacement model of one prompt ``tokens [T]``.

    Returns ``(fn, info)``: ``fn(u [T], z [L, T, F], w_err [L, T]) -> (pre [L, T, F],
    logits [T, V])`` with embeddings scaled per position by ``u``, feature activations
    ``z`` injected and each layer's clean error scaled per position by ``w_err``
    (``u = 1``, ``z`` = the clean activations, ``w_err = 1`` reproduce the model);
    ``info`` holds ``z`` (clean activations), ``errors`` and the clean ``logits``.
    """
    check_splice(model, params, cfg)
    toks = jnp.asarray(tokens, jnp.int32).reshape(1, -1)
    frozen = frozen_names(model)
    logits, cache = model.run_with_cache(params, toks, names=frozen)
    xs, _ = clean_io(model, params, toks, cfg)
    errs = clean_errors(model, params, toks, cfg, dict_params)
    z0 = clt.encode(dict_params, jnp.stack([x[0] for x in xs], 1), cfg, inference=True)
    z0 = jnp.transpose(z0, (1, 0, 2))  # [L, T, F]
    base = {n: patch_from(cache[n]) for n in frozen}
    first = "blocks.0.hook_resid_pre"

    def fn(u, z, w_err):
        hooks = dict(base)
        hooks[first] = replace_with(_scale_positions, u)
        for t in range(cfg.n_layers):
            hooks[cfg.out_hooks[t]] = splice(_InjectedMLP(cfg, t), (cfg.in_hooks[t],),
                                             dict_params, z, w_err[t], errs[t])
        lg, c = model.run_with_cache(params, toks, names=list(cfg.in_hooks), hooks=hooks)
        x = jnp.stack([c[h][0].astype(jnp.float32) for h in cfg.in_hooks])  # [L, T, d_in]
        pre = jnp.einsum("lti,lif->ltf", x, dict_params["W_enc"]) + dict_params["b_enc"][:,
                                                                                          None]
        return pre, lg[0]

    return fn, {"z": z0, "errors": errs, "logits": logits[0]}


def attribution_graph(model: Any, params: Any, tokens: Any, cfg: CLTConfig, dict_params: dict,
                      *, target_pos: int = -1, logit_tokens: Any = None, n_logits: int = 3,
                      node_threshold: float = 0.8, edge_threshold: float = 0.98,
                      token_names: list[str] | None = None) -> dict[str, Any]:
    """The pruned attribution graph of one prompt.

    Args:
      model, params: the transformer.
      tokens: ``[T]`` int prompt.
      cfg, dict_params: the transcoder/CLT (raw-space params, ``in_hooks``/``out_hooks``).
      target_pos: the position whose next-token logits are explained.
      logit_tokens: token ids of the logit nodes (default: the ``n_logits`` most likely).
      node_threshold, edge_threshold: cumulative influence kept (1.0 keeps everything).
      token_names: optional names of token ids (for labels).

    Returns:
      ``{"tokens", "target_pos", "nodes": [{"id", "kind" (embedding | feature | error |
      logit), "layer", "pos", "feature", "activation", "influence", "label"}], "edges":
      [{"source", "target", "weight"}], "full": {"n_nodes", "n_edges"}}`` plus, under
      ``"_arrays"``, the unpruned adjacency ``A [targets, sources]`` and node list (for
      checks; dropped by :func:`write_graph`).
    """
    tokens = np.asarray(tokens).reshape(-1)
    T, L = len(tokens), cfg.n_layers
    pos = target_pos % T
    fn, info = local_replacement(model, params, tokens, cfg, dict_params)
    z0 = np.asarray(info["z"])
    act = np.argwhere(z0 > 0)  # [N, 3]: layer, position, feature
    n_feat = len(act)
    probs = np.asarray(jax.nn.softmax(info["logits"][pos]))
    if logit_tokens is None:
        logit_tokens = np.argsort(-probs)[:n_logits]
    logit_tokens = np.asarray(logit_tokens).reshape(-1)
    idx = tuple(jnp.asarray(act[:, i]) for i in range(3))

    def f(v):
        u, zv, we = v[:T], v[T:T + n_feat], v[T + n_feat:].reshape(L, T)
        z = jnp.zeros(z0.shape, jnp.float32).at[idx].set(zv)
        pre, lg = fn(u, z, we)
        return jnp.concatenate([pre[idx], lg[pos][jnp.asarray(logit_tokens)]])

    v0 = jnp.concatenate([jnp.ones(T), jnp.asarray(z0[tuple(act.T)]), jnp.ones(L * T)])
    jac = np.asarray(jax.jacfwd(f)(v0), np.float64)  # [N + K, T + N + L T]
    adj = jac * np.asarray(v0, np.float64)[None]  # edge weights: target x source

    names = token_names or [str(t) for t in range(int(info["logits"].shape[-1]))]
    nodes = ([{"kind": "embedding", "layer": -1, "pos": p, "feature": None,
               "activation": 1.0, "label": f"emb {names[tokens[p]]}@{p}"} for p in range(T)]
             + [{"kind": "feature", "layer": int(s), "pos": int(p), "feature": int(fi),
                 "activation": float(z0[s, p, fi]), "label": f"L{s} f{fi}@{p}"}
                for s, p, fi in act]
             + [{"kind": "error", "layer": int(t), "pos": p, "feature": None,
                 "activation": 1.0, "label": f"err L{t}@{p}"} for t in range(L)
                for p in range(T)]
             + [{"kind": "logit", "layer": L, "pos": pos, "feature": None,
                 "activation": float(probs[v]), "token": int(v),
                 "label": f"logit {names[int(v)]}"} for v in logit_tokens])
    n_src = T + n_feat + L * T
    n_all = n_src + len(logit_tokens)
    full = np.zeros((n_all, n_all))  # [target, source] over all nodes
    tgt = np.r_[np.arange(T, T + n_feat), np.arange(n_src, n_all)]
    full[tgt, :n_src] = adj
    influence = _influence(full, n_src, probs[logit_tokens])
    keep = _prune_nodes(nodes, influence, node_threshold)
    edges = _prune_edges(full, influence, keep, nodes, edge_threshold)
    for i, nd in enumerate(nodes):
        nd["id"] = i
        nd["influence"] = float(influence[i])
    kept = [nodes[i] for i in sorted(keep)]
    return {"tokens": tokens.tolist(), "target_pos": pos, "nodes": kept, "edges": edges,
            "full": {"n_nodes": n_all, "n_edges": int((full != 0).sum())},
            "_arrays": {"adjacency": full, "nodes": nodes}}


def _influence(full: np.ndarray, n_src: int, logit_w: np.ndarray) -> np.ndarray:
    """Influence of every node on the logit nodes: ``wᵀ ((I − Â)⁻¹ − I)``, plus the logit
    nodes' own weights (``Â``: |weights| normalised per target)."""
    a = np.abs(full)
    rs = a.sum(1, keepdims=True)
    a = np.divide(a, rs, out=np.zeros_like(a), where=rs > 0)
    n = len(a)
    b = np.linalg.inv(np.eye(n) - a) - np.eye(n)
    w = np.zeros(n)
    w[n_src:] = logit_w / max(logit_w.sum(), 1e-12)
    return w @ b + w


def _prune_nodes(nodes: list[dict], influence: np.ndarray, threshold: float) -> set[int]:
    feats = [i for i, nd in enumerate(nodes) if nd["kind"] == "feature"]
    keep = {i for i, nd in enumerate(nodes) if nd["kind"] != "feature"}
    order = sorted(feats, key=lambda i: -influence[i])
    total = sum(influence[i] for i in feats)
    acc = 0.0
    for i in order:
        if total <= 0 or acc >= threshold * total:
            break
        keep.add(i)
        acc += influence[i]
    return keep


def _prune_edges(full: np.ndarray, influence: np.ndarray, keep: set[int], nodes: list[dict],
                 threshold: float) -> list[dict]:
    a = np.abs(full)
    rs = a.sum(1, keepdims=True)
    a = np.divide(a, rs, out=np.zeros_like(a), where=rs > 0)
    score = influence[:, None] * a
    cand = [(i, j) for i, j in zip(*np.nonzero(full), strict=True) if i in keep and j in keep]
    cand.sort(key=lambda e: -score[e])
    total = sum(score[e] for e in cand)
    out, acc = [], 0.0
    for i, j in cand:
        if total > 0 and acc >= threshold * total:
            break
        out.append({"source": int(j), "target": int(i), "weight": float(full[i, j])})
        acc += score[i, j]
    used = {e["source"] for e in out} | {e["target"] for e in out}
    for i in list(keep):  # drop input nodes left without edges
        if nodes[i]["kind"] in ("embedding", "error") and i not in used:
            keep.discard(i)
    return out


def write_graph(graph: dict, path: str | os.PathLike) -> Path:
    """Writes the graph (without ``_arrays``) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in graph.items() if k != "_arrays"}, indent=1))
    return path


def plot_graph(graph: dict, ax=None, *, title: str = "attribution graph"):
    """Nodes at (position, layer), edges coloured by sign with width ~ |weight|."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    nodes = {nd["id"]: nd for nd in graph["nodes"]}
    y = {"embedding": lambda nd: -1, "feature": lambda nd: nd["layer"],
         "error": lambda nd: nd["layer"] + 0.4, "logit": lambda nd: nd["layer"]}
    jitter = {}
    xy = {}
    for i, nd in nodes.items():
        key = (nd["pos"], nd["kind"], nd["layer"])
        j = jitter.get(key, 0)
        jitter[key] = j + 1
        xy[i] = (nd["pos"] + 0.12 * j, y[nd["kind"]](nd))
    wmax = max([abs(e["weight"]) for e in graph["edges"]] + [1e-12])
    for e in graph["edges"]:
        if e["source"] in xy and e["target"] in xy:
            (x0, y0), (x1, y1) = xy[e["source"]], xy[e["target"]]
            ax.plot([x0, x1], [y0, y1], color="tab:blue" if e["weight"] > 0 else "tab:red",
                    lw=0.3 + 2.5 * abs(e["weight"]) / wmax, alpha=0.6)
    colors = {"embedding": "gray", "feature": "tab:orange", "error": "black",
              "logit": "tab:green"}
    for i, nd in nodes.items():
        ax.scatter(*xy[i], s=25, color=colors[nd["kind"]], zorder=3)
        if nd["kind"] == "logit":
            ax.annotate(nd["label"], xy[i], fontsize=7)
    ax.set_xlabel("position")
    ax.set_ylabel("layer (-1: embeddings)")
    ax.set_title(title)
    return ax


def ablate_feature(model: Any, params: Any, tokens: Any, cfg: CLTConfig, dict_params: dict,
                   layer: int, pos: int, feature: int, value: float = 0.0) -> jax.Array:
    """Logits ``[T, V]`` of the full model (the exact local replacement: the dictionary plus
    its clean errors, attention and norms live, every other feature recomputed from the
    edited forward) with feature ``(layer, pos, feature)`` set to ``value``."""
    toks = jnp.asarray(tokens, jnp.int32).reshape(1, -1)
    errs = clean_errors(model, params, toks, cfg, dict_params)
    hooks = {}
    for t in range(cfg.n_layers):  # position, feature and value are traced: one program
        hooks[cfg.out_hooks[t]] = splice(_ClampedOutput(cfg, t, layer), cfg.in_hooks[:t + 1],
                                         dict_params, errs[t], jnp.int32(pos),
                                         jnp.int32(feature), jnp.float32(value))
    return model.run_with_hooks(params, toks, hooks)[0]


@dataclasses.dataclass(frozen=True)
class _ClampedOutput:
    cfg: CLTConfig
    target: int
    layer: int

    def __call__(self, y, xs, params, err, pos, feature, value):
        cfg, t = self.cfg, self.target
        flat = [a[0].astype(jnp.float32) for a in xs]
        out = clt.layer_output(params, flat, cfg, t)
        s = self.layer
        if s <= t and (cfg.cross_layer or s == t):
            pre = flat[s] @ params["W_enc"][s] + params["b_enc"][s]
            z = cfg.arch.activate({n: params[n][s] for n in cfg.arch.init_extra(cfg)}, pre,
                                  cfg, k=cfg.k, inference=True)
            lo, _ = cfg.block_range(s)
            w = params["W_dec"][lo + (t - s if cfg.cross_layer else 0)][feature]
            delta = (value - z[pos, feature]) * w
            out = out.at[pos].add(delta)
        return (out + err[0])[None].astype(y.dtype)


def predicted_logit_effects(graph: dict, value: float = 0.0) -> np.ndarray:
    """``[n_features, n_logits]`` predicted change of each logit node when each feature is
    set to ``value``, along every path of the (unpruned) linear graph: active features
    respond to their pre-activation with slope 1, ``Δz = (I − J_ff)⁻¹ e``."""
    nodes, full = graph["_arrays"]["nodes"], graph["_arrays"]["adjacency"]
    feats = [i for i, nd in enumerate(nodes) if nd["kind"] == "feature"]
    logits = [i for i, nd in enumerate(nodes) if nd["kind"] == "logit"]
    acts = np.array([nodes[i]["activation"] for i in feats])
    jff = full[np.ix_(feats, feats)] / np.maximum(acts, 1e-30)[None]  # d pre / d z
    jlf = full[np.ix_(logits, feats)] / np.maximum(acts, 1e-30)[None]
    total = np.linalg.inv(np.eye(len(feats)) - jff)  # Δz = total @ Δz_src
    return ((jlf @ total) * (value - acts)[None]).T
