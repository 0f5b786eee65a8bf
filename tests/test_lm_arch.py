"""The transformer family's switches against independent numpy references, the extended hook
set's semantics, hooks that cost nothing unless asked for, bfloat16, checkpoints of the old
default config, and KV-cache generation against a cache-free loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import checkpoint
from jaxcrl.lm import HookedTransformer, RopeScaling, TransformerConfig, generate
from jaxcrl.lm.config import hook_names
from jaxcrl.lm.generate import _generate
from jaxcrl.lm.model import _forward, rope_inv_freq, rotary


def _rot_ref(x, base, rd, interleaved):
    """float64 numpy RoPE on [B, T, H, Dh]."""
    x = np.asarray(x, np.float64)
    t = x.shape[1]
    inv = base ** (-np.arange(0, rd, 2) / rd)
    ang = np.arange(t)[:, None] * inv
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    out = x.copy()
    if interleaved:
        a, b = x[..., 0:rd:2], x[..., 1:rd:2]
        out[..., 0:rd:2] = a * cos - b * sin
        out[..., 1:rd:2] = b * cos + a * sin
    else:
        a, b = x[..., : rd // 2], x[..., rd // 2: rd]
        out[..., : rd // 2] = a * cos - b * sin
        out[..., rd // 2: rd] = b * cos + a * sin
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rd", [4, 8])
def test_rotary_layouts_and_partial(interleaved, rd):
    x = jax.random.normal(jax.random.key(0), (2, 7, 3, 8))
    got = rotary(x, 100.0, rotary_dim=rd, interleaved=interleaved)
    np.testing.assert_allclose(got, _rot_ref(x, 100.0, rd, interleaved), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[..., rd:], np.asarray(x)[..., rd:])
    # the two layouts are the same rotation up to a channel permutation
    perm = np.concatenate([np.arange(0, rd, 2), np.arange(1, rd, 2), np.arange(rd, 8)])
    other = rotary(x[..., perm], 100.0, rotary_dim=rd, interleaved=not interleaved) \
        if interleaved else None
    if other is not None:
        np.testing.assert_allclose(np.asarray(other), np.asarray(got)[..., perm], atol=1e-5)


def test_llama3_rope_scaling_frequencies():
    # Llama 3.1 8B values: theta 5e5, factor 8, low 1, high 4, original 8192, Dh 128.
    s = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    base = rope_inv_freq(128, 500000.0)
    got = rope_inv_freq(128, 500000.0, s)
    wavelen = 2 * np.pi / base
    np.testing.assert_array_equal(got[wavelen < 8192 / 4], base[wavelen < 8192 / 4])
    np.testing.assert_allclose(got[wavelen > 8192], base[wavelen > 8192] / 8, rtol=1e-6)
    mid = (wavelen >= 2048) & (wavelen <= 8192)
    assert mid.any() and np.all(got[mid] <= base[mid]) and np.all(got[mid] >= base[mid] / 8)
    np.testing.assert_allclose(rope_inv_freq(16, 1e4, RopeScaling("linear", 2.0)),
                               rope_inv_freq(16, 1e4) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        RopeScaling("yarn")


def test_config_validation():
    with pytest.raises(ValueError, match="n_kv_heads"):
        TransformerConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="norm"):
        TransformerConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="rotary_dim"):
        TransformerConfig(positions="rotary", rotary_dim=3)
    with pytest.raises(ValueError, match="layer_types"):
        TransformerConfig(n_layers=2, layer_types=("full",))
    with pytest.raises(ValueError, match="sliding_window"):
        TransformerConfig(n_layers=1, layer_types=("sliding",))
    cfg = TransformerConfig(n_layers=2, sliding_window=3, layer_types=["sliding", "full"])
    assert cfg.layer_types == ("sliding", "full") and hash(cfg)


def _np_forward(cfg, p, tokens):
    """Independent float64 numpy forward of a Gemma-2-like / Llama-like config."""
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), p)
    tokens = np.asarray(tokens)

    def norm(x, q):
        ms = (x ** 2).mean(-1, keepdims=True)
        return x / np.sqrt(ms + cfg.ln_eps) * (cfg.norm_offset + q["scale"])

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    b, t = tokens.shape
    x = p["W_E"][tokens] * (np.sqrt(cfg.d_model) if cfg.embed_scale else 1)
    g = cfg.n_heads // cfg.kv_heads
    for layer in range(cfg.n_layers):
        blk = p[f"blocks_{layer}"]
        a = blk["attn"]
        h = norm(x, blk["ln1"])
        q = np.einsum("btd,dhe->bthe", h, a["W_Q"])
        k = np.einsum("btd,dhe->bthe", h, a["W_K"])
        v = np.einsum("btd,dhe->bthe", h, a["W_V"])
        q = _rot_ref(q, cfg.rotary_base, cfg.rot_dim, cfg.rotary_interleaved)
        k = _rot_ref(k, cfg.rotary_base, cfg.rot_dim, cfg.rotary_interleaved)
        k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
        s = np.einsum("bqhe,bkhe->bhqk", q, k) * cfg.attn_scale
        if cfg.attn_softcap:
            s = cfg.attn_softcap * np.tanh(s / cfg.attn_softcap)
        qi, ki = np.arange(t)[:, None], np.arange(t)[None]
        ok = ki <= qi
        if cfg.types[layer] == "sliding":
            ok &= qi - ki < cfg.sliding_window
        s = np.where(ok, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        out = np.einsum("bqhe,hed->bqd", np.einsum("bhqk,bkhe->bqhe", w, v), a["W_O"])
        x = x + norm(out, blk["ln1_post"])
        m = blk["mlp"]
        hm = norm(x, blk["ln2"])
        y = (gelu(hm @ m["W_gate"]) * (hm @ m["W_in"])) @ m["W_out"]
        x = x + norm(y, blk["ln2_post"])
    logits = norm(x, p["ln_final"]) @ p["W_E"].T
    return cfg.final_softcap * np.tanh(logits / cfg.final_softcap)


GEMMA2_LIKE = TransformerConfig(
    vocab_size=40, n_ctx=16, d_model=24, n_layers=2, n_heads=3, n_kv_heads=1, d_head=10,
    d_mlp=40, positions="rotary", rotary_interleaved=True, norm="rmsnorm", norm_offset=1.0,
    act="gelu_tanh", gated_mlp=True, post_norms=True, qkv_bias=False, out_bias=False,
    mlp_bias=False, sliding_window=3, layer_types=("sliding", "full"), attn_softcap=2.0,
    final_softcap=3.0, embed_scale=True, query_scale=7.0, init_std=0.3)


@pytest.fixture(scope="module")
def gemma_like():
    model = HookedTransformer(GEMMA2_LIKE)
    params = model.init(jax.random.key(0))
    leaves, tree = jax.tree_util.tree_flatten(params)
    ks = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, ks, strict=True)])
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 40)
    return model, params, tokens


def test_switches_match_numpy_reference(gemma_like):
    model, params, tokens = gemma_like
    got = np.asarray(model.apply(params, tokens))
    np.testing.assert_allclose(got, _np_forward(GEMMA2_LIKE, params, tokens), atol=2e-5)


def test_norm_and_attention_hooks(gemma_like):
    model, params, tokens = gemma_like
    b = "blocks.1"
    names = [f"{b}.hook_resid_pre", f"{b}.ln1.hook_scale", f"{b}.ln1.hook_normalized",
             f"{b}.attn.hook_attn_scores", f"{b}.attn.hook_pattern", f"{b}.attn.hook_rot_q",
             f"{b}.attn.hook_q", f"{b}.mlp.hook_pre", f"{b}.mlp.hook_pre_linear",
             f"{b}.mlp.hook_post"]
    _, c = model.run_with_cache(params, tokens, names)
    x = np.asarray(c[f"{b}.hook_resid_pre"])
    np.testing.assert_allclose(c[f"{b}.ln1.hook_scale"],
                               np.sqrt((x ** 2).mean(-1, keepdims=True) + GEMMA2_LIKE.ln_eps),
                               rtol=1e-5)
    np.testing.assert_allclose(c[f"{b}.ln1.hook_normalized"],
                               x / c[f"{b}.ln1.hook_scale"]
                               * (1 + np.asarray(params["blocks_1"]["ln1"]["scale"])), atol=1e-5)
    pat = np.asarray(c[f"{b}.attn.hook_pattern"])
    sc = np.asarray(c[f"{b}.attn.hook_attn_scores"])
    assert np.abs(sc[sc > -1e29]).max() <= 2.0  # soft-capped at 2
    np.testing.assert_allclose(pat, jax.nn.softmax(sc, -1), atol=1e-6)
    gelu = jax.nn.gelu(c[f"{b}.mlp.hook_pre"], approximate=True)
    np.testing.assert_allclose(c[f"{b}.mlp.hook_post"], gelu * c[f"{b}.mlp.hook_pre_linear"],
                               atol=1e-5)
    assert not np.allclose(c[f"{b}.attn.hook_rot_q"], c[f"{b}.attn.hook_q"])
    # hooks change the forward: scaling ln1's scale by 2 halves the normalized output
    _, c2 = model.run_with_cache(params, tokens, [f"{b}.ln1.hook_normalized"],
                                 hooks={f"{b}.ln1.hook_scale": lambda s: 2 * s})
    np.testing.assert_allclose(c2[f"{b}.ln1.hook_normalized"],
                               np.asarray(c[f"{b}.ln1.hook_normalized"]) / 2, atol=1e-5)
    # the layer-0 sliding window: query 8 gives keys 0..5 zero weight
    _, c0 = model.run_with_cache(params, tokens, ["blocks.0.attn.hook_pattern"])
    p0 = np.asarray(c0["blocks.0.attn.hook_pattern"])
    assert np.all(p0[:, :, 8, :6] == 0) and np.all(p0[:, :, 8, 6:9] > 0)


def _n_dots(cfg, params, tokens, names=(), hooks=()):
    jaxpr = jax.make_jaxpr(lambda p, t: _forward(cfg, p, t, {}, tuple(hooks), tuple(names),
                                                 None))(params, tokens)
    return str(jaxpr).count("dot_general"), len(jaxpr.eqns)


def test_unrequested_hooks_cost_nothing(gemma_like):
    model, params, tokens = gemma_like
    plain = _n_dots(GEMMA2_LIKE, params, tokens)
    one = _n_dots(GEMMA2_LIKE, params, tokens, names=("blocks.1.hook_resid_mid",))
    assert one == plain  # caching a value adds no computation
    with_result = _n_dots(GEMMA2_LIKE, params, tokens, names=("blocks.1.attn.hook_result",))
    assert with_result[0] == plain[0]  # the per-head product replaces the summed one
    c = model.run_with_cache(params, tokens, ["blocks.1.attn.hook_result"])[1]
    assert c["blocks.1.attn.hook_result"].shape == (2, 9, 3, 24)
    assert "blocks.1.attn.hook_result" not in model.hook_names
    assert "blocks.1.attn.hook_result" in hook_names(GEMMA2_LIKE, include_result=True)


def test_bfloat16_init_and_forward(gemma_like):
    model, params, tokens = gemma_like
    p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    logits, c = model.run_with_cache(p16, tokens, ["blocks.0.hook_resid_post"])
    assert logits.dtype == jnp.float32 and c["blocks.0.hook_resid_post"].dtype == jnp.bfloat16
    ref = np.asarray(model.apply(params, tokens))
    assert np.abs(np.asarray(logits) - ref).max() < 0.05 * np.abs(ref).max()
    assert model.init(jax.random.key(0), dtype=jnp.bfloat16)["W_E"].dtype == jnp.bfloat16


def test_default_config_checkpoints_still_load(tmp_path):
    # A checkpoint of the earlier GPT-2-style default config stores only the old fields ...
    old_fields = dict(vocab_size=64, n_ctx=64, d_model=128, n_layers=2, n_heads=4, d_mlp=None,
                      positions="learned", tied_embeddings=True, ln_eps=1e-5,
                      rotary_base=10000.0, init_std=0.02)
    cfg = checkpoint.config_from_json({"__dataclass__": "jaxcrl.lm.config:TransformerConfig",
                                       "fields": old_fields})
    assert cfg == TransformerConfig()
    # ... and the old params layout, which the default config still has, leaf for leaf.
    params = HookedTransformer(cfg).init(jax.random.key(0))
    keys = {"/".join(str(getattr(k, "key", k)) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    old = {"W_E", "W_pos", "ln_final/scale", "ln_final/bias"}
    for layer in range(2):
        b = f"blocks_{layer}/"
        old |= {b + s for s in ("ln1/scale", "ln1/bias", "ln2/scale", "ln2/bias", "attn/W_Q",
                                "attn/W_K", "attn/W_V", "attn/b_Q", "attn/b_K", "attn/b_V",
                                "attn/W_O", "attn/b_O", "mlp/W_in", "mlp/b_in", "mlp/W_out",
                                "mlp/b_out")}
    assert keys == old
    checkpoint.save(tmp_path / "c", params, config=cfg, kind="lm")
    assert checkpoint.load(tmp_path / "c", kind="lm",
                           target=jax.eval_shape(lambda: params)).config == cfg


@pytest.mark.parametrize("cfg", [
    TransformerConfig.tiny(vocab_size=30, n_ctx=20, init_std=0.3),
    dataclasses.replace(GEMMA2_LIKE, n_ctx=20),
    TransformerConfig.llama(vocab_size=30, n_ctx=20, d_model=32, init_std=0.3,
                            parallel_attn_mlp=True, rotary_dim=4),
], ids=["gpt2", "gemma2_like", "llama_parallel_partial"])
def test_kv_cache_generation_equals_full_recompute(cfg):
    model = HookedTransformer(cfg)
    params = model.init(jax.random.key(0))
    prompt = jax.random.randint(jax.random.key(1), (2, 5), 0, cfg.vocab_size)
    seq = np.asarray(prompt)
    for _ in range(7):  # cache-free greedy loop
        nxt = np.asarray(model.apply(params, seq))[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    before = _generate._cache_size()
    got = generate(model, params, prompt, 7)
    np.testing.assert_array_equal(np.asarray(got), seq)
    # temperature and key are traced: sampling reuses the compiled program
    generate(model, params, prompt, 7, jax.random.key(3), temperature=0.7)
    assert _generate._cache_size() == before + 1
