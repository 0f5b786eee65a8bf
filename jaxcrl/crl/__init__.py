"""Causal representation learning: latent-SCM models fit by numpyro SVI, baselines, references.

* :func:`fit` / :class:`CRLConfig` / :func:`load_fit` — train S seeds in one program.
* :mod:`jaxcrl.crl.models` — numpyro models/guides (latent SCM exact-likelihood and VAE,
  contrastive (exact-log-ratio environment classifier), β-VAE, iVAE);
  :mod:`jaxcrl.crl.prior` — the learnable latent SCM density.
* :mod:`jaxcrl.crl.targets` — unknown targets by likelihood over assignments.
* :mod:`jaxcrl.crl.consensus` — the contrastive route's consensus refit (many starts,
  agreement per latent, one refit; ``CRLConfig.consensus_runs``).
* :mod:`jaxcrl.crl.equivalence` — what soft interventions leave unidentified (shears).
* :mod:`jaxcrl.crl.evaluate` — score fits against simulated ground truth.
* :func:`pca`, :func:`fast_ica` — linear reference unmixings.
"""

from jaxcrl.crl.config import CRLConfig
from jaxcrl.crl.linear import LinearUnmixing, fast_ica, pca
from jaxcrl.crl.svi import FitResult, fit, load_fit

__all__ = ["CRLConfig", "FitResult", "LinearUnmixing", "fast_ica", "fit", "load_fit", "pca"]
