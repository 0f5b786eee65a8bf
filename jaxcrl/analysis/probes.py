"""Linear probes of the true latents from a transformer's residual stream, layer by layer.

For a model trained on a latent-SCM language (:mod:`jaxcrl.scm.language`) we know, for every
sequence, the true latents ``z [B, d]`` and, for every position, the exact posterior
``p(z_i = k | tokens[:t+1]) [B, T, d, K]``. A ridge-regression probe is fitted on one set of
sequences and scored on another (out of sample), for the residual stream after the embedding
(``blocks.0.hook_resid_pre``, "embed") and after each block (``blocks.{l}.hook_resid_post``):

- ``r2_posterior``: R² of the posterior marginals decoded from the residual at every position
  (per latent, the K probabilities together; mean over latents): does layer ``l`` represent
  what the Bayes-optimal predictor knows?
- ``r2_cued``: R² of the posterior of the *cued* variable at cue positions (one probe per
  variable, fitted where the cue asks about it): the part of the posterior the next token
  depends on.
- ``r2_latent_last``: R² of the one-hot true latents decoded at the last position;
  ``acc_latent_last``: accuracy of the probe's argmax there. Their ceilings are the Bayes
  posterior's own scores (``bayes_r2_latent_last``, ``bayes_acc_latent_last``): nothing in
  the tokens determines ``z`` better.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.lm.model import HookedTransformer
from jaxcrl.metrics.regression import fit_ridge, predict_linear, r2_score
from jaxcrl.scm.language import Task, prior_marginals, sample_jit


def residual_names(n_layers: int) -> dict[str, str]:
    """``{label: hook name}``: ``embed`` and ``L0..L{n-1}`` (resid after each block)."""
    out = {"embed": "blocks.0.hook_resid_pre"}
    out.update({f"L{layer}": f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)})
    return out


def collect(model: HookedTransformer, params: Any, tokens: jax.Array, names: list[str],
            chunk: int = 256) -> dict[str, np.ndarray]:
    """Cached activations ``{name: [B, T, D]}`` (in chunks of ``chunk`` sequences)."""
    out: dict[str, list] = {n: [] for n in names}
    for i in range(0, tokens.shape[0], chunk):
        _, cache = model.run_with_cache(params, tokens[i:i + chunk], names=names)
        for n in names:
            out[n].append(np.asarray(cache[n]))
    return {n: np.concatenate(v) for n, v in out.items()}


def probe_latents(model: HookedTransformer, params: Any, task: Task, key: jax.Array, *,
                  n_train: int = 2048, n_test: int = 1024, alpha: float = 1e-3,
                  positions_per_seq: int | None = 8) -> dict[str, Any]:
    """Per-layer linear-probe scores of the true latents (see the module docstring).

    Args:
      model, params: the trained transformer.
      task: its language.
      key: PRNG key for the probe's train and test sequences.
      n_train, n_test: sequences to fit / score the probes on.
      alpha: ridge penalty per sample on standardised features
        (:func:`jaxcrl.metrics.regression.fit_ridge`).
      positions_per_seq: positions per sequence used for ``r2_posterior`` (random, fixed by
        ``key``; None: all), to keep the regression small.

    Returns:
      ``{"layers": [labels], label: {"r2_posterior", "r2_posterior_per_latent", "r2_cued",
      "r2_latent_last", "r2_latent_last_per_latent", "acc_latent_last"}, "bayes": {...}}``.
    """
    cfg = task.cfg
    d, K = cfg.n_latents, cfg.n_values
    k_tr, k_te, k_pos = jax.random.split(key, 3)
    names = residual_names(model.cfg.n_layers)
    data = {}
    for s_i, (split, k, n) in enumerate((("train", k_tr, n_train), ("test", k_te, n_test))):
        b = sample_jit(task, k, n, with_posterior=True)
        acts = collect(model, params, b.tokens, list(names.values()))
        T = b.tokens.shape[1]
        if positions_per_seq is None or positions_per_seq >= T:
            pos = np.broadcast_to(np.arange(T), (n, T))
        else:
            u = jax.random.uniform(jax.random.fold_in(k_pos, s_i), (n * T,)).reshape(n, T)
            pos = np.argsort(np.asarray(u), axis=1)[:, :positions_per_seq]
        rows = np.arange(n)[:, None]
        post = np.asarray(b.posterior)
        data[split] = {
            "acts": {lab: acts[h] for lab, h in names.items()},
            "pos": pos, "rows": rows,
            "post": post[rows, pos].reshape(-1, d * K),
            "post_last": post[:, -1].reshape(n, d * K),
            "z": np.asarray(b.latents),
            "z_onehot": np.eye(K)[np.asarray(b.latents)].reshape(n, d * K),
            # cue positions t = 1, 3, ...: the cued variable and its posterior [n, T/2, K]
            "cue": np.asarray(b.tokens[:, 1::2]) - 1,
            "post_cued": np.take_along_axis(
                post[:, 1::2], (np.asarray(b.tokens[:, 1::2]) - 1)[:, :, None, None],
                axis=2)[:, :, 0],
        }
    tr, te = data["train"], data["test"]
    out: dict[str, Any] = {"layers": list(names)}
    for lab in names:
        a_tr, a_te = tr["acts"][lab], te["acts"][lab]
        dm = a_tr.shape[-1]
        x_tr = a_tr[tr["rows"], tr["pos"]].reshape(-1, dm)
        x_te = a_te[te["rows"], te["pos"]].reshape(-1, dm)
        p = fit_ridge(x_tr, tr["post"], alpha=alpha)
        r2_post = r2_score(te["post"], predict_linear(p, x_te), groups=d)
        p = fit_ridge(a_tr[:, -1], tr["z_onehot"], alpha=alpha)
        pred = predict_linear(p, a_te[:, -1])
        r2_z = r2_score(te["z_onehot"], pred, groups=d)
        acc = (pred.reshape(-1, d, K).argmax(-1) == te["z"]).mean(0)
        r2_cued = []
        for i in range(d):  # one probe per variable, fitted where the cue asks about it
            m_tr, m_te = tr["cue"] == i, te["cue"] == i
            p = fit_ridge(a_tr[:, 1::2][m_tr], tr["post_cued"][m_tr], alpha=alpha)
            r2_cued.append(r2_score(te["post_cued"][m_te],
                                    predict_linear(p, a_te[:, 1::2][m_te]), groups=1)[0])
        out[lab] = {"r2_cued": float(np.mean(r2_cued)),
                    "r2_cued_per_latent": [float(v) for v in r2_cued],
                    "r2_posterior": float(r2_post.mean()),
                    "r2_posterior_per_latent": r2_post.tolist(),
                    "r2_latent_last": float(r2_z.mean()),
                    "r2_latent_last_per_latent": r2_z.tolist(),
                    "acc_latent_last": float(acc.mean())}
    # ceilings: the exact posterior itself as the "probe"
    r2_b = r2_score(te["z_onehot"], te["post_last"], groups=d)
    acc_b = (te["post_last"].reshape(-1, d, K).argmax(-1) == te["z"]).mean(0)
    prior_acc = (np.asarray(jnp.argmax(prior_marginals(task), -1))[None] == te["z"]).mean(0)
    out["bayes"] = {"r2_latent_last": float(r2_b.mean()), "acc_latent_last": float(acc_b.mean()),
                    "prior_acc_latent_last": float(prior_acc.mean())}
    return out


def format_probe_table(res: dict) -> str:
    """A plain-text table of :func:`probe_latents` results, one row per layer."""
    head = (f"{'layer':8s} {'R2 posterior':>13s} {'R2 cued':>8s} {'R2 z (last)':>12s} "
            f"{'acc z (last)':>13s}")
    rows = [head, "-" * len(head)]
    for lab in res["layers"]:
        r = res[lab]
        rows.append(f"{lab:8s} {r['r2_posterior']:13.3f} {r['r2_cued']:8.3f} "
                    f"{r['r2_latent_last']:12.3f} {r['acc_latent_last']:13.3f}")
    b = res["bayes"]
    rows.append(f"{'bayes':8s} {'1.000':>13s} {'1.000':>8s} {b['r2_latent_last']:12.3f} "
                f"{b['acc_latent_last']:13.3f}")
    return "\n".join(rows)
