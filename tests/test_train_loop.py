"""The shared training loop: results independent of chunking, vmapping and resuming."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcrl import train


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
