"""The one checkpoint format of jaxcrl.

Every trained thing (latent-SCM model, transformer, SAE) is saved as a directory::

    <path>/
      state/          the state pytree (params, optimizer state, ...) written by orbax-checkpoint
      config.json     the typed config (a frozen dataclass), tagged so it is rebuilt as its class
      meta.json       format marker, kind, jaxcrl version, step, metrics, creation time
      manifest.json   size and SHA-256 of every other file: written last, verified on load

Writes are atomic: everything is written into a hidden sibling ``.<name>.tmp-<uuid>`` and
renamed into place only once complete, so a crash at any point leaves either the previous
checkpoint or nothing at ``path``, never something that loads as valid. The manifest makes
bit-level corruption (truncated or overwritten files) a clear :class:`CheckpointError` rather
than silently wrong numbers.

:class:`CheckpointManager` adds what training loops need on top of :func:`save`/:func:`load`:
save every N steps, keep the last K, find the latest complete step and resume from it. It
uses this same directory format for each step (``<workdir>/step_000000100``) rather than
orbax's own manager, so there is exactly one on-disk format to load, inspect and test.

Example::

    ckpt.save("runs/a", {"params": params, "opt_state": opt_state}, config=cfg, kind="sae",
              step=1000, metrics={"mse": 0.01})
    c = ckpt.load("runs/a", kind="sae", target=abstract_state)   # c.state, c.config, c.step
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import hashlib
import importlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT = "jaxcrl-checkpoint"
FORMAT_VERSION = 1
_STATE_DIR = "state"
_CONFIG = "config.json"
_META = "meta.json"
_MANIFEST = "manifest.json"
_KIND_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, half-written, corrupt, foreign or of the wrong kind."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
      path: the checkpoint directory.
      kind: what was saved ("crl", "lm", "sae", ...).
      config: the config, rebuilt as its dataclass (or a dict if saved as one).
      state: the state pytree; with ``target`` its structure and dtypes, otherwise nested
        dicts/lists of arrays (orbax's untyped restore).
      step: the training step it was saved at.
      metrics: JSON-able metrics dict saved with it.
      version: jaxcrl version that wrote it.
    """

    path: Path
    kind: str
    config: Any
    state: Any
    step: int
    metrics: dict
    version: str


# --------------------------------------------------------------------------- config <-> JSON


def config_to_json(obj: Any) -> Any:
    """Encodes a (nested) dataclass config as tagged JSON so it can be rebuilt as its class."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {
            "__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
            "fields": {
                f.name: config_to_json(getattr(obj, f.name))
                for f in dataclasses.fields(obj)
                if f.init
            },
        }
    if isinstance(obj, enum.Enum):
        cls = type(obj)
        return {"__enum__": f"{cls.__module__}:{cls.__qualname__}", "value": obj.value}
    if isinstance(obj, tuple):
        return {"__tuple__": [config_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [config_to_json(v) for v in obj]
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"config dict keys must be str, got {bad!r}")
        return {k: config_to_json(v) for k, v in obj.items()}
    if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a config: {obj!r}")


def _import_qualname(spec: str) -> Any:
    module, _, qualname = spec.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def config_from_json(data: Any) -> Any:
    """Inverse of :func:`config_to_json`; raises ImportError/AttributeError for unknown classes."""
    if isinstance(data, list):
        return [config_from_json(v) for v in data]
    if isinstance(data, dict):
        if "__dataclass__" in data:
            cls = _import_qualname(data["__dataclass__"])
            return cls(**{k: config_from_json(v) for k, v in data["fields"].items()})
        if "__enum__" in data:
            return _import_qualname(data["__enum__"])(data["value"])
        if "__tuple__" in data:
            return tuple(config_from_json(v) for v in data["__tuple__"])
        return {k: config_from_json(v) for k, v in data.items()}
    return data


def _metrics_to_json(metrics: Mapping[str, Any] | None) -> dict:
    if metrics is None:
        return {}
    out = {}
    for k, v in metrics.items():
        arr = np.asarray(v) if isinstance(v, (np.generic, np.ndarray, jax.Array)) else None
        if arr is not None:
            v = arr.item() if arr.ndim == 0 else arr.tolist()
        out[str(k)] = v
    json.dumps(out)  # fail early, before anything is written, if not JSON-able
    return out


# --------------------------------------------------------------------------- file helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != _MANIFEST)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_manifest(tmp: Path) -> None:
    entries = {
        str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(tmp)
    }
    _write_json(tmp / _MANIFEST, {"format": FORMAT, "files": entries})


def _finalize(tmp: Path, path: Path, overwrite: bool) -> None:
    """Moves a complete ``tmp`` directory to ``path`` (the commit point of a save)."""
    old = None
    if path.exists():
        if not overwrite:
            raise CheckpointError(f"{path}: a checkpoint already exists (pass overwrite=True)")
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- save / load


def save(
    path: str | os.PathLike,
    state: Any,
    *,
    config: Any,
    kind: str,
    step: int = 0,
    metrics: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Saves ``state`` with its config and metadata as a checkpoint directory at ``path``.

    Args:
      path: target directory; must not exist unless ``overwrite``.
      state: pytree of arrays (params, optimizer state, step counters, ...).
      config: frozen dataclass (nested dataclasses, tuples, enums allowed), dict or None.
      kind: what this is, e.g. "crl", "lm", "sae"; checked again by :func:`load`.
      step: training step.
      metrics: JSON-able scalars/lists to keep beside the state.
      overwrite: replace an existing checkpoint (atomically: the old one stays loadable
        until the new one is complete).

    Returns:
      The checkpoint path.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(f"kind must be a lowercase identifier like 'sae', got {kind!r}")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: a checkpoint already exists (pass overwrite=True)")
    leaves = jax.tree_util.tree_leaves(state)
    if not leaves:
        raise ValueError("state has no array leaves to save")
    state, empty = _stash_empty(state)
    config_json = config_to_json(config)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "jaxcrl_version": _version(),
        "step": int(step),
        "metrics": _metrics_to_json(metrics),
        "empty_leaves": empty,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / _STATE_DIR, state)
        checkpointer.wait_until_finished()
        checkpointer.close()
        _write_json(tmp / _CONFIG, config_json)
        _write_json(tmp / _META, meta)
        _write_manifest(tmp)
        _fsync_dir(tmp)
        _finalize(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_metadata(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """Returns meta.json of a checkpoint after checking it is complete and (optionally) intact."""
    path = Path(path).absolute()
    if not path.exists():
        leftovers = sorted(path.parent.glob(f".{path.name}.tmp-*")) if path.parent.exists() else []
        hint = (
            f"; an interrupted save left {leftovers[0].name} (not a complete checkpoint)"
            if leftovers
            else ""
        )
        raise CheckpointError(f"{path}: no checkpoint here (directory missing){hint}")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (it is a file)")
    manifest_path = path / _MANIFEST
    if not manifest_path.exists():
        what = (
            "half-written (state present, manifest missing)"
            if (path / _STATE_DIR).exists()
            else "not a jaxcrl checkpoint (no manifest.json)"
        )
        raise CheckpointError(f"{path}: {what}")
    manifest = _read_json(manifest_path, path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: manifest.json is not a {FORMAT} manifest")
    if verify:
        _verify(path, manifest.get("files", {}))
    meta = _read_json(path / _META, path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: meta.json is not a {FORMAT} file")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written with format version {meta['format_version']}, this jaxcrl "
            f"reads up to {FORMAT_VERSION}; upgrade jaxcrl"
        )
    return meta


def _read_json(file: Path, ckpt: Path) -> Any:
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: {file.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{ckpt}: {file.name} is corrupt ({e})") from None


def _verify(path: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    for rel, entry in files.items():
        p = path / rel
        if not p.is_file():
            raise CheckpointError(f"{path}: file {rel} listed in the manifest is missing")
        if p.stat().st_size != entry["size"]:
            raise CheckpointError(
                f"{path}: file {rel} is corrupt (size {p.stat().st_size}, expected {entry['size']})"
            )
        if _sha256(p) != entry["sha256"]:
            raise CheckpointError(f"{path}: file {rel} is corrupt (checksum mismatch)")
    extra = {str(p.relative_to(path)) for p in _files(path)} - set(files)
    if extra:
        raise CheckpointError(f"{path}: files not in the manifest: {sorted(extra)[:3]}")


def load(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    target: Any = None,
    verify: bool = True,
    rebuild_config: bool = True,
) -> Checkpoint:
    """Loads a checkpoint written by :func:`save`.

    Args:
      path: checkpoint directory.
      kind: if given, the checkpoint must be of this kind (e.g. "sae").
      target: pytree with the state's structure (concrete arrays or ``jax.ShapeDtypeStruct``
        from ``jax.eval_shape``); restores NamedTuples, dtypes and shapes exactly and checks
        them. Without it the state comes back as nested dicts/lists.
      verify: check every file against the manifest's SHA-256 first.
      rebuild_config: rebuild the config as its dataclass (else return the tagged JSON).

    Raises:
      CheckpointError: missing, half-written, corrupt or foreign directory; wrong kind;
        a target that does not match the saved state; a config class that cannot be imported.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    meta = read_metadata(path, verify=verify)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(
            f"{path}: asked for a {kind!r} checkpoint but this one holds kind {meta['kind']!r}"
        )
    config_json = _read_json(path / _CONFIG, path)
    config = config_json
    if rebuild_config:
        try:
            config = config_from_json(config_json)
        except (ImportError, AttributeError, TypeError) as e:
            raise CheckpointError(
                f"{path}: cannot rebuild the config ({e}); "
                "pass rebuild_config=False for the raw JSON"
            ) from None
    checkpointer = ocp.StandardCheckpointer()
    empty = meta.get("empty_leaves", {})
    try:
        if target is None:
            # Restore onto this process's default device whatever the saving machine was
            # (a GPU checkpoint must load on a CPU laptop): the target comes from the
            # stored shapes and dtypes, with a local sharding.
            tree = checkpointer.metadata(path / _STATE_DIR)
            tree = getattr(tree, "item_metadata", tree)
            state = checkpointer.restore(path / _STATE_DIR, _abstract(tree))
        else:
            stashed, _ = _stash_empty(_abstract(target))
            state = checkpointer.restore(path / _STATE_DIR, stashed)
        state = _unstash_empty(state, empty)
    except Exception as e:  # orbax raises many types (ValueError, KeyError, tensorstore errors)
        raise CheckpointError(f"{path}: cannot restore the state: {type(e).__name__}: {e}") from e
    finally:
        checkpointer.close()
    return Checkpoint(
        path=path,
        kind=meta["kind"],
        config=config,
        state=state,
        step=int(meta["step"]),
        metrics=dict(meta.get("metrics", {})),
        version=str(meta.get("jaxcrl_version", "")),
    )


def _path_name(path) -> str:
    """``params/prior/mlp_w1`` for a key path (dict keys, dataclass fields, list indices
    alike, so a typed and an untyped restore of the same tree agree)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _stash_empty(tree: Any) -> tuple[Any, dict]:
    """orbax cannot store zero-size arrays: swap them for a 1-element placeholder and
    return ``{path: [shape, dtype]}`` so :func:`_unstash_empty` can put them back."""
    empty: dict = {}

    def swap(path, x):
        if np.size(x) == 0 if not isinstance(x, jax.ShapeDtypeStruct) else x.size == 0:
            empty[_path_name(path)] = [list(np.shape(x)), str(np.dtype(x.dtype))]
            if isinstance(x, jax.ShapeDtypeStruct):
                return jax.ShapeDtypeStruct((1,), x.dtype)
            return np.zeros((1,), x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(swap, tree), empty


def _unstash_empty(tree: Any, empty: Mapping[str, Any]) -> Any:
    if not empty:
        return tree

    def back(path, x):
        spec = empty.get(_path_name(path))
        return x if spec is None else np.zeros(spec[0], np.dtype(spec[1]))

    return jax.tree_util.tree_map_with_path(back, tree)


def _abstract(target: Any) -> Any:
    """Shape/dtype skeleton of ``target`` (arrays, scalars, ShapeDtypeStructs or orbax array
    metadata) placed on this process's default device: a checkpoint saved on another
    topology (GPU, TPU) restores here."""

    local = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None:
            return x
        x = x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x)
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=local)

    return jax.tree_util.tree_map(leaf, target)


def _version() -> str:
    from jaxcrl import __version__

    return __version__


# --------------------------------------------------------------------------- manager

_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointManager:
    """Periodic checkpoints of one training run in ``workdir/step_<step>``.

    Args:
      workdir: directory of the run (created if needed).
      kind: kind of every checkpoint written and read here.
      save_every: :meth:`should_save` is true every this many steps.
      keep_last: number of most recent checkpoints kept; older ones are deleted after a
        newer one is complete.

    Resume pattern::

        mgr = CheckpointManager(workdir, kind="lm", save_every=500, keep_last=3)
        if mgr.latest_step() is not None:
            c = mgr.restore(target=jax.eval_shape(lambda: state)); state, start = c.state, c.step
        for step in range(start, total):
            ...
            if mgr.should_save(step + 1):
                mgr.save(step + 1, state, config=cfg, metrics=m)
    """

    def __init__(self, workdir: str | os.PathLike, *, kind: str, save_every: int = 1000,
                 keep_last: int | None = 3):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        self.workdir = Path(workdir).absolute()
        self.kind = kind
        self.save_every = save_every
        self.keep_last = keep_last
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Leftovers of saves interrupted by a crash are never valid; clear them.
        for stale in self.workdir.glob(".step_*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def step_path(self, step: int) -> Path:
        return self.workdir / f"step_{int(step):09d}"

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint (manifest present), ascending."""
        out = []
        for p in self.workdir.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / _MANIFEST).exists():
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return step > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, *, config: Any, metrics: Mapping | None = None,
             overwrite: bool = True) -> Path:
        path = save(self.step_path(step), state, config=config, kind=self.kind, step=step,
                    metrics=metrics, overwrite=overwrite)
        self._prune()
        return path

    def maybe_save(self, step: int, state: Any, *, config: Any,
                   metrics: Mapping | None = None) -> Path | None:
        """Saves if :meth:`should_save` says so; returns the path or None."""
        return self.save(step, state, config=config, metrics=metrics) if self.should_save(
            step) else None

    def restore(self, step: int | None = None, *, target: Any = None,
                verify: bool = True) -> Checkpoint:
        """Loads ``step`` (default: the latest complete one)."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"{self.workdir}: no complete checkpoint to restore")
        return load(self.step_path(step), kind=self.kind, target=target, verify=verify)

    def latest(self, *, target: Any = None) -> Checkpoint | None:
        """The latest complete checkpoint, or None when the run has none yet."""
        return None if self.latest_step() is None else self.restore(target=target)

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for s in self.steps()[: -self.keep_last]:
            shutil.rmtree(self.step_path(s), ignore_errors=True)
