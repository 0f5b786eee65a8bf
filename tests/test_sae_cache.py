"""Activation caches on disk: exact rows, resume after a crash, atomicity, safe paths."""

import json
import os

import jax
import numpy as np
import pytest

from jaxcrl.lm import HookedTransformer, TransformerConfig
from jaxcrl.sae import cache as cache_lib
from jaxcrl.sae.cache import CacheError, cache_activations, cache_source, open_cache

HOOKS = ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post", "blocks.1.hook_attn_out"]


@pytest.fixture(scope="module")
def lm():
    cfg = TransformerConfig.tiny(vocab_size=50, n_ctx=16)
    model = HookedTransformer(cfg)
    return model, model.init(jax.random.key(0))


@pytest.fixture(scope="module")
def tokens():
    return np.asarray(jax.random.randint(jax.random.key(1), (10, 12), 0, 50), np.int32)


class Counting:
    """Wraps a model; counts forwards and can crash on the ``crash_at``-th one."""

    def __init__(self, model, crash_at=None):
        self.model, self.cfg, self.calls, self.crash_at = model, model.cfg, 0, crash_at

    def run_with_cache(self, params, toks, **kw):
        if not isinstance(toks, jax.core.Tracer):  # eval_shape traces do not count
            self.calls += 1
            if self.calls == self.crash_at:
                raise RuntimeError("simulated crash")
        return self.model.run_with_cache(params, toks, **kw)


def test_rows_equal_run_with_cache(lm, tokens, tmp_path):
    model, params = lm
    c = cache_activations(model, params, tokens, HOOKS, tmp_path, seqs_per_shard=4,
                          batch_size=2, start_pos=1, progress=False)
    assert c.hooks == tuple(HOOKS) and c.n_shards(HOOKS[0]) == 3  # 4 + 4 + 2 sequences
    np.testing.assert_array_equal(c.tokens(), tokens)
    for h in HOOKS:
        want = []
        for b in range(0, 10, 2):  # the same batches, the same call
            _, ref = model.run_with_cache(params, tokens[b:b + 2], names=HOOKS,
                                          stop_at_layer=2)
            want.append(np.asarray(ref[h])[:, 1:].reshape(-1, c.d(h)))
        want = np.concatenate(want)
        assert c.n_rows(h) == 10 * 11 and want.shape == (110, c.d(h))
        np.testing.assert_array_equal(c.read(h), want)
        # and against one plain forward of all tokens (another program: float tolerance)
        _, full = model.run_with_cache(params, tokens, names=[h])
        np.testing.assert_allclose(c.read(h), np.asarray(full[h])[:, 1:].reshape(110, -1),
                                   rtol=1e-5, atol=1e-6)
        idx = np.array([109, 0, 45, 44, 88])  # across shards, unsorted
        np.testing.assert_array_equal(c.rows(h, idx), want[idx])
    assert c.d("blocks.0.mlp.hook_post") == 4 * 32


def test_resume_after_crash_mid_shard(lm, tokens, tmp_path, monkeypatch):
    model, params = lm
    ref = cache_activations(model, params, tokens, HOOKS, tmp_path / "ref", seqs_per_shard=2,
                            progress=False)
    # crash 1: the model dies on its 3rd forward (shards 0, 1 written, no manifest)
    crashing = Counting(model, crash_at=3)
    with pytest.raises(RuntimeError, match="simulated"):
        cache_activations(crashing, params, tokens, HOOKS, tmp_path / "c", seqs_per_shard=2,
                          progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()
    with pytest.raises(CacheError, match="missing"):
        open_cache(tmp_path / "c")
    # crash 2: mid-shard, while writing the second hook file of shard 2 (a partial temp
    # file left behind, the first hook's file of that shard complete)
    real_write = cache_lib._write_npy
    writes = {"n": 0}

    def dying_write(path, arr):
        writes["n"] += 1
        if writes["n"] == 2:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(b"\x93NUMPY partial")
            raise OSError("disk full")
        real_write(path, arr)

    monkeypatch.setattr(cache_lib, "_write_npy", dying_write)
    again = Counting(model)
    with pytest.raises(OSError, match="disk full"):
        cache_activations(again, params, tokens, HOOKS, tmp_path / "c", seqs_per_shard=2,
                          progress=False)
    assert again.calls <= 2  # shards 0 and 1 were skipped (shard 3 may have started)
    monkeypatch.setattr(cache_lib, "_write_npy", real_write)
    # a truncated shard (a copy killed by hand) is recomputed too
    shard0 = tmp_path / "c" / HOOKS[2] / "shard_00000.npy"
    shard0.write_bytes(shard0.read_bytes()[:-7])
    final = Counting(model)
    c = cache_activations(final, params, tokens, HOOKS, tmp_path / "c", seqs_per_shard=2,
                          progress=False)
    assert final.calls == 1 + 3  # shard 0 (truncated) and shards 2, 3, 4
    assert not list((tmp_path / "c").rglob("*.tmp-*"))  # stale temporaries cleaned up
    for h in HOOKS:
        np.testing.assert_array_equal(c.read(h), ref.read(h))
    # a rerun of a complete cache runs nothing
    done = Counting(model)
    cache_activations(done, params, tokens, HOOKS, tmp_path / "c", seqs_per_shard=2,
                      progress=False)
    assert done.calls == 0


def test_different_cache_refused(lm, tokens, tmp_path):
    model, params = lm
    cache_activations(model, params, tokens, HOOKS[:1], tmp_path, seqs_per_shard=5,
                      progress=False)
    with pytest.raises(CacheError, match="different activation cache"):
        cache_activations(model, params, tokens[::-1], HOOKS[:1], tmp_path,
                          seqs_per_shard=5, progress=False)
    with pytest.raises(CacheError, match="different activation cache"):
        cache_activations(model, params, tokens, HOOKS[:1], tmp_path, seqs_per_shard=5,
                          dtype="float16", progress=False)


def _tamper(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_traversal_and_symlinks_refused(lm, tokens, tmp_path):
    model, params = lm
    root = tmp_path / "c"
    cache_activations(model, params, tokens, HOOKS[:1], root, seqs_per_shard=5,
                      progress=False)
    outside = tmp_path / "secret.npy"
    np.save(outside, np.zeros((60, 32), np.float32))
    good = json.loads((root / "manifest.json").read_text())
    h = HOOKS[0]
    for bad in ["../secret.npy", str(outside), f"{h}/../../secret.npy", "./tokens.npy",
                f"{h}//shard_00000.npy", "C:\\x.npy", 7, ""]:
        _tamper(root, lambda m, bad=bad: m["hooks"][h]["shards"][0].__setitem__("path", bad))
        with pytest.raises(CacheError, match="manifest path"):
            open_cache(root)
    (root / "manifest.json").write_text(json.dumps(good))
    # a symlink placed where a shard should be (pointing outside) is refused
    shard = root / h / "shard_00000.npy"
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(CacheError, match="symbolic link"):
        open_cache(root)
    shard.unlink()
    # and a symlinked hook folder too
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    _tamper(root, lambda m: m["hooks"][h]["shards"][0].__setitem__("path", "link/secret.npy"))
    with pytest.raises(CacheError, match="symbolic link"):
        open_cache(root)
    # hook names are never paths
    _tamper(root, lambda m: m["hooks"].__setitem__("../x", m["hooks"].pop(h)))
    with pytest.raises(CacheError, match="hook name"):
        open_cache(root)
    with pytest.raises(CacheError, match="hook name"):
        cache_activations(model, params, tokens, ["../blocks.0.hook_resid_post"],
                          tmp_path / "d", progress=False)


def test_foreign_or_corrupt_manifest(lm, tokens, tmp_path):
    model, params = lm
    root = tmp_path / "c"
    cache_activations(model, params, tokens, HOOKS[:1], root, seqs_per_shard=5,
                      progress=False)
    _tamper(root, lambda m: m.__setitem__("format", "pickle"))
    with pytest.raises(CacheError, match="not a jaxcrl activation cache"):
        open_cache(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt JSON"):
        open_cache(root)


def test_source_shuffles_across_shards(lm, tokens, tmp_path):
    model, params = lm
    h = HOOKS[0]
    c = cache_activations(model, params, tokens, [h], tmp_path, seqs_per_shard=3,
                          progress=False)
    full = c.read(h)
    src = cache_source(c, h, batch_size=16, max_rows=40)  # a subset of 40 of 120 rows
    state = src.init(jax.random.key(0))
    data = np.asarray(state["data"])
    assert data.shape == (40, 32) and src.refresh is not None
    pos = [int(np.flatnonzero((full == r).all(1))[0]) for r in data]
    assert len(set(pos)) == 40 and len({p // 36 for p in pos}) > 1  # several shards
    np.testing.assert_array_equal(np.asarray(src.init(jax.random.key(0))["data"]), data)
    other = np.asarray(src.refresh(state, jax.random.key(1))["data"])
    assert not np.array_equal(other, data)
    _, x = jax.jit(src.sample)(state, jax.random.key(2))
    assert x.shape == (16, 32)
    assert all((data == r).all(1).any() for r in np.asarray(x))
    whole = cache_source(tmp_path, h, batch_size=8)  # everything fits: no refresh
    assert whole.refresh is None
    np.testing.assert_array_equal(np.asarray(whole.init(jax.random.key(0))["data"]), full)
    with pytest.raises(KeyError, match="not in the cache"):
        cache_source(c, HOOKS[1], batch_size=8)


def test_sae_trains_from_the_cache(lm, tokens, tmp_path):
    from jaxcrl import sae

    model, params = lm
    c = cache_activations(model, params, tokens, HOOKS[:2], tmp_path, progress=False)
    for h in HOOKS[:2]:
        src = cache_source(c, h, batch_size=32, max_rows=64)
        cfg = sae.SAEConfig.tiny(d_in=c.d(h), d_sae=64, steps=40, batch_size=32)
        res = sae.train_sweep(cfg, src, jax.random.key(0), values={"k": [2, 4]},
                              refresh_every=20, progress=False)
        fvu = res.history["fvu"]
        assert fvu.shape == (40, 2) and fvu[-5:].mean() < fvu[:5].mean()


def test_bad_arguments(lm, tokens, tmp_path):
    model, params = lm
    with pytest.raises(ValueError, match="not \\[B, T"):
        cache_activations(model, params, tokens, ["blocks.0.attn.hook_pattern"], tmp_path,
                          progress=False)
    with pytest.raises(ValueError, match="start_pos"):
        cache_activations(model, params, tokens, HOOKS, tmp_path, start_pos=12,
                          progress=False)
    with pytest.raises(ValueError, match="divide"):
        cache_activations(model, params, tokens, HOOKS, tmp_path, seqs_per_shard=4,
                          batch_size=3, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        cache_activations(model, params, tokens, HOOKS, tmp_path, dtype="bfloat16",
                          progress=False)
    with pytest.raises(ValueError, match="integer"):
        cache_activations(model, params, tokens.astype(float), HOOKS, tmp_path,
                          progress=False)


def test_bench_lm_cache_tiny(tmp_path):
    from conftest import load_experiment

    out = tmp_path / "b.json"
    res = load_experiment("experiments/bench/lm_cache.py").main([
        "--d-model", "16", "--layers", "2", "--heads", "2", "--vocab", "32", "--batch", "2",
        "--seq", "8", "--layer", "0", "--seqs", "8", "--seqs-per-shard", "4",
        "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "lm_cache"
    assert res["disk"]["rows_per_hook"] == 64 and res["disk"]["shards_per_hook"] == 2
    assert res["memory"]["apply"]["overhead_vs_apply"] == 1.0
    assert res["disk"]["write_mb_per_s"] > 0


def test_per_head_hooks_flatten(lm, tokens, tmp_path):
    model, params = lm
    z = "blocks.1.attn.hook_z"  # [B, T, H, Dh]: the per-head hooks of issue 11
    if z not in model.hook_names:
        pytest.skip("this model has no per-head hooks yet")
    c = cache_activations(model, params, tokens[:4], [z], tmp_path, seqs_per_shard=4,
                          progress=False)
    _, ref = model.run_with_cache(params, tokens[:4], names=[z], stop_at_layer=2)
    ref = np.asarray(ref[z])
    assert c.d(z) == ref.shape[2] * ref.shape[3]
    assert c.manifest["hooks"][z]["trailing_shape"] == list(ref.shape[2:])
    np.testing.assert_array_equal(c.read(z), ref.reshape(4 * 12, -1))
