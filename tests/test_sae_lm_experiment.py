"""experiments/sae_lm.py end to end: a tiny GPT-2 saved by transformers, a text file."""

import functools
import json

import jax
import numpy as np
import pytest
from conftest import load_experiment
from lm_text_fixtures import write_gpt2, write_llama, write_text

from jaxcrl.lm.text import load_tokenizer, read_documents, token_dataset
from jaxcrl.sae import Reconstruct, import_saelens, next_token_ce
from jaxcrl.sae.cache import open_cache

pytest.importorskip("transformers")
pytest.importorskip("torch")

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]


def _has_from_pretrained() -> bool:
    try:
        from jaxcrl.lm import from_pretrained  # noqa: F401  (issue 11, the lm work)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("family", [
    pytest.param("gpt2", marks=pytest.mark.slow),  # CI time; the llama run covers the script
    pytest.param("llama", marks=pytest.mark.skipif(
        not _has_from_pretrained(), reason="needs jaxcrl.lm.from_pretrained")),
])
def test_sae_lm_tiny(tmp_path, family):
    write = {"gpt2": write_gpt2, "llama": write_llama}[family]
    model_dir, text = write(tmp_path / "model"), write_text(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    exp = load_experiment("experiments/sae_lm.py")
    argv = ["--model", str(model_dir), "--text", str(text), "--hooks", ",".join(HOOKS),
            "--out", str(out), "--tiny", "--context", "16", "--eval-seqs", "8",
            "--ks", "2,8", "--no-progress"]
    exp.main(argv)
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {f"{h} k={k}" for h in HOOKS for k in (2, 8)}
    model, params = exp._load_model(model_dir)
    tok = load_tokenizer(model_dir)
    tokens = token_dataset(tok, read_documents(text, split="paragraph"), context_size=16,
                           key=jax.random.key(0), vocab_size=model.cfg.vocab_size)
    # BOS first: GPT-2's <|endoftext|> TransformerLens-style, Llama's own <s>
    assert tok.bos_id == 0 and (tokens[:, 0] == tok.bos_id).all()
    train, held = tokens[:-8], tokens[-8:]
    cache = open_cache(out / "acts")  # the one forward pass over the training text
    np.testing.assert_array_equal(cache.tokens(), train)
    assert cache.hooks == tuple(HOOKS) and cache.n_rows(HOOKS[0]) == len(train) * 15
    clean = float(next_token_ce(model.apply(params, held), held))
    assert res["ce_clean"] == pytest.approx(clean, rel=1e-5)
    for h in HOOKS:
        hr = res["hooks"][h]
        runs = {r["k"]: r for r in hr["runs"]}
        for k, r in runs.items():
            assert 0 < r["l0"] <= k + 1e-6
        assert runs[8]["fvu"] < runs[2]["fvu"] < 1.0
        # CE with the exported SAE spliced in by hand (BOS position left clean)
        p, c = import_saelens(runs[8]["sae_dir"])
        fn = functools.partial(Reconstruct(c), params=p)
        spliced = model.run_with_hooks(
            params, held, hooks={h: lambda x, fn=fn: x.at[:, 1:].set(fn(x[:, 1:]))})
        assert runs[8]["ce_sae"] == pytest.approx(float(next_token_ce(spliced, held)),
                                                  rel=1e-4)
    for h in HOOKS:  # SAE checkpoints, so a rerun resumes training too
        assert any((out / "ckpt" / h).iterdir())
    resid = res["hooks"][HOOKS[0]]
    assert resid["ce_zero"] > res["ce_clean"] + 1.0  # ablating the residual stream hurts
    assert max(r["ce_loss_recovered"] for r in resid["runs"]) > 0.5
    if family != "gpt2":
        return  # resuming is the same code for every family: checked once
    # rerunning resumes: no shard rewritten, no training step run, the same SAEs
    shards = {p: p.stat().st_mtime_ns for p in (out / "acts").rglob("shard_*.npy")}
    exp.main(argv)
    again = json.loads((out / "results.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in (out / "acts").rglob("shard_*.npy")} == shards
    assert again["methods"] == res["methods"]
    assert all(hr["final_train_fvu"] is None for hr in again["hooks"].values())


def test_sae_lm_bad_input_writes_nothing(tmp_path):
    model_dir, text = write_gpt2(tmp_path / "model", train_steps=0), write_text(tmp_path / "t")
    exp = load_experiment("experiments/sae_lm.py")
    out = tmp_path / "out"
    base = ["--model", str(model_dir), "--text", str(text), "--out", str(out), "--tiny",
            "--no-progress", "--eval-seqs", "4"]
    with pytest.raises(ValueError, match="exceeds the model's n_ctx"):
        exp.main([*base, "--hooks", "blocks.0.hook_resid_post", "--context", "64"])
    with pytest.raises(KeyError, match="unknown hook"):
        exp.main([*base, "--hooks", "blocks.9.hook_resid_post", "--context", "16"])
    with pytest.raises(FileNotFoundError):
        exp.main([*base, "--hooks", "blocks.0.hook_resid_post", "--model",
                  str(tmp_path / "nope")])
    assert not out.exists()
