"""SAE architectures obey their definitions (TopK, BatchTopK, JumpReLU STE, ReLU penalty)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import sae
from jaxcrl.sae import model

D_IN, D_SAE, B = 8, 32, 16


def _setup(arch, key=0, **kw):
    cfg = sae.SAEConfig.tiny(architecture=arch, d_in=D_IN, d_sae=D_SAE, **kw)
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    params = sae.init_params(k1, cfg, b_dec=jax.random.normal(k2, (D_IN,)))
    x = jax.random.normal(k3, (B, D_IN))
    return cfg, params, x


def test_topk_keeps_exactly_the_k_largest_per_row():
    cfg, params, x = _setup("topk", k=5)
    params["b_enc"] = params["b_enc"] + 10.0  # all pre-activations positive
    pre = np.asarray(sae.pre_activations(params, x, cfg))
    z = np.asarray(sae.encode(params, x, cfg))
    assert ((z != 0).sum(1) == 5).all()
    for r in range(B):
        top = set(np.argsort(-pre[r])[:5])
        assert set(np.flatnonzero(z[r])) == top
        np.testing.assert_allclose(z[r, list(top)], pre[r, list(top)], rtol=1e-6)
    # a traced k below the static bound (what a sweep over k uses)
    zk = jax.jit(lambda k: sae.encode(params, x, cfg, k=k))(jnp.int32(2))
    assert ((np.asarray(zk) != 0).sum(1) == 2).all()


def test_topk_applies_relu_after_selection():
    cfg, params, x = _setup("topk", k=5)
    pre = np.asarray(sae.pre_activations(params, x, cfg))
    z = np.asarray(sae.encode(params, x, cfg))
    expected = np.minimum(5, (pre > 0).sum(1))
    assert ((z != 0).sum(1) == expected).all()
    assert (z >= 0).all()


def test_batchtopk_keeps_k_times_batch_over_the_batch():
    cfg, params, x = _setup("batchtopk", k=3)
    params["b_enc"] = params["b_enc"] + 10.0
    pre = np.asarray(sae.pre_activations(params, x, cfg))
    z = np.asarray(sae.encode(params, x, cfg))
    assert (z != 0).sum() == 3 * B
    kth = np.sort(pre.ravel())[::-1][3 * B - 1]
    np.testing.assert_array_equal(z != 0, pre >= kth)
    assert (z != 0).sum(1).std() > 0  # per-row counts vary: it is not per-row TopK
    # inference: a fixed threshold
    params["threshold"] = jnp.float32(kth)
    zi = np.asarray(sae.encode(params, x, cfg, inference=True))
    np.testing.assert_array_equal(zi != 0, pre > kth)


def test_jumprelu_forward_is_zero_below_threshold():
    cfg, params, x = _setup("jumprelu")
    params["threshold"] = jnp.linspace(0.0, 1.0, D_SAE)
    pre = np.asarray(sae.pre_activations(params, x, cfg))
    z = np.asarray(sae.encode(params, x, cfg))
    thr = np.asarray(params["threshold"])
    above = np.maximum(pre, 0) > thr
    np.testing.assert_array_equal(z, np.where(above, pre, 0.0))


def test_jumprelu_threshold_gradient_is_the_rectangle_kernel_ste():
    eps = 0.1
    x = jnp.array([[0.5, 0.52, 0.3], [0.46, 0.9, 0.33], [0.56, 0.1, 0.27]])
    theta = jnp.array([0.5, 0.5, 0.3])
    c = jnp.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0], [4.0, 1.0, -1.0]])
    g = jax.grad(lambda t: jnp.sum(c * model.jumprelu(x, t, jnp.float32(eps))))(theta)
    xn, tn, cn = np.asarray(x), np.asarray(theta), np.asarray(c)
    k = (np.abs((xn - tn) / eps) < 0.5).astype(np.float32)
    np.testing.assert_allclose(g, (cn * -(tn / eps) * k).sum(0), rtol=1e-6)
    # the L0 step: pseudo-derivative -(1/eps) K, none w.r.t. the input
    gl0 = jax.grad(lambda t: jnp.sum(model.heaviside_step(x, t, jnp.float32(eps))))(theta)
    np.testing.assert_allclose(gl0, (-(1 / eps) * k).sum(0), rtol=1e-6)
    gx = jax.grad(lambda v: jnp.sum(model.heaviside_step(v, theta, jnp.float32(eps))))(x)
    assert not np.asarray(gx).any()
    # the input gradient of z passes where z is active
    gz = jax.grad(lambda v: jnp.sum(c * model.jumprelu(v, theta, jnp.float32(eps))))(x)
    np.testing.assert_allclose(gz, cn * (xn > tn), rtol=1e-6)


def test_jumprelu_l0_penalty_gradient_reaches_the_threshold_param():
    cfg, params, x = _setup("jumprelu", bandwidth=0.5)
    pre = sae.pre_activations(params, x, cfg)
    g = jax.grad(lambda p: sae.sparsity_penalty(p, pre, None, cfg).mean())(params)
    relu = np.maximum(np.asarray(pre), 0)
    t = np.asarray(params["threshold"])
    k = (np.abs((relu - t) / 0.5) < 0.5)
    np.testing.assert_allclose(g["threshold"], (-(1 / 0.5) * k).sum(0) / B, rtol=1e-5)
    l0 = sae.sparsity_penalty(params, pre, None, cfg)
    np.testing.assert_array_equal(l0, (relu > t).sum(1))


def test_relu_penalty_is_decoder_norm_weighted_l1():
    cfg, params, x = _setup("relu")
    params["W_dec"] = params["W_dec"] * jnp.linspace(0.5, 2.0, D_SAE)[:, None]
    x_hat, aux = sae.forward(params, x, cfg)
    z = np.asarray(aux["z"])
    w = np.asarray(params["W_dec"])
    hand = [sum(z[b, i] * np.sqrt(sum(w[i, j] ** 2 for j in range(D_IN)))
                for i in range(D_SAE)) for b in range(B)]
    pen = sae.sparsity_penalty(params, aux["pre"], aux["z"], cfg)
    np.testing.assert_allclose(pen, hand, rtol=1e-5)
    np.testing.assert_allclose(z, np.maximum(np.asarray(aux["pre"]), 0))
    np.testing.assert_allclose(x_hat, z @ w + np.asarray(params["b_dec"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_init_matches_the_conventions(arch):
    cfg, params, _ = _setup(arch)
    norms = np.linalg.norm(np.asarray(params["W_dec"]), axis=1)
    np.testing.assert_allclose(norms, 1.0 if cfg.unit_norm_decoder else cfg.dec_init_norm,
                               rtol=1e-5)
    np.testing.assert_array_equal(params["W_enc"], np.asarray(params["W_dec"]).T)
    assert all(v.dtype == jnp.float32 for v in params.values())


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_folded_normalisation_reconstructs_raw_activations(arch):
    cfg, params, x = _setup(arch)
    s = 3.7
    folded = sae.fold_normalization(params, s, cfg)
    raw, _ = sae.forward(folded, x, cfg)
    ours, _ = sae.forward(params, s * x, cfg)
    np.testing.assert_allclose(raw, ours / s, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_clear_value_errors():
    cfg, params, x = _setup("topk")
    with pytest.raises(ValueError, match="d_in=8"):
        model.check_input(jnp.ones((4, 7)), cfg)
    with pytest.raises(ValueError, match="NaN"):
        model.check_input(x.at[0, 0].set(jnp.nan), cfg)
    with pytest.raises(ValueError, match="architecture"):
        sae.SAEConfig(architecture="gated")
    with pytest.raises(ValueError, match="k=64"):
        dataclasses.replace(cfg, k=64)
    with pytest.raises(ValueError, match="NaN"):
        sae.array_source(x.at[1, 1].set(jnp.nan), 4)
    with pytest.raises(ValueError, match=r"\[n, d_in\]"):
        sae.array_source(jnp.ones(5), 4)
    # chex at the params boundary: the message names the parameter (also under jit)
    bad = {**params, "W_dec": params["W_dec"].T}
    with pytest.raises(AssertionError, match=r'params\["W_dec"\] must be \(32, 8\)'):
        jax.jit(lambda p: sae.forward(p, x, cfg))(bad)
    with pytest.raises(AssertionError, match=r'params\["b_enc"\]'):
        sae.encode({**params, "b_enc": params["b_enc"].astype(jnp.int32)}, x, cfg)
    with pytest.raises(AssertionError, match=r"tokens \[b, T\]"):
        sae.next_token_ce(jnp.zeros((2, 5, 7)), jnp.zeros((2, 4), jnp.int32))
