"""Activation caches on disk: one forward pass, many hook points, many SAEs.

:func:`cache_activations` runs a hooked transformer once over a token array and writes its
activations at several hook points as sharded ``.npy`` files plus a JSON manifest;
:func:`open_cache` reads them back (memory-mapped) and :func:`cache_source` turns one hook
of a cache into a shuffled :class:`~jaxcrl.sae.source.Source` for SAE training, so SAEs on
every hook point train from a single model forward::

    cache = cache_activations(model, params, tokens,            # tokens [N, T] int
                              ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"],
                              "out/acts", seqs_per_shard=64)
    src = cache_source(cache, "blocks.0.hook_resid_post", batch_size=4096)
    sweep = sae.train_sweep(cfg, src, key, values={"k": [16, 32, 64]},
                            refresh_every=2000)                  # a new subset every 2000

Layout of a cache directory (all paths in the manifest relative to it)::

    spec.json                                  what is being cached (written first)
    tokens.npy                                 int32 [N, T]
    blocks.0.hook_resid_post/shard_00000.npy   [seqs_in_shard * (T - start_pos), d]
    ...
    manifest.json                              written last: hooks, shards, rows, dtype

Rows of a shard are sequence-major: row ``s * (T - start_pos) + (t - start_pos)`` is
sequence ``s`` of the shard at position ``t``. Hooks with per-head activations
(``[B, T, H, Dh]``) are flattened to ``H * Dh`` columns.

Guarantees:

- **Atomic.** Every file is written to a temporary name in its final folder, flushed and
  renamed; ``manifest.json`` is written last, so a directory without it is an unfinished
  cache that :func:`open_cache` refuses.
- **Resumable.** Rerunning :func:`cache_activations` on the same directory with the same
  tokens and settings (checked by a fingerprint in ``spec.json``) skips every shard whose
  files are complete (``.npy`` header shape and dtype as expected and the exact file size)
  and recomputes the rest. A different fingerprint is an error, never a mixed cache.
  The fingerprint covers tokens, hooks, layout and the model config, not the weights: pass
  ``fingerprint=`` (e.g. the checkpoint path) to tell models with equal configs apart.
- **Files are data.** The manifest never names anything to import or call; ``.npy`` files
  are read without pickle; manifest paths must be relative, inside the directory, without
  ``..`` and without symbolic links; every shard's size is verified on open.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.sae.source import Source

FORMAT = "jaxcrl.activation_cache"
VERSION = 1
MANIFEST = "manifest.json"
SPEC = "spec.json"
DTYPES = ("float32", "float16")
_HOOK_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MAX_MANIFEST_BYTES = 64 << 20


class CacheError(ValueError):
    """A missing, unfinished, corrupt, foreign or unsafe activation cache."""


# --------------------------------------------------------------------------- safe files


def _check_hook(name: Any) -> str:
    if not isinstance(name, str) or not _HOOK_RE.match(name) or ".." in name:
        raise CacheError(f"hook name {name!r} is not a plain TransformerLens name "
                         "(letters, digits, '_', '.', '-')")
    return name


def safe_path(root: str | os.PathLike, rel: Any) -> Path:
    """``root / rel`` for a manifest path ``rel``, refusing anything that could leave
    ``root``: non-strings, absolute paths, ``..``/empty components, backslashes, and
    symbolic links anywhere along the path.

    Raises:
      CacheError: an unsafe path.
    """
    if not isinstance(rel, str) or not rel:
        raise CacheError(f"manifest path {rel!r} is not a non-empty string")
    if "\\" in rel or "\x00" in rel or rel.startswith("/") or os.path.isabs(rel):
        raise CacheError(f"manifest path {rel!r} must be relative to the cache directory")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise CacheError(f"manifest path {rel!r} has an empty, '.' or '..' component")
    root = Path(root)
    cur = root
    for p in parts:
        cur = cur / p
        if cur.is_symlink():
            raise CacheError(f"manifest path {rel!r}: {cur} is a symbolic link")
    try:
        cur.resolve().relative_to(root.resolve())
    except ValueError:
        raise CacheError(f"manifest path {rel!r} leaves the cache directory") from None
    return cur


def _npy_complete(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True if ``path`` is a regular, complete ``.npy`` file of ``shape`` and ``dtype``."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return False
            offset = f.tell()
    except (ValueError, OSError, EOFError):
        return False
    if fortran or tuple(got_shape) != tuple(shape) or got_dtype != dtype:
        return False
    return path.stat().st_size == offset + math.prod(shape) * dtype.itemsize


def _write_atomic(path: Path, write) -> None:
    """Writes through ``write(file)`` to a temporary name beside ``path``, then renames."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_npy(path: Path, arr: np.ndarray) -> None:
    _write_atomic(path, lambda f: np.save(f, arr, allow_pickle=False))


def _write_json(path: Path, obj: dict) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


# --------------------------------------------------------------------------- writing


def _layer(name: str, n_layers: int | None) -> int | None:
    """Block index of a hook (-1 for embeddings); None when it needs the whole model."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        return int(parts[1])
    if name in ("hook_embed", "hook_pos_embed"):
        return -1
    return None


def _stop_at_layer(hooks: Sequence[str], n_layers: int | None) -> int | None:
    layers = [_layer(h, n_layers) for h in hooks]
    if any(v is None for v in layers):
        return None
    return max(layers) + 1


def _model_desc(model: Any) -> str:
    cfg = getattr(model, "cfg", None)
    if dataclasses.is_dataclass(cfg):
        return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return type(model).__name__


def cache_activations(model: Any, params: Any, tokens: Any, hooks: Sequence[str],
                      directory: str | os.PathLike, *, seqs_per_shard: int = 64,
                      batch_size: int | None = None, start_pos: int = 0,
                      dtype: str = "float32", fingerprint: str = "",
                      progress: bool = True) -> ActivationCache:
    """Runs ``model`` over ``tokens`` once and writes activations at ``hooks`` to disk.

    Args:
      model: a ``HookedTransformer``-like object (``run_with_cache(params, tokens, names=,
        stop_at_layer=)``, and ``cfg.n_layers`` when known); only the blocks up to the
        last hooked one run.
      params: its params.
      tokens: int ``[N, T]`` contexts (e.g. :func:`jaxcrl.lm.text.token_dataset`).
      hooks: TransformerLens hook names whose activations are ``[B, T, ...]``.
      directory: the cache directory (created; resumed if it holds this same cache).
      seqs_per_shard: sequences per shard file (the last shard may hold fewer).
      batch_size: sequences per forward pass (default ``seqs_per_shard``; must divide it).
      start_pos: drop positions ``< start_pos`` (1 drops BOS, whose activations are
        outliers that SAEs usually skip).
      dtype: ``float32`` or ``float16`` on disk.
      fingerprint: extra text identifying the weights (e.g. the model path).
      progress: a tqdm bar over shards.

    Returns:
      the opened :class:`ActivationCache`.

    Raises:
      ValueError: bad arguments (naming them); a hook that is not ``[B, T, ...]``.
      CacheError: ``directory`` holds a different cache.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be a non-empty int [N, T] array, got shape "
                         f"{tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must have an integer dtype, got {tokens.dtype}")
    tokens = tokens.astype(np.int32)
    n_seqs, t = tokens.shape
    if isinstance(hooks, str):
        hooks = [hooks]
    hooks = list(dict.fromkeys(_check_hook(h) for h in hooks))
    if not hooks:
        raise ValueError("hooks must name at least one hook point")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if seqs_per_shard < 1:
        raise ValueError(f"seqs_per_shard must be >= 1, got {seqs_per_shard}")
    batch_size = seqs_per_shard if batch_size is None else batch_size
    if batch_size < 1 or seqs_per_shard % batch_size:
        raise ValueError(f"batch_size={batch_size} must be >= 1 and divide "
                         f"seqs_per_shard={seqs_per_shard}")
    if not 0 <= start_pos < t:
        raise ValueError(f"start_pos must be in [0, T={t}), got {start_pos}")
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    stop = _stop_at_layer(hooks, n_layers)

    def forward(p, toks):
        _, cache = model.run_with_cache(p, toks, names=hooks, stop_at_layer=stop)
        return {h: cache[h] for h in hooks}

    shapes = jax.eval_shape(forward, params, jax.ShapeDtypeStruct((batch_size, t), jnp.int32))
    widths = {}
    for h in hooks:
        s = shapes[h].shape
        if len(s) < 3 or tuple(s[:2]) != (batch_size, t):
            raise ValueError(f"hook {h!r} gives activations of shape {s}, not [B, T, ...] "
                             "(attention patterns cannot be cached as rows)")
        widths[h] = (int(math.prod(s[2:])), [int(v) for v in s[2:]])
    positions = t - start_pos
    n_shards = -(-n_seqs // seqs_per_shard)
    np_dtype = np.dtype(dtype)

    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(tokens).tobytes())
    spec = {"format": FORMAT, "version": VERSION, "n_seqs": n_seqs, "context_size": t,
            "start_pos": start_pos, "positions": positions, "dtype": dtype,
            "seqs_per_shard": seqs_per_shard, "n_shards": n_shards,
            "hooks": {h: {"d": widths[h][0], "trailing_shape": widths[h][1]} for h in hooks},
            "model": _model_desc(model), "fingerprint_extra": fingerprint,
            "tokens_sha256": digest.hexdigest()}
    spec["fingerprint"] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if (root / SPEC).exists() or (root / MANIFEST).exists():
        old = _read_json(root / (SPEC if (root / SPEC).exists() else MANIFEST))
        if old.get("fingerprint") != spec["fingerprint"]:
            raise CacheError(f"{root} holds a different activation cache (other tokens, "
                             "hooks, layout or model); use a new directory")
    else:
        _write_json(root / SPEC, spec)
    tok_path = root / "tokens.npy"
    if not _npy_complete(tok_path, tokens.shape, np.dtype(np.int32)):
        _write_npy(tok_path, tokens)
    for h in hooks:
        (root / h).mkdir(exist_ok=True)
        if (root / h).is_symlink():
            raise CacheError(f"{root / h} is a symbolic link")
        for stale in (root / h).glob(".shard_*.npy.tmp-*"):  # left by a crashed writer
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_shards, desc="cache", leave=False)
    entries: dict[str, list[dict]] = {h: [] for h in hooks}
    # One writer thread: shard i is written while shard i + 1 is computed (at most one
    # shard in flight, so a crash loses at most two shards' work and memory stays bounded).
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    pending: list[concurrent.futures.Future] = []

    def wait_pending() -> None:
        for f in pending:
            f.result()  # re-raises a failed write
        pending.clear()
        if bar is not None and done_before[0] is not None:
            bar.update(done_before[0])
            done_before[0] = None

    done_before: list[int | None] = [None]
    try:
        for i in range(n_shards):
            lo, hi = i * seqs_per_shard, min((i + 1) * seqs_per_shard, n_seqs)
            rows = (hi - lo) * positions
            files = {h: root / h / f"shard_{i:05d}.npy" for h in hooks}
            for h in hooks:
                entries[h].append({"path": f"{h}/shard_{i:05d}.npy", "rows": rows})
            todo = [h for h in hooks
                    if not _npy_complete(files[h], (rows, widths[h][0]), np_dtype)]
            bufs = {h: np.empty((rows, widths[h][0]), np_dtype) for h in todo}
            starts = list(range(lo, hi, batch_size)) if todo else []

            def launch(b):  # dispatch is asynchronous: the next batch runs while this
                chunk = tokens[b:b + batch_size]  # one is copied to the host
                pad = batch_size - chunk.shape[0]
                if pad:  # the last shard: pad to the compiled batch, drop the padding
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
                return forward(params, chunk), batch_size - pad  # compiled once inside

            nxt = launch(starts[0]) if starts else None
            for j, b in enumerate(starts):
                (out, keep), nxt = nxt, (launch(starts[j + 1]) if j + 1 < len(starts)
                                         else None)
                acts = jax.device_get(out)
                r0 = (b - lo) * positions
                for h in todo:
                    a = np.asarray(acts[h])[:keep, start_pos:]
                    bufs[h][r0:r0 + keep * positions] = a.reshape(-1, widths[h][0])
            wait_pending()
            for h in todo:
                pending.append(writer.submit(_write_npy, files[h], bufs[h]))
            done_before[0] = 1
        wait_pending()
    finally:
        writer.shutdown(wait=True)
    if bar is not None:
        bar.close()
    manifest = {**spec, "tokens": "tokens.npy",
                "hooks": {h: {**spec["hooks"][h], "rows": n_seqs * positions,
                              "shards": entries[h]} for h in hooks}}
    _write_json(root / MANIFEST, manifest)
    return open_cache(root)


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict:
    if path.is_symlink():
        raise CacheError(f"{path} is a symbolic link")
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise CacheError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(data, dict):
        raise CacheError(f"{path}: expected a JSON object")
    return data


def _int(d: dict, key: str, where: str, lo: int = 0) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise CacheError(f"{where}: {key!r} must be an integer >= {lo}, got {v!r}")
    return v


@dataclasses.dataclass
class ActivationCache:
    """An opened, verified activation cache (see the module docstring for the layout).

    Attributes:
      root: the cache directory.
      manifest: the parsed ``manifest.json``.
      hooks: cached hook names, in order.
      dtype: on-disk dtype.
      positions: cached positions per sequence (``T - start_pos``).
    """

    root: Path
    manifest: dict
    hooks: tuple[str, ...]
    dtype: np.dtype
    positions: int
    _files: dict[str, list[tuple[Path, int]]]
    _offsets: dict[str, np.ndarray]
    _maps: dict[tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)

    def d(self, hook: str) -> int:
        """Activation width of ``hook``."""
        return int(self.manifest["hooks"][self._hook(hook)]["d"])

    def n_rows(self, hook: str) -> int:
        """Rows cached at ``hook`` (``n_seqs * positions``)."""
        return int(self._offsets[self._hook(hook)][-1])

    def _hook(self, hook: str) -> str:
        if hook not in self._files:
            raise KeyError(f"hook {hook!r} is not in the cache {self.root}; it holds "
                           f"{list(self.hooks)}")
        return hook

    def shard(self, hook: str, i: int) -> np.ndarray:
        """Shard ``i`` of ``hook``, memory-mapped read-only: ``[rows_i, d]``."""
        key = (self._hook(hook), i)
        if key not in self._maps:
            path, rows = self._files[hook][i]
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape != (rows, self.d(hook)) or arr.dtype != self.dtype:
                raise CacheError(f"{path}: shape {arr.shape} {arr.dtype}, expected "
                                 f"{(rows, self.d(hook))} {self.dtype}")
            self._maps[key] = arr
        return self._maps[key]

    def n_shards(self, hook: str) -> int:
        return len(self._files[self._hook(hook)])

    def rows(self, hook: str, index: Any) -> np.ndarray:
        """Rows at global ``index`` (int array into ``[0, n_rows)``), gathered from the
        shards: float32 ``[len(index), d]`` in the order of ``index``."""
        index = np.asarray(index, np.int64).reshape(-1)
        off = self._offsets[self._hook(hook)]
        if index.size and (index.min() < 0 or index.max() >= off[-1]):
            raise IndexError(f"row index out of [0, {off[-1]})")
        out = np.empty((index.size, self.d(hook)), np.float32)
        order = np.argsort(index, kind="stable")
        srt = index[order]
        shard_of = np.searchsorted(off, srt, side="right") - 1
        for s in np.unique(shard_of):
            sel = shard_of == s
            out[order[sel]] = self.shard(hook, int(s))[srt[sel] - off[s]]
        return out

    def read(self, hook: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of ``hook`` in cache order, float32."""
        stop = self.n_rows(hook) if stop is None else stop
        return self.rows(hook, np.arange(start, stop))

    def tokens(self) -> np.ndarray:
        """The cached tokens ``[N, T]`` (memory-mapped)."""
        return np.load(self.root / "tokens.npy", mmap_mode="r", allow_pickle=False)


def open_cache(directory: str | os.PathLike) -> ActivationCache:
    """Opens and verifies an activation cache written by :func:`cache_activations`.

    Checks the manifest's format, version and types, that every path is safe
    (:func:`safe_path`), and that every shard is a complete ``.npy`` file of the listed
    shape and dtype. Nothing named in the manifest is imported or executed.

    Raises:
      CacheError: no manifest (missing or unfinished cache), corrupt or foreign manifest,
        unsafe path, missing or truncated shard.
    """
    root = Path(directory)
    if not root.is_dir():
        raise CacheError(f"{root}: no such cache directory")
    m = _read_json(root / MANIFEST)
    where = str(root / MANIFEST)
    if m.get("format") != FORMAT:
        raise CacheError(f"{where}: not a jaxcrl activation cache (format "
                         f"{m.get('format')!r})")
    if m.get("version") != VERSION:
        raise CacheError(f"{where}: version {m.get('version')!r}, this reader knows "
                         f"{VERSION}")
    if m.get("dtype") not in DTYPES:
        raise CacheError(f"{where}: dtype {m.get('dtype')!r} is not one of {DTYPES}")
    dtype = np.dtype(m["dtype"])
    positions = _int(m, "positions", where, 1)
    n_seqs = _int(m, "n_seqs", where, 1)
    tok = safe_path(root, m.get("tokens"))
    if not _npy_complete(tok, (n_seqs, _int(m, "context_size", where, 1)), np.dtype(np.int32)):
        raise CacheError(f"{tok}: missing, truncated or of the wrong shape")
    hooks = m.get("hooks")
    if not isinstance(hooks, dict) or not hooks:
        raise CacheError(f"{where}: 'hooks' must be a non-empty object")
    files: dict[str, list[tuple[Path, int]]] = {}
    offsets: dict[str, np.ndarray] = {}
    for h, info in hooks.items():
        _check_hook(h)
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
            raise CacheError(f"{where}: hook {h!r} has no list of shards")
        d = _int(info, "d", f"{where} hook {h!r}", 1)
        lst = []
        for s in info["shards"]:
            if not isinstance(s, dict):
                raise CacheError(f"{where}: hook {h!r}: shard entries must be objects")
            path = safe_path(root, s.get("path"))
            rows = _int(s, "rows", f"{where} hook {h!r}", 1)
            if not _npy_complete(path, (rows, d), dtype):
                raise CacheError(f"{path}: missing, truncated or not [{rows}, {d}] {dtype} "
                                 "(rerun cache_activations to complete it)")
            lst.append((path, rows))
        total = sum(r for _, r in lst)
        if total != n_seqs * positions or info.get("rows") != total:
            raise CacheError(f"{where}: hook {h!r} shards hold {total} rows, expected "
                             f"{n_seqs * positions}")
        files[h] = lst
        offsets[h] = np.concatenate([[0], np.cumsum([r for _, r in lst])]).astype(np.int64)
    return ActivationCache(root, m, tuple(hooks), dtype, positions, files, offsets)


def cache_source(cache: ActivationCache | str | os.PathLike, hook: str | Sequence[str],
                 batch_size: int, *, max_rows: int = 1_000_000) -> Source:
    """A shuffled :class:`Source` over one hook of an activation cache.

    At most ``max_rows`` rows live on the device: all of them (in cache order) when the
    hook has no more, else a uniformly random subset across all shards, gathered from the
    memory-mapped files (only those rows are read). ``init(key)`` draws the subset,
    ``refresh(state, key)`` draws a new one (:func:`jaxcrl.sae.train_sweep` calls it every
    ``refresh_every`` steps), and ``sample`` draws ``batch_size`` rows of the subset
    uniformly on device. Deterministic given the keys. The state holds the subset's int32
    ``seed``: training checkpoints keep only it and a resumed run re-reads the same rows.

    Args:
      cache: an :class:`ActivationCache` or its directory.
      hook: which hook, or several hooks whose rows (the same positions) are concatenated
        along the width, e.g. a transcoder's inputs then outputs (:mod:`jaxcrl.sae.clt`).
      batch_size: rows per sample.
      max_rows: device-resident rows.

    Raises:
      KeyError: ``hook`` not cached. CacheError: see :func:`open_cache`.
      ValueError: NaN/inf activations; ``batch_size``/``max_rows`` < 1.
    """
    if not isinstance(cache, ActivationCache):
        cache = open_cache(cache)
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_rows ({max_rows}) must be >= 1")
    hooks = [hook] if isinstance(hook, str) else list(hook)
    n, d = cache.n_rows(hooks[0]), sum(cache.d(h) for h in hooks)
    m = min(n, max_rows)

    def load_seed(seed: int) -> dict:
        if m == n:
            parts = [cache.read(h) for h in hooks]
        else:
            idx = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
            parts = [cache.rows(h, idx) for h in hooks]
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts, 1)
        if not np.isfinite(rows).all():
            raise ValueError(f"{cache.root}: activations at {hook!r} contain NaN or inf")
        return {"data": jnp.asarray(rows), "seed": jnp.int32(seed)}

    def load(key: jax.Array) -> dict:
        return load_seed(0 if m == n else int(jax.random.randint(key, (), 0, 2**31 - 1)))

    def sample(state, key):
        idx = jax.random.randint(key, (batch_size,), 0, m)
        return state, jnp.take(state["data"], idx, axis=0)

    def restore(fresh, saved):  # training checkpoints keep the subset's seed, not its rows
        seed = int(saved["seed"])
        return fresh if seed == int(fresh["seed"]) else load_seed(seed)

    refresh = None if m == n else (lambda state, key: load(key))
    return Source(load, sample, d, batch_size, refresh,
                  save=lambda state: {"seed": state["seed"]}, restore=restore)
