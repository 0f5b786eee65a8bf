"""Hugging Face import per family: logits, residual streams, head ablation and greedy
generation match ``transformers`` (float32, eager attention) on tiny random models with
non-default shapes; bfloat16 within a stated tolerance; bad directories are clear errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl.lm import from_pretrained, generate, load_hf_gpt2
from jaxcrl.lm.hf import config_from_hf

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

V = 97
# Non-default shapes: odd head counts, GQA/MQA ratios, head_dim != d_model / n_heads,
# untied unembeddings where the family allows, sliding windows shorter than the sequence,
# partial rotary, llama3/linear RoPE scaling, biases, soft-caps small enough to bite.
FAMILIES = {
    "gpt2": lambda T: T.GPT2Config(n_layer=2, n_embd=48, n_head=3, vocab_size=V, n_positions=32,
                                   n_inner=80, tie_word_embeddings=False),
    "gpt_neox": lambda T: T.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=3, intermediate_size=80,
        vocab_size=V, max_position_embeddings=32, hidden_act="gelu",
        rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                         "partial_rotary_factor": 0.5}),
    "gpt_neox_sequential": lambda T: T.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=6, intermediate_size=64,
        vocab_size=V, max_position_embeddings=32, use_parallel_residual=False),
    "llama": lambda T: T.LlamaConfig(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=80, vocab_size=V, max_position_embeddings=64, attention_bias=True,
        mlp_bias=True, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0,
                                        "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 16}),
    "mistral": lambda T: T.MistralConfig(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=3, num_key_value_heads=1,
        head_dim=16, intermediate_size=80, vocab_size=V, max_position_embeddings=64,
        sliding_window=5),
    "qwen2": lambda T: T.Qwen2Config(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=80, vocab_size=V, max_position_embeddings=64,
        tie_word_embeddings=True),
    "qwen3": lambda T: T.Qwen3Config(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=80, vocab_size=V, max_position_embeddings=64),
    "gemma": lambda T: T.GemmaConfig(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=3, num_key_value_heads=1,
        head_dim=16, intermediate_size=80, vocab_size=V, max_position_embeddings=64),
    "gemma2": lambda T: T.Gemma2Config(
        num_hidden_layers=3, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
        head_dim=12, intermediate_size=80, vocab_size=V, max_position_embeddings=64,
        query_pre_attn_scalar=10, sliding_window=4, attn_logit_softcapping=3.0,
        final_logit_softcapping=5.0),
    "gemma3_text": lambda T: T.Gemma3TextConfig(
        num_hidden_layers=3, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=80, vocab_size=V, max_position_embeddings=64,
        query_pre_attn_scalar=12, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1e6}}),
}
# The output projection of attention, whose input is hook_z, per family.
O_PROJ = {"gpt2": "attn.c_proj", "gpt_neox": "attention.dense"}


def _layers(hf):
    base = getattr(hf, "model", None) or getattr(hf, "transformer", None) or hf.gpt_neox
    return base.layers if hasattr(base, "layers") else base.h


def _o_proj(hf, family, layer):
    mod = _layers(hf)[layer]
    for part in O_PROJ.get(family.split("_seq")[0], "self_attn.o_proj").split("."):
        mod = getattr(mod, part)
    return mod


def build(family, path):
    torch.manual_seed(0)
    cfg = FAMILIES[family](transformers)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # weights large enough that logits and argmaxes are well separated
        for name, p in hf.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.15)
            elif "norm" in name or "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    hf.save_pretrained(path, safe_serialization=True)
    return hf


def hf_forward(hf, tokens, hook=None):
    with torch.no_grad():
        out = hf(torch.as_tensor(np.asarray(tokens), dtype=torch.long),
                 output_hidden_states=True)
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, V, size=(2, 13)).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = build(request.param, path)
    model, params = from_pretrained(path)
    return request.param, path, hf, model, params


def test_logits_and_residuals_match(family, tokens):
    name, _, hf, model, params = family
    n = model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)]
    logits, cache = model.run_with_cache(params, tokens, names)
    want, hidden = hf_forward(hf, tokens)
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - want).max() < 1e-4, name
    assert np.abs(want).max() > 1.0  # the comparison is not between near-zero logits
    for i in range(n):
        np.testing.assert_allclose(cache[f"blocks.{i}.hook_resid_pre"], hidden[i], atol=1e-4,
                                   rtol=1e-5, err_msg=f"{name} layer {i}")


def test_head_ablation_matches(family, tokens):
    name, _, hf, model, params = family
    layer, head = 1, model.cfg.n_heads - 1
    dh = model.cfg.head_dim

    def zero_head(module, args):
        x = args[0].clone()
        x[..., head * dh:(head + 1) * dh] = 0
        return (x,)

    handle = _o_proj(hf, name, layer).register_forward_pre_hook(zero_head)
    try:
        want, _ = hf_forward(hf, tokens)
    finally:
        handle.remove()
    hook = f"blocks.{layer}.attn.hook_z"
    got, cache = model.run_with_cache(params, tokens, [hook],
                                      hooks={hook: lambda z: z.at[:, :, head].set(0)})
    assert np.all(np.asarray(cache[hook])[:, :, head] == 0)
    assert np.abs(np.asarray(got) - want).max() < 1e-4
    assert np.abs(np.asarray(got) - np.asarray(model.apply(params, tokens))).max() > 1e-3


def test_greedy_generation_matches(family, tokens):
    name, _, hf, model, params = family
    n_new = 8
    prompt = tokens[:, :6]
    with torch.no_grad():
        want = hf.generate(torch.as_tensor(prompt, dtype=torch.long), max_new_tokens=n_new,
                           min_new_tokens=n_new, do_sample=False, eos_token_id=None,
                           pad_token_id=0).numpy()
    got = generate(model, params, prompt, n_new)
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)


def test_bfloat16_end_to_end(family, tokens):
    """bfloat16 params and activations (float32 norms, softmax, logits): stated tolerance
    max |logits_bf16 - logits_f32| <= 0.05 * max |logits_f32| and >= 90% equal argmaxes."""
    name, path, _, model, params = family
    model16, params16 = from_pretrained(path, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params16))
    ref = np.asarray(model.apply(params, tokens))
    logits, cache = model16.run_with_cache(params16, tokens, ["blocks.0.hook_resid_post",
                                                              "blocks.0.attn.hook_pattern"])
    assert logits.dtype == jnp.float32
    assert cache["blocks.0.hook_resid_post"].dtype == jnp.bfloat16
    assert cache["blocks.0.attn.hook_pattern"].dtype == jnp.float32
    err = np.abs(np.asarray(logits) - ref).max() / np.abs(ref).max()
    agree = np.mean(np.asarray(logits).argmax(-1) == ref.argmax(-1))
    assert err <= 0.05 and agree >= 0.9, (name, err, agree)


def test_hook_set_shapes(family, tokens):
    _, _, _, model, params = family
    cfg = model.cfg
    b, t = tokens.shape
    h, k, dh = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    names = [f"blocks.1.{n}" for n in ("attn.hook_q", "attn.hook_k", "attn.hook_v",
                                        "attn.hook_z", "attn.hook_result", "attn.hook_pattern",
                                        "attn.hook_attn_scores", "ln1.hook_scale",
                                        "mlp.hook_pre", "mlp.hook_post", "hook_attn_out")]
    _, c = model.run_with_cache(params, tokens, names)
    assert c["blocks.1.attn.hook_q"].shape == (b, t, h, dh)
    assert c["blocks.1.attn.hook_k"].shape == c["blocks.1.attn.hook_v"].shape == (b, t, k, dh)
    assert c["blocks.1.attn.hook_result"].shape == (b, t, h, cfg.d_model)
    assert c["blocks.1.attn.hook_pattern"].shape == (b, h, t, t)
    assert c["blocks.1.ln1.hook_scale"].shape == (b, t, 1)
    assert c["blocks.1.mlp.hook_post"].shape == (b, t, cfg.mlp_dim)
    # hook_result summed over heads (+ b_O) is the attention output (before any post-norm).
    summed = np.asarray(c["blocks.1.attn.hook_result"]).sum(2)
    if cfg.out_bias:
        summed = summed + np.asarray(params["blocks_1"]["attn"]["b_O"])
    if not cfg.post_norms:
        np.testing.assert_allclose(summed, c["blocks.1.hook_attn_out"], atol=1e-4)
    # the pattern is z's weighting of v (GQA: query head h reads kv head h // (H/K))
    v = np.repeat(np.asarray(c["blocks.1.attn.hook_v"]), h // k, axis=2)
    z = np.einsum("bhqk,bkhd->bqhd", np.asarray(c["blocks.1.attn.hook_pattern"]), v)
    np.testing.assert_allclose(z, c["blocks.1.attn.hook_z"], atol=1e-4)


def test_legacy_config_style_and_sharded_index(tmp_path, tokens):
    """transformers 4.x configs (rope_theta + rope_scaling) and sharded weights load alike."""
    hf = build("llama", tmp_path / "a")
    want, _ = hf_forward(hf, tokens)
    d = tmp_path / "b"
    hf.save_pretrained(d, safe_serialization=True, max_shard_size="20KB")
    assert (d / "model.safetensors.index.json").exists()
    conf = json.loads((d / "config.json").read_text())
    rp = conf.pop("rope_parameters")
    conf["rope_theta"] = rp.pop("rope_theta")
    conf["rope_scaling"] = rp
    (d / "config.json").write_text(json.dumps(conf))
    model, params = from_pretrained(d)
    assert model.cfg.rope_scaling is not None and model.cfg.rope_scaling.kind == "llama3"
    assert np.abs(np.asarray(model.apply(params, tokens)) - want).max() < 1e-4


def test_load_hf_gpt2_alias(tmp_path, tokens):
    build("gpt2", tmp_path)
    cfg, params = load_hf_gpt2(tmp_path)
    model, params2 = from_pretrained(tmp_path)
    assert cfg == model.cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)
    build("llama", tmp_path / "l")
    with pytest.raises(ValueError, match="not a GPT-2"):
        load_hf_gpt2(tmp_path / "l")


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_src")
    build("llama", path)
    return path


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(d, **changes):
    conf = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            conf.pop(k, None)
        else:
            conf[k] = v
    (d / "config.json").write_text(json.dumps(conf))


def test_config_allowlist_errors(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "m")
    _edit_config(d, some_new_switch=True)
    with pytest.raises(ValueError, match="some_new_switch"):
        from_pretrained(d)
    _edit_config(d, some_new_switch=None, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                           "rope_theta": 1e4})
    with pytest.raises(ValueError, match="rope_parameters.*yarn"):
        from_pretrained(d)
    _edit_config(d, rope_parameters=None, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_scaling.*dynamic"):
        from_pretrained(d)
    _edit_config(d, rope_scaling=None, hidden_act="tanh")
    with pytest.raises(ValueError, match="hidden_act"):
        from_pretrained(d)
    _edit_config(d, hidden_act="silu", model_type="bert")
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        from_pretrained(d)
    # nothing in config.json is imported or called: a class path is just an unknown key
    with pytest.raises(ValueError, match="auto_map"):
        config_from_hf({"model_type": "llama", "auto_map": {"AutoModel": "os.system"}})


@pytest.mark.parametrize("key,value,match", [
    ("num_hidden_layers", 3, "layers.2.*missing"),
    ("num_hidden_layers", 1, "does not account"),
    ("num_key_value_heads", 3, "k_proj.*shape"),
    ("hidden_size", 64, "shape"),
    ("vocab_size", 100, "embed_tokens.*shape"),
    ("intermediate_size", 81, "gate_proj.*shape"),
])
def test_config_disagreeing_with_weights(llama_dir, tmp_path, key, value, match):
    d = _copy(llama_dir, tmp_path / "m")
    _edit_config(d, **{key: value})
    with pytest.raises(ValueError, match=match):
        from_pretrained(d)


def test_gpt2_config_disagreeing_with_weights(tmp_path):
    build("gpt2", tmp_path)
    _edit_config(tmp_path, n_layer=3)
    with pytest.raises(ValueError, match="h.2.*missing"):
        from_pretrained(tmp_path)
    _edit_config(tmp_path, n_layer=2, n_embd=24, n_head=3)
    with pytest.raises(ValueError, match="shape"):
        from_pretrained(tmp_path)


def test_shard_index_safety(llama_dir, tmp_path):
    d = tmp_path / "s"
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    hf.save_pretrained(d, safe_serialization=True, max_shard_size="20KB")
    index_file = d / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "outside.safetensors"
    shutil.copy(d / shard, outside)

    def with_map(value):
        idx = json.loads(json.dumps(index))
        for k, v in idx["weight_map"].items():
            if v == shard:
                idx["weight_map"][k] = value
        index_file.write_text(json.dumps(idx))

    with_map("../outside.safetensors")
    with pytest.raises(ValueError, match="outside the model directory"):
        from_pretrained(d)
    with_map(str(outside))
    with pytest.raises(ValueError, match="outside the model directory"):
        from_pretrained(d)
    (d / "link.safetensors").symlink_to(outside)
    with_map("link.safetensors")
    with pytest.raises(ValueError, match="symlink"):
        from_pretrained(d)
    with_map(shard)
    from_pretrained(d)  # restored: loads
    (d / shard).unlink()
    with pytest.raises(FileNotFoundError, match="missing weight file"):
        from_pretrained(d)


def test_missing_and_corrupt(tmp_path, llama_dir):
    with pytest.raises(FileNotFoundError, match="no such"):
        from_pretrained(tmp_path / "nope")
    d = _copy(llama_dir, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="safetensors"):
        from_pretrained(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        from_pretrained(d)


def test_wrong_tensor_shape(tmp_path, llama_dir):
    from safetensors.numpy import load_file, save_file

    d = _copy(llama_dir, tmp_path / "m")
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.1.mlp.down_proj.weight"] = t["model.layers.1.mlp.down_proj.weight"][:, :-1]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="layers.1.mlp.down_proj.weight.*shape"):
        from_pretrained(d)


def test_generate_errors(llama_dir):
    model, params = from_pretrained(llama_dir)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(model, params, np.array([[1, V]]), 2)
    with pytest.raises(ValueError, match="n_ctx"):
        generate(model, params, np.zeros((1, 60), np.int32), 5)
    with pytest.raises(ValueError, match="key"):
        generate(model, params, np.zeros((1, 4), np.int32), 2, temperature=1.0)


def test_sampling_is_keyed_and_top_k_respected(llama_dir):
    model, params = from_pretrained(llama_dir)
    prompt = np.zeros((3, 4), np.int32)
    key = jax.random.key(1)
    a = generate(model, params, prompt, 6, key, temperature=1.0, top_k=5)
    b = generate(model, params, prompt, 6, key, temperature=1.0, top_k=5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = generate(model, params, prompt, 6, jax.random.key(2), temperature=1.0, top_k=5)
    assert np.any(np.asarray(a) != np.asarray(c))
    # top_k=1 is greedy
    np.testing.assert_array_equal(
        np.asarray(generate(model, params, prompt, 6, key, temperature=1.0, top_k=1)),
        np.asarray(generate(model, params, prompt, 6)))
    # every sampled token lies in the top 5 of the model's own next-token logits
    seq = np.asarray(a)
    logits = np.asarray(model.apply(params, seq[:, :-1]))
    for pos in range(4, 10):
        top5 = np.argsort(-logits[:, pos - 1], axis=-1)[:, :5]
        assert all(seq[i, pos] in top5[i] for i in range(3))


def test_hub_id_through_snapshot_cache(llama_dir, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub (mocked: no network in tests); the cache's
    symlinks into the repository's blobs/ are followed, one pointing elsewhere is refused."""
    hub = pytest.importorskip("huggingface_hub")
    repo = tmp_path / "cache" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in llama_dir.iterdir():
        shutil.copy(f, repo / "blobs" / f.name)
        (snap / f.name).symlink_to(repo / "blobs" / f.name)
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kw: str(snap))
    monkeypatch.chdir(tmp_path)
    model, params = from_pretrained("org/tiny")
    ref_model, ref_params = from_pretrained(llama_dir)
    assert model.cfg == ref_model.cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, ref_params)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(llama_dir / "model.safetensors", outside)
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(outside)
    with pytest.raises(ValueError, match="symlink"):
        from_pretrained("org/tiny")
    # a local directory may not hold symlinks at all
    with pytest.raises(ValueError, match="symlink"):
        from_pretrained(snap)


def test_bench_lm_forward_small(tmp_path):
    from conftest import load_experiment

    out = tmp_path / "b.json"
    load_experiment("experiments/bench/lm_forward.py").main(["--small", "--out", str(out)])
    res = json.loads(out.read_text())
    for r in res["results"]:
        assert r["max_abs_logit_diff_vs_torch"] < 1e-4
        assert r["ratio_jaxcrl_over_torch"] > 0 and r["tokens_per_s"]["jaxcrl_bf16"] > 0
        for m in r["from_pretrained_memory"]:
            assert m["weights_bytes"] > 0 and m["peak_added_bytes"] > 0
