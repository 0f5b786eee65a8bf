"""The flow encoder: its log-determinant is the Jacobian's, for both linear-layer kinds;
the dense kind fits, saves and restores like the LU one; bad settings are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl.crl import CRLConfig, fit, load_fit
from jaxcrl.crl.nets import DenseLinear, FlowEncoder, LULinear
from jaxcrl.metrics import mcc
from jaxcrl.scm import DatasetConfig, MixingConfig, SCMConfig, make_dataset


def _perturbed(params, key, scale=0.5):
    """Every parameter moved off its initial value (init is near the identity map)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys, strict=True)])


@pytest.mark.parametrize("linear", ["lu", "dense"])
def test_flow_encoder_logdet_is_the_log_abs_det_of_its_jacobian(linear):
    d = 4
    net = FlowEncoder(n_layers=3, n_terms=3, linear=linear)
    x = jax.random.normal(jax.random.key(0), (16, d)) * 2.0
    params = _perturbed(net.init(jax.random.key(1), x), jax.random.key(2))
    z, logdet = net.apply(params, x)
    assert z.shape == (16, d) and logdet.shape == (16,)
    jac = jax.vmap(jax.jacfwd(lambda v: net.apply(params, v[None])[0][0]))(x)  # [n, d, d]
    expected = np.linalg.slogdet(np.asarray(jac, np.float64))[1]
    np.testing.assert_allclose(np.asarray(logdet), expected, rtol=1e-4, atol=1e-4)


def test_dense_layer_is_identity_plus_noise_and_can_route_any_input_to_any_output():
    x = jnp.eye(3)
    params = DenseLinear().init(jax.random.key(0), x)
    w = np.asarray(params["params"]["w"]) + np.eye(3)
    assert np.abs(w - np.eye(3)).max() < 0.5 and np.abs(w - np.eye(3)).max() > 0
    perm = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)  # no LU factors
    params = {"params": {"w": jnp.asarray(perm - np.eye(3)), "bias": jnp.zeros(3)}}
    y, logdet = DenseLinear().apply(params, x)
    np.testing.assert_allclose(np.asarray(y), perm)
    np.testing.assert_allclose(np.asarray(logdet), 0.0, atol=1e-6)
    # An LU layer's matrix has leading principal minor W[0, 0] = exp(log_diag[0]) > 0:
    # a permutation with W[0, 0] = 0 is out of its reach.
    lu = LULinear().init(jax.random.key(0), x)["params"]
    lu = _perturbed(lu, jax.random.key(3), scale=3.0)
    y_lu, _ = LULinear().apply({"params": lu}, x)
    assert float(y_lu[0, 0] - lu["bias"][0]) > 0


def test_dense_flow_fit_recovers_latents_and_restores_from_checkpoint(tmp_path):
    dcfg = DatasetConfig(scm=SCMConfig(latent_dim=2), mixing=MixingConfig(n_layers=2),
                         n_per_env=2000)
    ds = make_dataset(jax.random.key(0), dcfg)
    cfg = CRLConfig(latent_dim=2, n_envs=3, steps=1500, batch_size=512, warmup=50,
                    flow_layers=2, restarts=1, flow_linear="dense")
    result = fit(cfg, ds.x, ds.env, targets=ds.targets, key=jax.random.key(0), progress=False)
    z_hat = np.asarray(result.encode(ds.x))[0]
    assert mcc(np.asarray(ds.z), z_hat).value > 0.8
    assert "DenseLinear_0" in result.params["encoder$params"]
    result.save(tmp_path / "ckpt")
    restored = load_fit(tmp_path / "ckpt")
    assert restored.cfg.flow_linear == "dense"
    np.testing.assert_array_equal(np.asarray(restored.encode(ds.x)), np.asarray(z_hat)[None])


def test_unknown_linear_layer_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="flow_linear"):
        CRLConfig(flow_linear="qr")
    with pytest.raises(ValueError, match="FlowEncoder.linear"):
        FlowEncoder(linear="qr").init(jax.random.key(0), jnp.zeros((1, 2)))
