"""Transcoders and cross-layer transcoders: decoding by hand, training on a known MLP,
splicing into a transformer (exact with error terms), and clear errors for bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import lm, sae
from jaxcrl.analysis import replacement
from jaxcrl.sae import clt


def _random_params(cfg, key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    p = clt.init_params(k1, cfg, b_dec=jax.random.normal(k2, (cfg.n_layers, cfg.d_out)))
    p["b_enc"] = p["b_enc"] + 0.3
    if cfg.skip:
        p["W_skip"] = 0.1 * jax.random.normal(k3, p["W_skip"].shape)
    return p


def test_cross_layer_decode_and_normalisation_fold_equal_a_numpy_reference():
    cfg = sae.CLTConfig.tiny(d_in=5, d_out=4, d_sae=6, k=2, n_layers=3, skip=True)
    assert cfg.blocks == ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    p = _random_params(cfg)
    x = jax.random.normal(jax.random.key(1), (7, 3, 5))
    y_hat, aux = clt.forward(p, x, cfg)
    z, wd = np.asarray(aux["z"], np.float64), np.asarray(p["W_dec"], np.float64)
    assert ((z > 0).sum(-1) <= 2).all()  # TopK per layer and token
    ref = np.zeros((7, 3, 4)) + np.asarray(p["b_dec"])
    for i, (s, t) in enumerate(cfg.blocks):
        ref[:, t] += z[:, s] @ wd[i]
    ref += np.einsum("bli,lio->blo", np.asarray(x), np.asarray(p["W_skip"]))
    np.testing.assert_allclose(np.asarray(y_hat), ref, rtol=1e-5, atol=1e-5)
    # each feature's decoder, concatenated over its targets, has unit norm
    np.testing.assert_allclose(np.asarray(clt.decoder_norms(p["W_dec"], cfg)), 1.0, rtol=1e-5)
    # layer_output (what the splice computes) agrees for every target
    for t in range(3):
        got = clt.layer_output(p, [x[:, s] for s in range(t + 1)], cfg, t)
        np.testing.assert_allclose(np.asarray(got), ref[:, t], rtol=1e-5, atol=1e-5)
    # folding the normalisation: raw-space params on raw x equal normalised ones, rescaled
    scale = jnp.asarray([[2.0, 0.5, 3.0], [0.25, 4.0, 1.5]])
    raw = clt.fold_normalization(p, scale, cfg)
    y_raw = clt.forward(raw, x, cfg)[0]
    y_norm = clt.forward(p, x * scale[0][:, None], cfg)[0] / scale[1][:, None]
    np.testing.assert_allclose(np.asarray(y_raw), np.asarray(y_norm), rtol=1e-4, atol=1e-5)


def test_transcoder_and_clt_recover_known_mlp_features():
    # a known MLP per layer: 24 neurons (features) reading sparse inputs, each writing a
    # fixed direction to its own and (CLT) every later layer's output
    n = 24
    toy_sae = sae.make_toy(jax.random.key(0), sae.ToyConfig(n_features=n, dim=32,
                                                            avg_active=2, corr_rank=4))
    for layers, bar in ((1, 0.95), (2, 0.95)):
        cfg = sae.CLTConfig(d_in=32, d_out=32, d_sae=48, k=3, n_layers=layers, steps=300,
                            batch_size=256, lr=1e-2, warmup=10, dead_tokens=2000)
        toy = clt.make_toy_clt(jax.random.key(1), cfg, n)
        gen = clt.toy_clt_generator(toy, toy_sae, cfg, 256)
        r = sae.train(cfg, sae.generator_source(gen, cfg.source_width, 256),
                      jax.random.key(2), progress=False)
        got = clt.mmcs_layers(r.params()["W_dec"], toy.dec, cfg)
        assert min(got) >= bar, (layers, got)
        m = clt.evaluate(r.params(), gen(jax.random.key(9)), cfg)
        assert m["fvu"] < 0.1 and m["l0"] <= 3, m


def _tiny_model():
    mcfg = lm.TransformerConfig.tiny(vocab_size=11, n_ctx=8)
    model = lm.HookedTransformer(mcfg)
    return model, model.init(jax.random.key(0))


def test_spliced_clt_reproduces_the_model_with_errors_and_replaces_mlps_without():
    model, params = _tiny_model()
    ins, outs = replacement.mlp_hooks(2)
    cfg = sae.CLTConfig.tiny(d_in=32, d_out=32, d_sae=16, k=4, n_layers=2, in_hooks=ins,
                             out_hooks=outs)
    p = _random_params(cfg)
    toks = jax.random.randint(jax.random.key(3), (3, 8), 0, 11)
    clean = model.apply(params, toks)
    errs = replacement.clean_errors(model, params, toks, cfg, p)
    exact = model.run_with_hooks(params, toks, replacement.replacement_hooks(cfg, p,
                                                                             errors=errs))
    np.testing.assert_allclose(np.asarray(exact), np.asarray(clean), atol=1e-5)
    # without errors, layer 1's MLP output is the CLT's prediction from the *replaced*
    # forward's inputs of layers 0 and 1
    _, cache = model.run_with_cache(params, toks, names=[*ins, *outs],
                                    hooks=replacement.replacement_hooks(cfg, p))
    xs = [cache[h].reshape(-1, 32) for h in ins]
    np.testing.assert_allclose(np.asarray(cache[outs[1]]).reshape(-1, 32),
                               np.asarray(clt.layer_output(p, xs, cfg, 1)), atol=1e-5)
    res = replacement.replacement_ce(model, params, toks, cfg, p)
    assert len(res["layers"]) == 2 and np.isfinite(res["all"]["ce_loss_recovered"])


def test_bad_splices_and_configs_are_clear_errors():
    model, params = _tiny_model()
    ins, outs = replacement.mlp_hooks(2)
    cfg = sae.CLTConfig.tiny(d_in=32, d_out=32, n_layers=2, in_hooks=ins, out_hooks=outs)
    p = clt.init_params(jax.random.key(0), cfg)
    toks = jnp.zeros((1, 8), jnp.int32)
    wide = dataclasses.replace(cfg, in_hooks=("blocks.0.mlp.hook_post", ins[1]))
    with pytest.raises(ValueError, match="has width 128 but the dictionary's d_in is 32"):
        replacement.replacement_ce(model, params, toks, wide, p)
    ins3, outs3 = replacement.mlp_hooks(3)
    deep = sae.CLTConfig.tiny(d_in=32, d_out=32, n_layers=3, in_hooks=ins3, out_hooks=outs3)
    with pytest.raises(ValueError, match="layers the model lacks"):
        replacement.check_splice(model, params, deep)
    with pytest.raises(ValueError, match="one hook per layer"):
        sae.CLTConfig.tiny(n_layers=2, in_hooks=ins[:1])
    with pytest.raises(ValueError, match="apply_b_dec_to_input"):
        sae.CLTConfig.tiny(apply_b_dec_to_input=True)
    src = sae.array_source(np.zeros((16, 2 * 32 + 2 * 30), np.float32), 256)
    with pytest.raises(ValueError, match=r"rows of width 124 but the config needs 128"):
        sae.train(cfg, src, jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="not reached yet"):
        model.run_with_hooks(params, toks, {outs[0]: lm.splice(lambda y, xs: y, [ins[1]])})


def test_clt_trains_as_a_vmapped_sweep_from_a_multi_hook_activation_cache(tmp_path):
    model, params = _tiny_model()
    ins, outs = replacement.mlp_hooks(2)
    toks = np.asarray(jax.random.randint(jax.random.key(5), (8, 8), 0, 11))
    cache = sae.cache_activations(model, params, toks, [*ins, *outs], tmp_path / "acts",
                                  seqs_per_shard=4, progress=False)
    src = sae.cache_source(cache, [*ins, *outs], 32)
    _, c = model.run_with_cache(params, jnp.asarray(toks), names=[*ins, *outs])
    want = np.concatenate([np.asarray(c[h]).reshape(-1, 32) for h in [*ins, *outs]], 1)
    got = np.asarray(src.init(jax.random.key(0))["data"])
    np.testing.assert_allclose(got, want, atol=1e-5)  # a row: every hook, one position
    cfg = sae.CLTConfig.tiny(architecture="batchtopk", d_in=32, d_out=32, d_sae=16, k=4,
                             n_layers=2, steps=8, batch_size=32, in_hooks=ins, out_hooks=outs)
    sweep = sae.train_sweep(cfg, src, jax.random.key(1), values={"k": [1, 4]}, progress=False)
    assert sweep.history["traces"] <= 1 and sweep.state.params["threshold"].shape == (2, 2)
    l0 = sweep.history["l0"][-1]
    assert l0[0] == pytest.approx(1.0) and l0[1] == pytest.approx(4.0)  # per layer and token
    assert (np.asarray(sweep.state.params["threshold"]) > 0).all()  # running estimates moved
    p1 = sweep.params(1)
    assert p1["W_dec"].shape == (3, 16, 32)
    rows = cache.read(ins[0])  # evaluation runs on raw rows through the folded params
    ev = clt.evaluate(p1, np.asarray(got), dataclasses.replace(cfg, k=4))
    assert np.isfinite(ev["fvu"]) and len(ev["l0_per_layer"]) == 2 and rows.shape[1] == 32
