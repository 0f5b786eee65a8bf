"""Export to and import from the SAELens on-disk layout.

A directory with::

    cfg.json                  {"architecture", "d_in", "d_sae", "dtype", "hook_name",
                               "normalize_activations", "apply_b_dec_to_input", "k", ...,
                               "metadata": {"hook_name", ...}}
    sae_weights.safetensors   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
                              b_dec [d_in], threshold [d_sae] (jumprelu)

Architecture names and extra weights come from the architecture objects
(:mod:`jaxcrl.sae.architectures`): ``relu`` <-> ``standard``, ``topk`` <-> ``topk``,
``jumprelu`` <-> ``jumprelu``; ``batchtopk`` is exported as ``jumprelu`` with its scalar
inference threshold broadcast to every latent (what SAELens itself saves for BatchTopK SAEs).
Input normalisation is folded into the weights (:func:`jaxcrl.sae.model.fold_normalization`),
so the exported SAE acts on raw activations and ``normalize_activations`` is ``"none"``.
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

from jaxcrl.sae import architectures as arch_lib
from jaxcrl.sae import model as sae_model
from jaxcrl.sae.config import SAEConfig

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"


def export_saelens(path: str | os.PathLike, params: dict, cfg: SAEConfig, *,
                   act_scale: float | jax.Array = 1.0, hook_name: str | None = None,
                   extra: dict | None = None) -> Path:
    """Writes ``params`` (trained on ``act_scale · x``) in the SAELens layout at ``path``.

    Args:
      path: output directory (created).
      params: SAE params (normalised space) of one SAE.
      cfg: its config.
      act_scale: the normalisation factor to fold in (``state.act_scale``; 1 if none).
      hook_name: overrides ``cfg.hook_name``.
      extra: more keys for ``cfg.json``.

    Returns:
      The directory.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    folded = sae_model.fold_normalization(params, act_scale, cfg)
    weights = {n: np.ascontiguousarray(np.asarray(folded[n], np.float32))
               for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    weights.update(cfg.arch.saelens_weights(folded, cfg))
    hook = cfg.hook_name if hook_name is None else hook_name
    meta = {"hook_name": hook, "jaxcrl_architecture": cfg.architecture,
            "jaxcrl_config": dataclasses.asdict(cfg),
            "jaxcrl_act_scale": float(np.asarray(act_scale))}
    doc = {"architecture": cfg.arch.saelens_name, "d_in": cfg.d_in,
           "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
           "normalize_activations": "none", "hook_name": hook,
           "metadata": {"hook_name": hook}, "jaxcrl": meta}
    doc.update(cfg.arch.saelens_cfg(cfg))
    if extra:
        doc.update(extra)
    save_file(weights, str(path / WEIGHTS))
    (path / CFG).write_text(json.dumps(doc, indent=2))
    return path


def import_saelens(path: str | os.PathLike) -> tuple[dict, SAEConfig]:
    """Reads an SAE in the SAELens layout: ``(params, cfg)`` acting on raw activations.

    The config keeps jaxcrl's training settings when the directory was written by
    :func:`export_saelens`, with ``normalize_activations=False`` (the scale is folded in).

    Raises:
      ValueError: unsupported architecture or normalisation, or shapes that contradict
        ``cfg.json``.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    doc = _read_cfg(path)
    try:
        arch = arch_lib.from_saelens(_saelens_architecture(doc, path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    # "none" (6.x), false/null (pre-6.0 and hand-written files) all mean: raw activations.
    if doc.get("normalize_activations", "none") not in ("none", None, False):
        raise ValueError(f"{path}: normalize_activations={doc['normalize_activations']!r} "
                         "is not supported; fold the scaling into the weights first")
    weights_file = path / WEIGHTS
    if weights_file.is_symlink() or not weights_file.is_file():
        raise ValueError(f"{path}: {WEIGHTS} is missing (or a symlink, which is refused)")
    weights = load_file(str(weights_file))
    d_in, d_sae = doc["d_in"], doc["d_sae"]
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,),
              "b_dec": (d_in,)}
    shapes.update(arch.saelens_shapes(d_sae))
    for n, s in shapes.items():
        if n not in weights:
            raise ValueError(f"{path}: {WEIGHTS} has no {n}")
        if tuple(weights[n].shape) != s:
            raise ValueError(f"{path}: {n} has shape {weights[n].shape}, expected {s}")
    params = {n: jnp.asarray(weights[n], jnp.float32) for n in shapes}
    saved = doc.get("jaxcrl", {}).get("jaxcrl_config")
    base: dict[str, Any] = {}
    if saved is not None:
        fields = {f.name for f in dataclasses.fields(SAEConfig)}
        base = {k: v for k, v in saved.items() if k in fields}
        if not arch.nested:  # e.g. a Matryoshka SAE comes back as a plain JumpReLU
            base.pop("matryoshka_widths", None)
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    hook = doc.get("hook_name") or metadata.get("hook_name") or ""
    if not isinstance(hook, str):
        raise ValueError(f"{path}: cfg.json hook_name must be a string, got {hook!r}")
    kwargs = doc.get("activation_fn_kwargs") if isinstance(
        doc.get("activation_fn_kwargs"), dict) else {}
    k = doc.get("k", kwargs.get("k", base.get("k", min(32, d_sae))))  # pre-6.0: kwargs.k
    if arch.knob == "k" and not (isinstance(k, int) and 1 <= k <= d_sae):
        raise ValueError(f"{path}: TopK k must be an integer in [1, d_sae={d_sae}], got "
                         f"{k!r} ({arch.name} SAE)")
    try:
        cfg = SAEConfig(**{**base, "architecture": arch.name, "d_in": d_in, "d_sae": d_sae,
                           "k": int(k),
                           "apply_b_dec_to_input": bool(doc.get("apply_b_dec_to_input", True)),
                           "normalize_activations": False, "hook_name": hook})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cfg.json does not describe a valid SAE: {e}") from None
    return params, cfg


def _read_cfg(path: Path) -> dict:
    """cfg.json as data (a dict), with a clear error for a missing or corrupt file."""
    try:
        doc = json.loads((path / CFG).read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path}: no {CFG} (not a SAELens SAE directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {CFG} is corrupt ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: {CFG} is not a JSON object")
    for key in ("d_in", "d_sae"):
        if not isinstance(doc.get(key), int) or doc[key] < 1:
            raise ValueError(f"{path}: {CFG} {key} must be a positive integer, "
                             f"got {doc.get(key)!r}")
    return doc


def _saelens_architecture(doc: dict, path: Path) -> str:
    """The SAELens architecture name, reading pre-6.0 files too: those say
    ``"architecture": "standard"`` (or nothing) and put TopK in ``activation_fn_str``."""
    arch = doc.get("architecture", "standard")
    act = doc.get("activation_fn_str", doc.get("activation_fn"))
    if arch == "standard" and act is not None:
        if act == "topk":
            return "topk"
        if act != "relu":
            raise ValueError(f"{path}: activation_fn_str {act!r} is not supported "
                             "(supported: 'relu', 'topk')")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: architecture must be a string, got {arch!r}")
    return arch
