"""Hookable transformer: semantics of hook points, hooks, caching, positions, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import checkpoint
from jaxcrl.lm import (
    HookedTransformer,
    TransformerConfig,
    add_vector,
    count_params,
    hook_names,
    mean_ablate,
    patch_from,
    replace_with,
    zero_ablate,
)
from jaxcrl.lm.model import _forward_jit, rotary
from jaxcrl.lm.patching import activation_patching, logit_diff

CFG = TransformerConfig.tiny(vocab_size=50, n_ctx=16)


@pytest.fixture(scope="module")
def setup():
    model = HookedTransformer(CFG)
    params = model.init(jax.random.key(0))
    # Non-trivial LayerNorm/bias values so the reference check sees every parameter.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)])
    tokens = jax.random.randint(jax.random.key(2), (3, 12), 0, CFG.vocab_size)
    logits, cache = model.run_with_cache(params, tokens)
    return model, params, tokens, logits, cache


def _reference_logits(cfg, params, tokens):
    """Independent float64 numpy forward of the GPT-2 architecture."""
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    tokens = np.asarray(tokens)

    def ln(x, q):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.ln_eps) * q["scale"] + q["bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    b, t = tokens.shape
    x = p["W_E"][tokens] + p["W_pos"][:t]
    for layer in range(cfg.n_layers):
        blk = p[f"blocks_{layer}"]
        a = blk["attn"]
        h = ln(x, blk["ln1"])
        out = np.zeros_like(x)
        for head in range(cfg.n_heads):
            q = h @ a["W_Q"][:, head] + a["b_Q"][head]
            k = h @ a["W_K"][:, head] + a["b_K"][head]
            v = h @ a["W_V"][:, head] + a["b_V"][head]
            s = q @ k.transpose(0, 2, 1) / np.sqrt(cfg.head_dim)
            s = np.where(np.tril(np.ones((t, t))) > 0, s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out += (w @ v) @ a["W_O"][head]
        x = x + out + a["b_O"]
        m = blk["mlp"]
        x = x + gelu_new(ln(x, blk["ln2"]) @ m["W_in"] + m["b_in"]) @ m["W_out"] + m["b_out"]
    return ln(x, p["ln_final"]) @ p["W_E"].T


def test_logits_match_independent_reference(setup):
    model, params, tokens, logits, _ = setup
    assert logits.shape == (3, 12, CFG.vocab_size) and logits.dtype == jnp.float32
    np.testing.assert_allclose(model.apply(params, tokens), _reference_logits(CFG, params, tokens),
                               atol=2e-5)
    assert model.hook_names == hook_names(CFG)
    assert count_params(params) > count_params(params, embeddings=False)


def test_causality(setup):
    model, params, tokens, _, _ = setup
    logits = model.apply(params, tokens)
    t = 6
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % CFG.vocab_size)
    new = model.apply(params, changed)
    np.testing.assert_array_equal(np.asarray(new[:, :t]), np.asarray(logits[:, :t]))
    assert np.abs(np.asarray(new[:, t:] - logits[:, t:])).max() > 1e-4


def test_cache_is_consistent(setup):
    model, params, tokens, logits, c = setup
    close = dict(rtol=1e-5, atol=1e-5)
    assert set(c) == set(model.hook_names)
    np.testing.assert_allclose(c["blocks.0.hook_resid_pre"], c["hook_embed"] + c["hook_pos_embed"],
                               **close)
    np.testing.assert_allclose(c["hook_embed"], params["W_E"][tokens], **close)
    for layer in range(CFG.n_layers):
        b = f"blocks.{layer}"
        np.testing.assert_allclose(c[f"{b}.hook_resid_mid"],
                                   c[f"{b}.hook_resid_pre"] + c[f"{b}.hook_attn_out"], **close)
        np.testing.assert_allclose(c[f"{b}.hook_resid_post"],
                                   c[f"{b}.hook_resid_mid"] + c[f"{b}.hook_mlp_out"], **close)
        mlp = params[f"blocks_{layer}"]["mlp"]
        np.testing.assert_allclose(c[f"{b}.hook_mlp_out"],
                                   c[f"{b}.mlp.hook_post"] @ mlp["W_out"] + mlp["b_out"], **close)
        if layer + 1 < CFG.n_layers:
            np.testing.assert_array_equal(c[f"{b}.hook_resid_post"],
                                          c[f"blocks.{layer + 1}.hook_resid_pre"])
        pattern = np.asarray(c[f"{b}.attn.hook_pattern"])
        assert pattern.shape == (3, CFG.n_heads, 12, 12)
        np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)
        assert np.all(np.triu(pattern, 1) == 0)  # causal: no weight on later keys
    np.testing.assert_allclose(logits, c["ln_final.hook_normalized"] @ params["W_E"].T, **close)


def test_identity_hooks_equal_apply(setup):
    model, params, tokens, _, _ = setup
    plain = model.apply(params, tokens)
    identity = {n: (lambda x: x) for n in model.hook_names}
    hooked = model.run_with_hooks(params, tokens, hooks=identity)
    np.testing.assert_array_equal(np.asarray(hooked), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(model.run_with_hooks(params, tokens)),
                                  np.asarray(plain))


def test_zero_ablate_mlp_out(setup):
    model, params, tokens, logits, _ = setup
    name = "blocks.1.hook_mlp_out"
    out, c = model.run_with_cache(params, tokens, names=["blocks.1.hook_resid_mid",
                                                         "blocks.1.hook_resid_post", name],
                                  hooks={name: zero_ablate()})
    assert np.all(np.asarray(c[name]) == 0)
    np.testing.assert_array_equal(c["blocks.1.hook_resid_post"], c["blocks.1.hook_resid_mid"])
    assert np.abs(np.asarray(out - logits)).max() > 1e-4
    # zero_ablate itself is also a valid hook.
    np.testing.assert_allclose(model.run_with_hooks(params, tokens, {name: zero_ablate}), out,
                               atol=1e-5)


def test_hook_helpers(setup):
    model, params, tokens, logits, c = setup
    name = "blocks.0.hook_resid_post"
    d = CFG.d_model
    mean = jnp.arange(d, dtype=jnp.float32)
    _, got = model.run_with_cache(params, tokens, [name], hooks={name: mean_ablate(mean)})
    np.testing.assert_array_equal(got[name], np.broadcast_to(mean, got[name].shape))
    # patch_from with positions writes only there; with None recovers the source run.
    other = jnp.roll(tokens, 1, axis=1)
    _, oc = model.run_with_cache(params, other, [name])
    _, got = model.run_with_cache(params, tokens, [name],
                                  hooks={name: patch_from(oc[name], positions=[2, 5])})
    want = np.asarray(c[name]).copy()
    want[:, [2, 5]] = np.asarray(oc[name])[:, [2, 5]]
    # ``c`` comes from a program caching every hook (XLA fuses it differently): float32 ulps.
    np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.run_with_hooks(params, tokens, {name: patch_from(oc[name])}),
                               model.apply(params, other), atol=1e-5)
    # add_vector at one position.
    v = jnp.ones(d)
    _, got = model.run_with_cache(params, tokens, [name],
                                  hooks={name: add_vector(v, positions=3, scale=2.0)})
    want = np.asarray(c[name]).copy()
    want[:, 3] += 2.0
    np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6)
    # replace_with: arrays passed as args are traced, so new values reuse the program.
    def scale_fn(x, a):
        return x * a

    before = _forward_jit._cache_size()
    for s in (0.5, 2.0):
        _, got = model.run_with_cache(params, tokens, [name],
                                      hooks={name: replace_with(scale_fn, jnp.float32(s))})
        np.testing.assert_allclose(got[name], s * np.asarray(c[name]), rtol=1e-6, atol=1e-6)
    assert _forward_jit._cache_size() == before + 1


def test_bad_names_and_tokens(setup):
    model, params, tokens, _, _ = setup
    with pytest.raises(KeyError, match="blocks.0.hook_resid_post"):
        model.run_with_cache(params, tokens, names=["blocks.0.resid"])
    with pytest.raises(KeyError, match="valid names"):
        model.run_with_hooks(params, tokens, hooks={"blocks.9.hook_resid_post": zero_ablate()})
    with pytest.raises(ValueError, match="batch, seq"):
        model.apply(params, tokens[0])
    with pytest.raises(ValueError, match="n_ctx"):
        model.apply(params, jnp.zeros((1, CFG.n_ctx + 1), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        model.apply(params, tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match="vocab_size"):
        model.apply(params, tokens.at[0, 0].set(CFG.vocab_size))
    with pytest.raises(ValueError, match="vocab_size"):
        model.run_with_cache(params, tokens.at[0, 0].set(-1), names=["hook_embed"])
    with pytest.raises(ValueError, match="shape"):
        model.run_with_hooks(params, tokens, {"hook_embed": lambda x: x[:, :1]})


def test_stop_at_layer(setup):
    model, params, tokens, _, c = setup
    names = ["hook_embed", "blocks.0.hook_resid_post"]
    logits, got = model.run_with_cache(params, tokens, names, stop_at_layer=1)
    assert logits is None
    for n in names:
        np.testing.assert_allclose(got[n], c[n], atol=1e-6)
    with pytest.raises(ValueError, match="stop_at_layer"):
        model.run_with_cache(params, tokens, ["blocks.1.hook_resid_pre"], stop_at_layer=1)


def test_jit_equals_eager_and_cache_inside_jit(setup):
    model, params, tokens, logits, c = setup
    name = "blocks.1.hook_resid_mid"

    @jax.jit
    def f(p, t):
        out, cache = model.run_with_cache(p, t, names=[name])
        return out, cache[name]

    out, act = f(params, tokens)
    np.testing.assert_allclose(out, logits, atol=1e-5)
    np.testing.assert_allclose(act, c[name], atol=1e-5)
    with jax.disable_jit():
        eager = model.apply(params, tokens)
    np.testing.assert_allclose(eager, logits, atol=1e-5)
    # vmapped over a leading run axis of params.
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), params)
    vm = jax.vmap(model.apply, in_axes=(0, None))(stacked, tokens)
    np.testing.assert_allclose(vm[1], logits, atol=1e-5)


def test_rotary_scores_depend_on_offset_only():
    # The rotation itself: <rot(q)_s, rot(k)_t> is a function of s - t.
    q = jnp.broadcast_to(jax.random.normal(jax.random.key(0), (8,)), (1, 10, 1, 8))
    k = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (8,)), (1, 10, 1, 8))
    s = np.asarray(jnp.einsum("bqhe,bkhe->qk", rotary(q, 10000.0), rotary(k, 10000.0)))
    np.testing.assert_allclose(s[1:, 1:], s[:-1, :-1], atol=1e-5)
    assert np.abs(s[0, 1] - s[0, 2]) > 1e-4
    # In a 1-layer rotary model on a constant sequence the scores are Toeplitz, so
    # log p[q, q-d] - log p[q, q] is the same for every query q.
    cfg = TransformerConfig.tiny(n_layers=1, positions="rotary", vocab_size=20)
    model = HookedTransformer(cfg)
    params = model.init(jax.random.key(3))
    assert "W_pos" not in params and "hook_pos_embed" not in model.hook_names
    tokens = jnp.full((1, 10), 7, jnp.int32)
    logits, c = model.run_with_cache(params, tokens, ["blocks.0.attn.hook_pattern"])
    assert logits.shape == (1, 10, 20)
    pat = np.asarray(c["blocks.0.attn.hook_pattern"], np.float64)[0]  # [H, T, T]
    for d in (1, 3):
        rel = np.stack([np.log(pat[:, qi, qi - d] / pat[:, qi, qi]) for qi in range(d, 10)])
        np.testing.assert_allclose(rel, np.broadcast_to(rel[0], rel.shape), atol=1e-4)
    # Causality holds for the rotary variant too.
    other = tokens.at[0, 5].set(3)
    np.testing.assert_array_equal(np.asarray(model.apply(params, other)[:, :5]),
                                  np.asarray(logits[:, :5]))


def test_untied_unembedding():
    cfg = TransformerConfig.tiny(tied_embeddings=False, n_layers=1)
    model = HookedTransformer(cfg)
    params = model.init(jax.random.key(0))
    assert params["W_U"].shape == (cfg.d_model, cfg.vocab_size)
    tokens = jnp.arange(8, dtype=jnp.int32)[None]
    logits, c = model.run_with_cache(params, tokens, ["ln_final.hook_normalized"])
    np.testing.assert_allclose(logits, c["ln_final.hook_normalized"] @ params["W_U"], atol=1e-5)
    params2 = dict(params, W_U=params["W_U"] * 2)
    np.testing.assert_allclose(model.apply(params2, tokens), 2 * logits, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip(setup, tmp_path):
    model, params, tokens, logits, _ = setup
    checkpoint.save(tmp_path / "lm", params, config=CFG, kind="lm")
    c = checkpoint.load(tmp_path / "lm", kind="lm", target=jax.eval_shape(lambda: params))
    assert c.config == CFG
    restored = HookedTransformer(c.config).apply(c.state, tokens)
    np.testing.assert_array_equal(np.asarray(restored), np.asarray(model.apply(params, tokens)))


def test_activation_patching(setup):
    model, params, _, _, _ = setup
    t = 8
    clean = jax.random.randint(jax.random.key(5), (2, t), 0, CFG.vocab_size)
    corrupted = clean.at[:, 2].set((clean[:, 2] + 7) % CFG.vocab_size)
    metric = logit_diff(answer=jnp.array([1, 2]), wrong=3)
    m_clean = float(metric(model.apply(params, clean)))
    m_corr = float(metric(model.apply(params, corrupted)))
    assert abs(m_clean - m_corr) > 1e-4
    last = f"blocks.{CFG.n_layers - 1}.hook_resid_post"
    names = ["hook_embed", "blocks.0.hook_resid_mid", "blocks.1.attn.hook_pattern", last]
    res = np.asarray(activation_patching(model, params, clean, corrupted, metric, names))
    assert res.shape == (len(names), t)
    # Patching everything at the final resid_post recovers the clean metric exactly.
    _, cache = model.run_with_cache(params, clean, names)
    full = metric(model.run_with_hooks(params, corrupted, {last: patch_from(cache[last])}))
    np.testing.assert_allclose(full, m_clean, atol=1e-5)
    # The metric reads the last position: patching it there restores the clean value,
    # patching any other position of the final stream changes nothing.
    np.testing.assert_allclose(res[3, -1], m_clean, atol=1e-5)
    np.testing.assert_allclose(res[3, :-1], m_corr, atol=1e-5)
    # Embeddings differ only at position 2: patching it there gives the clean run, elsewhere
    # the corrupted one (nothing is patched in effect).
    np.testing.assert_allclose(res[0, 2], m_clean, atol=1e-5)
    np.testing.assert_allclose(np.delete(res[0], 2), m_corr, atol=1e-5)
    # Position-wise value against a manual patch.
    name, p = "blocks.0.hook_resid_mid", 4
    src = cache[name]
    manual = metric(model.run_with_hooks(params, corrupted,
                                         {name: lambda x: x.at[:, p].set(src[:, p])}))
    np.testing.assert_allclose(res[1, p], manual, atol=1e-5)
    # Patterns are patched along the query axis; query positions < 2 see equal tokens.
    np.testing.assert_allclose(res[2, :2], m_corr, atol=1e-5)
    # Chunked evaluation and a subset of positions agree.
    sub = activation_patching(model, params, clean, corrupted, metric, [name], positions=[1, 4],
                              chunk_size=1)
    np.testing.assert_allclose(sub[0], res[1, [1, 4]], atol=1e-5)


def test_patch_from_four_dim_axis(setup):
    model, params, tokens, _, c = setup
    name = "blocks.0.attn.hook_z"  # [B, T, H, Dh]: positions on axis 1
    other = jnp.roll(tokens, 1, axis=1)
    _, oc = model.run_with_cache(params, other, [name])
    with pytest.raises(ValueError, match="pos_axis"):
        patch_from(oc[name], positions=[3])
    _, got = model.run_with_cache(params, tokens, [name],
                                  hooks={name: patch_from(oc[name], [3], pos_axis=1)})
    want = np.asarray(c[name]).copy()
    want[:, 3] = np.asarray(oc[name])[:, 3]
    np.testing.assert_allclose(got[name], want, atol=1e-6)
    res = activation_patching(model, params, tokens, other,
                              logit_diff(answer=jnp.array([1, 2, 3]), wrong=4), [name],
                              positions=[3])
    manual = logit_diff(answer=jnp.array([1, 2, 3]), wrong=4)(model.run_with_hooks(
        params, other, {name: patch_from(c[name], [3], pos_axis=1)}))
    np.testing.assert_allclose(res[0, 0], manual, atol=1e-5)
