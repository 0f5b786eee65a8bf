"""Tiny local tokenizers and models for the text/cache tests (no network)."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "A quick brown fox jumps over the lazy dog, and the cat watches.",
    "Causal variables hide behind the words; the model reads them one token at a time.",
    "Sparse autoencoders find features in the residual stream of a transformer.",
    "The mat was red. The log was brown. The fox was quick and the dog was lazy.",
]
EOT = "<|endoftext|>"


def write_tokenizer(path: str | Path, *, vocab_size: int = 300, bos: bool = True,
                    model_type: str | None = "gpt2", specials: tuple[str, str] | None = None
                    ) -> Path:
    """Trains a byte-level BPE on :data:`CORPUS` and saves ``tokenizer.json`` (+
    ``tokenizer_config.json`` naming BOS/EOS, + ``config.json`` with ``model_type``).

    ``specials``: ``(bos, eos)`` token strings (ids 0 and 1); default GPT-2's single
    ``<|endoftext|>`` for both.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bos_tok, eos_tok = specials or (EOT, EOT)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=list(dict.fromkeys([bos_tok, eos_tok])),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(path / "tokenizer.json"))
    special = {"bos_token": bos_tok, "eos_token": eos_tok} if bos else {"eos_token": eos_tok}
    (path / "tokenizer_config.json").write_text(json.dumps(special))
    if model_type is not None and not (path / "config.json").exists():
        (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return path


def _train_and_save(model, path: Path, n_ctx: int, train_steps: int) -> None:
    import torch
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(path / "tokenizer.json")).encode(" ".join(CORPUS)).ids
    n = len(ids) // n_ctx
    data = torch.tensor(ids[:n * n_ctx]).reshape(n, n_ctx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(train_steps):
        loss = model(data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(path, safe_serialization=True)


def write_gpt2(path: str | Path, *, seed: int = 0, n_layers: int = 2, d_model: int = 32,
               n_ctx: int = 32, train_steps: int = 60) -> Path:
    """A tiny GPT-2 saved by ``transformers`` plus its tokenizer in ``path``; trained for
    ``train_steps`` Adam steps on :data:`CORPUS` (in torch) so that it predicts the text
    better than chance and ablations visibly hurt."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    path = Path(path)
    write_tokenizer(path, model_type=None)
    vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=2,
                                  vocab_size=vocab, n_positions=n_ctx, bos_token_id=0,
                                  eos_token_id=0)
    _train_and_save(transformers.GPT2LMHeadModel(cfg), path, n_ctx, train_steps)
    return path


def write_llama(path: str | Path, *, seed: int = 0, n_ctx: int = 32,
                train_steps: int = 60) -> Path:
    """A tiny Llama (grouped-query attention, untied unembedding, ``<s>``/``</s>``) saved by
    ``transformers`` with its tokenizer, trained like :func:`write_gpt2`."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    path = Path(path)
    write_tokenizer(path, model_type=None, specials=("<s>", "</s>"))
    vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=n_ctx,
                                   bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    _train_and_save(transformers.LlamaForCausalLM(cfg), path, n_ctx, train_steps)
    return path


def write_text(path: str | Path, repeats: int = 20) -> Path:
    path = Path(path)
    path.write_text("\n\n".join(CORPUS * repeats))
    return path
