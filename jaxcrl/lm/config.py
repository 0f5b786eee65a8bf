"""Configuration of the hookable transformer, and the one list of its hook points."""

from __future__ import annotations

import dataclasses

from jaxcrl.checkpoint import register_config

POSITIONS = ("learned", "rotary")


@register_config
@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A GPT-2-style decoder-only transformer (pre-LayerNorm, GELU MLP, causal attention).

    Attributes:
      vocab_size: number of token ids V.
      n_ctx: maximum sequence length T.
      d_model: residual stream width.
      n_layers: number of blocks L.
      n_heads: attention heads per block (``d_model % n_heads == 0``).
      d_mlp: MLP hidden width (``4 * d_model`` when ``None``).
      positions: ``learned`` (GPT-2 absolute position embeddings, ``hook_pos_embed``) or
        ``rotary`` (RoPE on queries and keys; no ``hook_pos_embed``).
      tied_embeddings: unembedding is the transposed token embedding (GPT-2) or its own
        ``[d_model, V]`` matrix.
      ln_eps: LayerNorm epsilon.
      rotary_base: RoPE frequency base.
      init_std: normal init scale of weights (GPT-2: 0.02; residual projections are scaled
        by ``1/sqrt(2 L)``).
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

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"TransformerConfig.positions must be one of {POSITIONS}, "
                             f"got {self.positions!r}")
        for name in ("vocab_size", "n_ctx", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerConfig.{name} must be >= 1, "
                                 f"got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"TransformerConfig: d_model={self.d_model} is not divisible by "
                             f"n_heads={self.n_heads}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"TransformerConfig: rotary positions need an even head_dim, "
                             f"got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    @classmethod
    def tiny(cls, **override) -> TransformerConfig:
        """For tests: 2 layers, width 32."""
        return cls(**{"d_model": 32, "n_layers": 2, "n_heads": 2, "n_ctx": 32, **override})

    @classmethod
    def gpt2_small(cls, **override) -> TransformerConfig:
        """GPT-2 small (124M) shapes."""
        return cls(**{"vocab_size": 50257, "n_ctx": 1024, "d_model": 768, "n_layers": 12,
                      "n_heads": 12, **override})


def hook_names(cfg: TransformerConfig) -> tuple[str, ...]:
    """Every hook point of a model with config ``cfg``, in forward order (TransformerLens names).

    Shapes (batch B, sequence T, heads H): ``hook_embed``, ``hook_pos_embed``, ``resid_*``,
    ``hook_attn_out``, ``hook_mlp_out``, ``ln_final.hook_normalized``: ``[B, T, d_model]``;
    ``attn.hook_pattern``: ``[B, H, T, T]`` (query, key); ``mlp.hook_post``: ``[B, T, d_mlp]``.
    """
    names = ["hook_embed"]
    if cfg.positions == "learned":
        names.append("hook_pos_embed")
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        names += [f"{b}.hook_resid_pre", f"{b}.attn.hook_pattern", f"{b}.hook_attn_out",
                  f"{b}.hook_resid_mid", f"{b}.mlp.hook_post", f"{b}.hook_mlp_out",
                  f"{b}.hook_resid_post"]
    names.append("ln_final.hook_normalized")
    return tuple(names)


def check_hook_names(cfg: TransformerConfig, names) -> None:
    """Raises ``KeyError`` naming any unknown hook and listing the valid ones."""
    valid = hook_names(cfg)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise KeyError(f"unknown hook name(s) {unknown}; valid names for this model: "
                       f"{list(valid)}")
