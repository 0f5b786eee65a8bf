"""Text as model input: the model's own tokenizer, documents, packed token contexts.

A Hugging Face model directory carries its tokenizer (``tokenizer.json``, plus
``tokenizer_config.json`` / ``special_tokens_map.json`` naming the special tokens).
:func:`load_tokenizer` reads it with the ``tokenizers`` package, or with ``transformers``'
``AutoTokenizer`` when there is no ``tokenizer.json`` (both imported lazily). Documents come
from text files, JSON lines or a Hugging Face ``datasets`` dataset; :func:`pack` concatenates
their tokens and cuts fixed-length contexts, SAELens-style::

    stream   = doc_0  SEP  doc_1  SEP  doc_2 ...            (SEP: BOS, else EOS, else none)
    contexts = [BOS] + stream[i (T-1) : (i+1) (T-1)]         when BOS is prepended
             =         stream[i T : (i+1) T]                 otherwise

dropping the last partial context. Whether BOS is prepended follows the model family
(:data:`PREPEND_BOS`: TransformerLens prepends GPT-2's ``<|endoftext|>``; Llama and Gemma
tokenizers expect ``<bos>``; Qwen has none). Documents are always encoded *without* the
tokenizer's own special tokens, so BOS is never doubled.

Everything is deterministic: the same files, tokenizer and ``key`` give the same
``[n_contexts, T]`` int32 array::

    tok = load_tokenizer(model_dir)
    docs = read_documents(["a.txt", "b.jsonl"])
    tokens = token_dataset(tok, docs, context_size=128, key=jax.random.key(0),
                           vocab_size=model.cfg.vocab_size)           # [n, 128] int32
    sample_tokens = token_sampler(tokens, 32)                         # key -> [32, 128]
    src = jaxcrl.sae.store.lm_source(model, params, sample_tokens, hook, batch_size=4096)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_INT32_MAX = int(np.iinfo(np.int32).max)

# Family (config.json ``model_type``) -> whether contexts start with BOS by default.
PREPEND_BOS = {
    "gpt2": True, "gpt_neox": True, "llama": True, "mistral": True, "gemma": True,
    "gemma2": True, "gemma3": True, "gemma3_text": True, "qwen2": False, "qwen3": False,
}


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _token_str(v: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or ``{"content": s}``."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


class Tokenizer:
    """The model's tokenizer behind one small interface.

    Attributes:
      bos_id: BOS token id, or None when the tokenizer has none.
      eos_id: EOS token id, or None.
      vocab_size: number of ids the tokenizer can produce (with added tokens).
      model_type: ``model_type`` of the directory's ``config.json`` (None if absent).
    """

    def __init__(self, encode_fn: Callable[[list[str]], list[list[int]]],
                 decode_fn: Callable[[list[int]], str], vocab_size: int,
                 bos_id: int | None, eos_id: int | None, model_type: str | None = None):
        self._encode = encode_fn
        self._decode = decode_fn
        self.vocab_size = int(vocab_size)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.model_type = model_type

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return self._encode([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        return self._encode(list(texts)) if texts else []

    def decode(self, ids: Iterable[int]) -> str:
        return self._decode([int(i) for i in ids])

    @property
    def default_prepend_bos(self) -> bool:
        """The family's convention (:data:`PREPEND_BOS`; True for unknown families), and
        False when there is no BOS token."""
        return self.bos_id is not None and PREPEND_BOS.get(self.model_type or "", True)


def load_tokenizer(path: str | os.PathLike, *, backend: str = "auto") -> Tokenizer:
    """The tokenizer of a Hugging Face model directory.

    Args:
      path: directory with ``tokenizer.json`` (``tokenizers`` backend) or anything
        ``transformers.AutoTokenizer.from_pretrained`` reads locally.
      backend: ``"tokenizers"``, ``"transformers"`` or ``"auto"`` (``tokenizers`` when
        ``tokenizer.json`` exists, else ``transformers``).

    BOS/EOS come from ``tokenizer_config.json`` / ``special_tokens_map.json`` (token
    strings looked up in the vocabulary), else from ``config.json``'s ``bos_token_id`` /
    ``eos_token_id`` when those ids are in the vocabulary.

    Raises:
      FileNotFoundError: no such directory, or no tokenizer in it.
      ValueError: unknown ``backend``; a named special token not in the vocabulary.
    """
    path = Path(path)
    if backend not in ("auto", "tokenizers", "transformers"):
        raise ValueError(f"backend must be 'auto', 'tokenizers' or 'transformers', "
                         f"got {backend!r}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    cfg = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    model_type = cfg.get("model_type")
    if backend == "auto":
        backend = "tokenizers" if (path / "tokenizer.json").is_file() else "transformers"
    special: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # latter wins
        if (path / name).is_file():
            special.update(_read_json(path / name))

    if backend == "tokenizers":
        from tokenizers import Tokenizer as HFTokenizer

        file = path / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing (backend='tokenizers' needs it)")
        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise ValueError(f"{file}: not a readable tokenizer ({e})") from None
        encode = lambda texts: [e.ids for e in tok.encode_batch(texts,
                                                                add_special_tokens=False)]
        decode = lambda ids: tok.decode(ids, skip_special_tokens=False)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        to_id = tok.token_to_id
    else:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ImportError(f"{path}: no tokenizer.json, and transformers (for "
                              "AutoTokenizer) is not installed") from None
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{path}: no tokenizer AutoTokenizer can read ({e})"
                                    ) from None
        encode = lambda texts: tok(texts, add_special_tokens=False)["input_ids"]
        decode = lambda ids: tok.decode(ids)
        vocab = len(tok)
        to_id = lambda s: (tok.convert_tokens_to_ids(s)
                           if s in tok.get_vocab() else None)

    def special_id(name: str) -> int | None:
        if f"{name}_token" in special and special[f"{name}_token"] is None:
            return None  # declared absent (Qwen's bos_token: null)
        s = _token_str(special.get(f"{name}_token"))
        if s is not None:
            i = to_id(s)
            if i is None:
                raise ValueError(f"{path}: {name}_token {s!r} is not in the tokenizer's "
                                 "vocabulary")
            return int(i)
        i = cfg.get(f"{name}_token_id")
        if isinstance(i, list):
            i = i[0] if i else None
        return int(i) if isinstance(i, int) and 0 <= i < vocab else None

    return Tokenizer(encode, decode, vocab, special_id("bos"), special_id("eos"), model_type)


# --------------------------------------------------------------------------- documents


def read_documents(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                   text_field: str = "text", split: str = "file") -> Iterator[str]:
    """Documents from text files and JSON lines, in the given order.

    Args:
      paths: one path or several. ``*.jsonl``/``*.json`` files hold one JSON object per line
        with the document in ``text_field``; anything else is UTF-8 text.
      text_field: JSON field holding the text.
      split: how a text file splits into documents: ``"file"`` (one document),
        ``"paragraph"`` (blank lines separate documents) or ``"line"``.

    Yields:
      non-empty document strings.

    Raises:
      FileNotFoundError: a missing file. ValueError: a bad JSON line, a line without
      ``text_field`` or whose field is not a string, or an unknown ``split``.
    """
    if split not in ("file", "paragraph", "line"):
        raise ValueError(f"split must be 'file', 'paragraph' or 'line', got {split!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such text file")
        if p.suffix in (".jsonl", ".json"):
            with open(p, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{p}:{n}: not a JSON line ({e})") from None
                    if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                        raise ValueError(f"{p}:{n}: expected an object with a string "
                                         f"field {text_field!r}")
                    if obj[text_field]:
                        yield obj[text_field]
            continue
        text = p.read_text(encoding="utf-8")
        if split == "file":
            parts = [text]
        elif split == "line":
            parts = text.splitlines()
        else:
            parts, cur = [], []
            for line in text.splitlines():
                if line.strip():
                    cur.append(line)
                elif cur:
                    parts.append("\n".join(cur))
                    cur = []
            if cur:
                parts.append("\n".join(cur))
        yield from (t for t in parts if t.strip())


def hf_documents(dataset: Any, *, split: str = "train", text_field: str = "text",
                 limit: int | None = None) -> Iterator[str]:
    """Documents of a Hugging Face ``datasets`` dataset (an object, or a name/path loaded
    with ``datasets.load_dataset(dataset, split=split)``; ``datasets`` imported lazily)."""
    if isinstance(dataset, (str, os.PathLike)):
        try:
            import datasets
        except ImportError:
            raise ImportError("hf_documents with a dataset name needs the `datasets` package"
                              ) from None
        dataset = datasets.load_dataset(str(dataset), split=split)
    for i, row in enumerate(dataset):
        if limit is not None and i >= limit:
            return
        text = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"dataset row {i} has no string field {text_field!r}")
        if text:
            yield text


# --------------------------------------------------------------------------- packing


def pack(docs: Iterable[Sequence[int]], context_size: int, *, bos_id: int | None = None,
         sep_id: int | None = None, max_contexts: int | None = None) -> np.ndarray:
    """Packs token documents into fixed-length contexts.

    Args:
      docs: token ids per document.
      context_size: T, tokens per context (BOS included).
      bos_id: if given, every context starts with it and holds ``T - 1`` stream tokens.
      sep_id: if given, inserted between consecutive documents.
      max_contexts: stop after this many contexts.

    Returns:
      int32 ``[n_contexts, T]``; the trailing partial context is dropped.

    Raises:
      ValueError: ``context_size`` too small; no complete context.
    """
    body = context_size - (bos_id is not None)
    if body < 1:
        raise ValueError(f"context_size={context_size} leaves no room for text"
                         + (" after BOS" if bos_id is not None else ""))
    if max_contexts is not None and max_contexts < 1:
        raise ValueError(f"max_contexts must be >= 1, got {max_contexts}")
    for name, v in (("bos_id", bos_id), ("sep_id", sep_id)):
        if v is not None and not 0 <= v <= _INT32_MAX:
            raise ValueError(f"{name}={v} is not a non-negative int32 token id")
    chunks: list[np.ndarray] = []  # int32: a billion-token corpus stays at 4 GB
    have = 0
    first = True
    for doc in docs:
        if not first and sep_id is not None:
            chunks.append(np.asarray([sep_id], np.int32))
            have += 1
        first = False
        ids = np.asarray(doc, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > _INT32_MAX):
            raise ValueError("token ids must be non-negative int32 values")
        chunks.append(ids.astype(np.int32))
        have += ids.size
        if max_contexts is not None and have >= max_contexts * body:
            break
    stream = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    n = stream.size // body
    if max_contexts is not None:
        n = min(n, max_contexts)
    if n == 0:
        raise ValueError(f"the text holds {stream.size} tokens, not enough for one context "
                         f"of {context_size}")
    out = stream[:n * body].reshape(n, body)
    if bos_id is not None:
        out = np.concatenate([np.full((n, 1), bos_id, np.int32), out], axis=1)
    return np.ascontiguousarray(out, np.int32)


def shuffle(tokens: Any, key: jax.Array) -> np.ndarray:
    """Rows of ``tokens`` ``[n, T]`` in the order ``jax.random.permutation(key, n)``."""
    tokens = np.asarray(tokens)
    perm = np.asarray(jax.random.permutation(key, tokens.shape[0]))
    return tokens[perm]


def token_dataset(tokenizer: Tokenizer, source: Any, *, context_size: int,
                  key: jax.Array | None = None, prepend_bos: bool | None = None,
                  separator: str = "auto", vocab_size: int | None = None,
                  max_contexts: int | None = None, text_field: str = "text",
                  split: str = "file", batch_docs: int = 256) -> np.ndarray:
    """Tokenized, packed (and, with ``key``, shuffled) contexts from text.

    Args:
      tokenizer: from :func:`load_tokenizer`.
      source: an iterable of document strings (e.g. :func:`read_documents` of paths, or
        :func:`hf_documents`), a ``Path`` (read with :func:`read_documents`), or a Hugging
        Face ``datasets.Dataset``.
      context_size: T (with BOS), at most the model's ``n_ctx``.
      key: shuffles the contexts (:func:`shuffle`); None keeps text order.
      prepend_bos: start every context with BOS; None follows the family
        (:attr:`Tokenizer.default_prepend_bos`).
      separator: between documents: ``"bos"``, ``"eos"``, ``"none"`` or ``"auto"`` (BOS when
        prepending BOS, else EOS, else none).
      vocab_size: the model's vocabulary; ids outside ``[0, vocab_size)`` are an error.
      max_contexts: keep at most this many contexts (the first ones, before shuffling).
      text_field, split: see :func:`read_documents`.
      batch_docs: documents per tokenizer call.

    Returns:
      int32 ``[n_contexts, context_size]``.

    Raises:
      ValueError: BOS requested but the tokenizer has none; bad ``separator``; ids out of
        the model's vocabulary; too little text for one context.
      TypeError: ``source`` is a bare ``str`` (ambiguous: a path or one document?).
    """
    if prepend_bos is None:
        prepend_bos = tokenizer.default_prepend_bos
    if prepend_bos and tokenizer.bos_id is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
    seps = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "none": None,
            "auto": tokenizer.bos_id if prepend_bos else tokenizer.eos_id}
    if separator not in seps:
        raise ValueError(f"separator must be one of {sorted(seps)}, got {separator!r}")
    if separator in ("bos", "eos") and seps[separator] is None:
        raise ValueError(f"separator={separator!r} but the tokenizer has no such token")
    if isinstance(source, str):
        raise TypeError("source is a str: pass a Path for a file, read_documents(paths) for "
                        "several, or a list of document strings")
    if isinstance(source, os.PathLike):
        docs: Iterable[str] = read_documents(source, text_field=text_field, split=split)
    elif hasattr(source, "column_names"):  # a Hugging Face datasets.Dataset
        docs = hf_documents(source, text_field=text_field)
    else:
        docs = source

    def token_docs() -> Iterator[list[int]]:
        batch: list[str] = []
        for d in docs:
            if not isinstance(d, str):
                raise ValueError(f"documents must be strings, got {type(d).__name__}")
            batch.append(d)
            if len(batch) == batch_docs:
                yield from tokenizer.encode_batch(batch)
                batch = []
        yield from tokenizer.encode_batch(batch)

    tokens = pack(token_docs(), context_size,
                  bos_id=tokenizer.bos_id if prepend_bos else None, sep_id=seps[separator],
                  max_contexts=max_contexts)
    if vocab_size is not None:
        check_vocab(tokens, vocab_size)
    return tokens if key is None else shuffle(tokens, key)


def check_vocab(tokens: Any, vocab_size: int) -> None:
    """Raises ``ValueError`` if any id of ``tokens`` is outside ``[0, vocab_size)`` (a
    tokenizer larger than the model's embedding)."""
    tokens = np.asarray(tokens)
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids span [{lo}, {hi}] but the model's vocab_size is "
                         f"{vocab_size} (is this the model's own tokenizer?)")


def token_sampler(tokens: Any, batch_size: int) -> Callable[[jax.Array], jax.Array]:
    """``key -> int32 [batch_size, T]``: contexts drawn uniformly (with replacement) from
    ``tokens`` ``[n, T]``, held on device. Pure and jit-able; the ``sample_tokens`` of
    :func:`jaxcrl.sae.store.lm_source`."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2 or tokens.shape[0] < 1:
        raise ValueError(f"tokens must be a non-empty [n, T] array, got shape {tokens.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = tokens.shape[0]

    def sample_tokens(key: jax.Array) -> jax.Array:
        return jnp.take(tokens, jax.random.randint(key, (batch_size,), 0, n), axis=0)

    return sample_tokens


def batches(tokens: Any, batch_size: int, key: jax.Array, *, drop_last: bool = True
            ) -> Iterator[np.ndarray]:
    """One epoch of ``tokens`` ``[n, T]`` in the order ``permutation(key)``, in batches of
    ``batch_size`` rows (host arrays; the last partial batch dropped unless ``drop_last``)."""
    shuffled = shuffle(tokens, key)
    stop = (len(shuffled) // batch_size) * batch_size if drop_last else len(shuffled)
    for i in range(0, stop, batch_size):
        yield shuffled[i:i + batch_size]
