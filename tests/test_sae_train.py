"""SAE training: toy recovery, vmapped sweeps equal separate runs, sources, checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import checkpoint as ckpt
from jaxcrl import sae

TOY = sae.ToyConfig(n_features=24, dim=12, avg_active=2.0, freq_ratio=0.5, corr_rank=4)
CFG = sae.SAEConfig(architecture="topk", d_in=12, d_sae=24, k=3, steps=40, batch_size=128,
                    lr=1e-2, warmup=5, dead_tokens=2000)


def _toy_source(batch=128):
    toy = sae.make_toy(jax.random.key(0), TOY)
    return toy, sae.generator_source(sae.toy_generator(toy, batch), TOY.dim, batch)


def test_tiny_toy_run_recovers_the_features():
    toy, src = _toy_source(256)
    cfg = dataclasses.replace(CFG, steps=800, batch_size=256, k=2, lr_decay=0.3)
    r = sae.train(cfg, src, jax.random.key(1), progress=False, chunk_size=400)
    p = r.params()
    # 24 features in 12 dims (2x superposition), 800 steps: measured MMCS 0.968, MCC 0.91;
    # a random decoder scores about 0.64 / 0.60 here
    assert sae.mmcs(p["W_dec"], toy.directions) > 0.93
    assert sae.direction_mcc(p["W_dec"], toy.directions) > 0.85
    assert r.history["fvu"].shape == (800,)
    assert r.history["fvu"][-50:].mean() < 0.25
    np.testing.assert_allclose(np.linalg.norm(np.asarray(r.state.params["W_dec"]), axis=1), 1.0,
                               rtol=1e-5)


@pytest.mark.parametrize("arch,values", [("topk", {"k": [2, 3]}),
                                         ("relu", {"l1_coefficient": [0.5, 3.0]})])
def test_vmapped_sweep_equals_separate_runs(arch, values):
    _, src = _toy_source()
    base = dataclasses.replace(CFG, architecture=arch)
    key = jax.random.key(2)
    sweep = sae.train_sweep(base, src, key, values=values, progress=False, chunk_size=20)
    assert sweep.history["mse"].shape == (CFG.steps, 2)
    name = next(iter(values))
    for i, v in enumerate(values[name]):
        single = sae.train(dataclasses.replace(base, **{name: v}), src, key, progress=False,
                           chunk_size=40)
        run = sae.select_run(sweep.state, i)
        for n in single.state.params:
            np.testing.assert_allclose(run.params[n], single.state.params[n], rtol=2e-4,
                                       atol=2e-5, err_msg=n)
        np.testing.assert_allclose(sweep.history["mse"][:, i], single.history["mse"],
                                   rtol=2e-4)
    with pytest.raises(ValueError, match="pass run="):
        sweep.params()
    np.testing.assert_array_equal(sweep.params(1)["b_enc"], sweep.state.params["b_enc"][1])
    # different hyper-parameters really gave different SAEs
    assert np.abs(sweep.history["l0"][-1, 0] - sweep.history["l0"][-1, 1]) > 0.1


def test_sweep_configs_and_errors():
    base, cfgs = sae.sweep_configs(CFG, {"k": [2, 5], "lr": [1e-3, 2e-3]})
    assert base.k == 5 and [c.k for c in cfgs] == [2, 5] and cfgs[1].lr == 2e-3
    with pytest.raises(ValueError, match="cannot sweep"):
        sae.sweep_configs(CFG, {"d_sae": [8, 16]})
    with pytest.raises(ValueError, match="only acts on relu"):
        sae.sweep_configs(CFG, {"l1_coefficient": [1.0, 2.0]})
    with pytest.raises(ValueError, match="equally long"):
        sae.sweep_configs(CFG, {"k": [2], "lr": [1e-3, 2e-3]})
    _, src = _toy_source()
    with pytest.raises(ValueError, match="differ only"):
        sae.train_sweep([CFG, dataclasses.replace(CFG, d_sae=32)], src, jax.random.key(0))
    with pytest.raises(ValueError, match="d_in"):
        sae.train(dataclasses.replace(CFG, d_in=13), src, jax.random.key(0))


def test_nan_activations_are_a_clear_error():
    def gen(key):
        return jnp.full((128, 12), jnp.nan)

    src = sae.generator_source(gen, 12, 128)
    with pytest.raises(ValueError, match="NaN"):
        sae.train(CFG, src, jax.random.key(0), progress=False)


def test_auxk_revives_dead_latents_and_matches_hand_computation():
    key = jax.random.key(3)
    params = sae.init_params(key, dataclasses.replace(CFG, d_sae=6, k=2))
    pre = jax.random.normal(jax.random.key(4), (5, 6))
    resid = jax.random.normal(jax.random.key(5), (5, 12))
    dead = jnp.array([True, False, True, True, False, False])
    got = sae.auxk_loss(params, pre, resid, dead, 2)
    p, w, e = np.asarray(pre), np.asarray(params["W_dec"]), np.asarray(resid)
    tot = 0.0
    for b in range(5):
        cand = [i for i in range(6) if dead[i]]
        top = sorted(cand, key=lambda i: -p[b, i])[:2]
        zb = np.zeros(6)
        zb[top] = np.maximum(p[b, top], 0)
        tot += np.sum((zb @ w - e[b]) ** 2)
    np.testing.assert_allclose(got, min(3 / 2, 1.0) * tot / 5, rtol=1e-5)


def test_sources_sample_by_key(tmp_path):
    x = np.arange(200 * 4, dtype=np.float32).reshape(200, 4)
    src = sae.array_source(x, 8)
    st = src.init(jax.random.key(0))
    _, a = src.sample(st, jax.random.key(1))
    _, b = src.sample(st, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 4) and set(np.asarray(a)[:, 0] // 4).issubset(set(range(200)))
    np.save(tmp_path / "acts.npy", x)
    src = sae.npy_source(tmp_path / "acts.npy", 8, max_rows=50)
    st = src.init(jax.random.key(0))
    assert st["data"].shape == (50, 4) and src.refresh is not None
    rows = np.asarray(st["data"])[:, 0] // 4
    assert np.all(np.diff(rows) > 0)  # a subset of distinct rows of the file
    buf = sae.generator_source(lambda k: jax.random.normal(k, (16, 4)), 4, 8, buffer_size=64)
    st = buf.init(jax.random.key(0))
    st2, xb = jax.jit(buf.sample)(st, jax.random.key(1))
    assert st["buffer"].shape == (64, 4) and xb.shape == (8, 4)
    assert not np.array_equal(st["buffer"], st2["buffer"])


def test_checkpoint_round_trip_and_resume(tmp_path):
    _, src = _toy_source()
    key = jax.random.key(6)
    full = sae.train(CFG, src, key, progress=False, chunk_size=20)
    # the one checkpoint format, kind "sae"
    ckpt.save(tmp_path / "c", full.state, config=CFG, kind="sae", step=CFG.steps)
    back = ckpt.load(tmp_path / "c", kind="sae", target=jax.eval_shape(lambda: full.state))
    assert back.config == CFG and isinstance(back.state, sae.SAEState)
    for a, b in zip(jax.tree_util.tree_leaves(full.state), jax.tree_util.tree_leaves(back.state),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # resume: 20 steps into a workdir, then continue to 40 == 40 straight
    half = dataclasses.replace(CFG, steps=20)
    sae.train(half, src, key, progress=False, chunk_size=20, workdir=tmp_path / "w",
              save_every=20)
    resumed = sae.train(CFG, src, key, progress=False, chunk_size=20, workdir=tmp_path / "w",
                        save_every=20)
    assert resumed.history["mse"].shape == (20,)
    np.testing.assert_allclose(resumed.state.params["W_dec"], full.state.params["W_dec"],
                               rtol=1e-5, atol=1e-6)



def test_npy_source_refreshes_between_rounds(tmp_path):
    # A file of 400 distinct rows of which 100 fit on the device: training must see rows
    # of the first subset only before the refresh, and rows that were not in it after.
    toy, _ = _toy_source()
    x, _ = sae.toy_sample(toy, jax.random.key(7), 400)
    # a little noise makes every row distinct (a toy row with no active feature is zero)
    x = np.asarray(x) + 1e-3 * np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    assert len(np.unique(x, axis=0)) == 400
    np.save(tmp_path / "acts.npy", x)
    src = sae.npy_source(tmp_path / "acts.npy", CFG.batch_size, max_rows=100)
    loaded, seen = [], []

    def spy_init(key):
        st = src.init(key)
        loaded.append(np.asarray(st["data"]))
        return st

    def spy_refresh(state, key):
        st = src.refresh(state, key)
        loaded.append(np.asarray(st["data"]))
        return st

    def spy_sample(state, key):
        st, xb = src.sample(state, key)
        jax.debug.callback(lambda b: seen.append(np.asarray(b)), xb)
        return st, xb

    spy = dataclasses.replace(src, init=spy_init, sample=spy_sample, refresh=spy_refresh)
    cfg = dataclasses.replace(CFG, steps=20)
    r = sae.train(cfg, spy, jax.random.key(8), progress=False, chunk_size=10, refresh_every=10)
    assert r.history["mse"].shape == (20,) and np.isfinite(r.history["mse"]).all()
    assert len(loaded) == 2, "refresh must run exactly once in 2 rounds of 10 steps"
    ids = {row.tobytes(): i for i, row in enumerate(x)}
    first, second = ({ids[row.tobytes()] for row in d} for d in loaded)
    assert len(first) == len(second) == 100 and first != second
    rows_seen = {ids[row.tobytes()] for b in seen for row in b}
    assert rows_seen <= first | second
    assert rows_seen & first and rows_seen - first, "no new rows arrived after the refresh"
