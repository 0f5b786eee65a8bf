"""Text: the model's own tokenizer, documents from files, packing, deterministic shuffles."""

import json

import jax
import numpy as np
import pytest
from lm_text_fixtures import CORPUS, EOT, write_tokenizer

from jaxcrl.lm import text

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tok"))


def test_tokenizer_reads_special_tokens_and_round_trips(tok_dir):
    tok = text.load_tokenizer(tok_dir)
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert tok.bos_id == tok.eos_id == ref.token_to_id(EOT)
    assert tok.vocab_size == ref.get_vocab_size()
    ids = tok.encode(CORPUS[1])
    assert ids == ref.encode(CORPUS[1], add_special_tokens=False).ids
    assert len(ids) < len(CORPUS[1])  # merges were learned
    assert tok.decode(ids) == CORPUS[1]
    assert tok.default_prepend_bos  # gpt2 family: TransformerLens prepends BOS


def test_transformers_backend_agrees(tok_dir):
    pytest.importorskip("transformers")
    a = text.load_tokenizer(tok_dir, backend="tokenizers")
    b = text.load_tokenizer(tok_dir, backend="transformers")
    assert a.encode_batch(CORPUS) == b.encode_batch(CORPUS)
    assert (a.bos_id, a.eos_id) == (b.bos_id, b.eos_id)


def test_family_decides_bos(tmp_path):
    qdir = write_tokenizer(tmp_path / "q", bos=False, model_type="qwen2")
    # Qwen declares bos_token null but config.json carries a bos_token_id: no BOS
    (qdir / "tokenizer_config.json").write_text(json.dumps({"bos_token": None,
                                                            "eos_token": EOT}))
    (qdir / "config.json").write_text(json.dumps({"model_type": "qwen2", "bos_token_id": 0}))
    qwen = text.load_tokenizer(qdir)
    assert qwen.bos_id is None and not qwen.default_prepend_bos
    with pytest.raises(ValueError, match="no BOS"):
        text.token_dataset(qwen, CORPUS, context_size=8, prepend_bos=True)
    out = text.token_dataset(qwen, CORPUS, context_size=8)
    eos = qwen.eos_id
    stream = []
    for i, d in enumerate(CORPUS):
        stream += ([eos] if i else []) + qwen.encode(d)  # EOS separates, no BOS
    n = len(stream) // 8
    np.testing.assert_array_equal(out, np.asarray(stream[:n * 8]).reshape(n, 8))


def test_pack_by_hand():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    # BOS 0 first in every context, SEP 99 between documents, 3 stream tokens per context
    np.testing.assert_array_equal(
        text.pack(docs, 4, bos_id=0, sep_id=99),
        [[0, 1, 2, 3], [0, 99, 4, 5], [0, 99, 6, 7]])
    np.testing.assert_array_equal(text.pack(docs, 5), [[1, 2, 3, 4, 5]])  # 4 left over
    assert text.pack(docs, 3, max_contexts=2).tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ValueError, match="not enough for one context"):
        text.pack([[1, 2]], 8)
    with pytest.raises(ValueError, match="no room"):
        text.pack(docs, 1, bos_id=0)
    with pytest.raises(ValueError, match="non-negative"):
        text.pack([[1, -2, 3]], 2)


def test_token_dataset_from_files_matches_manual_packing(tok_dir, tmp_path):
    tok = text.load_tokenizer(tok_dir)
    (tmp_path / "a.txt").write_text("\n\n".join(CORPUS[:3]) + "\n")
    with open(tmp_path / "b.jsonl", "w") as f:
        for d in CORPUS[3:]:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    docs = list(text.read_documents([tmp_path / "a.txt", tmp_path / "b.jsonl"],
                                    split="paragraph"))
    assert docs == CORPUS
    got = text.token_dataset(tok, docs, context_size=16, vocab_size=tok.vocab_size)
    bos = tok.bos_id
    stream = []
    for i, d in enumerate(CORPUS):
        stream += ([bos] if i else []) + tok.encode(d)
    n = len(stream) // 15
    want = np.concatenate([np.full((n, 1), bos), np.reshape(stream[:n * 15], (n, 15))], 1)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32 and (got[:, 0] == bos).all()
    # one document per file: a single document, no separators inside
    whole = list(text.read_documents(tmp_path / "a.txt"))
    assert len(whole) == 1


def test_shuffle_is_a_deterministic_permutation(tok_dir):
    tok = text.load_tokenizer(tok_dir)
    base = text.token_dataset(tok, CORPUS * 4, context_size=8)
    a = text.token_dataset(tok, CORPUS * 4, context_size=8, key=jax.random.key(3))
    b = text.token_dataset(tok, CORPUS * 4, context_size=8, key=jax.random.key(3))
    c = text.token_dataset(tok, CORPUS * 4, context_size=8, key=jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, base)
    perm = np.asarray(jax.random.permutation(jax.random.key(3), len(base)))
    np.testing.assert_array_equal(a, base[perm])
    epoch = np.concatenate(list(text.batches(base, 4, jax.random.key(3))))
    np.testing.assert_array_equal(epoch, base[perm][:len(epoch)])
    sample = text.token_sampler(base, 5)
    s1 = jax.jit(sample)(jax.random.key(0))
    assert s1.shape == (5, 8)
    np.testing.assert_array_equal(s1, sample(jax.random.key(0)))
    rows = {tuple(r) for r in base.tolist()}
    assert all(tuple(r) in rows for r in np.asarray(s1).tolist())


def test_hf_dataset(tok_dir):
    datasets = pytest.importorskip("datasets")
    tok = text.load_tokenizer(tok_dir)
    ds = datasets.Dataset.from_dict({"text": CORPUS})
    np.testing.assert_array_equal(text.token_dataset(tok, ds, context_size=8),
                                  text.token_dataset(tok, CORPUS, context_size=8))


def test_bad_inputs(tok_dir, tmp_path):
    tok = text.load_tokenizer(tok_dir)
    with pytest.raises(ValueError, match="vocab_size is 50"):
        text.token_dataset(tok, CORPUS, context_size=8, vocab_size=50)
    with pytest.raises(TypeError, match="pass a Path"):
        text.token_dataset(tok, "corpus.txt", context_size=8)
    with pytest.raises(FileNotFoundError):
        list(text.read_documents(tmp_path / "nope.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(text.read_documents(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError):
        text.load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="separator"):
        text.token_dataset(tok, CORPUS, context_size=8, separator="newline")


def test_streamed_source_from_text(tok_dir):
    """The token dataset feeds the streamed activation store (no disk): every SAE batch
    row is an activation of some context of the text."""
    from jaxcrl.lm import HookedTransformer, TransformerConfig
    from jaxcrl.sae.store import lm_source

    tok = text.load_tokenizer(tok_dir)
    tokens = text.token_dataset(tok, CORPUS * 2, context_size=8, key=jax.random.key(0))
    model = HookedTransformer(TransformerConfig.tiny(vocab_size=tok.vocab_size, n_ctx=8))
    params = model.init(jax.random.key(1))
    hook = "blocks.0.hook_resid_post"
    src = lm_source(model, params, text.token_sampler(tokens, 4), hook, batch_size=16,
                    buffer_size=64)
    state = src.init(jax.random.key(2))
    _, x = jax.jit(src.sample)(state, jax.random.key(3))
    assert x.shape == (16, 32)
    _, cache = model.run_with_cache(params, tokens, names=[hook])
    every = np.asarray(cache[hook]).reshape(-1, 32)
    dist = np.abs(np.asarray(x)[:, None] - every[None]).max(-1).min(1)
    assert dist.max() < 1e-4
