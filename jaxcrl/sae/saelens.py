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


# --------------------------------------------------------------------------- transcoders

_TRANSCODER_NAMES = {  # (our activation kind, skip) -> SAELens 6.x architecture
    ("relu", False): "transcoder", ("relu", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder", ("jumprelu", True): "jumprelu_skip_transcoder",
}


def _transcoder_kind(cfg: Any) -> str:
    """``relu`` or ``jumprelu``: how SAELens can run this architecture as a transcoder."""
    if cfg.arch.saelens_name == "standard" and cfg.arch.coefficient_field == "l1_coefficient":
        return "relu"
    if cfg.arch.saelens_name == "jumprelu":  # jumprelu, batchtopk, matryoshka_batchtopk
        return "jumprelu"
    raise ValueError(f"SAELens (6.x) has no transcoder format for {cfg.architecture!r}: it "
                     "saves ReLU and JumpReLU transcoders (and BatchTopK as JumpReLU); "
                     "train a batchtopk or jumprelu transcoder to export it")


def export_saelens_transcoder(path: str | os.PathLike, params: dict, cfg: Any, *,
                              layer: int = 0, extra: dict | None = None) -> Path:
    """Writes layer ``layer`` of a transcoder (raw-space params of a
    :class:`~jaxcrl.sae.clt.CLTConfig`; one layer, or per-layer transcoders) in the
    SAELens 6.x transcoder layout: ``cfg.json`` (``architecture`` ``transcoder``,
    ``skip_transcoder``, ``jumprelu_transcoder`` or ``jumprelu_skip_transcoder``, ``d_in``,
    ``d_sae``, ``d_out``, ``hook_name`` and ``metadata.hook_name_out``) and
    ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``,
    ``b_enc``, ``b_dec [d_out]``, ``threshold [d_sae]`` (JumpReLU kinds), ``W_skip
    [d_out, d_in]`` (skip kinds: SAELens computes ``x W_skipᵀ``)).

    Raises:
      ValueError: a cross-layer transcoder (SAELens has no CLT format), a layer out of
        range, or an architecture SAELens cannot run as a transcoder (TopK).
    """
    from safetensors.numpy import save_file

    if cfg.cross_layer and cfg.n_layers > 1:
        raise ValueError("SAELens has no cross-layer transcoder format; export per-layer "
                         "transcoders (cross_layer=False) or a one-layer transcoder")
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} is not one of the {cfg.n_layers} layer(s)")
    kind = _transcoder_kind(cfg)
    name = _TRANSCODER_NAMES[(kind, cfg.skip)]
    weights = {"W_enc": params["W_enc"][layer], "b_enc": params["b_enc"][layer],
               "W_dec": params["W_dec"][layer], "b_dec": params["b_dec"][layer]}
    if kind == "jumprelu":
        thr = np.asarray(params["threshold"][layer], np.float32)
        weights["threshold"] = np.broadcast_to(thr, (cfg.d_sae,))
    if cfg.skip:
        weights["W_skip"] = np.asarray(params["W_skip"][layer]).T
    weights = {n: np.ascontiguousarray(np.asarray(w, np.float32)) for n, w in weights.items()}
    hook_in = cfg.in_hooks[layer] if cfg.in_hooks else cfg.hook_name
    hook_out = cfg.out_hooks[layer] if cfg.out_hooks else ""
    doc = {"architecture": name, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "d_out": cfg.d_out,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "hook_name": hook_in,
           "metadata": {"hook_name": hook_in, "hook_name_out": hook_out},
           "jaxcrl": {"jaxcrl_architecture": cfg.architecture, "layer": layer,
                      "jaxcrl_config": dataclasses.asdict(cfg)}}
    if extra:
        doc.update(extra)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / WEIGHTS))
    (path / CFG).write_text(json.dumps(doc, indent=2))
    return path


def import_saelens_transcoder(path: str | os.PathLike) -> tuple[dict, Any]:
    """Reads a SAELens transcoder directory: ``(params, cfg)`` of a one-layer
    :class:`~jaxcrl.sae.clt.CLTConfig` on raw activations (``transcoder`` /
    ``skip_transcoder`` import as ReLU, the ``jumprelu_*`` kinds as JumpReLU).

    Raises:
      ValueError: not a transcoder directory, or shapes that contradict ``cfg.json``.
    """
    from safetensors.numpy import load_file

    from jaxcrl.sae.clt import CLTConfig

    path = Path(path)
    doc = _read_cfg(path)
    names = {v: k for k, v in _TRANSCODER_NAMES.items()}
    if doc.get("architecture") not in names:
        raise ValueError(f"{path}: architecture {doc.get('architecture')!r} is not a SAELens "
                         f"transcoder (supported: {sorted(names)})")
    kind, skip = names[doc["architecture"]]
    d_in, d_sae, d_out = doc["d_in"], doc["d_sae"], doc.get("d_out")
    if not isinstance(d_out, int) or d_out < 1:
        raise ValueError(f"{path}: {CFG} d_out must be a positive integer, got {d_out!r}")
    weights = load_file(str(path / WEIGHTS))
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out),
              "b_dec": (d_out,)}
    if kind == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if skip:
        shapes["W_skip"] = (d_out, d_in)
    for n, s in shapes.items():
        if n not in weights:
            raise ValueError(f"{path}: {WEIGHTS} has no {n}")
        if tuple(weights[n].shape) != s:
            raise ValueError(f"{path}: {n} has shape {weights[n].shape}, expected {s}")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    hook_in, hook_out = doc.get("hook_name") or meta.get("hook_name"), meta.get("hook_name_out")
    cfg = CLTConfig(architecture=kind, d_in=d_in, d_sae=d_sae, d_out=d_out, n_layers=1,
                    k=min(32, d_sae),
                    skip=skip, normalize_activations=False,
                    in_hooks=(hook_in,) if hook_in and hook_out else (),
                    out_hooks=(hook_out,) if hook_in and hook_out else ())
    params = {n: jnp.asarray(weights[n], jnp.float32)[None] for n in
              ("W_enc", "b_enc", "W_dec", "b_dec")}
    if kind == "jumprelu":
        params["threshold"] = jnp.asarray(weights["threshold"], jnp.float32)[None]
    if skip:
        params["W_skip"] = jnp.asarray(weights["W_skip"], jnp.float32).T[None]
    return params, cfg
