"""The architecture registry: a new architecture registered here trains, sweeps and exports."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import sae
from jaxcrl.sae import architectures as arch_lib


class ShiftedReLU(arch_lib.Architecture):
    """``z = ReLU(pre − s)`` with a trained per-latent shift ``s >= 0``, a squared penalty,
    exported to SAELens as a standard SAE with ``s`` folded into ``b_enc``."""

    name = "shifted_relu"
    saelens_name = "standard"
    saelens_exact = False
    knob = "l1_coefficient"
    coefficient_field = "l1_coefficient"

    def init_extra(self, cfg):
        return {"shift": jnp.full((cfg.d_sae,), 0.05, jnp.float32)}

    def activate(self, params, pre, cfg, *, k, inference):
        return jax.nn.relu(pre - params["shift"])

    def penalty(self, params, pre, z, cfg):
        return jnp.sum(z**2, -1)

    def post_update(self, params, prev, z, cfg):
        return {**params, "shift": jnp.maximum(params["shift"], 0.0)}

    def saelens_weights(self, params, cfg):
        return {"b_enc": np.asarray(params["b_enc"] - params["shift"], np.float32)}


@pytest.fixture
def shifted():
    arch = arch_lib.register(ShiftedReLU())
    yield arch
    arch_lib.ARCHITECTURES.pop(arch.name)


def test_builtins_are_registered_in_order_and_strings_select_them():
    assert list(sae.ARCHITECTURES)[:4] == ["relu", "topk", "batchtopk", "jumprelu"]
    assert sae.SAEConfig(architecture="topk").arch is sae.ARCHITECTURES["topk"]
    assert arch_lib.from_saelens("jumprelu").name == "jumprelu"  # not batchtopk
    with pytest.raises(ValueError, match="architecture must be one of"):
        sae.SAEConfig(architecture="nope")
    with pytest.raises(ValueError, match="not supported"):
        arch_lib.from_saelens("gated")


def test_registering_clashes_is_an_error(shifted):
    with pytest.raises(ValueError, match="already registered"):
        arch_lib.register(ShiftedReLU())

    class Standard2(ShiftedReLU):
        name = "standard2"
        saelens_exact = True

    with pytest.raises(ValueError, match="already imports as 'relu'"):
        arch_lib.register(Standard2())


def test_a_registered_architecture_trains_sweeps_and_exports(shifted, tmp_path):
    toy_cfg = sae.ToyConfig(n_features=32, dim=16, avg_active=3, corr_rank=4)
    toy = sae.make_toy(jax.random.key(0), toy_cfg)
    x, _ = sae.toy_sample(toy, jax.random.key(1), 2048)
    cfg = sae.SAEConfig.tiny(architecture="shifted_relu", d_sae=48, steps=60,
                             l1_coefficient=0.01, hook_name="blocks.0.hook_resid_post")
    assert cfg.coefficient == 0.01 and cfg.unit_norm_decoder
    src = sae.array_source(x, cfg.batch_size)
    r = sae.train(cfg, src, jax.random.key(2), progress=False)
    assert np.isfinite(r.history["loss"]).all()
    assert r.history["fvu"][-1] < r.history["fvu"][0]
    shift = np.asarray(r.state.params["shift"])
    assert (shift >= 0).all() and not np.allclose(shift, 0.05)  # trained and projected
    np.testing.assert_allclose(np.linalg.norm(r.state.params["W_dec"], axis=1), 1.0,
                               rtol=1e-5)
    # the knob sweeps; a knob of another architecture is refused
    sweep = sae.train_sweep(cfg, src, jax.random.key(2), values={"l1_coefficient": [0.0, 0.1]},
                            progress=False)
    assert sweep.history["loss"].shape == (60, 2)
    with pytest.raises(ValueError, match="l0_coefficient only acts on jumprelu"):
        sae.sweep_configs(cfg, {"l0_coefficient": [0.1, 0.2]})
    # SAELens export: a standard SAE computing the same function on raw activations
    p = r.params()
    sae.export_saelens(tmp_path / "s", r.state.params, cfg, act_scale=r.state.act_scale)
    doc = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert doc["architecture"] == "standard"
    assert doc["jaxcrl"]["jaxcrl_architecture"] == "shifted_relu"
    q, cfg2 = sae.import_saelens(tmp_path / "s")
    assert cfg2.architecture == "relu" and "shift" not in q
    xr = np.asarray(x[:256])
    x_ours, aux_ours = sae.forward(p, xr, cfg, inference=True)
    x_sl, aux_sl = sae.forward(q, xr, cfg2, inference=True)
    np.testing.assert_allclose(aux_sl["z"], aux_ours["z"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_sl, x_ours, rtol=1e-5, atol=1e-5)
