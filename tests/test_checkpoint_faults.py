"""Fault injection for the checkpoint format: crafted files, crashes at every step of save,
finalize and prune, concurrent readers and writers, careless paths, disk full.

Each test asserts that nothing saved is lost, nothing is mixed, and nothing outside the
checkpoint is touched.
"""

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import checkpoint as ckpt


@ckpt.register_config
@dataclasses.dataclass(frozen=True)
class VCfg:
    v: int = 0


def _state(v: float, n: int = 16):
    return {"w": jnp.full((n, n), float(v)), "b": jnp.arange(n) + v}


def _assert_is(c: ckpt.Checkpoint, v: int):
    """The checkpoint is save number ``v`` throughout: metadata, config and arrays agree."""
    assert c.step == v and c.config == VCfg(v)
    np.testing.assert_array_equal(np.asarray(c.state["w"]), np.full_like(c.state["w"], v))
    np.testing.assert_array_equal(np.asarray(c.state["b"]), np.arange(c.state["b"].shape[0]) + v)


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir()
                  if any(t in p.name for t in (".tmp-", ".old-", ".trash-")))


def _save(path, v, **kw):
    return ckpt.save(path, _state(v), config=VCfg(v), kind="crl", step=v, **kw)


@pytest.fixture
def fault():
    """Sets the fault hook for one test: ``fault(point, exc)`` raises ``exc`` at ``point``."""

    def arm(point, exc):
        def hook(p, path):
            if p == point:
                raise exc

        ckpt._FAULT_HOOK = hook

    yield arm
    ckpt._FAULT_HOOK = None


# --------------------------------------------------------------------------- files are data

_CRAFTED = {
    "subprocess:run": {"args": "touch {sentinel}", "shell": True},
    "os:system": {"command": "touch {sentinel}"},
    "builtins:eval": {"source": "open({sentinel!r}, 'w')"},
    "jaxcrl.checkpoint:save": {"path": "{sentinel}"},  # a jaxcrl callable that is no config
    "jaxcrl.results:write_results": {"out": "{sentinel}"},
}


@pytest.mark.parametrize("tag", list(_CRAFTED))
@pytest.mark.parametrize("as_enum", [False, True])
def test_crafted_config_naming_a_callable_is_refused_without_side_effect(tmp_path, tag,
                                                                        as_enum):
    path, sentinel = tmp_path / "c", tmp_path / "pwned"
    _save(path, 1)
    fields = {k: (v.format(sentinel=str(sentinel)) if isinstance(v, str) else v)
              for k, v in _CRAFTED[tag].items()}
    crafted = ({"__enum__": tag, "value": fields} if as_enum
               else {"__dataclass__": tag, "fields": fields})
    (path / "config.json").write_text(json.dumps({"__dataclass__": ckpt._tag(VCfg),
                                                  "fields": {"v": crafted}}))
    ckpt._write_manifest(path)  # re-signed, as an attacker would: integrity is not trust
    with pytest.raises(ckpt.CheckpointError, match=f"refused config type '{tag}'"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match="refused config type"):
        ckpt.config_from_json(crafted)
    assert not sentinel.exists()
    assert ckpt.load(path, rebuild_config=False).config["fields"]["v"] == crafted


def test_unregistered_class_needs_an_explicit_allowlist(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Mine:
        a: int = 3

    ckpt.save(tmp_path / "c", _state(0), config=Mine(a=5), kind="crl")
    with pytest.raises(ckpt.CheckpointError, match="refused config type.*Mine"):
        ckpt.load(tmp_path / "c")
    assert ckpt.load(tmp_path / "c", allow=[Mine]).config == Mine(a=5)


def test_unknown_fields_of_a_registered_config_are_refused():
    tagged = {"__dataclass__": ckpt._tag(VCfg), "fields": {"v": 1, "__class__": "x"}}
    with pytest.raises(ckpt.CheckpointError, match=r"unknown fields \['__class__'\]"):
        ckpt.config_from_json(tagged)


def test_previous_format_jaxcrl_configs_still_load_even_after_a_module_move():
    from jaxcrl.sae.config import SAEConfig

    cfg = SAEConfig(architecture="topk", d_in=8, d_sae=16, k=4)
    old = ckpt.config_to_json(cfg)
    assert ckpt.config_from_json(old) == cfg
    moved = dict(old, __dataclass__="jaxcrl.sae.somewhere_else:SAEConfig")
    assert ckpt.config_from_json(moved) == cfg


def test_every_jaxcrl_config_class_is_registered():
    ckpt._import_jaxcrl_configs()
    names = {t.split(":")[1] for t in ckpt.registered_configs()}
    for must in ("CRLConfig", "DatasetConfig", "SCMConfig", "GraphConfig", "MixingConfig",
                 "TransformerConfig", "SAEConfig"):
        assert must in names


@pytest.mark.parametrize("entry", ["../outside.bin", "/etc/hostname", "state/../../x",
                                   "./meta.json"])
def test_manifest_entries_outside_the_checkpoint_are_refused(tmp_path, entry):
    path = tmp_path / "c"
    _save(path, 1)
    (tmp_path / "outside.bin").write_bytes(b"secret")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][entry] = {"size": 6, "sha256": "0" * 64}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="not a plain relative path"):
        ckpt.load(path)


@pytest.mark.parametrize("what", ["file", "dir"])
def test_symlinks_inside_a_checkpoint_are_refused(tmp_path, what):
    path = tmp_path / "c"
    _save(path, 1)
    if what == "file":
        outside = tmp_path / "meta_copy.json"
        outside.write_bytes((path / "meta.json").read_bytes())
        (path / "meta.json").unlink()
        (path / "meta.json").symlink_to(outside)
    else:
        os.rename(path / "state", tmp_path / "state_elsewhere")
        (path / "state").symlink_to(tmp_path / "state_elsewhere", target_is_directory=True)
    with pytest.raises(ckpt.CheckpointError, match="symlink"):
        ckpt.load(path)


# --------------------------------------------------------------------------- careless paths


def test_overwrite_never_deletes_a_directory_that_is_not_a_checkpoint(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('my work')")
    monkeypatch.chdir(project)
    with pytest.raises(ckpt.CheckpointError, match="not a jaxcrl checkpoint.*refusing"):
        ckpt.save(".", _state(1), config=VCfg(1), kind="crl", overwrite=True)
    assert (project / "train.py").read_text() == "print('my work')"
    assert sorted(p.name for p in project.iterdir()) == ["train.py"]


def test_overwrite_refuses_another_kind_a_file_and_a_symlink(tmp_path):
    _save(tmp_path / "c", 1)
    with pytest.raises(ckpt.CheckpointError, match="kind 'crl'.*same kind"):
        ckpt.save(tmp_path / "c", _state(2), config=VCfg(2), kind="sae", overwrite=True)
    _assert_is(ckpt.load(tmp_path / "c"), 1)
    (tmp_path / "f").write_text("data")
    with pytest.raises(ckpt.CheckpointError, match="is a file"):
        _save(tmp_path / "f", 1, overwrite=True)
    assert (tmp_path / "f").read_text() == "data"
    (tmp_path / "link").symlink_to(tmp_path / "c")
    with pytest.raises(ckpt.CheckpointError, match="symlink"):
        _save(tmp_path / "link", 2, overwrite=True)
    _assert_is(ckpt.load(tmp_path / "c"), 1)


def test_an_empty_directory_may_receive_a_checkpoint(tmp_path):
    (tmp_path / "c").mkdir()
    _save(tmp_path / "c", 3)
    _assert_is(ckpt.load(tmp_path / "c"), 3)


def test_fit_result_save_overwrite_refuses_a_foreign_directory(tmp_path):
    import jax

    from jaxcrl.crl import CRLConfig, fit

    x = jax.random.normal(jax.random.key(0), (64, 2))
    env = jnp.zeros(64, jnp.int32)
    result = fit(CRLConfig(latent_dim=2, n_envs=1, steps=2, batch_size=16, method="beta_vae"),
                 x, env,
                 key=jax.random.key(1))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    with pytest.raises(ckpt.CheckpointError, match="not a jaxcrl checkpoint"):
        result.save(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep me"
    result.save(tmp_path / "run")
    result.save(tmp_path / "run", overwrite=True)  # its own kind: replaced


def test_failed_loads_have_no_side_effects(tmp_path):
    missing = tmp_path / "typo" / "path"
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint here"):
        ckpt.load(missing)
    mgr = ckpt.CheckpointManager(missing, kind="lm")
    assert mgr.latest() is None and mgr.steps() == []
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        mgr.restore()
    assert not (tmp_path / "typo").exists()


# --------------------------------------------------------------------------- crashes

_SAVE_POINTS = ["save:state", "save:config", "save:meta", "save:manifest",
                "finalize:old_moved", "finalize:new_moved", "finalize:done"]
_COMMITTED = {"finalize:new_moved", "finalize:done"}  # the new save is in place


@pytest.mark.parametrize("point", _SAVE_POINTS)
def test_crash_at_every_step_of_an_overwrite_loses_nothing(tmp_path, fault, point):
    path = tmp_path / "c"
    _save(path, 1)
    fault(point, ckpt.SimulatedCrash(point))
    with pytest.raises(ckpt.SimulatedCrash):
        _save(path, 2, overwrite=True)
    ckpt._FAULT_HOOK = None
    # A reader sees one complete save, the new one only once committed, never a mixture.
    with pytest.warns(UserWarning, match="interrupted") if point == "finalize:old_moved" \
            else _no_warning():
        c = ckpt.load(path)
    _assert_is(c, 2 if point in _COMMITTED else 1)
    # The next writer recovers and cleans every leftover.
    _save(path, 3, overwrite=True)
    _assert_is(ckpt.load(path), 3)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("point", _SAVE_POINTS[:4])
def test_crash_before_the_first_commit_leaves_nothing_that_loads(tmp_path, fault, point):
    path = tmp_path / "c"
    fault(point, ckpt.SimulatedCrash(point))
    with pytest.raises(ckpt.SimulatedCrash):
        _save(path, 1)
    ckpt._FAULT_HOOK = None
    with pytest.raises(ckpt.CheckpointError, match="interrupted save"):
        ckpt.load(path)
    assert ckpt.recover(path) == (path.absolute() if point == "save:manifest" else None)
    assert _leftovers(tmp_path) == []


def test_recover_puts_the_newest_complete_copy_back_after_a_crash_between_renames(tmp_path,
                                                                                  fault):
    path = tmp_path / "c"
    _save(path, 1)
    fault("finalize:old_moved", ckpt.SimulatedCrash())
    with pytest.raises(ckpt.SimulatedCrash):
        _save(path, 2, overwrite=True)
    ckpt._FAULT_HOOK = None
    assert not path.exists()
    ckpt.recover(path)  # what the next writer does first
    _assert_is(ckpt.load(path), 2)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, "No space left on device"),
                                 PermissionError(errno.EACCES, "Permission denied"),
                                 ValueError("tensorstore: write failed")])
@pytest.mark.parametrize("point", ["save:state", "save:manifest"])
def test_write_errors_are_checkpoint_errors_naming_the_path(tmp_path, fault, err, point):
    path = tmp_path / "c"
    _save(path, 1)
    fault(point, err)
    with pytest.raises(ckpt.CheckpointError, match=f"{path}.*could not write.*intact"):
        _save(path, 2, overwrite=True)
    ckpt._FAULT_HOOK = None
    _assert_is(ckpt.load(path), 1)
    assert _leftovers(tmp_path) == []


def test_disk_full_by_file_size_limit_keeps_the_previous_checkpoint(tmp_path):
    """A real write failure: RLIMIT_FSIZE makes every write past 256 KiB fail (EFBIG)."""
    script = textwrap.dedent(
        """
        import resource, signal, sys
        import jax, jax.numpy as jnp
        from jaxcrl import checkpoint as ckpt
        path = sys.argv[1]
        ckpt.save(path, {"w": jnp.ones((8, 8))}, config={"v": 1}, kind="crl", step=1)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
        try:
            big = jax.random.normal(jax.random.key(0), (1024, 1024))  # incompressible
            ckpt.save(path, {"w": big}, config={"v": 2}, kind="crl", step=2, overwrite=True)
        except ckpt.CheckpointError as e:
            print("REFUSED", e)
        else:
            print("SAVED")
        """
    )
    path = tmp_path / "c"
    r = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "REFUSED" in r.stdout and str(path) in r.stdout, r.stdout
    c = ckpt.load(path)
    assert c.step == 1 and c.config == {"v": 1}
    np.testing.assert_array_equal(c.state["w"], np.ones((8, 8)))
    assert _leftovers(tmp_path) == []


def test_crash_mid_prune_never_leaves_a_half_deleted_step(tmp_path, fault):
    run = tmp_path / "run"
    mgr = ckpt.CheckpointManager(run, kind="crl", save_every=1, keep_last=2)
    for v in (1, 2):
        mgr.save(v, _state(v), config=VCfg(v))
    fault("prune:renamed", ckpt.SimulatedCrash())
    with pytest.raises(ckpt.SimulatedCrash):
        mgr.save(3, _state(3), config=VCfg(3))
    ckpt._FAULT_HOOK = None
    mgr.close()  # the process died: the kernel drops its lock
    reader = ckpt.CheckpointManager(run, kind="crl")
    assert reader.steps() == [2, 3]
    _assert_is(reader.latest(), 3)
    with ckpt.CheckpointManager(run, kind="crl", keep_last=2) as owner:
        owner.save(4, _state(4), config=VCfg(4))
    assert reader.steps() == [3, 4] and _leftovers(run) == []


@pytest.mark.parametrize("point", _SAVE_POINTS)
def test_manager_crash_at_every_save_step_resumes_from_a_complete_step(tmp_path, fault, point):
    run = tmp_path / "run"
    mgr = ckpt.CheckpointManager(run, kind="crl", save_every=1, keep_last=3)
    mgr.save(1, _state(1), config=VCfg(1))
    mgr.save(2, _state(2), config=VCfg(2))
    # old_moved only happens when a step is saved again (it replaces the earlier copy)
    again = point == "finalize:old_moved"
    fault(point, ckpt.SimulatedCrash())
    with pytest.raises(ckpt.SimulatedCrash):
        mgr.save(2 if again else 3, _state(2 if again else 3), config=VCfg(2 if again else 3))
    ckpt._FAULT_HOOK = None
    mgr.close()
    with pytest.warns(UserWarning, match="interrupted") if again else _no_warning():
        c = ckpt.CheckpointManager(run, kind="crl").latest()
    _assert_is(c, 3 if point in _COMMITTED else 2)
    with ckpt.CheckpointManager(run, kind="crl", keep_last=3) as owner:
        owner.save(4, _state(4), config=VCfg(4))
        _assert_is(owner.latest(), 4)
    assert _leftovers(run) == []


def test_resume_falls_back_to_the_newest_step_that_verifies_and_says_which(tmp_path):
    run = tmp_path / "run"
    with ckpt.CheckpointManager(run, kind="crl", save_every=1, keep_last=None) as mgr:
        for v in (1, 2, 3):
            mgr.save(v, _state(v), config=VCfg(v))
    victim = max((p for p in (run / "step_000000003" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="resuming from step 2.*skipped step 3.*corrupt"):
        c = ckpt.CheckpointManager(run, kind="crl").latest()
    _assert_is(c, 2)
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.CheckpointManager(run, kind="crl").restore(3)


def test_killed_saving_process_always_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL, at a random moment, a process that overwrites a checkpoint in a loop: the
    path always loads as one complete save (the last committed one or the one before)."""
    script = textwrap.dedent(
        """
        import sys, dataclasses, jax.numpy as jnp
        from jaxcrl import checkpoint as ckpt
        i = 0
        while True:
            ckpt.save(sys.argv[1], {"w": jnp.full((128, 128), float(i))}, config={"i": i},
                      kind="crl", step=i, overwrite=True)
            print(i, flush=True); i += 1
        """
    )
    path = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
                            text=True)
    done = [int(proc.stdout.readline()) for _ in range(3)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    c = ckpt.load(path)  # must not raise: three saves had completed
    assert c.step >= done[-1] and c.config == {"i": c.step}
    np.testing.assert_array_equal(c.state["w"], np.full((128, 128), float(c.step)))
    _save_dict = {"w": jnp.zeros(2)}
    ckpt.save(path, _save_dict, config={"i": -1}, kind="crl", overwrite=True)  # recovers
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- concurrency


def test_concurrent_reader_threads_never_see_a_mixed_checkpoint(tmp_path):
    path = tmp_path / "c"
    _save(path, 0)
    n_writes, stop, errors = 25, threading.Event(), []
    seen = [[], []]

    def writer():
        try:
            for v in range(1, n_writes + 1):
                _save(path, v, overwrite=True)
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)
        finally:
            stop.set()

    def reader(mine):
        while not stop.is_set():
            try:
                c = ckpt.load(path)
                _assert_is(c, c.step)
                mine.append(c.step)
            except BaseException as e:  # noqa: BLE001 — reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(m,))
                                                   for m in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    for mine in seen:  # each reader sees committed saves only, in order
        assert mine and mine == sorted(mine)
    _assert_is(ckpt.load(path), n_writes)


_WRITER = textwrap.dedent(
    """
    import sys, dataclasses, jax.numpy as jnp
    from jaxcrl import checkpoint as ckpt
    path, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "manager":
        mgr = ckpt.CheckpointManager(path, kind="crl", save_every=1, keep_last=2)
    for i in range(1, n + 1):
        state = {"w": jnp.full((32, 32), float(i)), "b": jnp.arange(32) + i}
        if mode == "manager":
            mgr.save(i, state, config={"v": i})
        else:
            ckpt.save(path, state, config={"v": i}, kind="crl", step=i, overwrite=True)
    print("WROTE", n, flush=True)
    """
)


@pytest.mark.parametrize("mode", ["path", "manager"])
def test_reader_process_and_writer_process_never_mix_or_break_each_other(tmp_path, mode):
    path, n = tmp_path / "c", 20
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads = 0
    while proc.poll() is None:
        if mode == "manager":
            mgr = ckpt.CheckpointManager(path, kind="crl")  # looking at a running job
            if mgr.latest_step() is None:
                continue
            c = mgr.latest()
        else:
            if not path.exists():
                continue
            c = ckpt.load(path)
        assert c.config == {"v": c.step}
        np.testing.assert_array_equal(c.state["w"], np.full((32, 32), float(c.step)))
        np.testing.assert_array_equal(c.state["b"], np.arange(32) + c.step)
        reads += 1
    out, err = proc.communicate()
    assert proc.returncode == 0 and f"WROTE {n}" in out, err[-2000:]
    assert reads >= 1


def test_a_second_writer_on_a_workdir_is_refused(tmp_path):
    run = tmp_path / "run"
    first = ckpt.CheckpointManager(run, kind="crl", save_every=1)
    first.save(1, _state(1), config=VCfg(1))
    second = ckpt.CheckpointManager(run, kind="crl", save_every=1)
    with pytest.raises(ckpt.CheckpointError, match="another writer"):
        second.save(2, _state(2), config=VCfg(2))
    _assert_is(second.latest(), 1)  # reading is fine
    first.close()
    second.save(2, _state(2), config=VCfg(2))  # once released, it may take over
    second.close()
    assert ckpt.CheckpointManager(run, kind="crl").steps() == [1, 2]


def test_a_second_writer_process_is_refused(tmp_path):
    run = tmp_path / "run"
    with ckpt.CheckpointManager(run, kind="crl", save_every=1) as mgr:
        mgr.save(1, _state(1), config=VCfg(1))
        r = subprocess.run([sys.executable, "-c", _WRITER, str(run), "1", "manager"],
                           capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "another writer" in r.stderr, r.stderr[-2000:]
    assert ckpt.CheckpointManager(run, kind="crl").steps() == [1]


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
