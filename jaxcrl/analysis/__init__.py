"""Causal analysis of transformer features against a known latent SCM (Part 1 meets Part 2)."""

from jaxcrl.analysis.interventions import (
    belief_shift,
    effect_matrix,
    latent_beliefs,
    probe_readout,
    score_effects,
    steering_deltas,
)

__all__ = ["belief_shift", "effect_matrix", "latent_beliefs", "probe_readout", "score_effects",
           "steering_deltas"]
