"""Causal analysis of transformer features against a known latent SCM (Part 1 meets Part 2)."""

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

__all__ = ["SAEClamp", "belief_shift", "effect_matrix", "latent_beliefs", "latent_beliefs_jit",
           "probe_readout", "sae_hook", "score_effects", "steering_deltas"]
