"""The shared training loop: results independent of chunking, vmapping and resuming."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcrl import train
from jaxcrl.checkpoint import CheckpointManager
from jaxcrl.train.loop import RetraceError, compiled_chunk


def _problem():
    opt = optax.adam(0.05)
    target = jnp.array([1.0, -2.0, 3.0])

    def step(state, key):
        params, opt_state = state
        noise = 0.1 * jax.random.normal(key, (3,))
        loss_fn = lambda p: jnp.sum((p - target - noise) ** 2)
        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = opt.update(g, opt_state)
        return (optax.apply_updates(params, upd), opt_state), {"loss": loss}

    init = lambda p: (p, opt.init(p))
    return step, init


@pytest.mark.parametrize("chunk", [1, 7, 50])
def test_results_do_not_depend_on_chunk_size(chunk):
    step, init = _problem()
    key = jax.random.key(0)
    ref, h_ref = train.run(step, init(jnp.zeros(3)), key, n_steps=50, chunk_size=50,
                           progress=False)
    out, h = train.run(step, init(jnp.zeros(3)), key, n_steps=50, chunk_size=chunk,
                       progress=False)
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-6)
    np.testing.assert_allclose(h["loss"], h_ref["loss"], rtol=1e-6)
    assert h["loss"].shape == (50,)
    assert h["loss"][-1] < 0.2 * h["loss"][0]  # it actually optimizes


def test_vmapped_runs_equal_separate_runs():
    step, init = _problem()
    keys = jax.random.split(jax.random.key(1), 3)
    starts = jnp.stack([jnp.zeros(3), jnp.ones(3), -jnp.ones(3)])
    batched_state = jax.vmap(init)(starts)
    out, h = train.run(train.vmap_runs(step), batched_state, keys, n_steps=30, chunk_size=10,
                       batched=True, progress=False)
    assert h["loss"].shape == (30, 3)
    for r in range(3):
        single, hs = train.run(step, init(starts[r]), keys[r], n_steps=30, chunk_size=30,
                               progress=False)
        np.testing.assert_allclose(out[0][r], single[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h["loss"][:, r], hs["loss"], rtol=1e-5, atol=1e-6)


def test_resume_continues_the_same_trajectory():
    step, init = _problem()
    key = jax.random.key(2)
    full, h_full = train.run(step, init(jnp.zeros(3)), key, n_steps=40, chunk_size=40,
                             progress=False)
    half, h1 = train.run(step, init(jnp.zeros(3)), key, n_steps=20, progress=False)
    rest, h2 = train.run(step, half, key, n_steps=20, start_step=20, progress=False)
    np.testing.assert_allclose(rest[0], full[0], rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([h1["loss"], h2["loss"]]), h_full["loss"],
                               rtol=1e-6)


def test_on_chunk_metrics_are_recorded():
    step, init = _problem()
    calls = []

    def on_chunk(t, state, last):
        calls.append(t)
        return {"dist": float(jnp.linalg.norm(state[0] - jnp.array([1.0, -2.0, 3.0])))}

    _, h = train.run(step, init(jnp.zeros(3)), jax.random.key(0), n_steps=25, chunk_size=10,
                     progress=False, on_chunk=on_chunk)
    assert calls == [10, 20, 25]
    assert h["eval_step"].tolist() == [10, 20, 25]
    assert h["dist"][-1] < h["dist"][0]


# --------------------------------------------------------------------------- the driver


def _counting_step(state, key):
    """Adds a random number; NaN from step 13 on (``state["t"]`` counts steps)."""
    x = state["x"] + jax.random.normal(key, ())
    loss = jnp.where(state["t"] >= 13, jnp.nan, x**2)
    return {"x": x, "t": state["t"] + 1}, {"loss": loss, "x": x}


def _count_state():
    return {"x": jnp.float32(0.0), "t": jnp.int32(0)}


@chex.assert_max_traces(n=1)
def _traced_once_step(state, key):
    params, opt_state = state
    g = params - jax.random.normal(key, (3,))
    upd, opt_state = _OPT.update(g, opt_state)
    return (optax.apply_updates(params, upd), opt_state), {"loss": jnp.sum(g**2)}


_OPT = optax.adam(0.05)


def test_step_is_traced_once_across_uneven_chunks_and_resume():
    """Chunks of 7 over 50 steps end with a partial chunk of 1, and a resumed call starts
    at step 20 (chunk of 1, then 7s): still one trace of the step and one compiled chunk."""
    chex.clear_trace_counter()
    state = (jnp.zeros(3), _OPT.init(jnp.zeros(3)))
    key = jax.random.key(4)
    full, h_full = train.run(_traced_once_step, state, key, n_steps=50, chunk_size=7,
                             progress=False)
    half, _ = train.run(_traced_once_step, state, key, n_steps=20, chunk_size=7,
                        progress=False)
    rest, h_rest = train.run(_traced_once_step, half, key, n_steps=30, start_step=20,
                             chunk_size=7, progress=False)
    np.testing.assert_array_equal(rest[0], full[0])
    np.testing.assert_array_equal(h_rest["loss"], h_full["loss"][20:])
    # a differently shaped state must retrace: the guard fires rather than compile silently
    chunk = compiled_chunk(_counting_step, _count_state(), key, size=5, batched=False)
    chunk(_count_state(), key, 0, 5)
    with pytest.raises(RetraceError):
        chunk({"x": jnp.zeros(2), "t": jnp.int32(0)}, key, 0, 5)


def test_non_finite_guard_names_the_step_and_the_last_good_checkpoint_loads(tmp_path):
    mgr = CheckpointManager(tmp_path / "run", kind="test", save_every=5, keep_last=3)
    cbs = [train.Checkpoint(mgr, config={"name": "toy"}),  # listed first: the guard still
           train.NonFiniteGuard(("loss",), manager=mgr)]    # runs before it (order)
    with pytest.raises(train.NonFiniteError, match=r"'loss' is nan at step 13; training "
                                                   r"stopped; the last good checkpoint is "
                                                   r"step 10") as e:
        train.drive(_counting_step, _count_state(), jax.random.key(0), start_step=0,
                    end_step=30, chunk_size=4, callbacks=cbs)
    assert (e.value.step, e.value.metric, e.value.run) == (13, "loss", None)
    assert mgr.steps() == [5, 10]  # nothing written at 12 (4-step chunks end at 12, 15)
    c = mgr.restore(target=jax.eval_shape(_count_state))
    assert c.step == 10 and int(c.state["t"]) == 10 and np.isfinite(c.state["x"])
    # in a vmapped sweep the error names the run
    runs = jax.vmap(lambda t: {"x": jnp.float32(0.0), "t": t})(jnp.array([0, 5], jnp.int32))
    with pytest.raises(train.NonFiniteError, match=r"at step 8 \(run 1 of the sweep\)"):
        train.drive(jax.vmap(_counting_step), runs, jax.random.split(jax.random.key(0), 2),
                    start_step=0, end_step=30, chunk_size=10, batched=True,
                    callbacks=[train.NonFiniteGuard()])


def test_callbacks_replace_state_at_exact_cadences():
    """Refresh every 4 steps (not at the end) replaces the state; evaluation every 6 steps
    and at the end; chunks of 5: boundaries at every multiple of 4, 5 and 6."""
    seen = []

    def refresh(t, s):
        seen.append(t)
        return {**s, "x": s["x"] + 1000.0}

    def evaluate(ev):
        return {"t": int(ev.state["t"]), "x_end": float(ev.state["x"])}

    step = lambda s, k: ({"x": s["x"], "t": s["t"] + 1}, {"loss": s["x"]})  # noqa: E731
    out = train.drive(step, _count_state(), jax.random.key(0), start_step=0, end_step=14,
                      chunk_size=5, callbacks=[train.Refresh(refresh, 4),
                                               train.Evaluate(evaluate, 6)])
    assert seen == [4, 8, 12]
    assert out.history["eval_step"].tolist() == [6, 12, 14]
    assert out.history["t"].tolist() == [6, 12, 14]
    assert float(out.state["x"]) == 3000.0
    # the loss seen by step t reflects the refreshes before it
    np.testing.assert_array_equal(out.history["loss"], [0] * 4 + [1000] * 4 + [2000] * 4
                                  + [3000] * 2)
    assert out.chunk_steps == [4, 1, 1, 2, 2, 2, 2] and out.traces == 1


def test_progress_bar_shows_the_chosen_metrics():
    bar = train.ProgressBar(("x",), desc="toy")
    train.drive(_counting_step, _count_state(), jax.random.key(0), start_step=0,
                end_step=10, chunk_size=5, callbacks=[bar])
    assert "x=" in bar.bar.postfix and "loss" not in bar.bar.postfix
    assert bar.bar.n == 10
