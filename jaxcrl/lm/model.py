"""A hookable decoder-only transformer family in Flax Linen (GPT-2, GPT-NeoX, Llama, Mistral,
Qwen 2/3, Gemma 1/2/3 by the switches of :class:`~jaxcrl.lm.config.TransformerConfig`).

Architecture: token embedding (times ``sqrt(D)`` for Gemma; + learned absolute positions
for GPT-2), ``n_layers`` pre-norm blocks and a final norm and unembedding (tied or untied,
optionally soft-capped). A block is ``x = x + attn(ln1 x); x = x + mlp(ln2 x)`` (sequential)
or ``x = x + attn(ln1 x) + mlp(ln2 x)`` (parallel, GPT-NeoX); Gemma 2/3 add ``ln1_post`` and
``ln2_post`` on the attention and MLP outputs. Norms are LayerNorm or RMSNorm (scale
``norm_offset + w``; Gemma ``1 + w``). Attention is causal with grouped-query heads
(``n_kv_heads``), optional q/k/v and output biases, per-head q/k RMSNorm (Qwen 3, Gemma 3),
RoPE (theta, partial rotary, NeoX half-split or GPT-J interleaved layout, ``linear`` and
Llama 3.1 ``llama3`` frequency scaling, a separate base for sliding layers), attention-logit
soft-capping and sliding-window layers. MLPs are plain (``act(x W_in)``) or gated
(``act(x W_gate) * (x W_in)``: SwiGLU, GeGLU).

Precision: the computation runs in the dtype of the parameters (float32 or bfloat16; see
:meth:`HookedTransformer.init` and :func:`jaxcrl.lm.hf.from_pretrained`); norms, attention
scores, softmax and the logits are computed in float32 (``hook_attn_scores``,
``hook_pattern`` and the logits are float32).

Every named activation of TransformerLens (listed once, in :func:`jaxcrl.lm.config.hook_names`)
passes through a *hook point*: the forward takes a mapping ``hooks: name -> fn`` and applies
``fn(x)`` there, and records ``x`` (after the hook) for the cached names. Which points are
hooked or cached is static (part of the compiled program), so an unused hook point costs
nothing after ``jax.jit``; ``attn.hook_result`` (per-head outputs ``[B, T, H, D]``) is only
computed when it is hooked or cached. The arrays inside the library's hooks (:class:`Hook`
pytrees) are traced, so new patch values or steering vectors reuse the program and can be
``vmap``-ed. Token ids outside ``[0, V)`` are a ``ValueError`` for concrete inputs; inside a
caller's ``jit`` (traced tokens) they are not checked and embed as NaN (NaN logits).

Public surface (TransformerLens vocabulary)::

    model = HookedTransformer(cfg)
    params = model.init(key)                                   # dict pytree, float32
    logits = model.apply(params, tokens)                       # [B, T] int -> [B, T, V]
    logits, cache = model.run_with_cache(params, tokens, names=[...])
    logits = model.run_with_hooks(params, tokens, hooks={name: fn})
    _, cache = model.run_with_cache(params, tokens, names=[name], stop_at_layer=l + 1)

Parameter pytree (shapes; ``D`` d_model, ``H`` heads, ``K`` key/value heads, ``Dh`` head_dim,
``M`` d_mlp; entries in brackets exist only with the switch named)::

    W_E [V, D]     W_pos [n_ctx, D] (learned positions)     W_U [D, V] (untied)
    blocks_{l}/ln1/{scale [D], bias [D] (layernorm)}        ln2 likewise; ln1_post, ln2_post
    blocks_{l}/attn/W_Q [D, H, Dh]  W_K, W_V [D, K, Dh]  W_O [H, Dh, D]
                    [b_Q [H, Dh]  b_K, b_V [K, Dh]] (qkv_bias)  [b_O [D]] (out_bias)
                    [q_norm/scale, k_norm/scale [Dh]] (qk_norm)
    blocks_{l}/mlp/W_in [D, M]  W_out [M, D]  [W_gate [D, M]] (gated)
                   [b_in [M]  b_out [D]  (b_gate [M])] (mlp_bias)
    ln_final/{scale, bias}
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.lm.config import RopeScaling, TransformerConfig, check_hook_names, hook_names

HookFn = Callable[[jax.Array], jax.Array]

_MASK_VALUE = -1e30


class Points:
    """What every module calls at a hook point: ``point(name, x) -> x``.

    ``point.wants(name)`` says whether ``name`` is hooked or cached, so optional activations
    (``attn.hook_result``) are only computed on request. The base class is the identity.
    """

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        del name
        return x

    def wants(self, name: str) -> bool:
        del name
        return False


_NO_HOOKS = Points()


class _HookPoints(Points):
    def __init__(self, hooks: Mapping[str, HookFn], cache_names: Sequence[str]):
        self.hooks = dict(hooks)
        self.cache_set = frozenset(cache_names)
        self.cache: dict[str, jax.Array] = {}
        # activations that hooks read from earlier points (:class:`Splice`)
        self.read_set = frozenset(r for fn in self.hooks.values()
                                  for r in getattr(fn, "reads", ()))
        self.seen: dict[str, jax.Array] = {}

    def wants(self, name: str) -> bool:
        return name in self.hooks or name in self.cache_set or name in self.read_set

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        fn = self.hooks.get(name)
        if fn is not None:
            reads = getattr(fn, "reads", ())
            if reads:
                late = [r for r in reads if r not in self.seen]
                if late:
                    raise ValueError(f"hook at {name} reads {late}, which the forward has not "
                                     "reached yet (a hook can only read earlier points)")
                y = fn(x, *[self.seen[r] for r in reads])
            else:
                y = fn(x)
            if getattr(y, "shape", None) != x.shape:
                raise ValueError(f"hook at {name} changed the shape {x.shape} -> "
                                 f"{getattr(y, 'shape', None)}")
            x = y.astype(x.dtype)
        if name in self.read_set:
            self.seen[name] = x
        if name in self.cache_set:
            self.cache[name] = x
        return x


# --------------------------------------------------------------------------- Linen modules


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last axis, computed in float32, cast back to ``x``'s dtype.

    ``y = (x - mean) / scale_ * (norm_offset + scale) + bias`` with ``scale_ =
    sqrt(var + eps)`` (LayerNorm), or ``y = x / sqrt(mean(x^2) + eps) * (norm_offset + scale)``
    (RMSNorm). Hooks (when ``hook`` is a prefix such as ``blocks.0.ln1``):
    ``{hook}.hook_scale [..., 1]`` (float32) and ``{hook}.hook_normalized [..., d]``.
    """

    cfg: TransformerConfig
    hook: str | None = None
    kind: str | None = None  # overrides cfg.norm (q/k norms are always RMSNorm)

    @nn.compact
    def __call__(self, x: jax.Array, point: Points = _NO_HOOKS) -> jax.Array:
        cfg = self.cfg
        kind = self.kind or cfg.norm
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.constant(1.0 - cfg.norm_offset), (d,))
        xf = x.astype(jnp.float32)
        if kind == "layernorm":
            bias = self.param("bias", nn.initializers.zeros, (d,))
            xf = xf - jnp.mean(xf, -1, keepdims=True)
        sc = jnp.sqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + cfg.ln_eps)
        if self.hook is not None:
            sc = point(f"{self.hook}.hook_scale", sc)
        y = xf / sc * (cfg.norm_offset + scale.astype(jnp.float32))
        if kind == "layernorm":
            y = y + bias.astype(jnp.float32)
        y = y.astype(x.dtype)
        if self.hook is not None:
            y = point(f"{self.hook}.hook_normalized", y)
        return y


def rope_inv_freq(rotary_dim: int, base: float, scaling: RopeScaling | None = None
                  ) -> np.ndarray:
    """RoPE inverse frequencies ``base^(-2i/rotary_dim)``, ``[rotary_dim / 2]`` float32,
    computed as Hugging Face does (float32), then scaled (``linear``: ``/ factor``;
    ``llama3``: Llama 3.1's wavelength-dependent scaling)."""
    exps = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    inv = (np.float32(1.0) / (np.float32(base) ** exps)).astype(np.float32)
    if scaling is None:
        return inv
    if scaling.kind == "linear":
        return (inv / np.float32(scaling.factor)).astype(np.float32)
    old = scaling.original_max_position_embeddings
    low_wl = old / scaling.low_freq_factor
    high_wl = old / scaling.high_freq_factor
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > low_wl, inv / scaling.factor, inv)
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor
                                                         - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary(x: jax.Array, base: float, positions: jax.Array | None = None, *,
           rotary_dim: int | None = None, interleaved: bool = False,
           scaling: RopeScaling | None = None) -> jax.Array:
    """Rotary position embedding (Su et al. 2021) of ``x [B, T, H, Dh]`` at ``positions [T]``
    (default ``0..T-1``), in ``x``'s dtype (angles in float32).

    The first ``rotary_dim`` channels (all by default; partial rotary as in Pythia) are
    rotated, the rest pass through. Layouts: "rotate half" (GPT-NeoX, Llama: pairs ``(i, i +
    rotary_dim/2)``) or ``interleaved`` (GPT-J: pairs ``(2i, 2i+1)``). Pair ``i`` at position
    ``t`` turns by ``t * inv_freq[i]`` (:func:`rope_inv_freq`), so ``<rot(q, s), rot(k, t)>``
    depends on ``s - t`` only.
    """
    t, dh = x.shape[1], x.shape[-1]
    rd = dh if rotary_dim is None else rotary_dim
    inv_freq = jnp.asarray(rope_inv_freq(rd, base, scaling))  # [rd/2]
    if positions is None:
        positions = jnp.arange(t)
    angle = positions.astype(jnp.float32)[:, None] * inv_freq  # [T, rd/2]
    cos = jnp.cos(angle)[None, :, None, :]
    sin = jnp.sin(angle)[None, :, None, :]
    xr, rest = x[..., :rd].astype(jnp.float32), x[..., rd:]
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(xr.shape)
    else:
        half = rd // 2
        x1, x2 = xr[..., :half], xr[..., half:]
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    out = out.astype(x.dtype)
    return out if rd == dh else jnp.concatenate([out, rest], axis=-1)


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


class Attention(nn.Module):
    """Causal grouped-query self-attention; ``[B, T, D] -> [B, T, D]``.

    Hooks (``blocks.{l}.attn.``): ``hook_q [B, T, H, Dh]``, ``hook_k``/``hook_v [B, T, K, Dh]``
    (after biases and q/k norms, before RoPE), ``hook_rot_q``/``hook_rot_k`` (after RoPE),
    ``hook_attn_scores``/``hook_pattern [B, H, T_q, T_k]`` (float32), ``hook_z [B, T, H, Dh]``
    (pattern-weighted values, the input of ``W_O``), ``hook_result [B, T, H, D]`` (per-head
    output, only computed on request). Query head ``h`` reads key/value head ``h // (H/K)``.

    With ``kv`` (a key/value cache ``([B, S, K, Dh], [B, S, K, Dh])``) the new keys and values
    are written at ``index`` and the queries attend to the cache (positions ``< S``); returns
    ``(out, new_kv)`` (``new_kv`` is ``None`` without a cache).
    """

    cfg: TransformerConfig
    layer: int

    @nn.compact
    def __call__(self, x: jax.Array, point: Points, positions: jax.Array,
                 kv: tuple[jax.Array, jax.Array] | None = None, index: Any = 0):
        cfg = self.cfg
        b_name = f"blocks.{self.layer}.attn"
        d, h, kh, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        g = h // kh
        w_init = nn.initializers.normal(cfg.init_std)
        out_init = nn.initializers.normal(cfg.init_std / np.sqrt(2 * cfg.n_layers))
        # Parameters are created in the order of earlier versions: Linen draws each init key
        # from a per-module counter, so the same seed gives the same initial weights.
        w_q = self.param("W_Q", w_init, (d, h, dh))
        w_k = self.param("W_K", w_init, (d, kh, dh))
        w_v = self.param("W_V", w_init, (d, kh, dh))
        if cfg.qkv_bias:
            b_q = self.param("b_Q", nn.initializers.zeros, (h, dh))
            b_k = self.param("b_K", nn.initializers.zeros, (kh, dh))
            b_v = self.param("b_V", nn.initializers.zeros, (kh, dh))
        w_o = self.param("W_O", out_init, (h, dh, d))
        b_o = self.param("b_O", nn.initializers.zeros, (d,)) if cfg.out_bias else None
        q = jnp.einsum("btd,dhe->bthe", x, w_q)
        k = jnp.einsum("btd,dhe->bthe", x, w_k)
        v = jnp.einsum("btd,dhe->bthe", x, w_v)
        if cfg.qkv_bias:
            q, k, v = q + b_q, k + b_k, v + b_v
        if cfg.qk_norm:
            q = Norm(cfg, kind="rmsnorm", name="q_norm")(q)
            k = Norm(cfg, kind="rmsnorm", name="k_norm")(k)
        q = point(f"{b_name}.hook_q", q)
        k = point(f"{b_name}.hook_k", k)
        v = point(f"{b_name}.hook_v", v)
        sliding = cfg.types[self.layer] == "sliding"
        if cfg.positions == "rotary":
            local = sliding and cfg.rotary_base_local is not None
            rope = functools.partial(
                rotary, base=cfg.rotary_base_local if local else cfg.rotary_base,
                positions=positions, rotary_dim=cfg.rot_dim, interleaved=cfg.rotary_interleaved,
                scaling=None if local else cfg.rope_scaling)
            q = point(f"{b_name}.hook_rot_q", rope(q))
            k = point(f"{b_name}.hook_rot_k", rope(k))
        new_kv = None
        key_pos = positions
        if kv is not None:
            k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, index, 0, 0))
            new_kv = (k, v)
            key_pos = jnp.arange(k.shape[1])
        bsz, t = x.shape[0], x.shape[1]
        s = k.shape[1]
        qg = q.reshape(bsz, t, kh, g, dh)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k,
                            preferred_element_type=jnp.float32).reshape(bsz, h, t, s)
        scores = _softcap(scores * np.float32(cfg.attn_scale), cfg.attn_softcap)
        allowed = key_pos[None, :] <= positions[:, None]
        if sliding:
            allowed &= positions[:, None] - key_pos[None, :] < cfg.sliding_window
        scores = jnp.where(allowed, scores, _MASK_VALUE)
        scores = point(f"{b_name}.hook_attn_scores", scores)
        pattern = jax.nn.softmax(scores, axis=-1)
        pattern = point(f"{b_name}.hook_pattern", pattern)
        z = jnp.einsum("bkgts,bskd->btkgd", pattern.reshape(bsz, kh, g, t, s).astype(v.dtype), v)
        z = point(f"{b_name}.hook_z", z.reshape(bsz, t, h, dh))
        if point.wants(f"{b_name}.hook_result"):
            result = point(f"{b_name}.hook_result", jnp.einsum("bthe,hed->bthd", z, w_o))
            out = result.sum(axis=2)
        else:
            out = jnp.einsum("bthe,hed->btd", z, w_o)
        if b_o is not None:
            out = out + b_o
        return out, new_kv


_ACTS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2 gelu_new
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


class MLP(nn.Module):
    """``W_out act(x W_in + b_in) + b_out``, or gated ``W_out (act(x W_gate) * (x W_in))``.

    Hooks (``blocks.{l}.mlp.``): ``hook_pre [B, T, M]`` (the activation's input: ``x W_in``,
    or ``x W_gate`` when gated), ``hook_pre_linear [B, T, M]`` (gated: ``x W_in``),
    ``hook_post [B, T, M]`` (the input of ``W_out``).
    """

    cfg: TransformerConfig
    layer: int

    @nn.compact
    def __call__(self, x: jax.Array, point: Points) -> jax.Array:
        cfg = self.cfg
        b = f"blocks.{self.layer}.mlp"
        d, m = cfg.d_model, cfg.mlp_dim
        w_init = nn.initializers.normal(cfg.init_std)
        out_init = nn.initializers.normal(cfg.init_std / np.sqrt(2 * cfg.n_layers))
        zeros = nn.initializers.zeros

        def lin(name: str, bias: str) -> jax.Array:
            y = x @ self.param(name, w_init, (d, m))
            return y + self.param(bias, zeros, (m,)) if cfg.mlp_bias else y

        act = _ACTS[cfg.act]
        if cfg.gated_mlp:
            pre = point(f"{b}.hook_pre", lin("W_gate", "b_gate"))
            pre_linear = point(f"{b}.hook_pre_linear", lin("W_in", "b_in"))
            post = act(pre) * pre_linear
        else:
            post = act(point(f"{b}.hook_pre", lin("W_in", "b_in")))
        post = point(f"{b}.hook_post", post)
        out = post @ self.param("W_out", out_init, (m, d))
        return out + self.param("b_out", zeros, (d,)) if cfg.mlp_bias else out


class Block(nn.Module):
    """Pre-norm transformer block (sequential or parallel) with its residual hook points;
    returns ``(resid, new_kv)``."""

    cfg: TransformerConfig
    layer: int

    @nn.compact
    def __call__(self, resid: jax.Array, point: Points, positions: jax.Array,
                 kv: tuple | None = None, index: Any = 0):
        cfg = self.cfg
        b = f"blocks.{self.layer}"
        resid = point(f"{b}.hook_resid_pre", resid)
        attn_out, new_kv = Attention(cfg, self.layer, name="attn")(
            Norm(cfg, f"{b}.ln1", name="ln1")(resid, point), point, positions, kv, index)
        if cfg.post_norms:
            attn_out = Norm(cfg, f"{b}.ln1_post", name="ln1_post")(attn_out, point)
        attn_out = point(f"{b}.hook_attn_out", attn_out)
        if not cfg.parallel_attn_mlp:
            resid = point(f"{b}.hook_resid_mid", resid + attn_out)
        mlp_out = MLP(cfg, self.layer, name="mlp")(Norm(cfg, f"{b}.ln2", name="ln2")(resid, point),
                                                   point)
        if cfg.post_norms:
            mlp_out = Norm(cfg, f"{b}.ln2_post", name="ln2_post")(mlp_out, point)
        mlp_out = point(f"{b}.hook_mlp_out", mlp_out)
        if cfg.parallel_attn_mlp:
            resid = resid + attn_out + mlp_out
        else:
            resid = resid + mlp_out
        return point(f"{b}.hook_resid_post", resid), new_kv


class Transformer(nn.Module):
    """The Linen module: ``tokens [B, T] -> logits [B, T, V]`` float32 (``None`` if stopped
    early).

    Args of ``__call__``:
      tokens: int ``[B, T]``, ``start + T <= cfg.n_ctx``.
      point: a :class:`Points` called at every hook point (identity by default).
      stop_at_layer: run only blocks ``< stop_at_layer`` and return ``None`` (no final
        norm, no unembedding); ``None`` runs the whole model.
      kv_cache: optional per-layer key/value caches (``[B, S, K, Dh]`` pairs, see
        :func:`jaxcrl.lm.generate.init_kv_cache`); the tokens sit at positions
        ``start .. start + T - 1``. With a cache the call returns ``(logits, new_cache)``.
      start: position of the first token (traced int allowed).
    """

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, point: Points = _NO_HOOKS,
                 stop_at_layer: int | None = None, kv_cache: Sequence | None = None,
                 start: Any = 0):
        cfg = self.cfg
        t = tokens.shape[1]
        w_e = self.param("W_E", nn.initializers.normal(cfg.init_std), (cfg.vocab_size, cfg.d_model))
        emb = jnp.take(w_e, tokens, axis=0)
        if cfg.embed_scale:  # Gemma: the normalizer is rounded to the activation dtype
            emb = emb * jnp.asarray(np.sqrt(cfg.d_model), emb.dtype)
        resid = point("hook_embed", emb)
        positions = start + jnp.arange(t)
        if cfg.positions == "learned":
            w_pos = self.param("W_pos", nn.initializers.normal(cfg.init_std),
                               (cfg.n_ctx, cfg.d_model))
            pos = jax.lax.dynamic_slice_in_dim(w_pos, start, t) if kv_cache is not None \
                else w_pos[:t]
            resid = resid + point("hook_pos_embed", jnp.broadcast_to(pos, resid.shape))
        n_run = cfg.n_layers if stop_at_layer is None else stop_at_layer
        new_cache = []
        for layer in range(n_run):
            kv = None if kv_cache is None else kv_cache[layer]
            resid, new_kv = Block(cfg, layer, name=f"blocks_{layer}")(resid, point, positions, kv,
                                                                       start)
            new_cache.append(new_kv)
        if stop_at_layer is not None:
            return None
        x = Norm(cfg, "ln_final", name="ln_final")(resid, point)
        if cfg.tied_embeddings:
            logits = jnp.einsum("btd,vd->btv", x, w_e, preferred_element_type=jnp.float32)
        else:
            w_u = self.param("W_U", nn.initializers.normal(cfg.init_std),
                             (cfg.d_model, cfg.vocab_size))
            logits = jnp.einsum("btd,dv->btv", x, w_u, preferred_element_type=jnp.float32)
        logits = _softcap(logits, cfg.final_softcap)
        return logits if kv_cache is None else (logits, new_cache)


# --------------------------------------------------------------------------- hooks as pytrees


class Hook:
    """Base class of the library's hook functions: a pytree (arrays are leaves, so new
    values do not recompile, and ``vmap`` over e.g. patch positions works) and a pure
    callable ``hook(x) -> x``. Plain Python callables are accepted as hooks too; they are
    static (compiled per function object)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError


def _pytree_hook(data: Sequence[str] = (), meta: Sequence[str] = ()):
    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        return jax.tree_util.register_dataclass(cls, data_fields=list(data),
                                                meta_fields=list(meta))
    return wrap


def _position_mask(positions: Any, x: jax.Array, pos_axis: int) -> jax.Array:
    """Boolean mask broadcastable to ``x``, true at ``positions`` along ``pos_axis``."""
    t = x.shape[pos_axis]
    mask = jnp.zeros((t,), bool).at[jnp.asarray(positions)].set(True)
    shape = [1] * x.ndim
    shape[pos_axis] = t
    return mask.reshape(shape)


@_pytree_hook()
class ZeroAblate(Hook):
    """``x -> 0``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.zeros_like(x)


@_pytree_hook(data=("mean",))
class MeanAblate(Hook):
    """``x -> mean`` broadcast to ``x``'s shape (e.g. ``mean [D]`` or ``[T, D]``)."""

    mean: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.broadcast_to(jnp.asarray(self.mean, x.dtype), x.shape)


@_pytree_hook(data=("value", "positions"), meta=("pos_axis",))
class PatchFrom(Hook):
    """``x -> value`` at ``positions`` (all positions if ``None``) along ``pos_axis``."""

    value: jax.Array
    positions: Any = None
    pos_axis: int = 1

    def __call__(self, x: jax.Array) -> jax.Array:
        value = jnp.broadcast_to(jnp.asarray(self.value, x.dtype), x.shape)
        if self.positions is None:
            return value
        return jnp.where(_position_mask(self.positions, x, self.pos_axis), value, x)


@_pytree_hook(data=("vector", "positions", "scale"), meta=("pos_axis",))
class AddVector(Hook):
    """``x -> x + scale * vector`` at ``positions`` (all if ``None``) along ``pos_axis``."""

    vector: jax.Array
    positions: Any = None
    scale: Any = 1.0
    pos_axis: int = 1

    def __call__(self, x: jax.Array) -> jax.Array:
        delta = jnp.asarray(self.scale, x.dtype) * jnp.asarray(self.vector, x.dtype)
        delta = jnp.broadcast_to(delta, x.shape)
        if self.positions is None:
            return x + delta
        return x + jnp.where(_position_mask(self.positions, x, self.pos_axis), delta, 0)


@_pytree_hook(data=("args",), meta=("fn",))
class ReplaceWith(Hook):
    """``x -> fn(x, *args)``; ``fn`` static, ``args`` a (traced) pytree such as SAE params."""

    fn: Callable
    args: tuple = ()

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x, *self.args)


@_pytree_hook(data=("args",), meta=("fn", "reads"))
class Splice(Hook):
    """``x -> fn(x, [a_r for r in reads], *args)``: a hook that also reads the activations
    at earlier hook points ``reads`` of the same forward (after their own hooks), e.g. a
    transcoder that replaces ``blocks.l.hook_mlp_out`` from ``blocks.l.ln2.hook_normalized``.
    ``fn`` static and hashable, ``args`` traced (dictionary params)."""

    fn: Callable
    reads: tuple = ()
    args: tuple = ()

    def __call__(self, x: jax.Array, *read: jax.Array) -> jax.Array:
        return self.fn(x, list(read), *self.args)


def splice(fn: Callable, reads: Sequence[str], *args: Any) -> Splice:
    """Hook ``x -> fn(x, [activations at reads], *args)`` (see :class:`Splice`); ``reads``
    must come before the hooked point in the forward."""
    return Splice(fn, tuple(reads), tuple(args))


def zero_ablate(x: jax.Array | None = None):
    """Zero-ablation hook. Use as ``hooks={name: zero_ablate()}`` (or ``zero_ablate`` itself;
    called on an array it returns zeros of its shape)."""
    return ZeroAblate() if x is None else jnp.zeros_like(x)


def mean_ablate(mean: jax.Array) -> MeanAblate:
    """Hook replacing the activation by ``mean`` (broadcast; e.g. the dataset mean ``[D]``,
    or a per-position mean ``[T, D]``)."""
    return MeanAblate(jnp.asarray(mean))


def patch_from(cache_value: jax.Array, positions: Any = None, *, pos_axis: int | None = None
               ) -> PatchFrom:
    """Hook writing ``cache_value`` (same shape as the activation, e.g. from a clean run's
    cache) into the activation at ``positions`` (int or int array; all if ``None``).

    ``pos_axis`` is the sequence axis: 1 for ``[B, T, ...]`` activations (inferred for
    ``ndim <= 3``), 2 (the query axis) for ``attn.hook_pattern``/``hook_attn_scores``
    ``[B, H, T, T]``. Four-dimensional activations are either those or per-head ones
    (``hook_q``, ``hook_z``, ... ``[B, T, H, Dh]``), so with ``positions`` they need an explicit
    ``pos_axis`` (:func:`pos_axis_of` gives it from the hook name).

    Raises:
      ValueError: ``positions`` given for a 4-D value without ``pos_axis``.
    """
    value = jnp.asarray(cache_value)
    if pos_axis is None:
        if value.ndim == 4 and positions is not None:
            raise ValueError("patch_from: a 4-D value is ambiguous; pass pos_axis=2 for "
                             "attention patterns/scores [B, H, T, T], pos_axis=1 for per-head "
                             "activations [B, T, H, Dh] (or pos_axis_of(hook_name))")
        pos_axis = 1
    pos = None if positions is None else jnp.asarray(positions)
    return PatchFrom(value, pos, pos_axis)


def pos_axis_of(name: str) -> int:
    """The sequence (query) axis of hook ``name``'s activation: 2 for ``attn.hook_pattern``
    and ``attn.hook_attn_scores`` ``[B, H, T, T]``, else 1."""
    return 2 if name.endswith((".hook_pattern", ".hook_attn_scores")) else 1


def add_vector(v: jax.Array, positions: Any = None, scale: float | jax.Array = 1.0, *,
               pos_axis: int = 1) -> AddVector:
    """Steering hook ``x + scale * v`` (``v [D]``, broadcast) at ``positions`` (all if None)."""
    pos = None if positions is None else jnp.asarray(positions)
    return AddVector(jnp.asarray(v), pos, jnp.asarray(scale, jnp.float32), pos_axis)


def replace_with(fn: Callable, *args: Any) -> ReplaceWith:
    """Hook ``x -> fn(x, *args)``, e.g. an SAE reconstruction
    ``replace_with(lambda x, p: sae.decode(p, sae.encode(p, x)), sae_params)``. Passing the
    arrays as ``args`` (rather than closing over them) lets new values reuse the compiled
    program; ``fn`` must keep ``x``'s shape and dtype."""
    return ReplaceWith(fn, tuple(args))


# --------------------------------------------------------------------------- forward


def _check_tokens(cfg: TransformerConfig, tokens: Any) -> jax.Array:
    if not hasattr(tokens, "dtype") or not hasattr(tokens, "ndim"):
        tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be int [batch, seq], got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must have an integer dtype, got {tokens.dtype}")
    if tokens.shape[1] > cfg.n_ctx:
        raise ValueError(f"tokens has sequence length {tokens.shape[1]} > n_ctx={cfg.n_ctx}")
    if tokens.shape[1] < 1:
        raise ValueError("tokens has sequence length 0")
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:  # concrete: check the ids
        host = np.asarray(tokens)  # numpy, so no op is staged into an enclosing trace
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, vocab_size={cfg.vocab_size}), got "
                             f"min {lo}, max {hi}")
    return jnp.asarray(tokens, jnp.int32)


def _forward(cfg: TransformerConfig, params: Any, tokens: jax.Array, dyn_hooks: Mapping,
             static_hooks: tuple, cache_names: tuple, stop_at_layer: int | None):
    hooks = dict(dyn_hooks)
    hooks.update(static_hooks)
    point = _HookPoints(hooks, cache_names)
    logits = Transformer(cfg).apply({"params": params}, tokens, point, stop_at_layer)
    return logits, {n: point.cache[n] for n in cache_names}


_forward_jit = jax.jit(_forward, static_argnames=("cfg", "static_hooks", "cache_names",
                                                  "stop_at_layer"))


def _split_hooks(hooks: Mapping[str, Any] | None) -> tuple[dict, tuple]:
    """Pytree hooks (library helpers) are traced arguments; other callables are static."""
    dyn, static = {}, []
    for name, fn in (hooks or {}).items():
        if isinstance(fn, Hook):
            dyn[name] = fn
        elif callable(fn):
            static.append((name, fn))
        else:
            raise TypeError(f"hook for {name!r} must be callable, got {type(fn).__name__}")
    return dyn, tuple(sorted(static, key=lambda kv: kv[0]))


@dataclasses.dataclass(frozen=True)
class HookedTransformer:
    """Frozen, hashable wrapper of :class:`Transformer` with TransformerLens-style methods.

    All methods are pure functions of ``params``, compiled internally (one program per
    config, hook structure and set of cached names) and callable inside a caller's
    ``jax.jit``/``vmap``/``grad``.
    """

    cfg: TransformerConfig

    @property
    def module(self) -> Transformer:
        return Transformer(self.cfg)

    @property
    def hook_names(self) -> tuple[str, ...]:
        """Valid hook names, in forward order."""
        return hook_names(self.cfg)

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> Any:
        """Random parameters (GPT-2 init: normal(init_std), residual outputs scaled by
        ``1/sqrt(2 L)``, zero biases, unit norm scales ``norm_offset + scale``), cast to
        ``dtype`` (float32 or bfloat16; the forward computes in the parameters' dtype)."""
        params = _init_jit(self.cfg, key)
        if jnp.dtype(dtype) != jnp.float32:
            params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
        return params

    def apply(self, params: Any, tokens: jax.Array) -> jax.Array:
        """Logits ``[B, T, V]`` float32 for int tokens ``[B, T]``."""
        tokens = _check_tokens(self.cfg, tokens)
        return _forward_jit(self.cfg, params, tokens, {}, (), (), None)[0]

    def run_with_hooks(self, params: Any, tokens: jax.Array,
                       hooks: Mapping[str, HookFn] | None = None) -> jax.Array:
        """Logits with ``hooks[name](x)`` applied at each named hook point.

        Hook functions are pure ``fn(x) -> x`` keeping shape (dtype is cast back). The
        library helpers (:func:`zero_ablate`, :func:`patch_from`, ...) carry their arrays as
        traced arguments, so new values reuse the compiled program. Other callables are
        static: compiled once per function object, which the compile cache keeps alive;
        reuse a named function, and pass large arrays through :func:`replace_with` rather
        than closing over them. Closures over tracers inside a caller's jit/grad/vmap work.

        Raises:
          KeyError: unknown hook names (the message lists the valid ones).
        """
        return self.run_with_cache(params, tokens, names=(), hooks=hooks)[0]

    def run_with_cache(self, params: Any, tokens: jax.Array,
                       names: Sequence[str] | str | None = None, *,
                       hooks: Mapping[str, HookFn] | None = None,
                       stop_at_layer: int | None = None
                       ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        """Logits and a cache ``{name: activation}`` of the named hook points.

        Args:
          params: parameters from :meth:`init` (or :func:`jaxcrl.lm.gpt2.load_hf_gpt2`).
          tokens: int ``[B, T]``.
          names: hook names to record (``None``: all of :attr:`hook_names`, i.e. every
            hook but ``attn.hook_result``, which is recorded only when named; a single str is
            one name). Recorded values are those after any hook at that point.
          hooks: optional interventions, as in :meth:`run_with_hooks`.
          stop_at_layer: run only blocks ``< stop_at_layer`` and return ``None`` logits
            (cached names must be computed before that layer).

        Returns:
          ``(logits [B, T, V] or None, cache)``; shapes in :func:`jaxcrl.lm.config.hook_names`.
        """
        cfg = self.cfg
        tokens = _check_tokens(cfg, tokens)
        if names is None:
            names = hook_names(cfg)
        elif isinstance(names, str):
            names = (names,)
        names = tuple(dict.fromkeys(names))
        hooks = dict(hooks or {})
        valid = _valid_names(cfg)
        reads = [r for fn in hooks.values() for r in getattr(fn, "reads", ())]
        if not (valid.issuperset(names) and valid.issuperset(hooks)
                and valid.issuperset(reads)):
            check_hook_names(cfg, [*names, *hooks, *reads])  # KeyError listing valid names
        if stop_at_layer is not None:
            stop_at_layer = int(stop_at_layer)
            if not 0 <= stop_at_layer <= cfg.n_layers:
                raise ValueError(f"stop_at_layer must be in [0, {cfg.n_layers}], "
                                 f"got {stop_at_layer}")
            late = [n for n in (*names, *hooks) if _layer_of(n, cfg) >= stop_at_layer]
            if late:
                raise ValueError(f"hook(s) {late} are not computed with "
                                 f"stop_at_layer={stop_at_layer}")
        dyn, static = _split_hooks(hooks)
        return _forward_jit(cfg, params, tokens, dyn, static, names, stop_at_layer)


@functools.lru_cache(maxsize=64)
def _valid_names(cfg: TransformerConfig) -> frozenset[str]:
    return frozenset(hook_names(cfg, include_result=True))


def _layer_of(name: str, cfg: TransformerConfig) -> int:
    """Block index of a hook name (-1 for embeddings, n_layers for ``ln_final``)."""
    if name.startswith("blocks."):
        return int(name.split(".")[1])
    return cfg.n_layers if name.startswith("ln_final") else -1


def _init(cfg: TransformerConfig, key: jax.Array) -> Any:
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Transformer(cfg).init(key, tokens)["params"]


_init_jit = jax.jit(_init, static_argnums=0)


def count_params(params: Any, *, embeddings: bool = True) -> int:
    """Number of parameters; without ``W_E``/``W_pos``/``W_U`` if ``embeddings=False``."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    skip = {"W_E", "W_pos", "W_U"}
    return int(sum(np.size(x) for path, x in flat
                   if embeddings or getattr(path[-1], "key", None) not in skip))
