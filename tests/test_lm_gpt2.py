"""GPT-2 interop: logits and hook activations match Hugging Face transformers."""

import json

import jax
import numpy as np
import pytest

from jaxcrl.lm import HookedTransformer, TransformerConfig
from jaxcrl.lm.gpt2 import load_hf_gpt2, save_hf_gpt2

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def _hf_model(tied=True):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100,
                                  n_positions=32, tie_word_embeddings=tied)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so every tensor is checked
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_forward(model, tokens):
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(tokens), dtype=torch.long),
                    output_hidden_states=True)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 100, size=(2, 20)).astype(np.int32)


def test_load_matches_transformers(tmp_path, tokens):
    hf = _hf_model()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = load_hf_gpt2(tmp_path)
    shape = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab_size, cfg.n_ctx)
    assert shape == (2, 64, 4, 100, 32)
    model = HookedTransformer(cfg)
    names = [f"blocks.{i}.hook_resid_pre" for i in range(2)] + ["ln_final.hook_normalized"]
    logits, cache = model.run_with_cache(params, tokens, names)
    want, hidden = _hf_forward(hf, tokens)
    assert np.abs(np.asarray(logits) - want).max() < 1e-4
    assert np.abs(np.asarray(model.apply(params, tokens)) - want).max() < 1e-4
    for layer in range(2):
        np.testing.assert_allclose(cache[f"blocks.{layer}.hook_resid_pre"], hidden[layer],
                                   atol=1e-5)
    np.testing.assert_allclose(cache["ln_final.hook_normalized"], hidden[-1], atol=1e-5)


def test_export_round_trip(tmp_path, tokens):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "a", safe_serialization=True)
    cfg, params = load_hf_gpt2(tmp_path / "a")
    save_hf_gpt2(tmp_path / "b", cfg, params)
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "b").eval()
    want, _ = _hf_forward(hf, tokens)
    got, _ = _hf_forward(back, tokens)
    assert np.abs(got - want).max() < 1e-5
    cfg2, params2 = load_hf_gpt2(tmp_path / "b")
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_untied_round_trip(tmp_path, tokens):
    cfg = TransformerConfig(vocab_size=100, n_ctx=32, d_model=32, n_layers=1, n_heads=2,
                            tied_embeddings=False)
    params = HookedTransformer(cfg).init(jax.random.key(0))
    save_hf_gpt2(tmp_path, cfg, params)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    want, _ = _hf_forward(hf, tokens)
    got = HookedTransformer(cfg).apply(params, tokens)
    assert np.abs(np.asarray(got) - want).max() < 1e-4
    with pytest.raises(ValueError, match="learned positions"):
        save_hf_gpt2(tmp_path / "r", TransformerConfig.tiny(positions="rotary"), params)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        load_hf_gpt2(tmp_path / "nope")
    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_gpt2(d)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10,
                                               "n_positions": 8, "n_embd": 8, "n_layer": 1,
                                               "n_head": 2}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_gpt2(d)
    (d / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_hf_gpt2(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_hf_gpt2(d)
