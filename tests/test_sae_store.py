"""The activation store: a HookedTransformer's activations streamed into SAE training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import sae
from jaxcrl.analysis import sae_hook


def test_lm_source_streams_transformer_activations_into_training():
    lm = pytest.importorskip("jaxcrl.lm")
    from jaxcrl.sae.store import layer_of, lm_source

    model = lm.HookedTransformer(lm.TransformerConfig.tiny(vocab_size=16, n_ctx=8))
    params = model.init(jax.random.key(0))
    sample_tokens = lambda key: jax.random.randint(key, (4, 8), 0, 16)
    hook = "blocks.0.hook_resid_post"
    assert layer_of(hook) == 0 and layer_of("hook_embed") is None
    src = lm_source(model, params, sample_tokens, hook, batch_size=16, buffer_size=64)
    assert src.d_in == 32
    st = src.init(jax.random.key(1))
    _, x = jax.jit(src.sample)(st, jax.random.key(2))
    _, cache = model.run_with_cache(params, sample_tokens(jax.random.key(3)), names=[hook])
    assert x.shape == (16, 32) and np.isfinite(np.asarray(x)).all()
    assert cache[hook].shape == (4, 8, 32)
    cfg = sae.SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4, steps=5, batch_size=16,
                        hook_name=hook)
    r = sae.train(cfg, src, jax.random.key(4), progress=False)
    assert np.isfinite(r.history["mse"]).all()
    # CE loss recovered with the real model, through the real hook API
    tokens = sample_tokens(jax.random.key(5))
    out = sae.ce_loss_recovered(model, params, tokens, hook, sae_hook(r.params(), cfg))
    assert np.isfinite(out["ce_loss_recovered"])


@pytest.fixture(scope="module")
def tiny_lm():
    lm = pytest.importorskip("jaxcrl.lm")
    model = lm.HookedTransformer(lm.TransformerConfig.tiny(vocab_size=16, n_ctx=8))
    params = model.init(jax.random.key(0))
    pool = jax.random.randint(jax.random.key(10), (6, 8), 0, 16)  # 6 fixed sequences

    def sample_tokens(key):  # 4 sequences drawn from the pool
        return pool[jax.random.randint(key, (4,), 0, pool.shape[0])]

    return model, params, pool, sample_tokens


def _nearest_row_distance(rows, ref):
    """For each row of ``rows [n, d]``, max-abs distance to the closest row of ``ref``."""
    rows, ref = np.asarray(rows), np.asarray(ref)
    return np.abs(rows[:, None, :] - ref[None, :, :]).max(-1).min(-1)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"])
def test_streamed_rows_are_run_with_cache_rows_of_the_drawn_sequences(tiny_lm, hook):
    # Tokens come from a pool of 6 sequences, so every streamed row (buffer and batch) must
    # be, to float32 precision, the activation of one (sequence, position) of the pool as
    # run_with_cache gives it on the full model (no stop_at_layer).
    from jaxcrl.sae.store import lm_source

    model, params, pool, sample_tokens = tiny_lm
    _, cache = model.run_with_cache(params, pool, names=[hook])
    ref = np.asarray(cache[hook]).reshape(-1, 32)  # [6 * 8, 32]
    other = np.asarray(model.run_with_cache(params, pool, names=["blocks.0.hook_resid_pre"])[1][
        "blocks.0.hook_resid_pre"]).reshape(-1, 32)
    src = lm_source(model, params, sample_tokens, hook, batch_size=16, buffer_size=64)
    st = src.init(jax.random.key(1))
    st, x = jax.jit(src.sample)(st, jax.random.key(2))
    for rows in (st["buffer"], x):
        assert _nearest_row_distance(rows, ref).max() < 1e-5
        assert _nearest_row_distance(rows, other).max() > 1e-2  # not some other hook's rows
    assert len(np.unique(np.round(np.asarray(st["buffer"]), 5), axis=0)) > 20  # many rows
    # positions=slice(1, None) drops position 0 of every sequence
    src = lm_source(model, params, sample_tokens, hook, batch_size=16, buffer_size=64,
                    positions=slice(1, None))
    buf = src.init(jax.random.key(3))["buffer"]
    ref_cache = np.asarray(cache[hook])
    assert _nearest_row_distance(buf, ref_cache[:, 1:].reshape(-1, 32)).max() < 1e-5
    assert _nearest_row_distance(ref_cache[:, 0], buf).min() > 1e-4


def test_ce_loss_recovered_is_one_for_perfect_and_zero_for_zero_ablation(tiny_lm):
    model, params, pool, _ = tiny_lm
    hook = "blocks.0.hook_resid_post"
    perfect = sae.ce_loss_recovered(model, params, pool, hook, lambda x: x)
    assert perfect["ce_sae"] == pytest.approx(perfect["ce_clean"], abs=1e-6)
    assert perfect["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    zero = sae.ce_loss_recovered(model, params, pool, hook, jnp.zeros_like)
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero"], abs=1e-6)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert abs(zero["ce_zero"] - zero["ce_clean"]) > 1e-3  # the ratio is well defined
