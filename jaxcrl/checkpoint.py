"""The one checkpoint format of jaxcrl.

Every trained thing (latent-SCM model, transformer, SAE) is saved as a directory::

    <path>/
      state/          the state pytree (params, optimizer state, ...) written by orbax-checkpoint
      config.json     the typed config (a frozen dataclass), tagged with its registered class
      meta.json       format marker, kind, jaxcrl version, step, metrics, creation time
      manifest.json   relative path, size and SHA-256 of every other file: written last

**Files are data, never code.** ``config.json`` names the class of each config by a tag, but
decoding only ever builds classes registered with :func:`register_config` (jaxcrl registers its
own configs) or passed explicitly in ``allow=``; anything else is refused with a
:class:`CheckpointError` naming the refused type, before anything is imported or called. No
``eval``, no ``pickle``. The manifest is *integrity*, not *trust*: anyone can recompute it, so
it catches truncated and bit-flipped files, not crafted ones; the registry is what makes a
crafted checkpoint harmless. Manifest entries must be plain relative paths inside the
checkpoint, and a checkpoint containing a symlink or any file not in the manifest is refused.

**Crash and concurrency safety.**

- A save writes everything into a hidden sibling ``.<name>.tmp-<id>``, writes the manifest
  last, then commits by renames: ``<name>`` -> ``.<name>.old-<id>`` (only when replacing),
  ``.tmp`` -> ``<name>``, then deletes ``.old``. A crash at any point leaves the previous
  complete checkpoint loadable: :func:`load` falls back to a complete ``.old`` copy when the
  crash fell between the two renames, and the next writer finishes or discards what is left
  (:func:`recover`).
- One writer per path: :func:`save` holds an advisory lock (``.<name>.lock`` beside it) and a
  :class:`CheckpointManager` holds ``<workdir>/.lock`` from its first save until it is closed.
  A second writer is refused with a clear error; locks die with their process, so a crash
  never leaves a stale lock. Readers take no lock and never delete or rename anything.
- A load returns one consistent checkpoint or raises: it fingerprints the manifest before
  reading and re-reads it after, and retries when a concurrent writer replaced the directory
  in between, so it never returns the metadata of one save with the arrays of another.
- Overwrite only ever replaces a jaxcrl checkpoint of the same kind (or an empty directory);
  any other existing path is refused, so ``save(".", overwrite=True)`` cannot empty a folder.
- Disk-full and permission errors become a :class:`CheckpointError` naming the path, with the
  previous checkpoint intact and no temporary files left.
- Multi-host runs (``jax.process_count() > 1``): every process calls ``save`` with its
  shards of a globally sharded state; orbax writes them into one shared temporary directory
  and process 0 alone locks, writes config/meta/manifest, commits and prunes: the checkpoint
  is written once. Loading works on any number of processes and devices (give a ``target``
  with the shardings you want).

:class:`CheckpointManager` adds what training loops need: save every N steps, keep the last K
(pruned by renaming to ``.trash`` first, so a crash mid-delete never leaves a half-deleted step
that looks complete), and resume from the newest step that verifies, falling back to older
steps with a warning that says which one it used. It uses this same directory format for each
step (``<workdir>/step_000000100``), so there is exactly one on-disk format.

Example::

    ckpt.save("runs/a", {"params": params, "opt_state": opt_state}, config=cfg, kind="sae",
              step=1000, metrics={"mse": 0.01})
    c = ckpt.load("runs/a", kind="sae", target=abstract_state)   # c.state, c.config, c.step
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
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
_LOAD_TRIES = 8


class CheckpointError(RuntimeError):
    """A checkpoint is missing, half-written, corrupt, foreign, crafted or of the wrong kind,
    or a write could not complete (disk full, permissions, a second writer)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
      path: the directory it was read from (a ``.old`` copy when :func:`load` fell back).
      kind: what was saved ("crl", "lm", "sae", ...).
      config: the config, rebuilt as its registered dataclass (or a dict if saved as one).
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


# --------------------------------------------------------------------------- config registry

_REGISTRY: dict[str, type] = {}  # "module:qualname" -> class, for jaxcrl's own configs
_BY_QUALNAME: dict[str, type] = {}  # "qualname" -> class (unique), for moved modules


def _tag(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_config(cls: type | None = None, *, aliases: Iterable[str] = ()):
    """Registers a dataclass or enum as a config type that checkpoints may rebuild.

    Use as a decorator on every config class that is stored in a checkpoint::

        @register_config
        @dataclasses.dataclass(frozen=True)
        class SAEConfig: ...

    Args:
      cls: the class (a dataclass or an ``enum.Enum``).
      aliases: older ``"module:qualname"`` tags of the same class (after a move or rename),
        so checkpoints written before still load.

    Returns:
      ``cls`` unchanged.
    """

    def do(cls: type) -> type:
        if not (dataclasses.is_dataclass(cls) or (isinstance(cls, type)
                                                  and issubclass(cls, enum.Enum))):
            raise TypeError(f"register_config: {cls!r} is neither a dataclass nor an Enum")
        other = _BY_QUALNAME.get(cls.__qualname__)
        if other is not None and _tag(other) != _tag(cls):
            raise TypeError(f"register_config: two config classes named {cls.__qualname__!r} "
                            f"({_tag(other)} and {_tag(cls)}); give one a distinct name")
        for tag in (_tag(cls), *aliases):
            _REGISTRY[tag] = cls
        _BY_QUALNAME[cls.__qualname__] = cls
        return cls

    return do if cls is None else do(cls)


def registered_configs() -> dict[str, type]:
    """The registered config types, ``{"module:qualname": class}`` (a copy)."""
    return dict(_REGISTRY)


def _resolve_type(tag: Any, allow: Mapping[str, type]) -> type:
    """The class a config tag names, only if registered or explicitly allowed."""
    if not isinstance(tag, str) or ":" not in tag:
        raise CheckpointError(f"refused config type {tag!r}: not a 'module:qualname' tag")
    if tag in allow:
        return allow[tag]
    if tag not in _REGISTRY:
        module, _, qualname = tag.partition(":")
        if module != "jaxcrl" and not module.startswith("jaxcrl."):
            raise CheckpointError(f"refused config type {tag!r}: not a registered jaxcrl config "
                                  "(pass allow=[cls] to accept your own classes)")
        _import_jaxcrl_configs()
        cls = _REGISTRY.get(tag) or _BY_QUALNAME.get(qualname)  # a config that moved module
        if cls is None:
            raise CheckpointError(f"refused config type {tag!r}: not a registered jaxcrl config")
        return cls
    return _REGISTRY[tag]


def _import_jaxcrl_configs() -> None:
    """Imports jaxcrl's own packages (static imports, never a name from a file): importing
    them registers their configs."""
    import jaxcrl.analysis  # noqa: F401
    import jaxcrl.crl  # noqa: F401
    import jaxcrl.lm  # noqa: F401
    import jaxcrl.sae  # noqa: F401
    import jaxcrl.scm  # noqa: F401


def config_to_json(obj: Any) -> Any:
    """Encodes a (nested) dataclass config as tagged JSON (see :func:`config_from_json`)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            "__dataclass__": _tag(type(obj)),
            "fields": {
                f.name: config_to_json(getattr(obj, f.name))
                for f in dataclasses.fields(obj)
                if f.init
            },
        }
    if isinstance(obj, enum.Enum):
        return {"__enum__": _tag(type(obj)), "value": obj.value}
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


def config_from_json(data: Any, *, allow: Iterable[type] = ()) -> Any:
    """Inverse of :func:`config_to_json`, building only registered or allowed classes.

    Args:
      data: parsed JSON.
      allow: extra classes (dataclasses or enums) the caller accepts, matched by their exact
        ``module:qualname``.

    Raises:
      CheckpointError: a tag names a class that is neither registered nor in ``allow`` (the
        refused type is named; nothing is imported or called for it), or fields that the
        class does not have.
    """
    allowed = {_tag(c): c for c in allow}
    return _decode(data, allowed)


def _decode(data: Any, allow: Mapping[str, type]) -> Any:
    if isinstance(data, list):
        return [_decode(v, allow) for v in data]
    if not isinstance(data, dict):
        return data
    if "__dataclass__" in data:
        cls = _resolve_type(data["__dataclass__"], allow)
        if not dataclasses.is_dataclass(cls):
            raise CheckpointError(f"refused config type {data['__dataclass__']!r}: not a dataclass")
        fields = data.get("fields", {})
        if not isinstance(fields, dict):
            raise CheckpointError(f"config of {cls.__qualname__}: 'fields' is not an object")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise CheckpointError(f"config of {cls.__qualname__} has unknown fields {unknown}")
        try:
            return cls(**{k: _decode(v, allow) for k, v in fields.items()})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config of {cls.__qualname__} is invalid: {e}") from None
    if "__enum__" in data:
        cls = _resolve_type(data["__enum__"], allow)
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise CheckpointError(f"refused config type {data['__enum__']!r}: not an Enum")
        try:
            return cls(data.get("value"))
        except ValueError as e:
            raise CheckpointError(f"config enum {cls.__qualname__}: {e}") from None
    if "__tuple__" in data:
        return tuple(_decode(v, allow) for v in data["__tuple__"])
    return {k: _decode(v, allow) for k, v in data.items()}


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


# --------------------------------------------------------------------------- fault injection

# Tests set this to ``f(point, path)`` to fail or "crash" between the steps of a save,
# finalize or prune. Points: save:state, save:config, save:meta, save:manifest,
# finalize:old_moved, finalize:new_moved, finalize:done, prune:renamed.
_FAULT_HOOK: Callable[[str, Path], None] | None = None


class SimulatedCrash(BaseException):
    """Raised by a test's fault hook to stand for the process dying at that point: unlike
    any other exception, the save does not clean up after it (a dead process cannot)."""


def _fault(point: str, path: Path) -> None:
    if _FAULT_HOOK is not None:
        _FAULT_HOOK(point, path)


# --------------------------------------------------------------------------- file helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    """Relative paths of the regular files under ``root`` except the manifest.

    Raises:
      CheckpointError: a symlink or a special file anywhere inside.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise CheckpointError(f"{root}: contains a symlink ({p.relative_to(root)}); "
                                      "checkpoints never do, refusing to follow it")
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_file():
                raise CheckpointError(f"{root}: {p.relative_to(root)} is not a regular file")
            rel = p.relative_to(root).as_posix()
            if rel != _MANIFEST:
                out.append(rel)
    return sorted(out)


def _safe_rel(root: Path, rel: Any) -> Path:
    """``root / rel`` for a manifest entry that is a plain relative path inside ``root``."""
    pure = PurePosixPath(rel) if isinstance(rel, str) else None
    if (pure is None or not rel or pure.is_absolute() or "\\" in rel or "\x00" in rel
            or any(part in ("..", ".", "") for part in rel.split("/"))):
        raise CheckpointError(f"{root}: manifest entry {rel!r} is not a plain relative path "
                              "inside the checkpoint; refusing it")
    return root.joinpath(*pure.parts)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _read_json(file: Path, ckpt: Path) -> Any:
    try:
        with open(file, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: {file.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{ckpt}: {file.name} is corrupt ({e})") from None


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
    entries = {rel: {"size": (tmp / rel).stat().st_size, "sha256": _sha256(tmp / rel)}
               for rel in _files(tmp)}
    _write_json(tmp / _MANIFEST, {"format": FORMAT, "files": entries})


def _manifest_digest(path: Path) -> str | None:
    """SHA-256 of ``path/manifest.json``'s bytes: the identity of one save (None if absent)."""
    try:
        with open(path / _MANIFEST, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _hidden(path: Path, what: str) -> Path:
    return path.parent / f".{path.name}.{what}-{uuid.uuid4().hex[:12]}"


def _siblings(path: Path, what: str) -> list[Path]:
    """``.<name>.<what>-*`` beside ``path``, oldest first."""
    if not path.parent.is_dir():
        return []
    pat = re.compile(rf"^\.{re.escape(path.name)}\.{what}-[0-9a-f]+$")
    found = [p for p in path.parent.iterdir() if pat.match(p.name) and not p.is_symlink()]
    return sorted(found, key=lambda p: _mtime(p))


def _mtime(p: Path) -> float:
    try:
        return (p / _MANIFEST).stat().st_mtime if (p / _MANIFEST).exists() else p.stat().st_mtime
    except OSError:
        return 0.0


# --------------------------------------------------------------------------- locks


class _Lock:
    """An exclusive advisory lock (``flock``) on ``file``, refused at once when held.

    The kernel drops it when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, file: Path, what: str):
        import fcntl

        file.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(self._fd)
                self._fd = None
            raise CheckpointError(
                f"{what} is being written by another writer (pid {holder}, lock {file}); "
                "only one writer at a time: close the other CheckpointManager or wait for it"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


# --------------------------------------------------------------------------- recovery


def _is_complete(path: Path) -> bool:
    try:
        _check(path, verify=True)
        return True
    except (CheckpointError, OSError):
        return False


def recover(path: str | os.PathLike) -> Path | None:
    """Finishes or discards what an interrupted save of ``path`` left behind.

    Only a writer that holds ``path``'s lock may call this (:func:`save` and
    :class:`CheckpointManager` do, on their first write): it deletes temporary files.
    If ``path`` is missing because a save died between its two renames, the newest complete
    copy (the new one if it was complete, else the previous one) is moved back into place.

    Returns:
      ``path`` if a complete checkpoint is there afterwards, else None.
    """
    path = Path(path).absolute()
    tmps, olds = _siblings(path, "tmp"), _siblings(path, "old")
    if not path.exists():
        for cand in [*reversed(tmps), *reversed(olds)]:
            if _is_complete(cand):
                os.rename(cand, path)
                _fsync_dir(path.parent)
                break
    for p in [*tmps, *olds, *_siblings(path, "trash")]:
        if p.exists():
            _rmtree(p)
    return path if path.is_dir() else None


# --------------------------------------------------------------------------- save


def _check_replaceable(path: Path, kind: str, overwrite: bool) -> None:
    """Refuses to replace anything but a jaxcrl checkpoint of ``kind`` (or an empty dir)."""
    if path.is_symlink():
        raise CheckpointError(f"{path}: is a symlink; refusing to replace it with a checkpoint")
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return  # an empty directory holds nothing to lose
    if not overwrite:
        raise CheckpointError(f"{path}: a checkpoint already exists (pass overwrite=True)")
    if not path.is_dir():
        raise CheckpointError(f"{path}: exists and is a file, not a jaxcrl checkpoint; "
                              "refusing to replace it")
    manifest = path / _MANIFEST
    try:
        ok = json.loads(manifest.read_bytes()).get("format") == FORMAT
        found = json.loads((path / _META).read_bytes()).get("kind")
    except (OSError, ValueError, AttributeError):
        ok, found = False, None
    if not ok:
        raise CheckpointError(f"{path}: exists and is not a jaxcrl checkpoint; overwrite only "
                              "replaces a checkpoint, refusing to delete this directory")
    if found != kind:
        raise CheckpointError(f"{path}: holds a checkpoint of kind {found!r}; overwrite only "
                              f"replaces one of the same kind ({kind!r})")


def _finalize(tmp: Path, path: Path) -> None:
    """Moves a complete ``tmp`` directory to ``path`` (the commit point of a save)."""
    old = None
    if path.exists():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            old = _hidden(path, "old")
            os.rename(path, old)
            _fault("finalize:old_moved", path)
    try:
        os.rename(tmp, path)
    except SimulatedCrash:
        raise
    except BaseException:
        if old is not None and not path.exists():
            os.rename(old, path)  # put the previous checkpoint back
        raise
    _fsync_dir(path.parent)
    _fault("finalize:new_moved", path)
    if old is not None:
        _rmtree(old)
    _fault("finalize:done", path)


def _write(path: Path, state: Any, *, config_json: Any, meta: dict, overwrite: bool) -> Path:
    """Writes a checkpoint at ``path``; the caller holds ``path``'s writer lock."""
    import orbax.checkpoint as ocp

    kind = meta["kind"]
    _check_replaceable(path, kind, overwrite)
    tmp = _hidden(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(tmp / _STATE_DIR, state)
            checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
        _fault("save:state", path)
        _write_json(tmp / _CONFIG, config_json)
        _fault("save:config", path)
        _write_json(tmp / _META, meta)
        _fault("save:meta", path)
        _write_manifest(tmp)
        _fsync_dir(tmp)
        _fault("save:manifest", path)
        _finalize(tmp, path)
    except SimulatedCrash:
        raise  # a dead process cleans nothing up: the next writer's recover() does
    except CheckpointError:
        _rmtree(tmp)
        raise
    except (OSError, ValueError, RuntimeError) as e:
        # Disk full (ENOSPC, EFBIG, EDQUOT), permissions, and orbax/tensorstore wrapping
        # those as ValueError: the previous checkpoint was never touched (or was put back).
        _rmtree(tmp)
        reason = errno.errorcode.get(getattr(e, "errno", None) or 0, "")
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({reason + ': ' if reason else ''}"
            f"{type(e).__name__}: {e}); any previous checkpoint at this path is intact"
        ) from e
    except BaseException:
        _rmtree(tmp)
        raise
    return path


def _multihost() -> bool:
    return jax.process_count() > 1


def _agree(ok: bool, what: str, path: Path, detail: str = "") -> None:
    """Every process learns whether the primary's step ``what`` succeeded (so a failure on
    the primary never leaves the others waiting in a collective)."""
    from jax.experimental import multihost_utils

    flag = multihost_utils.broadcast_one_to_all(np.int32(1 if ok else 0))
    if not int(flag):
        raise CheckpointError(f"{path}: {what} failed on the primary process"
                              + (f": {detail}" if detail else ""))


def _write_multihost(path: Path, state: Any, *, config_json: Any, meta: dict,
                     overwrite: bool, lock_file: Path | None) -> Path:
    """A save by every process of a multi-host run into one shared directory.

    All processes write their shards of ``state`` through orbax into the same temporary
    directory (its name is broadcast from process 0); only process 0 takes the lock,
    recovers leftovers, writes config, meta and manifest and commits by the same renames as a
    single-process save. Barriers keep the processes in step, and a failure on process 0 is
    broadcast so that no process hangs.
    """
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    primary = jax.process_index() == 0
    lock, err = None, ""
    if primary:
        try:
            _check_replaceable(path, meta["kind"], overwrite)
            if lock_file is not None:
                lock = _Lock(lock_file, str(path))
            recover(path)
            path.parent.mkdir(parents=True, exist_ok=True)
        except (CheckpointError, OSError) as e:
            err = str(e)
    try:
        _agree(not err, "preparing the save", path, err)
        token = multihost_utils.broadcast_one_to_all(
            np.frombuffer(uuid.uuid4().bytes[:8], np.uint32).copy())
        tmp = path.parent / f".{path.name}.tmp-{int(token[0]):08x}{int(token[1]):08x}"
        if primary:
            tmp.mkdir()
        multihost_utils.sync_global_devices(f"jaxcrl-ckpt-mkdir-{tmp.name}")
        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(tmp / _STATE_DIR, state)
            checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
        multihost_utils.sync_global_devices(f"jaxcrl-ckpt-state-{tmp.name}")
        if primary:
            try:
                _write_json(tmp / _CONFIG, config_json)
                _write_json(tmp / _META, meta)
                _write_manifest(tmp)
                _fsync_dir(tmp)
                _finalize(tmp, path)
            except (OSError, ValueError, CheckpointError) as e:
                _rmtree(tmp)
                err = f"could not write the checkpoint ({type(e).__name__}: {e})"
        _agree(not err, "committing the save", path, err)
    finally:
        if lock is not None:
            lock.release()
    return path


def _prepare(state: Any, config: Any, kind: str, step: int, metrics) -> tuple[Any, Any, dict]:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(f"kind must be a lowercase identifier like 'sae', got {kind!r}")
    if not jax.tree_util.tree_leaves(state):
        raise ValueError("state has no array leaves to save")
    state, empty = _stash_empty(state)
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
    return state, config_to_json(config), meta


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
      path: target directory; must not exist (an empty directory is fine) unless
        ``overwrite``.
      state: pytree of arrays (params, optimizer state, step counters, ...).
      config: frozen dataclass (nested dataclasses, tuples, enums allowed), dict or None.
        Dataclasses must be registered (:func:`register_config`) to be rebuilt on load.
      kind: what this is, e.g. "crl", "lm", "sae"; checked again by :func:`load`.
      step: training step.
      metrics: JSON-able scalars/lists to keep beside the state.
      overwrite: replace an existing checkpoint *of the same kind* (atomically: the old one
        stays loadable until the new one is complete). Anything else at ``path`` is refused.

    Returns:
      The checkpoint path.

    Raises:
      CheckpointError: ``path`` holds something that is not a checkpoint of this kind,
        another writer is saving to ``path``, or the disk write failed (disk full,
        permissions); the previous checkpoint is intact in every case.
    """
    path = Path(path).absolute()
    state, config_json, meta = _prepare(state, config, kind, step, metrics)
    if _multihost():  # every process calls save; process 0 commits
        return _write_multihost(path, state, config_json=config_json, meta=meta,
                                overwrite=overwrite,
                                lock_file=path.parent / f".{path.name}.lock")
    _check_replaceable(path, kind, overwrite)  # before creating anything
    lock = _Lock(path.parent / f".{path.name}.lock", str(path))
    try:
        recover(path)
        return _write(path, state, config_json=config_json, meta=meta, overwrite=overwrite)
    finally:
        lock.release()


# --------------------------------------------------------------------------- load


def _locate(path: Path) -> Path:
    """``path``, or the complete ``.old`` copy a save interrupted mid-commit left."""
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)  # one look: it may change under us
    except FileNotFoundError:
        is_dir = None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    if is_dir:
        return path
    if is_dir is not None:
        raise CheckpointError(f"{path}: not a checkpoint directory (it is a file)")
    for old in reversed(_siblings(path, "old")):
        if (old / _MANIFEST).is_file():
            return old
    if path.is_dir():  # a writer committed while we looked for the previous copy
        return path
    leftovers = _siblings(path, "tmp")
    hint = (f"; an interrupted save left {leftovers[-1].name} (not a complete checkpoint)"
            if leftovers else "")
    raise CheckpointError(f"{path}: no checkpoint here (directory missing){hint}")


def _check(path: Path, *, verify: bool) -> dict:
    """Checks the structure (and with ``verify`` the checksums) of one checkpoint directory;
    returns its meta.json."""
    manifest_path = path / _MANIFEST
    if not manifest_path.is_file() or manifest_path.is_symlink():
        what = (
            "half-written (state present, manifest missing)"
            if (path / _STATE_DIR).exists()
            else "not a jaxcrl checkpoint (no manifest.json)"
        )
        raise CheckpointError(f"{path}: {what}")
    manifest = _read_json(manifest_path, path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: manifest.json is not a {FORMAT} manifest")
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: manifest.json has no file table")
    present = set(_files(path))  # refuses symlinks and special files
    for rel, entry in files.items():
        p = _safe_rel(path, rel)
        if rel not in present:
            raise CheckpointError(f"{path}: file {rel} listed in the manifest is missing")
        if not isinstance(entry, dict) or "size" not in entry or "sha256" not in entry:
            raise CheckpointError(f"{path}: manifest entry for {rel} is malformed")
        if verify:
            size = p.stat().st_size
            if size != entry["size"]:
                raise CheckpointError(
                    f"{path}: file {rel} is corrupt (size {size}, expected {entry['size']})")
            if _sha256(p) != entry["sha256"]:
                raise CheckpointError(f"{path}: file {rel} is corrupt (checksum mismatch)")
    extra = present - set(files)
    if extra:
        raise CheckpointError(f"{path}: files not in the manifest: {sorted(extra)[:3]}")
    for required in (_META, _CONFIG):
        if required not in files:
            raise CheckpointError(f"{path}: {required} is missing from the manifest")
    meta = _read_json(path / _META, path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: meta.json is not a {FORMAT} file")
    if not isinstance(meta.get("format_version", 0), int) or meta.get(
            "format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written with format version {meta.get('format_version')!r}, this jaxcrl "
            f"reads up to {FORMAT_VERSION}; upgrade jaxcrl"
        )
    if not isinstance(meta.get("kind"), str) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{path}: meta.json lacks a valid kind or step")
    return meta


def read_metadata(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """Returns meta.json of a checkpoint after checking it is complete and (optionally) intact."""
    return _check(_locate(Path(path).absolute()), verify=verify)


def _load_once(src: Path, *, kind, target, verify, rebuild_config, allow) -> Checkpoint:
    import orbax.checkpoint as ocp

    meta = _check(src, verify=verify)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(
            f"{src}: asked for a {kind!r} checkpoint but this one holds kind {meta['kind']!r}"
        )
    config_json = _read_json(src / _CONFIG, src)
    config = config_json
    if rebuild_config:
        try:
            config = config_from_json(config_json, allow=allow)
        except CheckpointError as e:
            raise CheckpointError(f"{src}: cannot rebuild the config: {e}") from None
    if callable(target) and not hasattr(target, "shape"):
        if not rebuild_config:
            raise ValueError("a target function needs rebuild_config=True (it gets the config)")
        target = target(config)
    checkpointer = ocp.StandardCheckpointer()
    empty = meta.get("empty_leaves", {})
    try:
        if target is None:
            # Restore onto this process's default device whatever the saving machine was
            # (a GPU checkpoint must load on a CPU laptop): the target comes from the
            # stored shapes and dtypes, with a local sharding.
            tree = checkpointer.metadata(src / _STATE_DIR)
            tree = getattr(tree, "item_metadata", tree)
            state = checkpointer.restore(src / _STATE_DIR, _abstract(tree))
        else:
            stashed, _ = _stash_empty(_abstract(target))
            state = checkpointer.restore(src / _STATE_DIR, stashed)
        state = _unstash_empty(state, empty)
    except Exception as e:  # orbax raises many types (ValueError, KeyError, tensorstore errors)
        raise CheckpointError(f"{src}: cannot restore the state: {type(e).__name__}: {e}") from e
    finally:
        checkpointer.close()
    return Checkpoint(
        path=src,
        kind=meta["kind"],
        config=config,
        state=state,
        step=int(meta["step"]),
        metrics=dict(meta.get("metrics", {})),
        version=str(meta.get("jaxcrl_version", "")),
    )


def load(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    target: Any = None,
    verify: bool = True,
    rebuild_config: bool = True,
    allow: Iterable[type] = (),
) -> Checkpoint:
    """Loads a checkpoint written by :func:`save`: one consistent save, or an error.

    Reading takes no lock and changes nothing on disk. If a writer replaces ``path`` while it
    is being read, the read is detected (the manifest's fingerprint changed) and repeated.

    Args:
      path: checkpoint directory.
      kind: if given, the checkpoint must be of this kind (e.g. "sae").
      target: pytree with the state's structure (concrete arrays or ``jax.ShapeDtypeStruct``
        from ``jax.eval_shape``); restores NamedTuples, dtypes and shapes exactly and checks
        them. Or a function ``config -> target`` for states whose shapes the saved config
        decides (called with the rebuilt config). Without it the state comes back as nested
        dicts/lists.
      verify: check every file against the manifest's SHA-256 first (integrity, not trust).
      rebuild_config: rebuild the config as its registered dataclass (else the tagged JSON).
      allow: extra config classes of your own that may be rebuilt (exact module:qualname).

    Raises:
      CheckpointError: missing, half-written, corrupt, crafted or foreign directory; wrong
        kind; a config naming an unregistered type; a target that does not match the saved
        state; a directory that kept changing under concurrent writes.
    """
    path = Path(path).absolute()
    allow = tuple(allow)
    last: Exception | None = None
    for _ in range(_LOAD_TRIES):
        src = _locate(path)
        ident = _manifest_digest(src)
        try:
            c = _load_once(src, kind=kind, target=target, verify=verify,
                           rebuild_config=rebuild_config, allow=allow)
        except (CheckpointError, OSError) as e:
            if _manifest_digest(src) == ident:  # unchanged: a real problem of this checkpoint
                if isinstance(e, CheckpointError):
                    raise
                raise CheckpointError(f"{src}: cannot read: {e}") from e
            last = e  # replaced while we read it: read the new one
            continue
        if _manifest_digest(src) == ident:
            if src != path:
                warnings.warn(f"{path} is missing (a save was interrupted mid-commit); loaded "
                              f"the previous complete checkpoint from {src.name}", stacklevel=2)
            return c
    raise CheckpointError(f"{path}: kept changing under a concurrent writer ({_LOAD_TRIES} "
                          f"reads); last problem: {last}")


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
        if spec is None:
            return x
        try:
            return np.zeros(spec[0], np.dtype(spec[1]))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"meta.json empty_leaves entry {spec!r} is invalid") from e

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
_LEFTOVER_RE = re.compile(r"^\.(step_\d+)\.(tmp|old|trash)-[0-9a-f]+$")
_OLD_STEP_RE = re.compile(r"^\.step_(\d+)\.old-[0-9a-f]+$")


class CheckpointManager:
    """Periodic checkpoints of one training run in ``workdir/step_<step>``.

    Constructing a manager and reading from it (:meth:`steps`, :meth:`restore`, ...) takes no
    lock and changes nothing on disk, so looking at a running job is safe. The first
    :meth:`save` makes this manager the workdir's one writer: it takes ``workdir/.lock``
    (refused with :class:`CheckpointError` while another manager, thread or process holds
    it), then finishes or discards what a crashed previous writer left. Call :meth:`close`
    (or use ``with``) to hand the workdir over; the lock also ends with the process.

    Args:
      workdir: directory of the run (created by the first save, not before).
      kind: kind of every checkpoint written and read here.
      save_every: :meth:`should_save` is true every this many steps.
      keep_last: number of most recent checkpoints kept; older ones are deleted after a
        newer one is complete.

    Resume pattern::

        with CheckpointManager(workdir, kind="lm", save_every=500, keep_last=3) as mgr:
            c = mgr.latest(target=jax.eval_shape(lambda: state))  # newest step that verifies
            state, start = (c.state, c.step) if c else (state, 0)
            for step in range(start, total):
                ...
                mgr.maybe_save(step + 1, state, config=cfg, metrics=m)
    """

    def __init__(self, workdir: str | os.PathLike, *, kind: str, save_every: int = 1000,
                 keep_last: int | None = 3):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise ValueError(f"kind must be a lowercase identifier like 'sae', got {kind!r}")
        self.workdir = Path(workdir).absolute()
        self.kind = kind
        self.save_every = save_every
        self.keep_last = keep_last
        self._lock: _Lock | None = None

    # -- ownership
    def _acquire(self) -> None:
        if self._lock is not None and self._lock.held:
            return
        if self.workdir.exists() and not self.workdir.is_dir():
            raise CheckpointError(f"{self.workdir}: exists and is not a directory")
        self._lock = _Lock(self.workdir / ".lock", f"workdir {self.workdir}")
        names = {m.group(1) for p in self.workdir.iterdir()
                 if (m := _LEFTOVER_RE.match(p.name))}
        for name in sorted(names):  # a crashed writer's leftovers: finish or discard
            recover(self.workdir / name)

    def close(self) -> None:
        """Releases the workdir (another writer may take it over)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- reading
    def step_path(self, step: int) -> Path:
        return self.workdir / f"step_{int(step):09d}"

    def steps(self) -> list[int]:
        """Steps with a committed checkpoint (manifest present), ascending. Includes a step
        whose directory is missing because a save died between its renames, when its
        complete previous copy is still there (:func:`load` reads it)."""
        if not self.workdir.is_dir():
            return []
        out = set()
        try:
            entries = list(self.workdir.iterdir())
        except OSError:
            return []
        for p in entries:
            m = _STEP_RE.match(p.name)
            if m and not p.is_symlink() and (p / _MANIFEST).is_file():
                out.add(int(m.group(1)))
            m = _OLD_STEP_RE.match(p.name)
            if m and (p / _MANIFEST).is_file() and not self.step_path(int(m.group(1))).exists():
                out.add(int(m.group(1)))
        return sorted(out)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return step > 0 and step % self.save_every == 0

    def restore(self, step: int | None = None, *, target: Any = None, verify: bool = True,
                allow: Iterable[type] = ()) -> Checkpoint:
        """Loads ``step``; by default the newest step that loads and verifies.

        When the newest step is corrupt, falls back to the previous good one and warns,
        naming both. A specific ``step`` that fails raises.
        """
        if step is not None:
            return load(self.step_path(step), kind=self.kind, target=target, verify=verify,
                        allow=allow)
        for _ in range(_LOAD_TRIES):
            steps = self.steps()
            if not steps:
                where = "" if self.workdir.is_dir() else " (the directory does not exist)"
                raise CheckpointError(f"{self.workdir}: no complete checkpoint to restore{where}")
            bad: list[str] = []
            pruned = False
            for s in reversed(steps):
                try:
                    c = load(self.step_path(s), kind=self.kind, target=target, verify=verify,
                             allow=allow)
                except CheckpointError as e:
                    if "asked for a" in str(e) or "cannot rebuild the config" in str(e):
                        raise  # the run is wrong, not the file: older steps would be too
                    if s not in self.steps():
                        pruned = True  # the writer pruned it while we read: list again
                        continue
                    bad.append(f"step {s}: {e}")
                    continue
                if bad:
                    warnings.warn(f"{self.workdir}: resuming from step {s}, the newest "
                                  f"checkpoint that verifies; skipped {'; '.join(bad)}",
                                  stacklevel=2)
                return c
            if not pruned:
                raise CheckpointError(f"{self.workdir}: no checkpoint verifies: "
                                      f"{'; '.join(bad)}")
        raise CheckpointError(f"{self.workdir}: steps kept being pruned under a concurrent "
                              f"writer ({_LOAD_TRIES} listings)")

    def latest(self, *, target: Any = None, allow: Iterable[type] = ()) -> Checkpoint | None:
        """The newest checkpoint that verifies, or None when the run has none yet."""
        return None if not self.steps() else self.restore(target=target, allow=allow)

    # -- writing
    def save(self, step: int, state: Any, *, config: Any, metrics: Mapping | None = None,
             overwrite: bool = True) -> Path:
        """Saves ``step`` (the first save takes ownership of the workdir), then prunes."""
        state, config_json, meta = _prepare(state, config, self.kind, step, metrics)
        if _multihost():  # every process saves its shards; process 0 owns the workdir
            err = ""
            if jax.process_index() == 0:
                try:
                    self._acquire()
                except CheckpointError as e:
                    err = str(e)
            _agree(not err, "taking the workdir", self.workdir, err)
            path = _write_multihost(self.step_path(step), state, config_json=config_json,
                                    meta=meta, overwrite=overwrite, lock_file=None)
            if jax.process_index() == 0:
                self._prune()
            return path
        self._acquire()
        path = _write(self.step_path(step), state, config_json=config_json, meta=meta,
                      overwrite=overwrite)
        self._prune()
        return path

    def maybe_save(self, step: int, state: Any, *, config: Any,
                   metrics: Mapping | None = None) -> Path | None:
        """Saves if :meth:`should_save` says so; returns the path or None."""
        return self.save(step, state, config=config, metrics=metrics) if self.should_save(
            step) else None

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for s in self.steps()[: -self.keep_last]:
            victim = self.step_path(s)
            if not victim.exists():
                continue
            trash = _hidden(victim, "trash")
            try:
                os.rename(victim, trash)  # atomic: never a half-deleted step that looks complete
                _fault("prune:renamed", victim)
                _rmtree(trash)
            except OSError as e:  # the new step is saved; only the clean-up failed
                warnings.warn(f"{self.workdir}: could not prune step {s} ({e}); the next "
                              "owner of this workdir retries", stacklevel=3)
