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


def _write_pre6(path, weights, **doc):
    """A SAELens < 6.0 directory: no 'topk' architecture, TopK in activation_fn_str."""
    from safetensors.numpy import save_file

    path.mkdir()
    save_file({n: np.asarray(v, np.float32) for n, v in weights.items()},
              str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE,
                                               "hook_name": "blocks.1.hook_resid_pre", **doc}))


def test_pre6_saelens_topk_imports_as_topk_with_its_k(tmp_path):
    _, p, x = _params("relu")
    weights = {n: p[n] for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    _write_pre6(tmp_path / "s", weights, architecture="standard", activation_fn_str="topk",
                activation_fn_kwargs={"k": 3}, normalize_activations=False)
    q, cfg = sae.import_saelens(tmp_path / "s")
    assert (cfg.architecture, cfg.k) == ("topk", 3)
    x_hat, aux = sae.forward(q, x, cfg, inference=True)
    # Independent route (numpy): top 3 pre-activations per row, ReLU, decode.
    pre = (np.asarray(x) - np.asarray(p["b_dec"])) @ np.asarray(p["W_enc"]) + np.asarray(
        p["b_enc"])
    keep = np.argsort(-pre, axis=1)[:, :3]
    z = np.zeros_like(pre)
    np.put_along_axis(z, keep, np.maximum(np.take_along_axis(pre, keep, 1), 0), 1)
    np.testing.assert_allclose(aux["z"], z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_hat, z @ np.asarray(p["W_dec"]) + np.asarray(p["b_dec"]),
                               rtol=1e-4, atol=1e-5)
    assert int((np.asarray(aux["z"]) > 0).sum(1).max()) <= 3


def test_pre6_saelens_relu_and_unknown_activation(tmp_path):
    _, p, _ = _params("relu")
    weights = {n: p[n] for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    _write_pre6(tmp_path / "r", weights, architecture="standard", activation_fn_str="relu",
                normalize_activations="none")
    assert sae.import_saelens(tmp_path / "r")[1].architecture == "relu"
    _write_pre6(tmp_path / "g", weights, architecture="standard", activation_fn_str="gelu")
    with pytest.raises(ValueError, match="activation_fn_str 'gelu'"):
        sae.import_saelens(tmp_path / "g")
    _write_pre6(tmp_path / "k", weights, architecture="standard", activation_fn_str="topk",
                activation_fn_kwargs={"k": D_SAE + 5})
    with pytest.raises(ValueError, match="TopK k must be"):
        sae.import_saelens(tmp_path / "k")


def test_import_rejects_missing_corrupt_and_symlinked_files(tmp_path):
    with pytest.raises(ValueError, match="no cfg.json"):
        sae.import_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        sae.import_saelens(tmp_path)
    cfg, p, _ = _params("topk")
    sae.export_saelens(tmp_path / "s", p, cfg)
    w = tmp_path / "s" / "sae_weights.safetensors"
    os_target = tmp_path / "elsewhere.safetensors"
    w.rename(os_target)
    w.symlink_to(os_target)
    with pytest.raises(ValueError, match="symlink"):
        sae.import_saelens(tmp_path / "s")


@pytest.mark.parametrize("arch,skip", [("jumprelu", True), ("relu", False)])
def test_transcoder_exports_to_saelens_and_matches_its_forward(arch, skip, tmp_path):
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    from jaxcrl.sae import clt

    cfg = sae.CLTConfig.tiny(architecture=arch, d_in=6, d_out=5, d_sae=12, skip=skip,
                             in_hooks=("blocks.0.ln2.hook_normalized",),
                             out_hooks=("blocks.0.hook_mlp_out",))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    p = clt.init_params(k1, cfg, b_dec=jax.random.normal(k2, (1, 5)))
    p["b_enc"] = p["b_enc"] + 0.2
    if skip:
        p["W_skip"] = 0.3 * jax.random.normal(k3, p["W_skip"].shape)
    if arch == "jumprelu":
        p["threshold"] = jnp.full((1, 12), 0.25)
    x = np.asarray(jax.random.normal(jax.random.key(4), (9, 6)), np.float32)
    ours = np.asarray(clt.forward(p, jnp.asarray(x)[:, None], cfg, inference=True)[0][:, 0])
    d = sae.export_saelens_transcoder(tmp_path / "tc", p, cfg)
    theirs = sae_lens.SAE.load_from_disk(str(d), device="cpu")
    assert type(theirs).__name__ == {("jumprelu", True): "JumpReLUSkipTranscoder",
                                     ("relu", False): "Transcoder"}[(arch, skip)]
    with torch.no_grad():
        out = theirs(torch.from_numpy(x.copy())).numpy()
    np.testing.assert_allclose(out, ours, rtol=1e-5, atol=1e-5)
    back, bcfg = sae.import_saelens_transcoder(d)
    assert bcfg.skip == skip and bcfg.out_hooks == cfg.out_hooks
    again = np.asarray(clt.forward(back, jnp.asarray(x)[:, None], bcfg, inference=True)[0])
    np.testing.assert_allclose(again[:, 0], ours, rtol=1e-6, atol=1e-6)
    topk = sae.CLTConfig.tiny(d_in=6, d_out=5, d_sae=12)
    with pytest.raises(ValueError, match="no transcoder format for 'topk'"):
        sae.export_saelens_transcoder(tmp_path / "t2", clt.init_params(k1, topk), topk)
    cross = sae.CLTConfig.tiny(d_in=6, d_out=5, d_sae=12, n_layers=2, architecture=arch)
    with pytest.raises(ValueError, match="no cross-layer transcoder format"):
        sae.export_saelens_transcoder(tmp_path / "t3", clt.init_params(k1, cross), cross)
