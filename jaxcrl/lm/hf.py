"""Hugging Face import: ``from_pretrained(dir) -> (HookedTransformer, params)``.

Families (``model_type`` in ``config.json``): ``gpt2``, ``gpt_neox`` (Pythia), ``llama``,
``mistral``, ``qwen2``, ``qwen3``, ``gemma``, ``gemma2``, ``gemma3_text``. Both the
``transformers`` 4.x config style (``rope_theta``, ``rope_scaling``, ``rotary_pct``, ...)
and the 5.x style (``rope_parameters``, ``layer_types``) are read.

Files are data. Nothing in ``config.json`` chooses what is imported or called: each family
has an allowlist of config keys, and a key outside it, or a value this transformer does not
implement (a ``rope_scaling`` type other than ``linear``/``llama3``, an unknown activation,
...), is a ``ValueError`` naming the key. Keys that only matter for training or generation
defaults (dropouts, token ids, ``use_cache``, ...) are accepted and ignored. Weight files are
``model.safetensors`` or the shards of ``model.safetensors.index.json``; a shard name that
leaves the model directory (``../x``, an absolute path) and any symlinked file are refused.
Tensors are read one at a time (at the offsets of the file's header, checked against
``safetensors``' own reading of it; plain reads, no memory map), converted to the target
dtype, laid out, and handed to JAX before the next is read, so peak host memory is about the
weights in the target dtype plus a few copies of one tensor. Every tensor the config implies
must be present with the implied shape, and every tensor in the files must be used (except a
few known buffers such as ``rotary_emb.inv_freq``): a config whose layer count, widths, head
counts or vocabulary disagree with the weights is an error, never a silently different
model. (Head counts are only visible in the shapes when they change a tensor's shape, e.g.
with an explicit ``head_dim`` or grouped key/value heads; GPT-2's ``n_head`` is not.)

Weight layouts (torch ``Linear`` stores ``[out, in]``; GPT-2's ``Conv1D`` ``[in, out]``)::

    llama-like   model.embed_tokens [V, D] -> W_E; lm_head [V, D] -> W_U.T (untied)
                 layers.{l}.self_attn.{q,k,v}_proj [H*Dh | K*Dh, D] -> W_Q/W_K/W_V [D, H|K, Dh]
                 o_proj [D, H*Dh] -> W_O [H, Dh, D]; q_norm/k_norm [Dh] (Qwen 3, Gemma 3)
                 mlp.gate_proj -> W_gate, up_proj -> W_in [D, M], down_proj -> W_out [M, D]
                 input_layernorm -> ln1; post_attention_layernorm -> ln2 (Llama) or ln1_post
                 (Gemma 2/3, whose pre_/post_feedforward_layernorm are ln2/ln2_post)
    gpt_neox     attention.query_key_value [3D, D], rows grouped per head [H, 3, Dh]
    gpt2         h.{l}.attn.c_attn [D, 3D] = [W_Q | W_K | W_V]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxcrl.lm.config import RopeScaling, TransformerConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
FAMILIES = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
            "gemma3_text")

# Keys of any Hugging Face config that do not change the forward pass of a causal LM.
_GENERIC = frozenset({
    "_name_or_path", "architectures", "transformers_version", "model_type", "dtype",
    "torch_dtype", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id",
    "sep_token_id", "decoder_start_token_id", "initializer_range", "return_dict",
    "output_hidden_states", "output_attentions", "chunk_size_feed_forward", "id2label",
    "label2id", "problem_type", "tokenizer_class", "prefix", "task_specific_params",
    "finetuning_task", "torchscript", "use_bfloat16", "tf_legacy_loss", "max_length",
    "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "attention_dropout", "hidden_dropout", "classifier_dropout", "resid_pdrop", "embd_pdrop",
    "attn_pdrop", "attention_probs_dropout_prob", "hidden_dropout_prob", "cache_implementation",
    "_attn_implementation_autoset", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "pruned_heads", "tie_encoder_decoder", "is_encoder_decoder",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "reorder_and_upcast_attn", "use_mrope", "max_window_layers",
    "sliding_window_pattern", "_sliding_window_pattern", "use_bidirectional_attention",
    "pretraining_tp", "layer_types", "use_sliding_window",
})
# Generic keys whose value must be "off" (falsy) for a causal decoder.
_MUST_BE_OFF = ("add_cross_attention", "is_encoder_decoder", "tie_encoder_decoder", "use_mrope",
                "use_bidirectional_attention", "pruned_heads")

_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
        "gelu": "gelu", "silu": "silu", "swish": "silu", "relu": "relu"}

_LLAMA_KEYS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
               "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "rope_theta",
               "rope_scaling", "rope_parameters", "attention_bias", "partial_rotary_factor"}
_FAMILY_KEYS = {
    "gpt2": {"vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner",
             "activation_function", "layer_norm_epsilon", "tie_word_embeddings",
             "scale_attn_weights", "scale_attn_by_inverse_layer_idx"},
    "gpt_neox": {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "hidden_act", "max_position_embeddings", "layer_norm_eps",
                 "tie_word_embeddings", "use_parallel_residual", "rotary_pct", "rotary_emb_base",
                 "rope_scaling", "rope_parameters", "attention_bias", "partial_rotary_factor",
                 "rope_theta"},
    "llama": _LLAMA_KEYS | {"mlp_bias"},
    "mistral": _LLAMA_KEYS | {"sliding_window"},
    "qwen2": _LLAMA_KEYS | {"sliding_window"},
    "qwen3": _LLAMA_KEYS | {"sliding_window"},
    "gemma": _LLAMA_KEYS | {"hidden_activation"},
    "gemma2": _LLAMA_KEYS | {"hidden_activation", "query_pre_attn_scalar", "sliding_window",
                             "final_logit_softcapping", "attn_logit_softcapping"},
    "gemma3_text": _LLAMA_KEYS | {"hidden_activation", "query_pre_attn_scalar", "sliding_window",
                                  "final_logit_softcapping", "attn_logit_softcapping",
                                  "rope_local_base_freq"},
}
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
              "original_max_position_embeddings", "partial_rotary_factor"}


class _ConfigReader:
    """Reads ``config.json`` values with errors that name the file and the key."""

    def __init__(self, hf: dict, where: Path):
        self.hf, self.where = hf, where

    def error(self, key: str, msg: str) -> ValueError:
        return ValueError(f"{self.where}: config key {key!r} {msg}")

    def req(self, key: str, cast: Callable = int) -> Any:
        if self.hf.get(key) is None:
            raise self.error(key, "is missing")
        return self._cast(key, self.hf[key], cast)

    def opt(self, key: str, default: Any, cast: Callable = int) -> Any:
        v = self.hf.get(key)
        return default if v is None else self._cast(key, v, cast)

    def _cast(self, key: str, v: Any, cast: Callable) -> Any:
        if isinstance(v, bool) and cast is not bool:
            raise self.error(key, f"must be a number, got {v!r}")
        try:
            out = cast(v)
        except (TypeError, ValueError):
            raise self.error(key, f"has an invalid value {v!r}") from None
        if cast is int and out != v:
            raise self.error(key, f"must be an integer, got {v!r}")
        return out

    def act(self, key: str, default: str | None = None) -> str:
        v = self.hf.get(key, default)
        if v not in _ACT:
            raise self.error(key, f"= {v!r} is not supported (supported: {sorted(_ACT)})")
        return _ACT[v]


def _check_keys(hf: dict, family: str, where: Path) -> None:
    allowed = _GENERIC | _FAMILY_KEYS[family]
    unknown = sorted(k for k in hf if k not in allowed)
    if unknown:
        raise ValueError(f"{where}: config key(s) {unknown} are not supported for model_type "
                         f"{family!r}; jaxcrl reads only keys whose meaning it implements, so "
                         "the model would differ from the original")
    for key in _MUST_BE_OFF:
        if hf.get(key):
            raise ValueError(f"{where}: config key {key!r} = {hf[key]!r} is not supported "
                             "(causal decoder-only models only)")


def _rope(rc: _ConfigReader, params: dict | None, key: str, default_theta: float,
          max_pos: int) -> tuple[float, RopeScaling | None, float | None]:
    """(theta, scaling, partial_rotary_factor) from one rope dict (``rope_parameters`` or a
    legacy ``rope_scaling``)."""
    params = dict(params or {})
    unknown = sorted(set(params) - _ROPE_KEYS)
    if unknown:
        raise rc.error(key, f"has unsupported entries {unknown}")
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", default_theta))
    partial = params.get("partial_rotary_factor")
    if kind == "default":
        return theta, None, partial
    if kind == "linear":
        return theta, RopeScaling("linear", float(params["factor"])), partial
    if kind == "llama3":
        try:
            return theta, RopeScaling(
                "llama3", float(params["factor"]), float(params["low_freq_factor"]),
                float(params["high_freq_factor"]),
                int(params.get("original_max_position_embeddings", max_pos))), partial
        except KeyError as e:
            raise rc.error(key, f"(llama3) lacks {e.args[0]!r}") from None
    raise rc.error(key, f"has rope type {kind!r}, which is not implemented (supported: "
                        "default, linear, llama3)")


def _global_rope(rc: _ConfigReader, max_pos: int, default_theta: float = 10000.0):
    hf = rc.hf
    rp = hf.get("rope_parameters")
    if rp is not None and ("full_attention" in rp or "sliding_attention" in rp):
        rp = rp.get("full_attention")
    if hf.get("rope_scaling") is not None:  # legacy: rope_theta + rope_scaling
        theta, scaling, partial = _rope(rc, hf["rope_scaling"], "rope_scaling",
                                        rc.opt("rope_theta", default_theta, float), max_pos)
        if rp is not None:
            theta = float(rp.get("rope_theta", theta))
        return theta, scaling, partial
    if rp is not None:
        return _rope(rc, rp, "rope_parameters", rc.opt("rope_theta", default_theta, float),
                     max_pos)
    return rc.opt("rope_theta", default_theta, float), None, None


def _layer_types(rc: _ConfigReader, n_layers: int, default: list[str]) -> tuple[str, ...]:
    lt = rc.hf.get("layer_types") or default
    names = {"full_attention": "full", "sliding_attention": "sliding"}
    if len(lt) != n_layers or any(t not in names for t in lt):
        raise rc.error("layer_types", f"= {lt!r} must list 'full_attention' or "
                                      f"'sliding_attention' for each of {n_layers} layers")
    return tuple(names[t] for t in lt)


def config_from_hf(hf: dict, where: Path | str = CONFIG) -> TransformerConfig:
    """The :class:`TransformerConfig` of a Hugging Face ``config.json`` dict.

    Raises:
      ValueError: unsupported ``model_type``, a key outside the family's allowlist, an
        unsupported value (naming the key), or a missing required key.
    """
    where = Path(where)
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{where}: model_type {family!r} is not supported (supported: "
                         f"{', '.join(FAMILIES)})")
    _check_keys(hf, family, where)
    rc = _ConfigReader(hf, where)
    if family == "gpt2":
        return _gpt2_config(rc)
    if family == "gpt_neox":
        return _neox_config(rc)
    return _llama_like_config(rc, family)


def _gpt2_config(rc: _ConfigReader) -> TransformerConfig:
    hf = rc.hf
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        key = "scale_attn_weights" if not hf.get("scale_attn_weights", True) \
            else "scale_attn_by_inverse_layer_idx"
        raise rc.error(key, f"= {hf[key]!r} is not supported (only 1/sqrt(head_dim) scaling)")
    n_pos = rc.req("n_positions")
    if hf.get("n_ctx") is not None and rc.req("n_ctx") != n_pos:
        raise rc.error("n_ctx", f"= {hf['n_ctx']} disagrees with n_positions = {n_pos}")
    return TransformerConfig(
        vocab_size=rc.req("vocab_size"), n_ctx=n_pos, d_model=rc.req("n_embd"),
        n_layers=rc.req("n_layer"), n_heads=rc.req("n_head"), d_mlp=rc.opt("n_inner", None),
        positions="learned", tied_embeddings=rc.opt("tie_word_embeddings", True, bool),
        ln_eps=rc.opt("layer_norm_epsilon", 1e-5, float), act=rc.act("activation_function",
                                                                      "gelu_new"),
        init_std=rc.opt("initializer_range", 0.02, float))


def _neox_config(rc: _ConfigReader) -> TransformerConfig:
    hf = rc.hf
    d, h = rc.req("hidden_size"), rc.req("num_attention_heads")
    if d % h:
        raise rc.error("num_attention_heads", f"= {h} does not divide hidden_size = {d}")
    max_pos = rc.req("max_position_embeddings")
    theta, scaling, partial = _global_rope(rc, max_pos, rc.opt("rotary_emb_base", 10000.0,
                                                                float))
    if hf.get("rope_parameters") is None and hf.get("rope_scaling") is None:
        theta = rc.opt("rotary_emb_base", theta, float)
    pct = rc.opt("rotary_pct", partial if partial is not None else 1.0, float)
    rot = int((d // h) * pct)
    return TransformerConfig(
        vocab_size=rc.req("vocab_size"), n_ctx=max_pos, d_model=d,
        n_layers=rc.req("num_hidden_layers"), n_heads=h, d_mlp=rc.req("intermediate_size"),
        positions="rotary", tied_embeddings=rc.opt("tie_word_embeddings", False, bool),
        ln_eps=rc.opt("layer_norm_eps", 1e-5, float), rotary_base=theta, rope_scaling=scaling,
        rotary_dim=rot, act=rc.act("hidden_act", "gelu"),
        parallel_attn_mlp=rc.opt("use_parallel_residual", True, bool),
        qkv_bias=rc.opt("attention_bias", True, bool), out_bias=rc.opt("attention_bias", True,
                                                                       bool),
        init_std=rc.opt("initializer_range", 0.02, float))


def _llama_like_config(rc: _ConfigReader, family: str) -> TransformerConfig:
    hf = rc.hf
    gemma = family.startswith("gemma")
    d, h = rc.req("hidden_size"), rc.req("num_attention_heads")
    n_layers = rc.req("num_hidden_layers")
    head_dim = rc.opt("head_dim", None)
    if head_dim is None:
        if d % h:
            raise rc.error("num_attention_heads", f"= {h} does not divide hidden_size = {d}")
        head_dim = d // h
    max_pos = rc.req("max_position_embeddings")
    theta, scaling, partial = _global_rope(
        rc, max_pos, 1_000_000.0 if family == "gemma3_text" else 10000.0)
    if hf.get("partial_rotary_factor") is not None:
        partial = rc.opt("partial_rotary_factor", 1.0, float)
    rot = head_dim if partial is None else int(head_dim * float(partial))
    if family == "llama" and rc.opt("pretraining_tp", 1) != 1:
        raise rc.error("pretraining_tp", "must be 1")
    act_key = "hidden_activation" if family in ("gemma2", "gemma3_text") else "hidden_act"
    if family == "gemma":  # HF maps Gemma's legacy "gelu" to the tanh approximation
        act = "gelu_tanh" if hf.get("hidden_act", "gelu_pytorch_tanh") == "gelu" \
            else rc.act("hidden_act", "gelu_pytorch_tanh")
    else:
        act = rc.act(act_key, "gelu_pytorch_tanh" if gemma else "silu")
    bias = rc.opt("attention_bias", False, bool)
    kw: dict[str, Any] = {}
    sliding_window, layer_types = None, None
    if family == "mistral":
        sliding_window = rc.opt("sliding_window", None)
    elif family in ("qwen2", "qwen3"):
        if rc.opt("use_sliding_window", False, bool) and hf.get("sliding_window") is not None:
            sliding_window = rc.req("sliding_window")
            mwl = rc.opt("max_window_layers", n_layers)
            layer_types = _layer_types(rc, n_layers, [
                "sliding_attention" if i >= mwl else "full_attention" for i in range(n_layers)])
        if family == "qwen2":
            bias = True  # Qwen 2's q/k/v projections always have biases, o_proj never
    elif family == "gemma2":
        sliding_window = rc.opt("sliding_window", 4096)
        layer_types = _layer_types(rc, n_layers, [
            "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)])
    elif family == "gemma3_text":
        sliding_window = rc.opt("sliding_window", 4096)
        pattern = rc.opt("sliding_window_pattern", rc.opt("_sliding_window_pattern", 6))
        layer_types = _layer_types(rc, n_layers, [
            "sliding_attention" if (i + 1) % pattern else "full_attention"
            for i in range(n_layers)])
        rp = hf.get("rope_parameters") or {}
        local = rp.get("sliding_attention")
        if local is not None:
            lt, lscale, _ = _rope(rc, local, "rope_parameters.sliding_attention", 10000.0, max_pos)
            if lscale is not None:
                raise rc.error("rope_parameters.sliding_attention", "scaling of the local RoPE "
                               "is not implemented")
        else:
            lt = rc.opt("rope_local_base_freq", 10000.0, float)
        kw["rotary_base_local"] = lt
    if layer_types is not None and "sliding" not in layer_types:
        sliding_window, layer_types = None, None
    if gemma:
        kw.update(norm_offset=1.0, embed_scale=True)
        if family != "gemma":
            kw.update(post_norms=True, query_scale=rc.opt("query_pre_attn_scalar", head_dim,
                                                          float),
                      attn_softcap=rc.opt("attn_logit_softcapping", None, float),
                      final_softcap=rc.opt("final_logit_softcapping", None, float))
    return TransformerConfig(
        vocab_size=rc.req("vocab_size"), n_ctx=max_pos, d_model=d, n_layers=n_layers,
        n_heads=h, d_mlp=rc.req("intermediate_size"), d_head=head_dim,
        n_kv_heads=rc.opt("num_key_value_heads", h), positions="rotary",
        tied_embeddings=rc.opt("tie_word_embeddings", gemma, bool),
        ln_eps=rc.opt("rms_norm_eps", 1e-6, float), rotary_base=theta, rope_scaling=scaling,
        rotary_dim=rot, norm="rmsnorm", act=act, gated_mlp=True,
        qk_norm=family in ("qwen3", "gemma3_text"), qkv_bias=bias,
        out_bias=bias and family != "qwen2", mlp_bias=rc.opt("mlp_bias", False, bool),
        sliding_window=sliding_window, layer_types=layer_types,
        init_std=rc.opt("initializer_range", 0.02, float), **kw)


# --------------------------------------------------------------------------- weights on disk

_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


def _inside(root: Path, name: str, what: str, allow_links_under: Path | None) -> Path:
    """``root / name`` after checking it stays in ``root`` and is no symlink."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise ValueError(f"{root}: {what} {name!r} is outside the model directory (refused)")
    file = root / name
    if file.is_symlink():
        target = file.resolve()
        if allow_links_under is None or not target.is_relative_to(allow_links_under):
            raise ValueError(f"{file}: {what} is a symlink (refused; copy the file in)")
    elif not file.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{root}: {what} {name!r} is outside the model directory (refused)")
    return file


class _SafetensorsFile:
    """One ``.safetensors`` file read tensor by tensor.

    The header is parsed and checked against the file (dtypes, shapes, offsets, size) and the
    file is opened once with ``safetensors.safe_open`` (numpy) to confirm the format. Tensor
    bytes are then read at their offsets with plain file reads rather than through the
    library's memory map: every page of a mapped file that is touched counts as resident
    memory until the map closes, which would hold a second copy of the weights during the
    load. (numpy also cannot name bfloat16, which the offsets handle alike.)
    """

    def __init__(self, file: Path):
        from safetensors import safe_open

        self.file = file
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing weight file")
        size = file.stat().st_size
        try:
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 0 < n <= min(size - 8, 100 << 20):
                    raise ValueError("bad header length")
                header = json.loads(f.read(n))
            with safe_open(str(file), framework="numpy") as handle:
                names = set(handle.keys())
        except Exception as e:  # safetensors raises SafetensorError/OSError/ValueError
            raise ValueError(f"{file}: not a readable safetensors file ({type(e).__name__}: "
                             f"{e})") from None
        header.pop("__metadata__", None)
        if set(header) != names:
            raise ValueError(f"{file}: inconsistent safetensors header")
        self.data_start = 8 + n
        self.entries = header
        for name, e in header.items():
            dt = _NP_DTYPES.get(e.get("dtype"))
            start, end = e.get("data_offsets", (0, -1))
            if dt is None:
                raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {e.get('dtype')}")
            if end - start != math.prod(e["shape"]) * np.dtype(dt).itemsize or \
                    self.data_start + end > size:
                raise ValueError(f"{file}: tensor {name!r} has inconsistent offsets (truncated "
                                 "or corrupt file)")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        e = self.entries[name]
        x = np.fromfile(self.file, dtype=_NP_DTYPES[e["dtype"]], count=math.prod(e["shape"]),
                        offset=self.data_start + e["data_offsets"][0])
        return x.reshape(e["shape"])


class _Weights:
    """All tensors of a model directory, by name, read lazily and checked on the way."""

    IGNORED = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias", "attention.bias",
               "attention.masked_bias")

    def __init__(self, root: Path, allow_links_under: Path | None = None):
        self.root = root
        self.files: dict[str, _SafetensorsFile] = {}
        self.where: dict[str, _SafetensorsFile] = {}
        single = root / WEIGHTS
        if single.exists() or single.is_symlink():
            f = self._open(WEIGHTS, allow_links_under)
            self.where = dict.fromkeys(f.entries, f)
        elif (root / INDEX).exists() or (root / INDEX).is_symlink():
            index = _read_json(_inside(root, INDEX, "shard index", allow_links_under))
            wm = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(wm, dict) or not wm:
                raise ValueError(f"{root / INDEX}: no 'weight_map' of tensor -> shard file")
            for name, shard in wm.items():
                f = self._open(shard, allow_links_under)
                if name not in f.entries:
                    raise ValueError(f"{f.file}: tensor {name!r} listed in {INDEX} is missing")
                self.where[name] = f
        else:
            raise FileNotFoundError(f"{root}: no {WEIGHTS} or {INDEX}")
        self.used: set[str] = set()

    def _open(self, name: str, allow_links_under: Path | None) -> _SafetensorsFile:
        if name not in self.files:
            file = _inside(self.root, name, "weight file", allow_links_under)
            self.files[name] = _SafetensorsFile(file)
        return self.files[name]

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, shape: tuple[int, ...], dtype: Any, hint: str = "") -> np.ndarray:
        """Tensor ``name`` as ``dtype`` after checking its shape is ``shape``."""
        if name not in self.where:
            raise ValueError(f"{self.root}: tensor {name!r} is missing from the weights{hint}")
        f = self.where[name]
        got = f.shape(name)
        if got != tuple(shape):
            raise ValueError(f"{self.root}: tensor {name!r} has shape {got}, but config.json "
                             f"implies {tuple(shape)}{hint}")
        self.used.add(name)
        return f.read(name).astype(dtype, copy=False)

    def check_all_used(self, ignore: tuple[str, ...] = ()) -> None:
        left = sorted(n for n in self.where if n not in self.used
                      and not n.endswith(self.IGNORED + ignore))
        if left:
            raise ValueError(f"{self.root}: the weights hold tensors the config does not account "
                             f"for (does config.json's layer count or family match the "
                             f"weights?): {left[:8]}{' ...' if len(left) > 8 else ''}")


def _read_json(file: Path) -> Any:
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: missing (expected a Hugging Face model directory "
                                f"with {CONFIG} and {WEIGHTS})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: corrupt JSON ({e})") from None


# --------------------------------------------------------------------------- weight layouts


def _prefix(w: _Weights, candidates: tuple[str, ...], probe: str) -> str:
    for p in candidates:
        if w.has(p + probe):
            return p
    raise ValueError(f"{w.root}: tensor {candidates[0] + probe!r} is missing from the weights "
                     "(is this the family config.json names?)")


def _load_gpt2(cfg: TransformerConfig, w: _Weights, put: Callable) -> dict:
    dt = put.dtype
    d, h, dh, m, v = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    p0 = _prefix(w, ("transformer.", ""), "wte.weight")
    params: dict[str, Any] = {"W_E": put(w.get(p0 + "wte.weight", (v, d), dt, " (vocab_size, "
                                                "n_embd)")),
                              "W_pos": put(w.get(p0 + "wpe.weight", (cfg.n_ctx, d), dt,
                                                 " (n_positions, n_embd)"))}
    ignore: tuple[str, ...] = ()
    if not cfg.tied_embeddings:  # big tensors first: their temporaries meet few loaded ones
        params["W_U"] = put(w.get("lm_head.weight", (v, d), dt, " (vocab_size, n_embd)").T)
    else:
        ignore = ("lm_head.weight",)
    for layer in range(cfg.n_layers):
        p = f"{p0}h.{layer}."
        hint = f" (layer {layer}: n_layer, n_embd, n_inner)"
        w_qkv = w.get(p + "attn.c_attn.weight", (d, 3 * d), dt, hint)
        b_qkv = w.get(p + "attn.c_attn.bias", (3 * d,), dt, hint)
        w_q, w_k, w_v = (put(x.reshape(d, h, dh)) for x in np.split(w_qkv, 3, axis=1))
        b_q, b_k, b_v = (put(x.reshape(h, dh)) for x in np.split(b_qkv, 3))
        del w_qkv, b_qkv

        def ln(name: str) -> dict:
            return {"scale": put(w.get(p + name + ".weight", (d,), dt, hint)),  # noqa: B023
                    "bias": put(w.get(p + name + ".bias", (d,), dt, hint))}  # noqa: B023

        params[f"blocks_{layer}"] = {
            "ln1": ln("ln_1"), "ln2": ln("ln_2"),
            "attn": {"W_Q": w_q, "W_K": w_k, "W_V": w_v, "b_Q": b_q, "b_K": b_k, "b_V": b_v,
                     "W_O": put(w.get(p + "attn.c_proj.weight", (d, d), dt, hint)
                                .reshape(h, dh, d)),
                     "b_O": put(w.get(p + "attn.c_proj.bias", (d,), dt, hint))},
            "mlp": {"W_in": put(w.get(p + "mlp.c_fc.weight", (d, m), dt, hint)),
                    "b_in": put(w.get(p + "mlp.c_fc.bias", (m,), dt, hint)),
                    "W_out": put(w.get(p + "mlp.c_proj.weight", (m, d), dt, hint)),
                    "b_out": put(w.get(p + "mlp.c_proj.bias", (d,), dt, hint))},
        }
    params["ln_final"] = {"scale": put(w.get(p0 + "ln_f.weight", (d,), dt)),
                          "bias": put(w.get(p0 + "ln_f.bias", (d,), dt))}
    w.check_all_used(ignore)
    return params


def _load_neox(cfg: TransformerConfig, w: _Weights, put: Callable) -> dict:
    dt = put.dtype
    d, h, dh, m, v = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    p0 = _prefix(w, ("gpt_neox.", ""), "embed_in.weight")
    params: dict[str, Any] = {"W_E": put(w.get(p0 + "embed_in.weight", (v, d), dt,
                                               " (vocab_size, hidden_size)"))}
    ignore: tuple[str, ...] = ()
    if not cfg.tied_embeddings:  # big tensors first: their temporaries meet few loaded ones
        params["W_U"] = put(w.get("embed_out.weight", (v, d), dt, " (vocab_size, hidden_size)").T)
    else:
        ignore = ("embed_out.weight",)
    for layer in range(cfg.n_layers):
        p = f"{p0}layers.{layer}."
        hint = f" (layer {layer}: num_hidden_layers, hidden_size, intermediate_size)"

        def get(name, shape):
            return w.get(p + name, shape, dt, hint)  # noqa: B023

        def ln(name: str) -> dict:
            return {"scale": put(get(name + ".weight", (d,))), "bias": put(get(name + ".bias",
                                                                               (d,)))}

        qkv = get("attention.query_key_value.weight", (3 * d, d)).reshape(h, 3, dh, d)
        attn = {f"W_{c}": put(qkv[:, i].transpose(2, 0, 1)) for i, c in enumerate("QKV")}
        del qkv
        if cfg.qkv_bias:
            b = get("attention.query_key_value.bias", (3 * d,)).reshape(h, 3, dh)
            attn.update({f"b_{c}": put(b[:, i]) for i, c in enumerate("QKV")})
        attn["W_O"] = put(get("attention.dense.weight", (d, d)).T.reshape(h, dh, d))
        if cfg.out_bias:
            attn["b_O"] = put(get("attention.dense.bias", (d,)))
        params[f"blocks_{layer}"] = {
            "ln1": ln("input_layernorm"), "ln2": ln("post_attention_layernorm"), "attn": attn,
            "mlp": {"W_in": put(get("mlp.dense_h_to_4h.weight", (m, d)).T),
                    "b_in": put(get("mlp.dense_h_to_4h.bias", (m,))),
                    "W_out": put(get("mlp.dense_4h_to_h.weight", (d, m)).T),
                    "b_out": put(get("mlp.dense_4h_to_h.bias", (d,)))},
        }
    params["ln_final"] = {"scale": put(w.get(p0 + "final_layer_norm.weight", (d,), dt)),
                          "bias": put(w.get(p0 + "final_layer_norm.bias", (d,), dt))}
    w.check_all_used(ignore)
    return params


def _load_llama_like(cfg: TransformerConfig, w: _Weights, put: Callable) -> dict:
    dt = put.dtype
    d, h, kh, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    m, v = cfg.mlp_dim, cfg.vocab_size
    p0 = _prefix(w, ("model.", "model.language_model.", ""), "embed_tokens.weight")
    params: dict[str, Any] = {"W_E": put(w.get(p0 + "embed_tokens.weight", (v, d), dt,
                                               " (vocab_size, hidden_size)"))}
    ignore: tuple[str, ...] = ()
    if not cfg.tied_embeddings:  # big tensors first: their temporaries meet few loaded ones
        params["W_U"] = put(w.get("lm_head.weight", (v, d), dt, " (vocab_size, hidden_size)").T)
    else:
        ignore = ("lm_head.weight",)  # tied: transformers uses embed_tokens either way
    for layer in range(cfg.n_layers):
        p = f"{p0}layers.{layer}."
        hint = (f" (layer {layer}: num_hidden_layers, hidden_size, num_attention_heads, "
                "num_key_value_heads, head_dim, intermediate_size)")

        def get(name, shape):
            return w.get(p + name, shape, dt, hint)  # noqa: B023

        def norm(name: str, n: int = d) -> dict:
            return {"scale": put(get(name + ".weight", (n,)))}

        a = "self_attn."
        attn = {"W_Q": put(get(a + "q_proj.weight", (h * dh, d)).T.reshape(d, h, dh)),
                "W_K": put(get(a + "k_proj.weight", (kh * dh, d)).T.reshape(d, kh, dh)),
                "W_V": put(get(a + "v_proj.weight", (kh * dh, d)).T.reshape(d, kh, dh)),
                "W_O": put(get(a + "o_proj.weight", (d, h * dh)).T.reshape(h, dh, d))}
        if cfg.qkv_bias:
            attn.update(b_Q=put(get(a + "q_proj.bias", (h * dh,)).reshape(h, dh)),
                        b_K=put(get(a + "k_proj.bias", (kh * dh,)).reshape(kh, dh)),
                        b_V=put(get(a + "v_proj.bias", (kh * dh,)).reshape(kh, dh)))
        if cfg.out_bias:
            attn["b_O"] = put(get(a + "o_proj.bias", (d,)))
        if cfg.qk_norm:
            attn.update(q_norm=norm(a + "q_norm", dh), k_norm=norm(a + "k_norm", dh))
        mlp = {"W_gate": put(get("mlp.gate_proj.weight", (m, d)).T),
               "W_in": put(get("mlp.up_proj.weight", (m, d)).T),
               "W_out": put(get("mlp.down_proj.weight", (d, m)).T)}
        if cfg.mlp_bias:
            mlp.update(b_gate=put(get("mlp.gate_proj.bias", (m,))),
                       b_in=put(get("mlp.up_proj.bias", (m,))),
                       b_out=put(get("mlp.down_proj.bias", (d,))))
        blk = {"ln1": norm("input_layernorm"), "attn": attn, "mlp": mlp}
        if cfg.post_norms:
            blk.update(ln1_post=norm("post_attention_layernorm"),
                       ln2=norm("pre_feedforward_layernorm"),
                       ln2_post=norm("post_feedforward_layernorm"))
        else:
            blk["ln2"] = norm("post_attention_layernorm")
        params[f"blocks_{layer}"] = blk
    params["ln_final"] = {"scale": put(w.get(p0 + "norm.weight", (d,), dt))}
    w.check_all_used(ignore)
    return params


class _Put:
    """Hands each converted numpy tensor to JAX at once (so host copies do not pile up)."""

    def __init__(self, dtype: Any, mesh: Any = None):
        self.dtype = np.dtype(dtype)
        self.mesh = mesh

    def __call__(self, x: np.ndarray) -> jax.Array:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if self.mesh is None:
            return jnp.asarray(x)
        from jax.sharding import NamedSharding

        from jaxcrl.train.mesh import MODEL, fsdp_spec

        # Each device receives only its shard of the tensor (FSDP over "model").
        spec = fsdp_spec(x.shape, self.mesh.shape[MODEL])
        return jax.device_put(x, NamedSharding(self.mesh, spec))


def _resolve(path_or_id: str | os.PathLike) -> tuple[Path, Path | None]:
    path = Path(path_or_id)
    if path.is_dir():
        return path, None
    text = str(path_or_id)
    looks_like_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) \
        and not path.exists()
    if looks_like_id:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise FileNotFoundError(f"{text}: no such directory (hub ids need "
                                    "huggingface_hub)") from None
        try:
            snap = Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as e:
            raise FileNotFoundError(f"{text}: no such directory, and the hub download failed "
                                    f"({type(e).__name__}: {e})") from None
        # The hub cache stores files as symlinks into the repository's blobs/.
        return snap, snap.parent.parent.resolve()
    raise FileNotFoundError(f"{path}: no such Hugging Face model directory")


def from_pretrained(path_or_id: str | os.PathLike, *, dtype: Any = jnp.float32,
                    mesh: Any = None) -> tuple[Any, dict]:
    """Loads a Hugging Face causal LM as ``(HookedTransformer, params)``.

    Args:
      path_or_id: a local directory with ``config.json`` and ``model.safetensors`` (or a
        sharded ``model.safetensors.index.json``), or a hub id (``"gpt2"`` style ids need a
        slash, e.g. ``"openai-community/gpt2"``) when ``huggingface_hub`` is installed and
        online.
      dtype: parameter (and so activation) dtype, ``jnp.float32`` or ``jnp.bfloat16``.
      mesh: a ``("data", "model")`` mesh (:func:`jaxcrl.train.mesh.make_mesh`): each tensor
        goes straight onto its shards, its largest axis divisible by the model axis split
        over ``"model"`` (FSDP), so a model larger than one device loads; None: one device.

    Returns:
      ``(model, params)``: params a dict pytree of JAX arrays in ``dtype`` (layout in
      :mod:`jaxcrl.lm.model`).

    Raises:
      FileNotFoundError: missing directory, config, weight file or shard.
      ValueError: unsupported family, config key or value (named); a shard outside the
        directory or a symlink; a corrupt file; a missing, surplus or mis-shaped tensor.
    """
    from jaxcrl.lm.model import HookedTransformer

    if jnp.dtype(dtype) not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise ValueError(f"from_pretrained: dtype must be float32, bfloat16 or float16, "
                         f"got {dtype}")
    root, links = _resolve(path_or_id)
    hf = _read_json(_inside(root, CONFIG, "config", links))
    if not isinstance(hf, dict):
        raise ValueError(f"{root / CONFIG}: not a JSON object")
    cfg = config_from_hf(hf, root / CONFIG)
    weights = _Weights(root, links)
    put = _Put(jnp.dtype(dtype), mesh)
    family = hf["model_type"]
    load = {"gpt2": _load_gpt2, "gpt_neox": _load_neox}.get(family, _load_llama_like)
    params = load(cfg, weights, put)
    return HookedTransformer(cfg), params
