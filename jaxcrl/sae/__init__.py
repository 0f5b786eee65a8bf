"""Sparse dictionaries: SAEs, transcoders and cross-layer transcoders (:mod:`jaxcrl.sae.clt`);
architectures, activation sources, training (vmap over sweeps),
evaluation, probing, toy superposition data, SAELens interop, and on-disk activation caches
(one forward pass, many hooks: :mod:`jaxcrl.sae.cache`).

Quick start::

    from jaxcrl import sae
    toy = sae.make_toy(jax.random.key(0), sae.ToyConfig())
    src = sae.generator_source(sae.toy_generator(toy, 1024), 256, 1024)
    cfg = sae.SAEConfig(architecture="topk", d_in=256, d_sae=512, k=5, batch_size=1024)
    result = sae.train(cfg, src, jax.random.key(1))
    params = result.params()                      # acts on raw activations
    sae.mmcs(params["W_dec"], toy.directions)
"""

from jaxcrl.sae import clt  # noqa: F401  (the module: sae.clt.encode, ...)
from jaxcrl.sae.architectures import ARCHITECTURES, Architecture, register
from jaxcrl.sae.cache import (
    ActivationCache,
    CacheError,
    cache_activations,
    cache_source,
    open_cache,
)
from jaxcrl.sae.clt import CLTConfig, transcoder_config
from jaxcrl.sae.config import SAEConfig
from jaxcrl.sae.metrics import ce_loss_recovered, evaluate, next_token_ce, plot_density
from jaxcrl.sae.model import (
    Reconstruct,
    decode,
    encode,
    fold_normalization,
    forward,
    geometric_median,
    heaviside_step,
    init_params,
    jumprelu,
    pre_activations,
    sparsity_penalty,
)
from jaxcrl.sae.probe import (
    fit_logistic,
    fit_ridge,
    identifiability,
    logistic_probe,
    predict_linear,
    predict_logistic,
    rank_by_mean_difference,
    sparse_probe,
)
from jaxcrl.sae.saelens import (
    export_saelens,
    export_saelens_transcoder,
    import_saelens,
    import_saelens_transcoder,
)
from jaxcrl.sae.source import (
    Source,
    array_source,
    generator_source,
    host_rows,
    npy_source,
    sharded_array_source,
    transformer_generator,
)
from jaxcrl.sae.toy import ToyConfig, direction_mcc, make_toy, max_cos, mmcs
from jaxcrl.sae.toy import generator as toy_generator
from jaxcrl.sae.toy import sample as toy_sample
from jaxcrl.sae.training import (
    HParams,
    SAEState,
    SAETrainResult,
    auxk_loss,
    hparams,
    inference_params,
    init_state,
    make_step,
    select_run,
    sweep_configs,
    train,
    train_sweep,
    update,
)

__all__ = [
    "ActivationCache", "CacheError", "cache_activations", "cache_source", "open_cache",
    "ARCHITECTURES", "Architecture", "CLTConfig", "HParams", "Reconstruct", "SAEConfig",
    "SAEState", "SAETrainResult", "Source", "ToyConfig",
    "array_source", "auxk_loss", "ce_loss_recovered", "decode", "direction_mcc", "encode",
    "evaluate", "export_saelens", "export_saelens_transcoder", "fit_logistic", "fit_ridge",
    "fold_normalization", "forward", "generator_source", "geometric_median", "heaviside_step",
    "host_rows", "hparams", "identifiability", "import_saelens", "import_saelens_transcoder",
    "inference_params", "init_params", "init_state", "jumprelu", "logistic_probe", "make_step",
    "make_toy", "max_cos", "mmcs", "next_token_ce", "npy_source", "plot_density",
    "pre_activations", "predict_linear", "predict_logistic", "rank_by_mean_difference",
    "register", "select_run", "sharded_array_source", "sparse_probe", "sparsity_penalty",
    "sweep_configs", "toy_generator", "toy_sample", "train", "train_sweep", "transcoder_config",
    "transformer_generator", "update",
]
