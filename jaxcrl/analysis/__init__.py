"""Studies: the only place that combines the transformer, SAEs and CRL (Part 1 meets Part 2).

* :mod:`jaxcrl.analysis.probes` — per-layer linear probes of the true latent beliefs.
* :mod:`jaxcrl.analysis.sae_probe` — SAE sweeps on the residual stream, evaluated and
  scored against the true latents.
* :mod:`jaxcrl.analysis.causal_features` — identifiability and intervention effects of
  features, layer by layer.
* :mod:`jaxcrl.analysis.interventions` — intervention-effect matrices, SAE hooks.
* :mod:`jaxcrl.analysis.lm_runs` — the transformer a study analyses.
"""

from jaxcrl.analysis.interventions import (
    SAEClamp,
    belief_shift,
    effect_matrix,
    latent_beliefs,
    latent_beliefs_jit,
    probe_readout,
    sae_hook,
    score_effects,
    steering_deltas,
)
from jaxcrl.analysis.probes import collect, format_probe_table, probe_latents, residual_names

__all__ = ["SAEClamp", "belief_shift", "collect", "effect_matrix", "format_probe_table",
           "latent_beliefs", "latent_beliefs_jit", "probe_latents", "probe_readout",
           "residual_names", "sae_hook", "score_effects", "steering_deltas"]
