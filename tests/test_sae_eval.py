"""SAE evaluation (metrics, CE loss recovered with a fake model) and probes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import sae
from jaxcrl.analysis import sae_hook


def _identity_sae(d):
    """A ReLU SAE with latents ±x: exact reconstruction, 2d latents."""
    cfg = sae.SAEConfig(architecture="relu", d_in=d, d_sae=2 * d, k=2)
    eye = jnp.eye(d)
    params = {"W_enc": jnp.concatenate([eye, -eye], 1), "b_enc": jnp.zeros(2 * d),
              "W_dec": jnp.concatenate([eye, -eye], 0), "b_dec": jnp.zeros(d)}
    return cfg, params


def test_evaluate_metrics_by_hand():
    cfg, p = _identity_sae(4)
    x = jax.random.normal(jax.random.key(0), (100, 4)).at[:, 3].set(jnp.abs(
        jax.random.normal(jax.random.key(1), (100,))))
    m = sae.evaluate(p, x, cfg, batch_size=32)
    assert m["mse"] < 1e-10 and m["fvu"] < 1e-10
    np.testing.assert_allclose(m["l0"], float((np.asarray(x) != 0).sum(1).mean()))
    assert m["dead_fraction"] == 1 / 8  # -x[:, 3] never fires
    np.testing.assert_allclose(m["density"][:4], (np.asarray(x) > 0).mean(0))
    assert m["dense_fraction"] == 7 / 8
    # a zero decoder: FVU of predicting the mean b_dec = 0 on centred-ish data
    q = {**p, "W_dec": jnp.zeros_like(p["W_dec"])}
    xn = np.asarray(x)
    fvu = (xn ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    np.testing.assert_allclose(sae.evaluate(q, x, cfg)["fvu"], fvu, rtol=1e-5)
    with pytest.raises(ValueError, match="d_in=4"):
        sae.evaluate(p, x[:, :3], cfg)
    with pytest.raises(ValueError, match="NaN"):
        sae.evaluate(p, x.at[0, 0].set(jnp.nan), cfg)
    ax = sae.plot_density(m["density"])
    assert "1 dead" in ax.get_title()


class FakeModel:
    """embed -> hook "h" -> unembed, with the HookedTransformer call surface."""

    def __init__(self, v=7, d=4):
        k1, k2 = jax.random.split(jax.random.key(3))
        self.params = {"E": jax.random.normal(k1, (v, d)), "U": jax.random.normal(k2, (d, v))}

    def run_with_hooks(self, params, tokens, hooks=None):
        h = params["E"][tokens]
        h = (hooks or {}).get("h", lambda a: a)(h)
        return h @ params["U"]

    def apply(self, params, tokens):
        return self.run_with_hooks(params, tokens)


def test_ce_loss_recovered_with_a_fake_model():
    model = FakeModel()
    tokens = jax.random.randint(jax.random.key(4), (3, 9), 0, 7)
    cfg, p = _identity_sae(4)
    out = sae.ce_loss_recovered(model, model.params, tokens, "h", sae_hook(p, cfg))
    np.testing.assert_allclose(out["ce_loss_recovered"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["ce_zero"], np.log(7), rtol=1e-5)  # zero logits: uniform
    half = lambda x: 0.5 * x
    out = sae.ce_loss_recovered(model, model.params, tokens, "h", half)
    logits = 0.5 * model.apply(model.params, tokens)
    ce = sae.next_token_ce(logits, tokens)
    np.testing.assert_allclose(out["ce_sae"], ce, rtol=1e-6)
    np.testing.assert_allclose(out["ce_loss_recovered"],
                               (np.log(7) - ce) / (np.log(7) - out["ce_clean"]), rtol=1e-5)


def test_ridge_matches_least_squares():
    x = np.asarray(jax.random.normal(jax.random.key(5), (200, 6)))
    w = np.arange(6.0)
    y = x @ w + 1.5 + 0.01 * np.asarray(jax.random.normal(jax.random.key(6), (200,)))
    probe = sae.fit_ridge(x, y, alpha=1e-8)
    xa = np.c_[x, np.ones(200)]
    ref = np.linalg.lstsq(xa, y, rcond=None)[0]
    np.testing.assert_allclose(probe.w, ref[:6], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(probe.b, ref[6], atol=1e-3)
    np.testing.assert_allclose(sae.predict_linear(probe, x), xa @ ref, atol=1e-2)


def test_logistic_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x = np.asarray(jax.random.normal(jax.random.key(7), (400, 5)))
    logits = x @ np.array([2.0, -1.0, 0.5, 0.0, 0.0]) + 0.3
    y = (np.asarray(jax.random.uniform(jax.random.key(8), (400,))) < 1 / (1 + np.exp(-logits)))
    l2 = 1e-2
    probe = sae.fit_logistic(x, y.astype(np.float32), l2=l2, steps=100)
    xs = (x - x.mean(0)) / x.std(0)
    # sklearn: C = 1 / (n * l2) for the per-example-averaged loss + l2/2 |w|^2
    ref = sklearn.LogisticRegression(C=1 / (400 * l2), tol=1e-10, max_iter=1000).fit(xs, y)
    np.testing.assert_allclose(probe.w, ref.coef_[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(probe.b, ref.intercept_[0], atol=1e-3)


def test_sparse_probe_finds_the_informative_feature():
    key = jax.random.key(9)
    n = 600
    y = np.asarray(jax.random.bernoulli(key, 0.5, (n,))).astype(np.float32)
    z = np.abs(np.asarray(jax.random.normal(jax.random.key(10), (n, 20))))
    z[:, 13] += 3 * y  # latent 13 separates the classes
    out = sae.sparse_probe(z[:400], y[:400], z[400:], y[400:], ks=(1, 2))
    assert out["features"][1] == [13]
    assert out["k"][1] > 0.9 and out["full"] > 0.9
    with pytest.raises(ValueError, match="both classes"):
        sae.rank_by_mean_difference(z, np.zeros(n))


def test_identifiability_of_permuted_scaled_latents():
    zt = np.abs(np.asarray(jax.random.normal(jax.random.key(11), (500, 3))))
    z = np.zeros((500, 6))
    z[:, [4, 0, 2]] = zt * np.array([2.0, 0.5, 3.0])  # columns 1, 3, 5 are dead
    out = sae.identifiability(z, zt)
    np.testing.assert_allclose(out["mcc"], 1.0, atol=1e-6)
    assert out["perm"].tolist() == [4, 0, 2]
    assert out["r2"] > 0.999


def test_sae_hook_and_evaluate_do_not_recompile_for_new_weights():
    """Params are traced hook data: a second SAE of the same config reuses the program."""
    from jaxcrl.lm import HookedTransformer, TransformerConfig
    from jaxcrl.lm.model import _forward_jit
    from jaxcrl.sae.metrics import _batch_stats

    model = HookedTransformer(TransformerConfig.tiny(vocab_size=16, n_ctx=8))
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 16)
    cfg = sae.SAEConfig.tiny(d_in=32, d_sae=48)
    p1 = sae.init_params(jax.random.key(2), cfg)
    p2 = sae.init_params(jax.random.key(3), cfg)
    hook = "blocks.0.hook_resid_post"
    out1 = model.run_with_hooks(params, tokens, hooks={hook: sae_hook(p1, cfg)})
    size = _forward_jit._cache_size()
    out2 = model.run_with_hooks(params, tokens, hooks={hook: sae_hook(p2, cfg)})
    assert _forward_jit._cache_size() == size  # no new program for new weights
    assert not np.allclose(out1, out2)  # and the new weights are used
    x = jax.random.normal(jax.random.key(4), (40, 32))
    m1 = sae.evaluate(p1, x, cfg)
    size = _batch_stats._cache_size()
    m2 = sae.evaluate(p2, x, cfg)
    assert _batch_stats._cache_size() == size
    assert m1["fvu"] != m2["fvu"]
