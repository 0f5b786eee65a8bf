"""Matryoshka prefix losses and the decoder-orthogonality penalty, against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import sae
from jaxcrl.sae import penalties, training


def test_ortho_penalty_equals_numpy_reference_both_routes():
    rng = np.random.default_rng(0)
    for n, d in ((40, 8), (6, 8)):  # Gram route (n > d) and direct route (n <= d)
        w = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, size=(n, 1))
        u = w / np.linalg.norm(w, axis=1, keepdims=True)
        c = u @ u.T
        ref = (c[~np.eye(n, dtype=bool)] ** 2).mean()
        got = float(penalties.ortho_penalty(jnp.asarray(w, jnp.float32)))
        assert got == pytest.approx(ref, rel=1e-4), (n, d)
    # orthonormal rows: zero penalty
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert float(penalties.ortho_penalty(jnp.asarray(q[:5], jnp.float32))) < 1e-10


def test_ortho_gradient_reduces_off_diagonal_overlap():
    w = jax.random.normal(jax.random.key(0), (32, 8))
    before = penalties.decoder_overlap(w)["mean_sq_cos"]
    for _ in range(50):
        w = w - 5.0 * jax.grad(penalties.ortho_penalty)(w)
    after = penalties.decoder_overlap(w)["mean_sq_cos"]
    welch = (32 - 8) / (8 * 31)
    assert after < before and after < welch * 1.05, (before, after, welch)  # near the bound


def test_nested_loss_equals_hand_computation():
    cfg = sae.SAEConfig.tiny(architecture="matryoshka_batchtopk", d_in=6, d_sae=16, k=3,
                             matryoshka_widths=(2, 4, 8))
    assert cfg.prefix_widths == (2, 4, 8)
    default = sae.SAEConfig.tiny(architecture="matryoshka_batchtopk", d_sae=64)
    assert default.prefix_widths == (8, 16, 32)
    k1, k2 = jax.random.split(jax.random.key(1))
    params = sae.init_params(k1, cfg, b_dec=jnp.arange(6.0) / 6)
    x = jax.random.normal(k2, (12, 6))
    loss, parts = training.loss_fn(params, x, cfg=cfg, k=jnp.int32(3), coefficient=0.0,
                                   dead=jnp.zeros(16, bool), with_aux=False)
    z = np.asarray(parts["z"], np.float64)
    wd, bd, xn = (np.asarray(a, np.float64) for a in (params["W_dec"], params["b_dec"], x))
    assert (z > 0).sum() == 3 * 12  # batch-level TopK selection over the whole dictionary
    full = np.mean(np.sum((xn - (z @ wd + bd)) ** 2, 1))
    inner = sum(np.mean(np.sum((xn - (z[:, :w] @ wd[:w] + bd)) ** 2, 1)) for w in (2, 4, 8))
    assert float(parts["nested_mse"]) == pytest.approx(inner, rel=1e-5)
    assert float(loss) == pytest.approx(full + inner, rel=1e-5)


def test_ortho_term_enters_any_architecture_loss():
    for arch in ("relu", "topk", "jumprelu"):
        cfg = sae.SAEConfig.tiny(architecture=arch, d_in=6, d_sae=16, ortho_coefficient=0.7)
        params = sae.init_params(jax.random.key(0), cfg)
        x = jax.random.normal(jax.random.key(1), (8, 6))
        kw = dict(cfg=cfg, k=jnp.int32(cfg.k), coefficient=0.0, dead=jnp.zeros(16, bool),
                  with_aux=False)
        loss, parts = training.loss_fn(params, x, **kw)
        plain = sae.SAEConfig.tiny(architecture=arch, d_in=6, d_sae=16)
        loss0, _ = training.loss_fn(params, x, **{**kw, "cfg": plain})
        ref = 0.7 * float(penalties.ortho_penalty(params["W_dec"]))
        assert float(loss) - float(loss0) == pytest.approx(ref, rel=1e-4), arch


def test_ortho_training_lowers_decoder_overlap_and_matryoshka_trains():
    toy = sae.make_toy(jax.random.key(0), sae.ToyConfig(n_features=24, dim=12, avg_active=2,
                                                       corr_rank=4))
    x, _ = sae.toy_sample(toy, jax.random.key(1), 2048)
    src = sae.array_source(x, 256)
    over = {}
    for c in (0.0, 100.0):
        cfg = sae.SAEConfig.tiny(d_in=12, d_sae=32, k=3, steps=80, ortho_coefficient=c)
        r = sae.train(cfg, src, jax.random.key(2), progress=False)
        over[c] = penalties.decoder_overlap(r.state.params["W_dec"])["mean_sq_cos"]
    assert over[100.0] < 0.85 * over[0.0], over  # Welch bound 0.054
    cfg = sae.SAEConfig.tiny(architecture="matryoshka_batchtopk", d_in=12, d_sae=32, k=3,
                             steps=80, matryoshka_widths=(4, 16))
    r = sae.train(cfg, src, jax.random.key(2), progress=False)
    h = r.history
    assert h["nested_mse"][-1] < h["nested_mse"][0] and h["fvu"][-1] < h["fvu"][0]


def test_bad_matryoshka_and_ortho_settings_are_clear_errors():
    with pytest.raises(ValueError, match="strictly increasing"):
        sae.SAEConfig.tiny(architecture="matryoshka_batchtopk", matryoshka_widths=(8, 4))
    with pytest.raises(ValueError, match="strictly increasing"):
        sae.SAEConfig.tiny(architecture="matryoshka_batchtopk", matryoshka_widths=(64,))
    with pytest.raises(ValueError, match="only act on Matryoshka"):
        sae.SAEConfig.tiny(architecture="topk", matryoshka_widths=(8,))
    with pytest.raises(ValueError, match="ortho_coefficient"):
        sae.SAEConfig.tiny(ortho_coefficient=-1.0)
