"""The residual-stream probes are aligned with the posterior they decode.

A stand-in model whose residual stream *is* the exact posterior (plus a fixed random
rotation into a wider space): a linear probe must decode it perfectly at every position.
Probe targets misaligned by even one report (two tokens) fall far below.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.analysis.probes import probe_latents
from jaxcrl.scm.language import TaskConfig, make_task, posterior_marginals


class PosteriorModel:
    """``run_with_cache`` returns the posterior [B, T, d*K] rotated into D dims at every
    hooked residual (``lag`` tokens late: the posterior after token t - lag at position t)."""

    def __init__(self, task, d_model=40, lag=0):
        self.task, self.lag = task, lag
        self.cfg = types.SimpleNamespace(n_layers=1)
        dk = task.cfg.n_latents * task.cfg.n_values
        self.rot = jax.random.normal(jax.random.key(7), (dk, d_model))

    def run_with_cache(self, params, tokens, names):
        post = posterior_marginals(self.task, tokens)
        post = post.reshape(*post.shape[:2], -1)
        if self.lag:
            post = jnp.concatenate([jnp.repeat(post[:, :1], self.lag, 1),
                                    post[:, :-self.lag]], axis=1)
        acts = post @ self.rot
        return None, {n: acts for n in names}


def test_a_residual_holding_the_posterior_is_decoded_exactly_and_a_lagged_one_is_not():
    task = make_task(jax.random.key(0), TaskConfig.tiny())
    key = jax.random.key(1)
    exact = probe_latents(PosteriorModel(task), None, task, key, n_train=256, n_test=128)
    for lab in ("embed", "L0"):
        assert exact[lab]["r2_posterior"] > 0.999, exact[lab]
        assert exact[lab]["r2_cued"] > 0.999, exact[lab]
        # at the last position the residual holds exactly the Bayes posterior
        assert abs(exact[lab]["acc_latent_last"] - exact["bayes"]["acc_latent_last"]) < 0.02
    late = probe_latents(PosteriorModel(task, lag=2), None, task, key, n_train=256,
                         n_test=128)
    assert late["L0"]["r2_posterior"] < 0.95, late["L0"]
    assert np.isfinite(late["L0"]["r2_latent_last"])
