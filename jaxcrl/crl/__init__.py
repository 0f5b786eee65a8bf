"""Causal representation learning: reference unmixings (and, later, latent-SCM models)."""

from jaxcrl.crl.linear import LinearUnmixing, fast_ica, pca

__all__ = ["LinearUnmixing", "fast_ica", "pca"]
