"""SAE training: toy recovery, vmapped sweeps equal separate runs, sources, checkpoints."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import checkpoint as ckpt
from jaxcrl import sae
from jaxcrl.train import ConfigMismatchError, NonFiniteError
from jaxcrl.train.optim import learning_rate_of

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


def test_checkpoint_round_trip(tmp_path):
    _, src = _toy_source()
    full = sae.train(CFG, src, jax.random.key(6), progress=False, chunk_size=20)
    # the one checkpoint format, kind "sae"
    ckpt.save(tmp_path / "c", full.state, config=CFG, kind="sae", step=CFG.steps)
    back = ckpt.load(tmp_path / "c", kind="sae", target=jax.eval_shape(lambda: full.state))
    assert back.config == CFG and isinstance(back.state, sae.SAEState)
    for a, b in zip(jax.tree_util.tree_leaves(full.state), jax.tree_util.tree_leaves(back.state),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def _transformer_source(batch):
    """Residual-stream activations of a tiny random transformer on a tiny latent-SCM
    language, streamed through a shuffled buffer."""
    from jaxcrl.lm import HookedTransformer, TransformerConfig
    from jaxcrl.scm.language import TaskConfig, make_task, sample

    task = make_task(jax.random.key(0), TaskConfig.tiny())
    model = HookedTransformer(TransformerConfig(vocab_size=task.cfg.vocab_size,
                                                n_ctx=task.cfg.seq_len, d_model=12,
                                                n_layers=1, n_heads=2))
    params = model.init(jax.random.key(1))
    gen = sae.transformer_generator(model, params, lambda k: sample(task, k, 8).tokens,
                                    "blocks.0.hook_resid_post", stop_at_layer=1)
    return sae.generator_source(gen, 12, batch, buffer_size=4 * batch)


def _cache_source(tmp_path, batch):
    """A disk activation cache of a tiny random transformer (120 rows), read back 60 rows
    at a time (a new random subset on each refresh)."""
    from jaxcrl.lm import HookedTransformer, TransformerConfig
    from jaxcrl.sae.cache import cache_activations, cache_source

    model = HookedTransformer(TransformerConfig(vocab_size=50, n_ctx=12, d_model=12,
                                                n_layers=1, n_heads=2))
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (10, 12), 0, 50), np.int32)
    hook = "blocks.0.hook_resid_post"
    c = cache_activations(model, model.init(jax.random.key(0)), tokens, [hook],
                          tmp_path / "cache", seqs_per_shard=4, progress=False)
    return cache_source(c, hook, batch, max_rows=60)


def _source(kind, tmp_path, batch=128):
    if kind == "cache_refresh":
        return _cache_source(tmp_path, batch)
    toy = sae.make_toy(jax.random.key(0), TOY)
    if kind == "array":
        return sae.array_source(sae.toy_sample(toy, jax.random.key(9), 600)[0], batch)
    if kind == "npy_refresh":
        np.save(tmp_path / "acts.npy", np.asarray(sae.toy_sample(toy, jax.random.key(9),
                                                                 600)[0]))
        return sae.npy_source(tmp_path / "acts.npy", batch, max_rows=300)
    if kind == "generator":
        return sae.generator_source(sae.toy_generator(toy, batch), TOY.dim, batch)
    if kind == "buffer":
        return sae.generator_source(sae.toy_generator(toy, 32), TOY.dim, batch,
                                    buffer_size=3 * batch)
    return _transformer_source(batch)


@pytest.mark.parametrize("kind", ["array", "npy_refresh", "cache_refresh", "generator",
                                  "buffer", "transformer"])
def test_killed_and_resumed_run_is_bit_identical(kind, tmp_path):
    """Train 30 steps with checkpoints, delete the last one (as if the process was killed
    before writing it), resume: parameters, optimizer state, source state and the resumed
    metrics equal the uninterrupted run's exactly. Uneven chunks (7) and a refresh every 10
    steps for the npy source; lr_decay makes the schedule depend on the step."""
    src = _source(kind, tmp_path)
    cfg = dataclasses.replace(CFG, steps=30, lr_decay=0.5, dead_tokens=300)
    kw = dict(progress=False, chunk_size=7, save_every=10,
              refresh_every=10 if kind.endswith("_refresh") else None)
    key = jax.random.key(6)
    work = tmp_path / "w"
    full = sae.train(cfg, src, key, workdir=work, **kw)  # uninterrupted, checkpointing
    mgr = ckpt.CheckpointManager(work, kind="sae")
    assert mgr.steps() == [20, 30]
    shutil.rmtree(mgr.step_path(30))
    resumed = sae.train(cfg, src, key, workdir=work, **kw)
    assert resumed.history["mse"].shape == (10,)
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"][20:])
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state),
                    jax.tree_util.tree_leaves(full.state), strict=True):
        np.testing.assert_array_equal(a, b)
    # chunks of 7, 3 (to the checkpoint at 10), 7, 3, ...: one compiled program, and the
    # resumed run in this process reuses it (no retracing across chunks or resume)
    assert int(full.history["traces"]) == 1 and int(resumed.history["traces"]) == 0


def test_sweep_resume_is_bit_identical_and_checks_swept_values(tmp_path):
    src = _source("buffer", tmp_path)
    values = {"k": [2, 3], "lr": [1e-2, 3e-3]}
    kw = dict(progress=False, chunk_size=7, save_every=10)
    key = jax.random.key(3)
    full = sae.train_sweep(CFG, src, key, values=values, **kw)
    part = sae.train_sweep(CFG, src, key, values=values, workdir=tmp_path / "w", stop_at=20,
                           **kw)
    assert part.history["loss"].shape == (20, 2)
    resumed = sae.train_sweep(CFG, src, key, values=values, workdir=tmp_path / "w", **kw)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state),
                    jax.tree_util.tree_leaves(full.state), strict=True):
        np.testing.assert_array_equal(a, b)
    # the per-run learning rates live in the optimizer state (inject_hyperparams)
    np.testing.assert_allclose(learning_rate_of(resumed.state.opt_state), [1e-2, 3e-3])
    # other swept values: refused, whether the base config (run 0) or another run differs
    with pytest.raises(ConfigMismatchError, match=r"differs in \['lr'\]"):
        sae.train_sweep(CFG, src, key, values={"k": [2, 3], "lr": [3e-3, 1e-2]},
                        workdir=tmp_path / "w", **kw)
    with pytest.raises(ConfigMismatchError, match=r"lr: \[0.01, 0.003\] \(checkpoint\) "
                                                  r"vs \[0.01, 0.001\]"):
        sae.train_sweep(CFG, src, key, values={"k": [2, 3], "lr": [1e-2, 1e-3]},
                        workdir=tmp_path / "w", **kw)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    """A topk run must not resume a relu checkpoint of the same shapes (nor another key)."""
    _, src = _toy_source()
    relu = dataclasses.replace(CFG, architecture="relu")
    sae.train(relu, src, jax.random.key(0), progress=False, chunk_size=20,
              workdir=tmp_path / "w", save_every=20, stop_at=20)
    with pytest.raises(ConfigMismatchError, match="architecture: 'relu' .checkpoint. vs "
                                                  "'topk'") as e:
        sae.train(CFG, src, jax.random.key(0), progress=False, workdir=tmp_path / "w")
    assert "architecture" in e.value.fields
    with pytest.raises(ConfigMismatchError, match="fingerprint"):
        sae.train(relu, src, jax.random.key(1), progress=False, workdir=tmp_path / "w")
    # resume=False starts afresh in the same workdir
    r = sae.train(CFG, src, jax.random.key(0), progress=False, workdir=tmp_path / "w",
                  resume=False, stop_at=20)
    assert r.history["loss"].shape == (20,)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    """A source that turns NaN at step 25: the error names step 25 and ``loss``; the
    checkpoint at step 20 is the latest and loads with finite parameters."""

    def sample(state, key):
        x = jax.random.normal(key, (128, 12))
        x = jnp.where(state["t"] >= 25, jnp.nan, x)
        return {"t": state["t"] + 1}, x

    src = sae.Source(lambda key: {"t": jnp.int32(0)}, sample, 12, 128)
    with pytest.raises(NonFiniteError, match=r"'loss' is nan at step 25.*last good "
                                             r"checkpoint is step 20") as e:
        sae.train(CFG, src, jax.random.key(0), progress=False, chunk_size=7,
                  workdir=tmp_path / "w", save_every=10)
    assert (e.value.step, e.value.metric) == (25, "loss")
    mgr = ckpt.CheckpointManager(tmp_path / "w", kind="sae")
    assert mgr.steps() == [10, 20]
    c = mgr.restore()
    assert c.step == 20 and int(c.state["source"]["t"]) == 20
    assert all(np.isfinite(np.asarray(v)).all() for v in c.state["sae"]["params"].values())


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
