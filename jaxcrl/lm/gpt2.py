"""Hugging Face GPT-2 interop: load ``GPT2LMHeadModel`` weights into a HookedTransformer and
export them back.

A Hugging Face model directory holds ``config.json`` and ``model.safetensors`` (or shards
listed in ``model.safetensors.index.json``). Files are read with ``safetensors.numpy``; no
torch import. Weight layout (HF ``Conv1D`` stores ``[in, out]``, so no transposes)::

    wte.weight [V, D] -> W_E            wpe.weight [n_ctx, D] -> W_pos
    h.{l}.ln_1.{weight,bias} -> blocks_{l}/ln1/{scale,bias}   (ln_2 -> ln2, ln_f -> ln_final)
    h.{l}.attn.c_attn.weight [D, 3D] = [W_Q | W_K | W_V], each reshaped [D, H, Dh]
    h.{l}.attn.c_attn.bias [3D] = [b_Q | b_K | b_V], each [H, Dh]
    h.{l}.attn.c_proj.weight [D, D] -> W_O [H, Dh, D];  .bias -> b_O
    h.{l}.mlp.c_fc.{weight,bias} -> W_in [D, M], b_in;  h.{l}.mlp.c_proj -> W_out [M, D], b_out
    lm_head.weight [V, D]: tied to wte (absent in the file) or, if untied, W_U = lm_head.T

Keys may carry the ``transformer.`` prefix (as ``GPT2LMHeadModel.save_pretrained`` writes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxcrl.lm.config import TransformerConfig

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _read_json(file: Path) -> dict:
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: missing (expected a Hugging Face GPT-2 directory with "
                                f"{_CONFIG} and {_WEIGHTS})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: corrupt JSON ({e})") from None


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (expected a Hugging Face GPT-2 directory "
                                f"with {_CONFIG} and {_WEIGHTS})")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises SafetensorError/OSError/ValueError
        raise ValueError(f"{file}: not a readable safetensors file ({type(e).__name__}: "
                         f"{e})") from None


def _config_from_hf(hf: dict, where: Path) -> TransformerConfig:
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{where}: model_type {model_type!r} is not 'gpt2'")
    act = hf.get("activation_function", "gelu_new")
    if act not in _GELU_TANH:
        raise ValueError(f"{where}: activation_function {act!r} is not supported "
                         f"(this transformer uses GPT-2's tanh GELU, one of {_GELU_TANH})")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{where}: only the standard 1/sqrt(head_dim) attention scaling "
                         "is supported")
    try:
        return TransformerConfig(
            vocab_size=int(hf["vocab_size"]), n_ctx=int(hf["n_positions"]),
            d_model=int(hf["n_embd"]), n_layers=int(hf["n_layer"]), n_heads=int(hf["n_head"]),
            d_mlp=None if hf.get("n_inner") is None else int(hf["n_inner"]),
            positions="learned", tied_embeddings=bool(hf.get("tie_word_embeddings", True)),
            ln_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            init_std=float(hf.get("initializer_range", 0.02)))
    except KeyError as e:
        raise ValueError(f"{where}: config.json lacks {e.args[0]!r}") from None


def load_hf_gpt2(path: str | os.PathLike) -> tuple[TransformerConfig, dict]:
    """Loads a Hugging Face GPT-2 directory as ``(config, params)`` for :class:`HookedTransformer`.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or a sharded index).

    Returns:
      ``(TransformerConfig, params)``; params are float32 numpy arrays in the layout of
      :mod:`jaxcrl.lm.model`.

    Raises:
      FileNotFoundError: missing directory or file. ValueError: corrupt file, unsupported
      variant, or missing/mis-shaped tensors.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such Hugging Face model directory")
    cfg = _config_from_hf(_read_json(path / _CONFIG), path / _CONFIG)
    if (path / _WEIGHTS).exists() or not (path / _INDEX).exists():
        raw = _read_safetensors(path / _WEIGHTS)
    else:
        index = _read_json(path / _INDEX)
        raw = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            raw.update(_read_safetensors(path / shard))
    tensors = {(k[len("transformer."):] if k.startswith("transformer.") else k): v
               for k, v in raw.items()}

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in tensors:
            raise ValueError(f"{path}: tensor {key!r} is missing from the weights")
        x = tensors[key]
        if tuple(x.shape) != shape:
            raise ValueError(f"{path}: tensor {key!r} has shape {tuple(x.shape)}, "
                             f"expected {shape}")
        return np.asarray(x, np.float32)

    d, h, dh, m, v = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    params: dict[str, Any] = {"W_E": get("wte.weight", (v, d)),
                              "W_pos": get("wpe.weight", (cfg.n_ctx, d))}
    for layer in range(cfg.n_layers):
        p = f"h.{layer}."
        w_qkv = get(p + "attn.c_attn.weight", (d, 3 * d))
        b_qkv = get(p + "attn.c_attn.bias", (3 * d,))
        w_q, w_k, w_v = (w.reshape(d, h, dh) for w in np.split(w_qkv, 3, axis=1))
        b_q, b_k, b_v = (b.reshape(h, dh) for b in np.split(b_qkv, 3))
        params[f"blocks_{layer}"] = {
            "ln1": {"scale": get(p + "ln_1.weight", (d,)), "bias": get(p + "ln_1.bias", (d,))},
            "ln2": {"scale": get(p + "ln_2.weight", (d,)), "bias": get(p + "ln_2.bias", (d,))},
            "attn": {"W_Q": w_q, "W_K": w_k, "W_V": w_v, "b_Q": b_q, "b_K": b_k, "b_V": b_v,
                     "W_O": get(p + "attn.c_proj.weight", (d, d)).reshape(h, dh, d),
                     "b_O": get(p + "attn.c_proj.bias", (d,))},
            "mlp": {"W_in": get(p + "mlp.c_fc.weight", (d, m)),
                    "b_in": get(p + "mlp.c_fc.bias", (m,)),
                    "W_out": get(p + "mlp.c_proj.weight", (m, d)),
                    "b_out": get(p + "mlp.c_proj.bias", (d,))},
        }
    params["ln_final"] = {"scale": get("ln_f.weight", (d,)), "bias": get("ln_f.bias", (d,))}
    if not cfg.tied_embeddings:
        params["W_U"] = np.ascontiguousarray(get("lm_head.weight", (v, d)).T)
    return cfg, params


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
