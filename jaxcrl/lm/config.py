"""Configuration of the hookable transformer family, and the one list of its hook points.

One config covers GPT-2, GPT-NeoX/Pythia, Llama/Mistral, Qwen 2/3 and Gemma 1/2/3 by switches
(the defaults are the GPT-2-style toy model of earlier versions, so its checkpoints load).
"""

from __future__ import annotations

import dataclasses
import math

from jaxcrl.checkpoint import register_config

POSITIONS = ("learned", "rotary", "none")
NORMS = ("layernorm", "rmsnorm")
ACTS = ("gelu_tanh", "gelu", "silu", "relu")
LAYER_TYPES = ("full", "sliding")
ROPE_SCALINGS = ("linear", "llama3")


@register_config
@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Scaling of the RoPE inverse frequencies (Hugging Face ``rope_scaling``).

    ``linear``: every frequency divided by ``factor``. ``llama3`` (Llama 3.1): wavelengths
    longer than ``original_max_position_embeddings / low_freq_factor`` divided by ``factor``,
    shorter than ``... / high_freq_factor`` kept, smoothly interpolated in between.
    """

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.kind not in ROPE_SCALINGS:
            raise ValueError(f"RopeScaling.kind must be one of {ROPE_SCALINGS}, got {self.kind!r}")
        if self.factor <= 0:
            raise ValueError(f"RopeScaling.factor must be > 0, got {self.factor}")
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError("RopeScaling: llama3 needs high_freq_factor > low_freq_factor, got "
                             f"{self.high_freq_factor} <= {self.low_freq_factor}")


@register_config
@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A decoder-only transformer; the defaults are GPT-2 (pre-LayerNorm, tanh-GELU MLP).

    Attributes:
      vocab_size: number of token ids V.
      n_ctx: maximum sequence length T.
      d_model: residual stream width D.
      n_layers: number of blocks L.
      n_heads: query heads H.
      d_mlp: MLP hidden width M (``4 * d_model`` when ``None``).
      positions: ``learned`` (absolute embeddings ``W_pos``, ``hook_pos_embed``), ``rotary``
        (RoPE on queries and keys) or ``none``.
      tied_embeddings: unembedding is ``W_E.T`` (GPT-2, Gemma) or its own ``W_U [D, V]``.
      ln_eps: normalisation epsilon.
      rotary_base: RoPE base theta (of global layers when ``rotary_base_local`` is set).
      init_std: normal init scale of weights (residual projections scaled by ``1/sqrt(2 L)``).
      d_head: head width Dh (``d_model // n_heads`` when ``None``; Gemma and Qwen 3 set it).
      n_kv_heads: key/value heads (grouped-/multi-query attention); ``None`` = ``n_heads``.
      norm: ``layernorm`` (scale and bias) or ``rmsnorm`` (scale only).
      norm_offset: the norm multiplies by ``norm_offset + scale`` (Gemma: 1.0, ``1 + w``).
      act: MLP nonlinearity: ``gelu_tanh`` (GPT-2 ``gelu_new``), ``gelu`` (exact), ``silu``,
        ``relu``.
      gated_mlp: ``W_out (act(x W_gate) * (x W_in))`` (SwiGLU with silu, GeGLU with gelu).
      parallel_attn_mlp: ``x + attn(ln1 x) + mlp(ln2 x)`` (GPT-NeoX); no ``hook_resid_mid``.
      post_norms: Gemma 2/3 norms on the attention and MLP outputs (``ln1_post``, ``ln2_post``).
      qk_norm: RMS-normalise each query and key head over Dh before RoPE (Qwen 3, Gemma 3).
      qkv_bias: biases of the query/key/value projections.
      out_bias: bias of the attention output projection.
      mlp_bias: biases of the MLP projections.
      rotary_dim: rotated channels per head (partial rotary, Pythia ``rotary_pct``);
        ``None`` = all of Dh.
      rotary_interleaved: rotate channel pairs ``(2i, 2i+1)`` (GPT-J) instead of
        ``(i, i + rotary_dim/2)`` (GPT-NeoX / Llama "rotate half").
      rope_scaling: frequency scaling of the global RoPE (Llama 3.1 ``llama3``, ``linear``).
      rotary_base_local: RoPE base of sliding-window layers (Gemma 3); their RoPE is unscaled.
      sliding_window: keys ``k`` seen by query ``q`` in sliding layers: ``q - window < k <= q``.
      layer_types: per layer ``full`` or ``sliding``; ``None``: all ``sliding`` when
        ``sliding_window`` is set (Mistral), else all ``full``.
      attn_softcap: attention logits ``c * tanh(s / c)`` (Gemma 2: 50).
      final_softcap: output logits ``c * tanh(l / c)`` (Gemma 2: 30).
      embed_scale: multiply embeddings by ``sqrt(d_model)`` (Gemma).
      query_scale: attention scores scaled by ``query_scale ** -0.5`` (Gemma 2/3
        ``query_pre_attn_scalar``); ``None`` = ``d_head``.
    """

    vocab_size: int = 64
    n_ctx: int = 64
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int | None = None
    positions: str = "learned"
    tied_embeddings: bool = True
    ln_eps: float = 1e-5
    rotary_base: float = 10000.0
    init_std: float = 0.02
    d_head: int | None = None
    n_kv_heads: int | None = None
    norm: str = "layernorm"
    norm_offset: float = 0.0
    act: str = "gelu_tanh"
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    post_norms: bool = False
    qk_norm: bool = False
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    rotary_dim: int | None = None
    rotary_interleaved: bool = False
    rope_scaling: RopeScaling | None = None
    rotary_base_local: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    embed_scale: bool = False
    query_scale: float | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"TransformerConfig: {msg}")

        for name, options in (("positions", POSITIONS), ("norm", NORMS), ("act", ACTS)):
            if getattr(self, name) not in options:
                raise bad(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        for name in ("vocab_size", "n_ctx", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_head is None and self.d_model % self.n_heads:
            raise bad(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads} "
                      "(set d_head)")
        if self.d_head is not None and self.d_head < 1:
            raise bad(f"d_head must be >= 1, got {self.d_head}")
        if self.n_heads % self.kv_heads:
            raise bad(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        if self.positions == "rotary":
            rd = self.rot_dim
            if rd % 2 or not 0 < rd <= self.head_dim:
                raise bad(f"rotary_dim must be even and in (0, head_dim={self.head_dim}], "
                          f"got {rd}")
        if isinstance(self.layer_types, list):  # JSON round trips give lists
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers:
                raise bad(f"layer_types has {len(self.layer_types)} entries for "
                          f"n_layers={self.n_layers}")
            if not set(self.layer_types) <= set(LAYER_TYPES):
                raise bad(f"layer_types entries must be in {LAYER_TYPES}, got {self.layer_types}")
            if "sliding" in self.layer_types and self.sliding_window is None:
                raise bad("layer_types has sliding layers but sliding_window is None")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise bad(f"sliding_window must be >= 1, got {self.sliding_window}")
        for name in ("attn_softcap", "final_softcap", "query_scale"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise bad(f"{name} must be > 0 or None, got {v}")
        if isinstance(self.rope_scaling, dict):  # convenience: a HF-style dict
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    @property
    def rot_dim(self) -> int:
        return self.rotary_dim if self.rotary_dim is not None else self.head_dim

    @property
    def types(self) -> tuple[str, ...]:
        """Per-layer attention type (``full`` or ``sliding``)."""
        if self.layer_types is not None:
            return self.layer_types
        return ("sliding" if self.sliding_window is not None else "full",) * self.n_layers

    @property
    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.query_scale if self.query_scale is not None else self.head_dim)

    @classmethod
    def tiny(cls, **override) -> TransformerConfig:
        """For tests: 2 layers, width 32."""
        return cls(**{"d_model": 32, "n_layers": 2, "n_heads": 2, "n_ctx": 32, **override})

    @classmethod
    def gpt2_small(cls, **override) -> TransformerConfig:
        """GPT-2 small (124M) shapes."""
        return cls(**{"vocab_size": 50257, "n_ctx": 1024, "d_model": 768, "n_layers": 12,
                      "n_heads": 12, **override})

    @classmethod
    def llama(cls, **override) -> TransformerConfig:
        """Llama-family switches (RMSNorm, RoPE, SwiGLU, no biases, untied); tiny shapes."""
        return cls(**{"vocab_size": 128, "n_ctx": 64, "d_model": 64, "n_layers": 2,
                      "n_heads": 4, "n_kv_heads": 2, "d_mlp": 128, "positions": "rotary",
                      "norm": "rmsnorm", "ln_eps": 1e-6, "act": "silu", "gated_mlp": True,
                      "qkv_bias": False, "out_bias": False, "mlp_bias": False,
                      "tied_embeddings": False, **override})


def hook_names(cfg: TransformerConfig, *, include_result: bool = False) -> tuple[str, ...]:
    """Every hook point of a model with config ``cfg``, in forward order (TransformerLens names).

    Shapes (batch B, sequence T, heads H, key/value heads K, head width Dh, MLP width M):
      ``hook_embed``, ``hook_pos_embed``, ``hook_resid_*``, ``hook_attn_out``,
      ``hook_mlp_out``, ``*.hook_normalized``: ``[B, T, D]``; ``*.hook_scale``: ``[B, T, 1]``;
      ``attn.hook_q`` / ``hook_rot_q`` / ``hook_z``: ``[B, T, H, Dh]``; ``attn.hook_k`` /
      ``hook_rot_k`` / ``hook_v``: ``[B, T, K, Dh]``; ``attn.hook_attn_scores`` (scaled,
      soft-capped, masked; float32) and ``attn.hook_pattern`` (float32): ``[B, H, T_q, T_k]``;
      ``attn.hook_result`` (per-head output, ``[B, T, H, D]``, listed only with
      ``include_result`` because of its memory; always a valid name); ``mlp.hook_pre``,
      ``mlp.hook_pre_linear`` (gated MLPs), ``mlp.hook_post``: ``[B, T, M]``.
    """
    names = ["hook_embed"]
    if cfg.positions == "learned":
        names.append("hook_pos_embed")
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        names += [f"{b}.hook_resid_pre", f"{b}.ln1.hook_scale", f"{b}.ln1.hook_normalized",
                  f"{b}.attn.hook_q", f"{b}.attn.hook_k", f"{b}.attn.hook_v"]
        if cfg.positions == "rotary":
            names += [f"{b}.attn.hook_rot_q", f"{b}.attn.hook_rot_k"]
        names += [f"{b}.attn.hook_attn_scores", f"{b}.attn.hook_pattern", f"{b}.attn.hook_z"]
        if include_result:
            names.append(f"{b}.attn.hook_result")
        if cfg.post_norms:
            names += [f"{b}.ln1_post.hook_scale", f"{b}.ln1_post.hook_normalized"]
        names.append(f"{b}.hook_attn_out")
        if not cfg.parallel_attn_mlp:
            names.append(f"{b}.hook_resid_mid")
        names += [f"{b}.ln2.hook_scale", f"{b}.ln2.hook_normalized", f"{b}.mlp.hook_pre"]
        if cfg.gated_mlp:
            names.append(f"{b}.mlp.hook_pre_linear")
        names.append(f"{b}.mlp.hook_post")
        if cfg.post_norms:
            names += [f"{b}.ln2_post.hook_scale", f"{b}.ln2_post.hook_normalized"]
        names += [f"{b}.hook_mlp_out", f"{b}.hook_resid_post"]
    names += ["ln_final.hook_scale", "ln_final.hook_normalized"]
    return tuple(names)


def check_hook_names(cfg: TransformerConfig, names) -> None:
    """Raises ``KeyError`` naming any unknown hook and listing the valid ones."""
    valid = hook_names(cfg, include_result=True)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise KeyError(f"unknown hook name(s) {unknown}; valid names for this model: "
                       f"{list(valid)}")
