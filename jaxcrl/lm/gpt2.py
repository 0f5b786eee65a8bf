"""Hugging Face GPT-2 interop: ``load_hf_gpt2`` (a thin alias of
:func:`jaxcrl.lm.hf.from_pretrained`) and ``save_hf_gpt2`` (export a learned-position model
as a ``GPT2LMHeadModel`` directory).

Export layout (HF ``Conv1D`` stores ``[in, out]``, so no transposes)::

    W_E -> transformer.wte.weight [V, D]      W_pos -> transformer.wpe.weight [n_ctx, D]
    blocks_{l}/ln1 -> h.{l}.ln_1 (ln2 -> ln_2, ln_final -> ln_f)
    W_Q | W_K | W_V -> h.{l}.attn.c_attn.weight [D, 3D] (biases likewise)
    W_O -> h.{l}.attn.c_proj.weight [D, D];  W_in/W_out -> h.{l}.mlp.c_fc / c_proj
    W_U.T -> lm_head.weight [V, D] (untied only)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxcrl.lm.config import TransformerConfig
from jaxcrl.lm.hf import CONFIG as _CONFIG
from jaxcrl.lm.hf import WEIGHTS as _WEIGHTS
from jaxcrl.lm.hf import from_pretrained


def load_hf_gpt2(path: str | os.PathLike) -> tuple[TransformerConfig, dict]:
    """Loads a Hugging Face GPT-2 directory as ``(config, params)`` (float32).

    A thin alias of :func:`jaxcrl.lm.hf.from_pretrained` that insists on ``model_type``
    ``gpt2`` (errors as there).
    """
    model, params = from_pretrained(path)
    if model.cfg.positions != "learned":
        raise ValueError(f"{path}: not a GPT-2 model (use jaxcrl.lm.from_pretrained)")
    return model.cfg, params


def save_hf_gpt2(path: str | os.PathLike, cfg: TransformerConfig, params: Any) -> Path:
    """Exports a learned-position model as a Hugging Face ``GPT2LMHeadModel`` directory
    (``config.json`` + ``model.safetensors``), loadable with ``from_pretrained(path)``.

    Raises:
      ValueError: rotary positions (GPT-2 has none).
    """
    from safetensors.numpy import save_file

    if cfg.positions != "learned":
        raise ValueError("save_hf_gpt2: GPT-2 needs learned positions, this model uses "
                         f"{cfg.positions!r}")
    gpt2_like = TransformerConfig(**{**cfg.__dict__, **{
        k: TransformerConfig.__dataclass_fields__[k].default for k in (
            "d_head", "n_kv_heads", "norm", "norm_offset", "act", "gated_mlp",
            "parallel_attn_mlp", "post_norms", "qk_norm", "qkv_bias", "out_bias", "mlp_bias",
            "sliding_window", "layer_types", "attn_softcap", "final_softcap", "embed_scale",
            "query_scale")}})
    if gpt2_like != cfg:
        raise ValueError("save_hf_gpt2: only GPT-2-style configs (LayerNorm, tanh-GELU MLP, "
                         "biases, full attention) can be exported as GPT-2")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    d = cfg.d_model

    def np32(x) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x, np.float32))

    t = {"transformer.wte.weight": np32(params["W_E"]),
         "transformer.wpe.weight": np32(params["W_pos"])}
    for layer in range(cfg.n_layers):
        blk = params[f"blocks_{layer}"]
        a, mlp = blk["attn"], blk["mlp"]
        p = f"transformer.h.{layer}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            t[p + theirs + ".weight"] = np32(blk[ours]["scale"])
            t[p + theirs + ".bias"] = np32(blk[ours]["bias"])
        t[p + "attn.c_attn.weight"] = np32(np.concatenate(
            [np.reshape(a[k], (d, d)) for k in ("W_Q", "W_K", "W_V")], axis=1))
        t[p + "attn.c_attn.bias"] = np32(np.concatenate(
            [np.reshape(a[k], (d,)) for k in ("b_Q", "b_K", "b_V")]))
        t[p + "attn.c_proj.weight"] = np32(np.reshape(a["W_O"], (d, d)))
        t[p + "attn.c_proj.bias"] = np32(a["b_O"])
        t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = np32(mlp["W_in"]), np32(mlp["b_in"])
        t[p + "mlp.c_proj.weight"] = np32(mlp["W_out"])
        t[p + "mlp.c_proj.bias"] = np32(mlp["b_out"])
    t["transformer.ln_f.weight"] = np32(params["ln_final"]["scale"])
    t["transformer.ln_f.bias"] = np32(params["ln_final"]["bias"])
    if not cfg.tied_embeddings:
        t["lm_head.weight"] = np32(np.asarray(params["W_U"]).T)
    save_file(t, str(path / _WEIGHTS), metadata={"format": "pt"})
    hf = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "activation_function": "gelu_new", "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_ctx, "n_embd": d, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp, "layer_norm_epsilon": cfg.ln_eps,
        "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tied_embeddings,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "torch_dtype": "float32",
    }
    with open(path / _CONFIG, "w") as f:
        json.dump(hf, f, indent=2)
    return path
