"""Hookable transformer language models (TransformerLens vocabulary), patching, GPT-2 import."""

from jaxcrl.lm.config import TransformerConfig, check_hook_names, hook_names
from jaxcrl.lm.gpt2 import load_hf_gpt2, save_hf_gpt2
from jaxcrl.lm.model import (
    AddVector,
    Hook,
    HookedTransformer,
    MeanAblate,
    PatchFrom,
    ReplaceWith,
    Transformer,
    ZeroAblate,
    add_vector,
    count_params,
    mean_ablate,
    patch_from,
    replace_with,
    zero_ablate,
)
from jaxcrl.lm.patching import activation_patching, logit_diff
from jaxcrl.lm.training import LMTrainConfig, LMTrainResult, train

__all__ = [
    "AddVector", "Hook", "HookedTransformer", "LMTrainConfig", "LMTrainResult", "MeanAblate",
    "PatchFrom", "ReplaceWith", "Transformer", "TransformerConfig", "ZeroAblate",
    "activation_patching", "add_vector", "check_hook_names", "count_params", "hook_names",
    "load_hf_gpt2", "logit_diff", "mean_ablate", "patch_from", "replace_with",
    "save_hf_gpt2", "train", "zero_ablate",
]
