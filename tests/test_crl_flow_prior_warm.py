"""The flow prior's warm start (``CRLConfig.warm_steps``): the flow fit starts from the
encoder of a linear-prior fit with the same data and (folded) keys, and a fresh prior."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxcrl.crl import CRLConfig, fit
from jaxcrl.scm import DatasetConfig, MixingConfig, SCMConfig, make_dataset

CFG = CRLConfig(latent_dim=2, n_envs=3, scm="flow", steps=30, batch_size=128, warmup=5,
                flow_layers=1, flow_terms=2, restarts=1, scm_hidden=4, warm_steps=40)


@pytest.fixture(scope="module")
def data():
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=2, mechanism="nonlinear"),
                        mixing=MixingConfig(n_layers=2), n_per_env=300)
    return make_dataset(jax.random.key(0), cfg)


def _enc(result):
    return jax.tree.leaves(result.params["encoder$params"])


def test_warm_start_begins_from_the_linear_fits_encoder(data):
    """No flow step taken (stop_at=0): the encoder is exactly that of a separate linear-prior
    fit of warm_steps steps (trained, so far from any fresh init) under the run keys folded
    with 2; the prior is a fresh flow prior; the warm phase's losses are kept."""
    key = jax.random.key(3)
    warm = fit(CFG, data.x, data.env, targets=data.targets, key=key, seeds=2, stop_at=0,
               progress=False)
    lin = fit(dataclasses.replace(CFG, scm="linear", steps=CFG.warm_steps, warm_steps=0),
              data.x, data.env, targets=data.targets,
              key=jax.vmap(lambda k: jax.random.fold_in(k, 2))(jax.random.split(key, 2)),
              progress=False)
    for a, b in zip(_enc(warm), _enc(lin), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert lin.history["loss"][-5:].mean() < lin.history["loss"][:5].mean() - 0.2  # trained
    assert type(warm.params["prior"]).__name__ == "FlowPriorParams"
    np.testing.assert_array_equal(warm.history["warm_loss"], lin.history["loss"])


def test_warm_restarts_start_each_run_from_its_lowest_loss_warm_candidate(data):
    """warm_restarts=2: the flow phase starts (stop_at=0) from the encoder of a separate
    2-restart linear fit, which keeps each run's candidate with the lower final training
    loss; every candidate's loss is recorded and the chosen one is its argmin."""
    key = jax.random.key(5)
    cfg = dataclasses.replace(CFG, warm_restarts=2)
    warm = fit(cfg, data.x, data.env, targets=data.targets, key=key, seeds=2, stop_at=0,
               progress=False)
    lin = fit(dataclasses.replace(CFG, scm="linear", steps=CFG.warm_steps, warm_steps=0,
                                  restarts=2),
              data.x, data.env, targets=data.targets,
              key=jax.vmap(lambda k: jax.random.fold_in(k, 2))(jax.random.split(key, 2)),
              progress=False)
    for a, b in zip(_enc(warm), _enc(lin), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    losses = warm.history["warm_final_loss_restarts"]
    assert losses.shape == (2, 2) and np.all(np.isfinite(losses))
    np.testing.assert_array_equal(warm.history["warm_restart_chosen"], np.argmin(losses, 1))
    np.testing.assert_array_equal(losses, lin.history["final_loss_restarts"])


def test_linear_warm_encoder_starts_the_flows_last_layer_from_its_lowest_loss_start(data):
    """warm_encoder="linear": each run fits a one-matrix encoder from 3 starts (the
    identity, then two rotations); the flow starts (stop_at=0) with its last linear layer
    equal to the start whose final training loss is lowest, which is exactly what a
    separate linear fit from that start under the same key ends with."""
    from jaxcrl.crl.svi import _random_rotation

    key, n_cand, d = jax.random.key(7), 3, 2
    cfg = dataclasses.replace(CFG, flow_linear="dense", warm_encoder="linear",
                              warm_restarts=n_cand)
    warm = fit(cfg, data.x, data.env, targets=data.targets, key=key, seeds=2, stop_at=0,
               progress=False)
    losses = warm.history["warm_final_loss_restarts"]
    assert losses.shape == (2, n_cand) and np.all(np.isfinite(losses))
    chosen = warm.history["warm_restart_chosen"]
    np.testing.assert_array_equal(chosen, np.argmin(losses, 1))
    lcfg = dataclasses.replace(CFG, scm="linear", steps=CFG.warm_steps, warm_steps=0,
                               flow_layers=0, flow_linear="dense")
    last = warm.params["encoder$params"][f"DenseLinear_{CFG.flow_layers}"]
    for s, k in enumerate(jax.random.split(key, 2)):
        for r in range(n_cand):
            kr = jax.random.fold_in(jax.random.fold_in(k, 2), r)
            start = np.eye(d) if r == 0 else np.asarray(_random_rotation(
                jax.random.fold_in(kr, 5), d))
            np.testing.assert_allclose(start.T @ start, np.eye(d), atol=1e-5)
            assert np.linalg.det(start) > 0
            lin = fit(lcfg, data.x, data.env, targets=data.targets, key=kr[None],
                      progress=False, init_params={"encoder$params": {"DenseLinear_0": {
                          "w": (start - np.eye(d))[None], "bias": np.zeros((1, d))}}})
            np.testing.assert_allclose(lin.history["final_loss"][0], losses[s, r], rtol=1e-5)
            if r == chosen[s]:
                got = jax.tree.map(lambda a, s=s: np.asarray(a[s]), last)
                want = jax.tree.map(lambda a: np.asarray(a[0]),
                                    lin.params["encoder$params"]["DenseLinear_0"])
                for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
                assert not np.allclose(want["w"], start - np.eye(d), atol=1e-2)  # trained


@pytest.mark.parametrize("kw,match", [
    (dict(warm_steps=-1), "warm_steps"),
    (dict(warm_steps=10, method="ivae", scm="linear"), "latent_scm"),
    (dict(warm_scm="spline"), "warm_scm"),
    (dict(warm_restarts=0, warm_steps=10), "warm_restarts"),
    (dict(warm_restarts=2), "warm_restarts"),
    (dict(warm_encoder="mlp"), "warm_encoder"),
    (dict(warm_encoder="linear", flow_linear="dense"), "warm_encoder"),
    (dict(warm_encoder="linear", warm_steps=10), "dense"),
])
def test_warm_start_rejects_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        CRLConfig(**kw)
