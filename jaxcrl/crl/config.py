"""Configuration of a CRL fit (frozen, hashable, JSON-serializable into checkpoints)."""

from __future__ import annotations

import dataclasses

from jaxcrl.checkpoint import register_config

METHODS = ("latent_scm", "latent_scm_vae", "contrastive", "beta_vae", "ivae")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"CRLConfig.{name} must be one of {options}, got {value!r}")


@register_config
@dataclasses.dataclass(frozen=True)
class CRLConfig:
    """What to fit and how.

    Attributes:
      method: ``latent_scm`` (flow encoder, exact likelihood), ``latent_scm_vae``,
        ``contrastive`` (MLP encoder + environment classifier whose logits are the latent
        SCM's exact log-density ratios, Buchholz et al. 2023; any D >= d, no
        invertibility), ``beta_vae`` or ``ivae`` (see :mod:`jaxcrl.crl.models`).
      latent_dim: number of latents d.
      n_envs: number of environments E (0 observational, 1..E-1 interventional).
      scm: latent SCM family of the model prior: ``linear``, ``nonlinear`` (per-node tanh
        MLP means, Gaussian noise; normalized only for a DAG, so the acyclicity penalty
        must stop the likelihood from using cycles) or ``flow`` (:mod:`jaxcrl.crl.flow_prior`:
        location-scale MLPs and a learned monotone noise flow per node, parents restricted
        by a causal order, a normalized density for any ``W``; ``method="latent_scm"``).
      scm_order: how the ``flow`` prior's causal order is chosen: ``targets`` (implied by
        the known interventions on every minibatch, :func:`jaxcrl.crl.flow_prior.implied_order`;
        needs ``targets="known"``) or ``index`` (latent 0 first, ...: when the latents'
        order is known).
      intervention: ``perfect`` or ``soft``.
      targets: ``known`` (given per environment) or ``unknown`` (learned, single-node).
      flow_layers, flow_terms: flow encoder depth and tanh terms per elementwise layer
        (``flow_terms`` is also the number of tanh terms of the ``flow`` prior's 1-D noise
        flows). ``flow_layers=0``: a linear encoder (one invertible ``LULinear`` map; for
        ``latent_scm`` this is linear ICA-like CRL with the latent SCM prior).
      warm_steps, warm_scm: a warm start (``method="latent_scm"``): before the ``steps``
        of the fit, ``warm_steps`` steps with the prior family ``warm_scm`` (same encoder,
        data, keys and optimizer settings, its own learning-rate schedule); the fit then
        starts from the warm encoder and a fresh prior. For ``scm="flow"`` a linear warm
        start moves the flow encoder near the true latents before the flexible prior can
        settle into a local optimum with a latent stuck (issue 13). 0: no warm start.
      reduce: how ``latent_scm`` maps ``D > d`` observations to the flow's ``d`` inputs
        (:func:`jaxcrl.crl.svi.make_preprocess`): ``pca`` (whitened top-``d`` variance
        directions; the default) or ``envs`` (the ``d`` directions that best separate the
        environment means relative to the pooled within-environment covariance, i.e.
        multi-class LDA on the environment labels, then whitened; needs ``n_envs > d``).
        ``envs`` is for data where the latents are a small linear subspace beside
        larger-variance nuisance directions (a transformer's residual stream): the
        interventions move the latents, so the environment means span their subspace. No
        ground truth is used. Ignored when ``D == d``.
      hidden: hidden widths of the VAE encoder/decoder and contrastive encoder MLPs.
      scm_hidden: hidden width of the ``nonlinear``/``flow`` priors' per-node MLPs.
      beta: KL weight of ``beta_vae``/``ivae``.
      steps, batch_size, lr, warmup: optimization (Adam, linear warmup then cosine decay,
        gradients clipped at norm ``clip``).
      penalty_max: final weight of the acyclicity penalty ``rho (h + h^2/2)``; it ramps up
        geometrically from ``penalty_min`` over the first ``penalty_ramp`` of the steps.
        Kept small by default: the linear prior is a normalized density for any ``W`` (the
        ``log|det(I - W)|`` term), and a strong penalty during training was measured to
        pull the encoder away from the true latents (MCC fell as the penalty rose). The
        DAG then comes from the exact search of :meth:`FitResult.discover_graph`.
      l1: L1 weight on the learned adjacency.
      recon: weight of the reconstruction term of ``contrastive`` (an MLP decoder, mean
        squared error per standardized input dimension). The classifier only sees the
        log-density ratios, which depend on an intervened latent through a quadratic, so
        a *folded* encoder (``|z_i - c|``) fits them as well as the true one; requiring
        ``x`` to be decodable from ``z`` makes the encoder injective and rules folds out.
      edge_threshold: |standardized weight| above which an edge counts as learned (for the
        continuous ``W`` and to prune the exact-search DAG).
      restarts: random restarts per seed (trained together by vmap); the one with the best
        final training loss is kept (with ``holdout > 0``: the best held-out loss). Flow
        maximum likelihood has label-swap local optima, and the likelihood tells them apart.
      holdout: fraction of the samples (a fixed random split) kept out of training; the
        restart with the lowest loss on them (the negative held-out log-likelihood for the
        exact-likelihood and contrastive models) is kept. 0: select by training loss.
    """

    method: str = "latent_scm"
    latent_dim: int = 5
    n_envs: int = 6
    scm: str = "linear"
    scm_order: str = "targets"
    intervention: str = "perfect"
    targets: str = "known"
    flow_layers: int = 4
    flow_terms: int = 4
    hidden: tuple[int, ...] = (64, 64)
    scm_hidden: int = 16
    beta: float = 1.0
    steps: int = 20000
    batch_size: int = 2048
    lr: float = 1e-2
    warmup: int = 200
    clip: float = 10.0
    penalty_min: float = 1e-4
    penalty_max: float = 1e-2
    penalty_ramp: float = 0.6
    l1: float = 0.0
    recon: float = 0.0
    edge_threshold: float = 0.3
    restarts: int = 2
    holdout: float = 0.0
    reduce: str = "pca"
    warm_steps: int = 0
    warm_scm: str = "linear"

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("scm", self.scm, ("linear", "nonlinear", "flow"))
        _choice("scm_order", self.scm_order, ("targets", "index"))
        if self.scm == "flow" and self.method != "latent_scm":
            raise ValueError(f"CRLConfig.scm='flow' is implemented for method='latent_scm' "
                             f"only, got method={self.method!r}")
        if self.scm == "flow" and self.scm_order == "targets" and self.targets != "known":
            raise ValueError("CRLConfig.scm='flow' with scm_order='targets' reads the causal "
                             "order off the known interventions; with targets='unknown' use "
                             "scm_order='index' or another scm")
        _choice("intervention", self.intervention, ("perfect", "soft"))
        _choice("targets", self.targets, ("known", "unknown"))
        for name in ("latent_dim", "n_envs", "steps", "batch_size", "restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"CRLConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.flow_layers < 0:
            raise ValueError(f"CRLConfig.flow_layers must be >= 0, got {self.flow_layers}")
        _choice("reduce", self.reduce, ("pca", "envs"))
        _choice("warm_scm", self.warm_scm, ("linear", "nonlinear", "flow"))
        if self.warm_steps < 0:
            raise ValueError(f"CRLConfig.warm_steps must be >= 0, got {self.warm_steps}")
        if self.warm_steps > 0 and self.method != "latent_scm":
            raise ValueError(f"CRLConfig.warm_steps > 0 (a warm start of the flow encoder) "
                             f"needs method='latent_scm', got method={self.method!r}")
        if self.reduce == "envs" and self.method != "latent_scm":
            raise ValueError(f"CRLConfig.reduce='envs' chooses the flow encoder's input "
                             f"subspace (method='latent_scm'), got method={self.method!r}")
        if self.reduce == "envs" and self.n_envs <= self.latent_dim:
            raise ValueError(f"CRLConfig.reduce='envs' needs n_envs > latent_dim (the "
                             f"n_envs - 1 environment-mean differences span the d-dim "
                             f"subspace), got n_envs={self.n_envs}, "
                             f"latent_dim={self.latent_dim}")
        if not 0.0 <= self.holdout < 0.5:
            raise ValueError(f"CRLConfig.holdout must be in [0, 0.5), got {self.holdout}")
        if self.lr <= 0 or self.beta < 0:
            raise ValueError(f"CRLConfig: lr must be > 0 and beta >= 0 (lr={self.lr}, "
                             f"beta={self.beta})")
        object.__setattr__(self, "hidden", tuple(self.hidden))

    @property
    def learns_graph(self) -> bool:
        return self.method in ("latent_scm", "latent_scm_vae", "contrastive")
