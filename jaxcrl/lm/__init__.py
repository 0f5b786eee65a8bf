"""Hookable transformer language models (TransformerLens vocabulary), Hugging Face import
(GPT-2, GPT-NeoX, Llama, Mistral, Qwen, Gemma), generation, patching."""

from jaxcrl.lm.config import RopeScaling, TransformerConfig, check_hook_names, hook_names
from jaxcrl.lm.generate import generate
from jaxcrl.lm.gpt2 import load_hf_gpt2, save_hf_gpt2
from jaxcrl.lm.hf import from_pretrained
from jaxcrl.lm.model import (
    AddVector,
    Hook,
    HookedTransformer,
    MeanAblate,
    PatchFrom,
    ReplaceWith,
    Splice,
    Transformer,
    ZeroAblate,
    add_vector,
    count_params,
    mean_ablate,
    patch_from,
    pos_axis_of,
    replace_with,
    splice,
    zero_ablate,
)
from jaxcrl.lm.patching import activation_patching, logit_diff
from jaxcrl.lm.training import LMTrainConfig, LMTrainResult, train

__all__ = [
    "AddVector", "Hook", "HookedTransformer", "LMTrainConfig", "LMTrainResult", "MeanAblate",
    "PatchFrom", "ReplaceWith", "RopeScaling", "Splice", "Transformer", "TransformerConfig",
    "ZeroAblate",
    "activation_patching", "add_vector", "check_hook_names", "count_params", "from_pretrained",
    "generate", "hook_names", "load_hf_gpt2", "logit_diff", "mean_ablate", "patch_from",
    "pos_axis_of", "replace_with", "save_hf_gpt2", "splice", "train", "zero_ablate",
]
