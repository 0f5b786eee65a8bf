"""The activation store: a HookedTransformer's activations streamed into SAE training."""

import jax
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
