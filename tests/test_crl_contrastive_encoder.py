"""Options of the contrastive encoder (issue 13): the PCA-whitened input (checked against
numpy's SVD), the MLP's linear skip path and LayerNorm, and ``encode`` applying exactly the
network the model trained; and ``crl_generalization.py --row-set`` overriding a row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl.crl import CRLConfig, fit
from jaxcrl.crl.nets import MLP
from jaxcrl.crl.svi import make_preprocess


def test_pca_preprocess_is_the_whitened_top_principal_subspace():
    rng = np.random.default_rng(0)
    scales = np.array([5.0, 3.0, 2.0, 0.5, 0.2, 0.1])
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    x = (rng.normal(size=(4000, 6)) * scales) @ q.T + 3.0
    pre = make_preprocess(jnp.asarray(x, jnp.float32), 2, False, pca_dim=3)
    y = np.asarray(pre(jnp.asarray(x, jnp.float32)), np.float64)
    assert y.shape == (4000, 3)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(3), atol=2e-3)
    # Independent route: the top-3 right singular vectors of the centred data span the
    # same subspace as the projection's columns.
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    proj = np.asarray(pre.proj, np.float64)
    basis, _ = np.linalg.qr(proj)
    np.testing.assert_allclose(basis @ basis.T, vt[:3].T @ vt[:3], atol=1e-3)
    # pca_dim = 0 keeps the per-dimension standardization
    std = make_preprocess(jnp.asarray(x, jnp.float32), 2, False)
    np.testing.assert_allclose(np.asarray(std.proj), np.diag(1 / (x.std(0) + 1e-8)), rtol=1e-4)
    with pytest.raises(ValueError, match="pca_dim"):
        CRLConfig(method="contrastive", pca_dim=-1)


def test_mlp_skip_adds_a_linear_path_and_layer_norm_normalizes_hidden_units():
    x = jax.random.normal(jax.random.key(0), (16, 5))
    net = MLP((8, 8), 3, skip=True)
    params = net.init(jax.random.key(1), x)["params"]
    assert "skip" in params and "skip" not in MLP((8, 8), 3).init(jax.random.key(1), x)["params"]
    zeroed = {k: (v if k == "skip" else jax.tree.map(jnp.zeros_like, v))
              for k, v in params.items()}
    np.testing.assert_allclose(net.apply({"params": zeroed}, x),
                               x @ params["skip"]["kernel"], atol=1e-6)
    # LayerNorm before the activation: hidden pre-activations of any scale give the same
    # output as the same network on a rescaled input when the first layer has no bias.
    ln = MLP((8,), 3, layer_norm=True)
    p = ln.init(jax.random.key(2), x)["params"]
    p = {**p, "Dense_0": {**p["Dense_0"], "bias": jnp.zeros(8)}}
    np.testing.assert_allclose(ln.apply({"params": p}, x), ln.apply({"params": p}, 7.0 * x),
                               atol=1e-4)
    plain = MLP((8,), 3)
    q = plain.init(jax.random.key(2), x)["params"]
    assert not np.allclose(plain.apply({"params": q}, x), plain.apply({"params": q}, 7.0 * x),
                           atol=1e-2)


def test_encode_applies_the_trained_encoder_with_all_options():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    env = np.repeat(np.arange(3), 100)
    cfg = CRLConfig(method="contrastive", latent_dim=2, n_envs=3, targets="unknown", steps=5,
                    batch_size=64, warmup=1, hidden=(8,), restarts=1, encoder_skip=True,
                    encoder_norm=True, pca_dim=4, recon=1.0)
    r = fit(cfg, x, env, key=jax.random.key(0), progress=False)
    params = jax.tree.map(lambda a: a[0], r.params["encoder$params"])
    mean, proj = r.preprocess.mean[0], r.preprocess.proj[0]
    assert proj.shape == (6, 4) and "skip" in params and "LayerNorm_0" in params
    want = MLP((8,), 2, layer_norm=True, skip=True).apply({"params": params}, (x - mean) @ proj)
    np.testing.assert_allclose(np.asarray(r.encode(x)[0]), np.asarray(want), atol=1e-5)


def test_row_set_overrides_a_rows_own_setting(monkeypatch):
    import sys

    sys.path.insert(0, "experiments")
    import crl_generalization as cg

    seen = {}

    def fake_run(cfg, progress=False, save_dir=None):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(cg, "run", fake_run)
    row = "contrastive, d=10, D=100, unknown targets"
    for extra, want in (([], "unknown_distinct"), (["--set", "targets=known"], "unknown_distinct"),
                        (["--row-set", "targets=known"], "known")):
        with pytest.raises(SystemExit):
            cg.main(["--rows", row, *extra])
        assert seen["cfg"].targets == want, extra
