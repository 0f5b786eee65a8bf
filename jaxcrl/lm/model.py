"""A hookable GPT-2-style decoder-only transformer in Flax Linen.

Architecture (Radford et al. 2019, GPT-2): token embedding (+ learned absolute position
embedding, or rotary position embedding on queries and keys, Su et al. 2021), ``n_layers``
pre-LayerNorm blocks ``x = x + attn(ln1(x)); x = x + mlp(ln2(x))`` with causal multi-head
attention and a GELU MLP (GPT-2's tanh approximation, ``gelu_new``), a final LayerNorm and an
unembedding tied to the token embedding (or untied). Float32 throughout.

Every named activation of TransformerLens (listed once, in :func:`jaxcrl.lm.config.hook_names`)
passes through a *hook point*: the forward takes a mapping ``hooks: name -> fn`` and applies
``fn(x)`` there, and records ``x`` (after the hook) for the cached names. Which points are
hooked or cached is static (part of the compiled program), so an unused hook point costs
nothing after ``jax.jit``; the arrays inside the library's hooks (:class:`Hook` pytrees) are
traced, so new patch values or steering vectors reuse the program and can be ``vmap``-ed.
Token ids outside ``[0, V)`` are a ``ValueError`` for concrete inputs; inside a caller's ``jit``
(traced tokens) they are not checked and embed as NaN (NaN logits).

Public surface (TransformerLens vocabulary)::

    model = HookedTransformer(cfg)
    params = model.init(key)                                   # dict pytree, float32
    logits = model.apply(params, tokens)                       # [B, T] int -> [B, T, V]
    logits, cache = model.run_with_cache(params, tokens, names=[...])
    logits = model.run_with_hooks(params, tokens, hooks={name: fn})
    _, cache = model.run_with_cache(params, tokens, names=[name], stop_at_layer=l + 1)

Parameter pytree (shapes; ``D`` d_model, ``H`` heads, ``Dh`` head_dim, ``M`` d_mlp)::

    W_E [V, D]        W_pos [n_ctx, D] (learned positions only)    W_U [D, V] (untied only)
    blocks_{l}/ln1/{scale,bias} [D]        blocks_{l}/ln2/{scale,bias} [D]
    blocks_{l}/attn/W_Q,W_K,W_V [D, H, Dh]  b_Q,b_K,b_V [H, Dh]  W_O [H, Dh, D]  b_O [D]
    blocks_{l}/mlp/W_in [D, M]  b_in [M]  W_out [M, D]  b_out [D]
    ln_final/{scale,bias} [D]
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

from jaxcrl.lm.config import TransformerConfig, check_hook_names, hook_names

HookFn = Callable[[jax.Array], jax.Array]
# The function every module calls at a hook point: ``point(name, x) -> x``.
PointFn = Callable[[str, jax.Array], jax.Array]

_MASK_VALUE = -1e30


def _identity_point(name: str, x: jax.Array) -> jax.Array:
    del name
    return x


# --------------------------------------------------------------------------- Linen modules


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with ``scale``/``bias`` ``[D]`` (GPT-2 ``ln_*``)."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


def rotary(x: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (GPT-NeoX "rotate half" layout) of ``x [B, T, H, Dh]``.

    Channel pairs ``(i, i + Dh/2)`` at position ``t`` are rotated by ``t * base^(-2i/Dh)``, so
    ``<rot(q, s), rot(k, t)>`` depends on ``s - t`` only.
    """
    t, dh = x.shape[1], x.shape[-1]
    half = dh // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [Dh/2]
    angle = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq  # [T, Dh/2]
    cos = jnp.cos(angle)[None, :, None, :]
    sin = jnp.sin(angle)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nn.Module):
    """Causal multi-head self-attention; ``[B, T, D] -> [B, T, D]``.

    Hook: ``blocks.{l}.attn.hook_pattern`` ``[B, H, T_query, T_key]`` (softmax probabilities).
    """

    cfg: TransformerConfig
    layer: int

    @nn.compact
    def __call__(self, x: jax.Array, point: PointFn) -> jax.Array:
        cfg = self.cfg
        d, h, dh = cfg.d_model, cfg.n_heads, cfg.head_dim
        w_init = nn.initializers.normal(cfg.init_std)
        out_init = nn.initializers.normal(cfg.init_std / np.sqrt(2 * cfg.n_layers))
        w_q = self.param("W_Q", w_init, (d, h, dh))
        w_k = self.param("W_K", w_init, (d, h, dh))
        w_v = self.param("W_V", w_init, (d, h, dh))
        b_q = self.param("b_Q", nn.initializers.zeros, (h, dh))
        b_k = self.param("b_K", nn.initializers.zeros, (h, dh))
        b_v = self.param("b_V", nn.initializers.zeros, (h, dh))
        w_o = self.param("W_O", out_init, (h, dh, d))
        b_o = self.param("b_O", nn.initializers.zeros, (d,))
        q = jnp.einsum("btd,dhe->bthe", x, w_q) + b_q
        k = jnp.einsum("btd,dhe->bthe", x, w_k) + b_k
        v = jnp.einsum("btd,dhe->bthe", x, w_v) + b_v
        if cfg.positions == "rotary":
            q, k = rotary(q, cfg.rotary_base), rotary(k, cfg.rotary_base)
        scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(dh).astype(np.float32)
        t = x.shape[1]
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        scores = jnp.where(causal, scores, _MASK_VALUE)
        pattern = jax.nn.softmax(scores, axis=-1)
        pattern = point(f"blocks.{self.layer}.attn.hook_pattern", pattern)
        z = jnp.einsum("bhqk,bkhe->bqhe", pattern, v)
        return jnp.einsum("bqhe,hed->bqd", z, w_o) + b_o


class MLP(nn.Module):
    """``W_out gelu_new(W_in x + b_in) + b_out``; hook ``blocks.{l}.mlp.hook_post`` [B, T, M]."""

    cfg: TransformerConfig
    layer: int

    @nn.compact
    def __call__(self, x: jax.Array, point: PointFn) -> jax.Array:
        cfg = self.cfg
        d, m = cfg.d_model, cfg.mlp_dim
        w_in = self.param("W_in", nn.initializers.normal(cfg.init_std), (d, m))
        b_in = self.param("b_in", nn.initializers.zeros, (m,))
        out_init = nn.initializers.normal(cfg.init_std / np.sqrt(2 * cfg.n_layers))
        w_out = self.param("W_out", out_init, (m, d))
        b_out = self.param("b_out", nn.initializers.zeros, (d,))
        post = jax.nn.gelu(x @ w_in + b_in, approximate=True)  # == GPT-2 gelu_new
        post = point(f"blocks.{self.layer}.mlp.hook_post", post)
        return post @ w_out + b_out


class Block(nn.Module):
    """Pre-LayerNorm transformer block with its residual-stream hook points."""

    cfg: TransformerConfig
    layer: int

    @nn.compact
    def __call__(self, resid: jax.Array, point: PointFn) -> jax.Array:
        b = f"blocks.{self.layer}"
        resid = point(f"{b}.hook_resid_pre", resid)
        attn_out = Attention(self.cfg, self.layer, name="attn")(
            LayerNorm(self.cfg.ln_eps, name="ln1")(resid), point)
        attn_out = point(f"{b}.hook_attn_out", attn_out)
        resid = point(f"{b}.hook_resid_mid", resid + attn_out)
        mlp_out = MLP(self.cfg, self.layer, name="mlp")(
            LayerNorm(self.cfg.ln_eps, name="ln2")(resid), point)
        mlp_out = point(f"{b}.hook_mlp_out", mlp_out)
        return point(f"{b}.hook_resid_post", resid + mlp_out)


class Transformer(nn.Module):
    """The Linen module: ``tokens [B, T] -> logits [B, T, V]`` (or ``None`` if stopped early).

    Args of ``__call__``:
      tokens: int ``[B, T]``, ``T <= cfg.n_ctx``.
      point: ``point(name, x) -> x`` called at every hook point (identity by default).
      stop_at_layer: run only blocks ``< stop_at_layer`` and return ``None`` (no final
        LayerNorm, no unembedding); ``None`` runs the whole model.
    """

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, point: PointFn = _identity_point,
                 stop_at_layer: int | None = None) -> jax.Array | None:
        cfg = self.cfg
        w_e = self.param("W_E", nn.initializers.normal(cfg.init_std), (cfg.vocab_size, cfg.d_model))
        resid = point("hook_embed", jnp.take(w_e, tokens, axis=0))
        if cfg.positions == "learned":
            w_pos = self.param("W_pos", nn.initializers.normal(cfg.init_std),
                               (cfg.n_ctx, cfg.d_model))
            t = tokens.shape[1]
            pos = jnp.broadcast_to(w_pos[:t], resid.shape)
            resid = resid + point("hook_pos_embed", pos)
        n_run = cfg.n_layers if stop_at_layer is None else stop_at_layer
        for layer in range(n_run):
            resid = Block(cfg, layer, name=f"blocks_{layer}")(resid, point)
        if stop_at_layer is not None:
            return None
        x = point("ln_final.hook_normalized", LayerNorm(cfg.ln_eps, name="ln_final")(resid))
        if cfg.tied_embeddings:
            return x @ w_e.T
        w_u = self.param("W_U", nn.initializers.normal(cfg.init_std), (cfg.d_model, cfg.vocab_size))
        return x @ w_u


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

    ``pos_axis`` is the sequence axis: 1 for ``[B, T, ...]`` activations (default), 2 (the
    query axis) for ``attn.hook_pattern`` ``[B, H, T, T]``; inferred from ``ndim == 4``.
    """
    value = jnp.asarray(cache_value)
    if pos_axis is None:
        pos_axis = 2 if value.ndim == 4 else 1
    pos = None if positions is None else jnp.asarray(positions)
    return PatchFrom(value, pos, pos_axis)


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
    cache_set = frozenset(cache_names)
    cache: dict[str, jax.Array] = {}

    def point(name: str, x: jax.Array) -> jax.Array:
        fn = hooks.get(name)
        if fn is not None:
            y = fn(x)
            if getattr(y, "shape", None) != x.shape:
                raise ValueError(f"hook at {name} changed the shape {x.shape} -> "
                                 f"{getattr(y, 'shape', None)}")
            x = y.astype(x.dtype)
        if name in cache_set:
            cache[name] = x
        return x

    logits = Transformer(cfg).apply({"params": params}, tokens, point, stop_at_layer)
    return logits, {n: cache[n] for n in cache_names}


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

    def init(self, key: jax.Array) -> Any:
        """Random parameters (GPT-2 init: normal(init_std), residual outputs scaled by
        ``1/sqrt(2 L)``, zero biases, unit LayerNorm scales)."""
        return _init_jit(self.cfg, key)

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
          names: hook names to record (``None``: all; a single str is one name). Recorded
            values are those after any hook at that point.
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
        if not (valid.issuperset(names) and valid.issuperset(hooks)):
            check_hook_names(cfg, [*names, *hooks])  # raises KeyError listing valid names
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
    return frozenset(hook_names(cfg))


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
