"""The one checkpoint format: round trips, atomicity under crashes, clear errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcrl import checkpoint as ckpt


@ckpt.register_config
@dataclasses.dataclass(frozen=True)
class InnerCfg:
    width: int = 4
    acts: tuple = ("relu", "tanh")


@ckpt.register_config
@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    name: str = "demo"
    inner: InnerCfg = InnerCfg()
    sizes: tuple = (1, 2, 3)
    extra: dict = dataclasses.field(default_factory=lambda: {"a": 1})


def _state(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "dense": {"w": jax.random.normal(k1, (3, 5)), "b": jnp.zeros(5)},
        "emb": jax.random.normal(k2, (7, 2)).astype(jnp.bfloat16),
        "layers": [jnp.arange(4, dtype=jnp.int32), {"scale": jnp.float32(2.5)}],
    }
    opt_state = optax.adamw(1e-3).init(params)
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(17)}


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_nested_pytree_dtypes_and_dataclass_config(tmp_path):
    state = _state()
    cfg = Cfg(lr=3e-4, inner=InnerCfg(width=9))
    ckpt.save(tmp_path / "c", state, config=cfg, kind="sae", step=42, metrics={"mse": 0.5})
    c = ckpt.load(tmp_path / "c", kind="sae", target=jax.eval_shape(lambda: state))
    _assert_tree_equal(c.state, state)
    assert c.state["params"]["emb"].dtype == jnp.bfloat16
    assert isinstance(c.state["opt_state"][0], optax.ScaleByAdamState)
    assert c.config == cfg and isinstance(c.config.inner, InnerCfg)
    assert c.config.sizes == (1, 2, 3)
    assert (c.kind, c.step, c.metrics) == ("sae", 42, {"mse": 0.5})


def test_load_without_target_returns_same_arrays(tmp_path):
    state = _state(1)
    ckpt.save(tmp_path / "c", state, config=Cfg(), kind="crl")
    c = ckpt.load(tmp_path / "c")
    np.testing.assert_array_equal(c.state["params"]["dense"]["w"], state["params"]["dense"]["w"])
    assert c.state["params"]["emb"].dtype == jnp.bfloat16


def test_wrong_kind_is_a_clear_error(tmp_path):
    ckpt.save(tmp_path / "c", _state(), config=Cfg(), kind="crl")
    with pytest.raises(ckpt.CheckpointError, match="asked for a 'sae'.*kind 'crl'"):
        ckpt.load(tmp_path / "c", kind="sae")


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="nope.*missing"):
        ckpt.load(tmp_path / "nope")


def test_foreign_directory_is_rejected(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(ckpt.CheckpointError, match="not a jaxcrl checkpoint"):
        ckpt.load(tmp_path / "foreign")


@pytest.mark.parametrize("victim", ["state", "meta.json", "config.json"])
def test_corrupted_file_raises(tmp_path, victim):
    ckpt.save(tmp_path / "c", _state(), config=Cfg(), kind="lm")
    if victim == "state":
        files = sorted(p for p in (tmp_path / "c" / "state").rglob("*") if p.is_file())
        target = max(files, key=lambda p: p.stat().st_size)  # the array data
    else:
        target = tmp_path / "c" / victim
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load(tmp_path / "c")


def test_truncated_file_raises(tmp_path):
    ckpt.save(tmp_path / "c", _state(), config=Cfg(), kind="lm")
    target = tmp_path / "c" / "meta.json"
    target.write_bytes(target.read_bytes()[:10])
    with pytest.raises(ckpt.CheckpointError, match="meta.json is corrupt"):
        ckpt.load(tmp_path / "c")


def test_mismatched_target_is_a_clear_error(tmp_path):
    state = _state()
    ckpt.save(tmp_path / "c", state, config=Cfg(), kind="lm")
    wrong = {"params": {"other": jnp.zeros(3)}}
    with pytest.raises(ckpt.CheckpointError, match="cannot restore the state"):
        ckpt.load(tmp_path / "c", target=wrong)


def test_existing_checkpoint_is_not_overwritten_by_default(tmp_path):
    ckpt.save(tmp_path / "c", _state(0), config=Cfg(), kind="lm")
    with pytest.raises(ckpt.CheckpointError, match="already exists"):
        ckpt.save(tmp_path / "c", _state(1), config=Cfg(), kind="lm")
    ckpt.save(tmp_path / "c", _state(1), config=Cfg(), kind="lm", overwrite=True)
    c = ckpt.load(tmp_path / "c", target=_state(0))
    _assert_tree_equal(c.state, _state(1))


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys, jax.numpy as jnp
    from jaxcrl import checkpoint as ckpt
    # Simulate the process dying just before the commit point of the save.
    def die(*a, **k):
        sys.stdout.write("dying\\n"); sys.stdout.flush(); os._exit(9)
    if sys.argv[2] == "before_commit":
        ckpt._finalize = die
    elif sys.argv[2] == "before_manifest":
        ckpt._write_manifest = die
    ckpt.save(sys.argv[1], {"w": jnp.full((64, 64), float(sys.argv[3]))}, config={"v": 2},
              kind="crl", overwrite=True)
    """
)


@pytest.mark.parametrize("where", ["before_manifest", "before_commit"])
def test_crash_during_save_leaves_nothing_that_loads(tmp_path, where):
    path = tmp_path / "c"
    r = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(path), where, "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    with pytest.raises(ckpt.CheckpointError, match="interrupted save"):
        ckpt.load(path)


def test_crash_while_overwriting_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "c"
    ckpt.save(path, {"w": jnp.full((64, 64), 1.0)}, config={"v": 1}, kind="crl")
    r = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(path), "before_commit", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    c = ckpt.load(path)
    assert c.config == {"v": 1}
    np.testing.assert_array_equal(c.state["w"], np.full((64, 64), 1.0))


def test_killed_save_never_loads_as_valid(tmp_path):
    """SIGKILL a process that saves in a loop, at a random moment; whatever is on disk either
    loads fully intact or raises CheckpointError."""
    script = textwrap.dedent(
        """
        import sys, jax.numpy as jnp
        from jaxcrl import checkpoint as ckpt
        i = 0
        while True:
            ckpt.save(sys.argv[1], {"w": jnp.full((256, 256), float(i))}, config={"i": i},
                      kind="crl", step=i, overwrite=True)
            print(i, flush=True); i += 1
        """
    )
    path = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
                            text=True)
    for _ in range(3):  # let it complete a few saves, then kill it mid-flight
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        c = ckpt.load(path)
    except ckpt.CheckpointError:
        return
    np.testing.assert_array_equal(c.state["w"], np.full((256, 256), float(c.step)))
    assert c.config == {"i": c.step}


def test_manager_keeps_last_k_and_resumes_latest(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path / "run", kind="sae", save_every=10, keep_last=2)
    assert mgr.latest() is None
    state = {"w": jnp.zeros(3)}
    for step in range(1, 51):
        state = {"w": state["w"] + 1}
        mgr.maybe_save(step, state, config=Cfg(), metrics={"loss": float(step)})
    assert mgr.steps() == [40, 50]
    c = mgr.latest(target=state)
    assert c.step == 50 and c.metrics == {"loss": 50.0}
    np.testing.assert_array_equal(c.state["w"], np.full(3, 50.0))
    assert mgr.restore(40).step == 40


def test_manager_ignores_interrupted_saves_and_only_its_next_owner_clears_them(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path / "run", kind="sae", save_every=1)
    mgr.save(1, {"w": jnp.ones(2)}, config=None)
    mgr.close()
    stale = tmp_path / "run" / ".step_000000002.tmp-deadbeef"
    stale.mkdir()
    (stale / "junk").write_text("x")
    assert mgr.latest_step() == 1
    reader = ckpt.CheckpointManager(tmp_path / "run", kind="sae")
    assert reader.latest().step == 1 and stale.exists()  # readers never delete
    with ckpt.CheckpointManager(tmp_path / "run", kind="sae") as owner:
        owner.save(3, {"w": jnp.ones(2)}, config=None)
    assert not stale.exists()


def test_config_json_is_human_readable(tmp_path):
    ckpt.save(tmp_path / "c", _state(), config=Cfg(lr=0.25), kind="sae")
    raw = json.loads((tmp_path / "c" / "config.json").read_text())
    assert raw["fields"]["lr"] == 0.25
    assert raw["__dataclass__"].endswith(":Cfg")


def test_bad_kind_and_empty_state_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        ckpt.save(tmp_path / "a", _state(), config=None, kind="Bad Kind")
    with pytest.raises(ValueError, match="no array leaves"):
        ckpt.save(tmp_path / "b", {}, config=None, kind="sae")


def test_zero_size_arrays_round_trip(tmp_path):
    """orbax refuses zero-size arrays; the format stores their shape and restores them."""
    state = {"w": jnp.ones(3), "empty": jnp.zeros((4, 0)), "nested": [jnp.zeros((0,), jnp.int32)]}
    ckpt.save(tmp_path / "c", state, config=None, kind="crl")
    untyped = ckpt.load(tmp_path / "c").state
    typed = ckpt.load(tmp_path / "c", target=state).state
    for restored in (untyped, typed):
        assert restored["empty"].shape == (4, 0)
        assert restored["nested"][0].shape == (0,) and restored["nested"][0].dtype == np.int32
        np.testing.assert_array_equal(restored["w"], np.ones(3))


@pytest.mark.parametrize("with_target", [False, True])
def test_checkpoint_saved_on_a_gpu_loads_on_this_cpu(tmp_path, with_target):
    # A checkpoint from a GPU machine records its arrays' device ("cuda:0"); loading it
    # here must place them on the local device, with or without a target.
    state = _state()
    path = tmp_path / "ck"
    ckpt.save(path, state, config=Cfg(), kind="test")
    sharding = path / "state" / "_sharding"
    text = sharding.read_text()
    entries = {k: json.loads(v) for k, v in json.loads(text).items()}
    assert entries, "orbax wrote no sharding metadata"
    for v in entries.values():
        v["device_str"] = "cuda:0"
    sharding.write_text(json.dumps({k: json.dumps(v) for k, v in entries.items()}))
    ckpt._write_manifest(path)  # the edit stands in for a genuine foreign checkpoint
    target = jax.eval_shape(lambda: state) if with_target else None
    out = ckpt.load(path, kind="test", target=target).state
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(out), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
