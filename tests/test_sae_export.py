"""SAELens layout: exact round trip, folded normalisation, and parity with sae_lens itself."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import sae

D_IN, D_SAE = 8, 32


def _params(arch, key=0):
    cfg = sae.SAEConfig.tiny(architecture=arch, d_in=D_IN, d_sae=D_SAE, k=4,
                             hook_name="blocks.0.hook_resid_post")
    ks = jax.random.split(jax.random.key(key), 5)
    p = sae.init_params(ks[0], cfg)
    p["W_enc"] = p["W_enc"] + 0.1 * jax.random.normal(ks[1], p["W_enc"].shape)
    p["b_enc"] = 0.1 * jax.random.normal(ks[2], (D_SAE,))
    p["b_dec"] = jax.random.normal(ks[3], (D_IN,))
    if arch == "jumprelu":
        p["threshold"] = jax.random.uniform(ks[4], (D_SAE,), maxval=0.5)
    if arch == "batchtopk":
        p["threshold"] = jnp.float32(0.3)
    x = 2.5 * jax.random.normal(jax.random.key(key + 1), (64, D_IN))
    return cfg, p, x


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_round_trip_is_exact(tmp_path, arch):
    cfg, p, _ = _params(arch)
    sae.export_saelens(tmp_path / "s", p, cfg)
    doc = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert doc["architecture"] == {"relu": "standard"}.get(arch, arch)
    assert (doc["d_in"], doc["d_sae"], doc["dtype"]) == (D_IN, D_SAE, "float32")
    assert doc["hook_name"] == "blocks.0.hook_resid_post"
    assert doc["normalize_activations"] == "none"
    q, cfg2 = sae.import_saelens(tmp_path / "s")
    assert set(q) == set(p)
    for n in p:
        np.testing.assert_array_equal(q[n], p[n], err_msg=n)
        assert q[n].dtype == jnp.float32
    assert (cfg2.architecture, cfg2.k, cfg2.hook_name) == (arch, cfg.k, cfg.hook_name)
    # export again: byte-identical weights
    sae.export_saelens(tmp_path / "t", q, cfg2)
    a = (tmp_path / "s" / "sae_weights.safetensors").read_bytes()
    assert a == (tmp_path / "t" / "sae_weights.safetensors").read_bytes()


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk"])
def test_exported_sae_on_raw_activations_matches_ours_on_normalised(tmp_path, arch):
    cfg, p, x = _params(arch)
    s = 0.4  # raw activations 2.5x the normalised scale
    sae.export_saelens(tmp_path / "s", p, cfg, act_scale=s)
    q, cfg2 = sae.import_saelens(tmp_path / "s")
    x_hat_raw, aux_raw = sae.forward(q, x, cfg2, inference=True)
    x_hat_n, aux_n = sae.forward(p, x * s, cfg, inference=True)
    np.testing.assert_allclose(x_hat_raw, x_hat_n / s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(aux_raw["z"], aux_n["z"], rtol=1e-4, atol=1e-5)


def test_import_rejects_bad_files(tmp_path):
    cfg, p, _ = _params("topk")
    sae.export_saelens(tmp_path / "s", p, cfg)
    doc = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**doc, "architecture": "gated"}))
    with pytest.raises(ValueError, match="gated"):
        sae.import_saelens(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**doc, "d_in": D_IN + 1}))
    with pytest.raises(ValueError, match="W_enc has shape"):
        sae.import_saelens(tmp_path / "s")


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk"])
def test_sae_lens_loads_our_export_and_agrees(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    torch = pytest.importorskip("torch")
    cfg, p, x = _params(arch)
    s = 0.7
    sae.export_saelens(tmp_path / "s", p, cfg, act_scale=s)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"), device="cpu")
    xt = torch.from_numpy(np.array(x))
    with torch.no_grad():
        z = theirs.encode(xt).numpy()
        x_hat = theirs.decode(theirs.encode(xt)).numpy()
    ours, aux = sae.forward(p, x * s, cfg, inference=True)
    np.testing.assert_allclose(z, aux["z"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x_hat, np.asarray(ours) / s, rtol=1e-4, atol=1e-5)
