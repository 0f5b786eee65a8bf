"""Mixing functions: invertibility, conditioning, injectivity, scale and config validation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import scm

D_LATENT = 5
INVERTIBLE = [
    scm.MixingConfig(kind="mlp", n_layers=3, activation="leaky_relu"),  # iVAE
    scm.MixingConfig(kind="mlp", n_layers=3, activation="xtanh"),
    scm.MixingConfig(kind="leaky_tanh", n_layers=3),  # CauCA
    scm.MixingConfig(kind="linear", obs_dim=8),
    scm.MixingConfig(kind="injective", obs_dim=12, n_layers=3, activation="leaky_relu"),
    scm.MixingConfig(kind="injective", obs_dim=12, n_layers=3, activation="xtanh", max_cond=10.0),
]
DEEP = [
    scm.MixingConfig(kind="leaky_tanh", n_layers=5),  # CauCA's deepest setting
    scm.MixingConfig(kind="injective", obs_dim=12, n_layers=6, activation="leaky_relu"),
]


def _id(cfg: scm.MixingConfig) -> str:
    return f"{cfg.kind}-{cfg.activation}-{cfg.n_layers}"


def _latents(n: int = 4000) -> jax.Array:
    return jax.random.normal(jax.random.key(100), (n, D_LATENT))


@pytest.mark.parametrize(
    ("cfg", "rel_tol"),
    [(cfg, 1e-4) for cfg in INVERTIBLE]
    # float32 round-off is amplified by up to cond(A_l) / slope per inverted layer, so
    # deep stacks lose about one more digit.
    + [(cfg, 2e-3) for cfg in DEEP],
    ids=[_id(cfg) for cfg in INVERTIBLE + DEEP],
)
def test_every_invertible_kind_reconstructs_latents(cfg: scm.MixingConfig, rel_tol: float) -> None:
    z = _latents()
    for seed in range(3):
        params = scm.init_mixing(jax.random.key(seed), cfg, D_LATENT)
        x = scm.apply_mixing(params, z)
        assert x.shape == (z.shape[0], cfg.obs_dim or D_LATENT)
        z_rec = scm.invert_mixing(params, x)
        assert float(jnp.max(jnp.abs(z_rec - z))) < rel_tol * float(jnp.max(jnp.abs(z)))


@pytest.mark.parametrize("cfg", INVERTIBLE, ids=_id)
def test_layer_condition_numbers_are_bounded(cfg: scm.MixingConfig) -> None:
    conds = []
    for seed in range(3):
        params = scm.init_mixing(jax.random.key(seed), cfg, D_LATENT)
        for matrix in params.matrices:
            s = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
            assert s.size == D_LATENT or s.size == (cfg.obs_dim or D_LATENT)
            conds.append(s.max() / s.min())
    assert max(conds) <= cfg.max_cond * (1 + 1e-4)
    assert max(conds) > 1.5  # the allowed range is actually used


def test_max_cond_one_gives_scaled_orthogonal_layers() -> None:
    a, a_inv = scm.conditioned_matrix(jax.random.key(0), 4, 6, max_cond=1.0, gain=2.0)
    # all singular values equal gain * sqrt(n_out / n_in): variance-preserving per coordinate
    np.testing.assert_allclose(a @ a.T, 4.0 * 6 / 4 * np.eye(4), atol=1e-5)
    np.testing.assert_allclose(a @ a_inv, np.eye(4), atol=1e-5)


def test_layer_inverses_are_exact() -> None:
    params = scm.init_mixing(jax.random.key(0), INVERTIBLE[4], D_LATENT)
    np.testing.assert_allclose(params.first @ params.first_inv, np.eye(D_LATENT), atol=1e-5)
    for a, a_inv in zip(params.layers, params.layers_inv, strict=True):
        np.testing.assert_allclose(a @ a_inv, np.eye(12), atol=1e-5)


def test_haar_orthogonal_is_orthonormal_and_unbiased_in_sign() -> None:
    keys = jax.random.split(jax.random.key(1), 400)
    q = np.asarray(jax.vmap(lambda k: scm.haar_orthogonal(k, 6, 4))(keys), np.float64)
    np.testing.assert_allclose(
        np.einsum("bij,bik->bjk", q, q), np.broadcast_to(np.eye(4), (400, 4, 4)), atol=1e-5
    )
    # Without the sign fix QR's Q has a biased sign pattern; Haar entries are symmetric.
    # sd of a mean of 400 signs is 0.05.
    assert abs(np.mean(np.sign(q[:, 0, 0]))) < 0.2
    assert abs(np.mean(np.sign(np.einsum("bii->bi", q[:, :4, :4])))) < 0.1


def test_injective_mixing_has_full_rank_jacobian_and_inverts() -> None:
    params = scm.init_mixing(jax.random.key(2), INVERTIBLE[5], D_LATENT)
    z = _latents(200)
    jac = jax.vmap(jax.jacfwd(lambda v: scm.apply_mixing(params, v[None])[0]))(z)
    assert jac.shape == (200, 12, D_LATENT)
    s = np.linalg.svd(np.asarray(jac), compute_uv=False)
    assert s.min() > 1e-2  # rank d everywhere
    x = scm.apply_mixing(params, z)
    assert np.linalg.matrix_rank(np.asarray(x - x.mean(0)), tol=1e-3) > D_LATENT  # curved image
    np.testing.assert_allclose(scm.invert_mixing(params, x), z, atol=1e-4)


@pytest.mark.parametrize("cfg", INVERTIBLE, ids=_id)
def test_mixing_is_nonlinear_except_linear_kind(cfg: scm.MixingConfig) -> None:
    z = np.asarray(_latents(), np.float64)
    x = np.asarray(scm.apply_mixing(scm.init_mixing(jax.random.key(3), cfg, D_LATENT), _latents()))
    design = np.column_stack([z, np.ones(len(z))])
    residual = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    unexplained = residual.var() / x.var()
    if cfg.kind == "linear":
        assert unexplained < 1e-8
    else:
        assert unexplained > 1e-3


@pytest.mark.parametrize("cfg", INVERTIBLE + DEEP, ids=_id)
def test_mixing_keeps_unit_scale_inputs_at_order_one(cfg: scm.MixingConfig) -> None:
    x = scm.apply_mixing(scm.init_mixing(jax.random.key(4), cfg, D_LATENT), _latents())
    sd = np.asarray(x.std(axis=0))
    assert np.all((sd > 0.1) & (sd < 10.0)), sd


def test_xtanh_inverse_is_accurate_over_a_wide_range() -> None:
    y = jnp.concatenate([jnp.linspace(-200.0, 200.0, 4001), jnp.array([0.0, 1e-6, -1e-6])])
    u = scm.xtanh_inverse(y)
    np.testing.assert_allclose(scm.xtanh(u), y, rtol=1e-6, atol=1e-6)
    assert bool(jnp.all(jnp.diff(u[:4001]) > 0))  # monotone


def test_relu_network_refuses_to_invert() -> None:
    params = scm.init_mixing(jax.random.key(0), INVERTIBLE[0], D_LATENT)
    assert params.invertible
    params = dataclasses.replace(params, negative_slope=0.0)  # a ReLU network
    with pytest.raises(ValueError, match="not invertible"):
        scm.invert_mixing(params, jnp.zeros((3, D_LATENT)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kind="flow"), "MixingConfig.kind"),
        (dict(activation="relu"), "MixingConfig.activation"),
        (dict(n_layers=0), "n_layers"),
        (dict(max_cond=0.5), "max_cond"),
        (dict(negative_slope=1.0), "negative_slope"),
        (dict(obs_dim=0), "obs_dim"),
    ],
)
def test_bad_mixing_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scm.MixingConfig(**kwargs)


def test_obs_dim_must_fit_the_kind() -> None:
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="obs_dim=3 < latent_dim=5"):
        scm.init_mixing(key, scm.MixingConfig(kind="injective", obs_dim=3), D_LATENT)
    with pytest.raises(ValueError, match="use kind='injective'"):
        scm.init_mixing(key, scm.MixingConfig(kind="mlp", obs_dim=8), D_LATENT)
    with pytest.raises(ValueError, match=r"z must have shape \(\*, 5\)"):
        scm.apply_mixing(scm.init_mixing(key, scm.MixingConfig(), D_LATENT), jnp.zeros((3, 4)))
