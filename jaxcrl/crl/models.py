"""numpyro models and guides of the CRL methods (plain functions, networks via flax_module).

All models take the same arguments ``(x, env, targets, penalty, *, cfg, n_total)``:

* ``x [B, D]`` a minibatch of (preprocessed) observations, ``env [B]`` their environments,
* ``targets [E, d]`` the intervention targets trained with (the known ones, or the canonical
  assignment of ``cfg.targets="unknown_distinct"``; ignored when ``cfg.targets="unknown"``),
* ``penalty`` the current weight of the acyclicity penalty (a schedule set by the fit loop),
* ``n_total`` the data set size, so minibatch terms are scaled to the full-data ELBO.

Methods (``cfg.method``):

* ``"latent_scm"`` — exact likelihood: an invertible flow encoder ``z = g(x)`` and the
  learnable latent SCM prior of :mod:`jaxcrl.crl.prior`;
  ``log p(x | e) = log p_e(g(x)) + log|det J_g(x)|`` enters as a ``numpyro.factor`` and the
  guide is empty, so SVI's ELBO *is* the log-likelihood (maximum likelihood by SVI).
  With ``cfg.scm="flow"`` the prior is :mod:`jaxcrl.crl.flow_prior` (nonparametric
  per-node conditionals in a causal order, :func:`flow_order`), normalized for any ``W``,
  so no acyclicity penalty is added.
* ``"latent_scm_vae"`` — the same latent SCM prior on ``z``, a Flax MLP decoder
  ``x ~ N(dec(z), diag(sigma^2))`` and the amortized Gaussian encoder guide.
* ``"contrastive"`` — contrastive CRL (Buchholz et al. 2023): a Flax MLP encoder
  ``z = g(x)`` (any ``D >= d``, no invertibility) and a classifier of the environment
  whose logits are the latent SCM's own log densities, ``logit_e(x) = log p_e(g(x))``
  (:func:`jaxcrl.crl.prior.env_log_probs`), so ``logit_e - logit_0`` is *exactly* the
  Gaussian log-density ratio of the intervened node(s) (for unknown targets, of the
  mixture over single-node targets). The factor is the multinomial log-likelihood
  ``log softmax_e(logit)[env]`` (equal environment sizes, so no class prior), the guide
  is empty: SVI maximizes the conditional likelihood of the environment labels.
* ``"beta_vae"`` — independent ``N(0, I)`` prior, KL weighted by ``cfg.beta``.
* ``"ivae"`` — environment-conditional factorized Gaussian prior ``N(m_e, diag(s_e^2))``
  (Khemakhem et al. 2020), environments as the auxiliary variable.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import flax_module
from numpyro.distributions import constraints

from jaxcrl.crl import flow_prior
from jaxcrl.crl import prior as prior_lib
from jaxcrl.crl.config import CRLConfig
from jaxcrl.crl.nets import MLP, FlowEncoder, GaussianEncoder


class LatentSCMDistribution(dist.Distribution):
    """``z_n ~ p_{env_n}`` under a learnable latent SCM; batch ``[n]``, event ``[d]``."""

    support = constraints.real_vector

    def __init__(self, params: prior_lib.PriorParams, env: jax.Array, targets, *, soft: bool):
        self.params, self.env, self.targets, self.soft = params, env, targets, soft
        d = params.w.shape[-1]
        super().__init__(batch_shape=env.shape, event_shape=(d,))

    def log_prob(self, value: jax.Array) -> jax.Array:
        return prior_lib.log_prob(self.params, value, self.env, targets=self.targets,
                                  soft=self.soft)

    def sample(self, key, sample_shape=()):
        raise NotImplementedError(
            "sampling the learned latent SCM is not implemented: SVI only needs log_prob "
            "(to simulate, build an SCM with jaxcrl.scm from the learned weights)")


def _prior_params(cfg: CRLConfig) -> prior_lib.PriorParams:
    if cfg.scm == "flow":
        return numpyro.param("prior", lambda key: flow_prior.init_flow_prior(
            key, cfg.latent_dim, cfg.n_envs, hidden=cfg.scm_hidden, terms=cfg.flow_terms))
    hidden = cfg.scm_hidden if cfg.scm == "nonlinear" else 0
    return numpyro.param(
        "prior", lambda key: prior_lib.init_prior(key, cfg.latent_dim, cfg.n_envs, hidden=hidden)
    )


def _graph_penalty(prior: prior_lib.PriorParams, penalty, cfg: CRLConfig, n_total: int) -> None:
    """Acyclicity (quadratic-penalty schedule) and L1 sparsity, per sample x n_total."""
    w = prior_lib.masked_weights(prior)
    reg = cfg.l1 * jnp.sum(jnp.abs(w))
    if cfg.scm != "flow":  # the flow prior's order cuts cycles: no penalty needed
        h = prior_lib.acyclicity(w)
        reg = reg + penalty * (h + 0.5 * h**2)
    numpyro.factor("graph_penalty", -n_total * reg)


def _targets(cfg: CRLConfig, targets):
    return targets if cfg.trains_with_targets else None


def latent_scm_model(x, env, targets, penalty, *, cfg: CRLConfig, n_total: int):
    """Exact-likelihood latent SCM model (flow encoder; guide is :func:`empty_guide`)."""
    flow = flax_module("encoder", flow_encoder(cfg),
                       input_shape=(1, x.shape[-1]))
    prior = _prior_params(cfg)
    z, logdet = flow(x)
    soft = cfg.intervention == "soft"
    if cfg.scm == "flow":
        lp = flow_prior.log_prob(prior, z, env, flow_order(cfg, z, env, targets),
                                 targets=targets, soft=soft) + logdet
    else:
        lp = prior_lib.log_prob(prior, z, env, targets=_targets(cfg, targets),
                                soft=soft) + logdet
    numpyro.factor("log_likelihood", lp.sum() * (n_total / x.shape[0]))
    _graph_penalty(prior, penalty, cfg, n_total)


def flow_encoder(cfg: CRLConfig) -> FlowEncoder:
    """The ``latent_scm`` flow encoder network of ``cfg``."""
    return FlowEncoder(cfg.flow_layers, cfg.flow_terms, cfg.flow_linear)


def flow_order(cfg: CRLConfig, z, env, targets):
    """[d] causal-order positions of the ``flow`` prior (see ``CRLConfig.scm_order``)."""
    if cfg.scm_order == "index":
        return jnp.arange(cfg.latent_dim)
    return flow_prior.implied_order(z, env, targets)


def contrastive_encoder(cfg: CRLConfig) -> MLP:
    """The ``contrastive`` encoder network ``z = g(x)``."""
    return MLP(cfg.hidden, cfg.latent_dim, layer_norm=cfg.encoder_norm, skip=cfg.encoder_skip)


def contrastive_model(x, env, targets, penalty, *, cfg: CRLConfig, n_total: int):
    """Contrastive CRL: environment classifier with exact log-density-ratio logits."""
    encoder = flax_module("encoder", contrastive_encoder(cfg), input_shape=(1, x.shape[-1]))
    prior = _prior_params(cfg)
    z = encoder(x)
    logits = prior_lib.env_log_probs(prior, z, targets=_targets(cfg, targets),
                                     soft=cfg.intervention == "soft")
    ll = jnp.sum(jax.nn.log_softmax(logits, -1) * prior_lib.env_onehot(env, cfg.n_envs))
    if cfg.recon > 0:  # injectivity of the encoder (see CRLConfig.recon)
        decoder = flax_module("decoder", MLP(cfg.hidden, x.shape[-1]),
                              input_shape=(1, cfg.latent_dim))
        ll = ll - cfg.recon * jnp.sum(jnp.mean((decoder(z) - x) ** 2, -1))
    if cfg.gauss_moments > 0:  # the latents' marginals are Gaussian (see CRLConfig)
        onehot = prior_lib.env_onehot(env, cfg.n_envs)
        ll = ll - cfg.gauss_moments * x.shape[0] * jarque_bera(z, onehot)
    numpyro.factor("log_likelihood", ll * (n_total / x.shape[0]))
    _graph_penalty(prior, penalty, cfg, n_total)


def jarque_bera(z: jax.Array, onehot: jax.Array) -> jax.Array:
    """Jarque-Bera statistic per sample, summed over latents: ``sum_i (S_i^2 + K_i^2/4) / 6``.

    Args:
      z: [B, d] latents; onehot: [B, E] environment of each row.

    Each latent is standardized within each environment (the environment's mean and
    standard deviation in the batch), then skewness ``S_i`` and excess kurtosis ``K_i`` are
    taken over the pooled standardized rows: a mixture of environments whose latents are
    each Gaussian is then Gaussian too. Multiplied by ``B`` it is the JB test statistic
    (asymptotically chi-squared with 2 degrees of freedom per latent under Gaussianity).
    """
    count = jnp.maximum(onehot.sum(0), 1.0)  # [E]
    mean = (onehot.T @ z) / count[:, None]  # [E, d]
    centred = z - onehot @ mean
    var = (onehot.T @ centred**2) / count[:, None]
    u = centred * jax.lax.rsqrt(onehot @ var + 1e-6)
    skew = jnp.mean(u**3, 0)
    kurt = jnp.mean(u**4, 0) - 3.0
    return jnp.sum(skew**2 + kurt**2 / 4.0) / 6.0


def empty_guide(*args, **kwargs):
    """No latent sample sites: SVI's ELBO equals the model's log-likelihood."""


def _decoder_likelihood(z, x, cfg: CRLConfig):
    decoder = flax_module("decoder", MLP(cfg.hidden, x.shape[-1]),
                          input_shape=(1, cfg.latent_dim))
    log_sigma = numpyro.param("log_sigma_x", jnp.full((x.shape[-1],), math.log(0.1)))
    numpyro.sample("x", dist.Normal(decoder(z), jnp.exp(log_sigma)).to_event(1), obs=x)


def latent_scm_vae_model(x, env, targets, penalty, *, cfg: CRLConfig, n_total: int):
    """VAE with the learnable latent SCM prior and an MLP decoder."""
    prior = _prior_params(cfg)
    with numpyro.plate("data", n_total, subsample_size=x.shape[0]):
        z = numpyro.sample("z", LatentSCMDistribution(
            prior, env, _targets(cfg, targets), soft=cfg.intervention == "soft"))
        _decoder_likelihood(z, x, cfg)
    _graph_penalty(prior, penalty, cfg, n_total)


def beta_vae_model(x, env, targets, penalty, *, cfg: CRLConfig, n_total: int):
    """β-VAE (Higgins et al. 2017): independent standard-normal prior, KL weighted by β."""
    with numpyro.plate("data", n_total, subsample_size=x.shape[0]):
        with numpyro.handlers.scale(scale=cfg.beta):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([cfg.latent_dim]).to_event(1))
        _decoder_likelihood(z, x, cfg)


def ivae_model(x, env, targets, penalty, *, cfg: CRLConfig, n_total: int):
    """iVAE (Khemakhem et al. 2020): prior N(m_e, diag s_e^2) conditional on the environment."""
    mean = numpyro.param("env_mean", jnp.zeros((cfg.n_envs, cfg.latent_dim)))
    log_scale = numpyro.param("env_log_scale", jnp.zeros((cfg.n_envs, cfg.latent_dim)))
    with numpyro.plate("data", n_total, subsample_size=x.shape[0]):
        with numpyro.handlers.scale(scale=cfg.beta):
            z = numpyro.sample("z", dist.Normal(mean[env], jnp.exp(log_scale[env])).to_event(1))
        _decoder_likelihood(z, x, cfg)


def encoder_guide(x, env, targets, penalty, *, cfg: CRLConfig, n_total: int):
    """Amortized Gaussian encoder q(z | x) shared by the VAE methods."""
    encoder = flax_module("encoder", GaussianEncoder(cfg.latent_dim, cfg.hidden),
                          input_shape=(1, x.shape[-1]))
    mu, log_sigma = encoder(x)
    with numpyro.plate("data", n_total, subsample_size=x.shape[0]):
        with numpyro.handlers.scale(scale=cfg.beta if cfg.method in ("beta_vae", "ivae") else 1):
            numpyro.sample("z", dist.Normal(mu, jnp.exp(log_sigma)).to_event(1))


MODELS = {
    "latent_scm": (latent_scm_model, empty_guide),
    "latent_scm_vae": (latent_scm_vae_model, encoder_guide),
    "contrastive": (contrastive_model, empty_guide),
    "beta_vae": (beta_vae_model, encoder_guide),
    "ivae": (ivae_model, encoder_guide),
}
LEARNS_GRAPH = ("latent_scm", "latent_scm_vae", "contrastive")
