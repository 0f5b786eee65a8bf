"""AuxK over the dead columns only (jaxcrl.sae.auxk): same loss and gradients as the
literal loss over all columns, the budget choice, and sweeps sharing one budget."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import sae
from jaxcrl.sae import auxk, training

BASE = sae.SAEConfig(architecture="topk", d_in=16, d_sae=256, k=4, steps=6, batch_size=64,
                     lr=3e-3, warmup=2, dead_tokens=128, aux_k=8, decoder="dense")


@pytest.fixture(autouse=True)
def compact_small(monkeypatch):
    """Compaction for this test's small dictionaries (by default it starts at 4096)."""
    monkeypatch.setattr(auxk, "COMPACT_MIN_D_SAE", 0)


def _case(cfg, n_dead, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    params = sae.init_params(ks[0], cfg, b_dec=jnp.linspace(-0.3, 0.3, cfg.d_in))
    x = jax.random.normal(ks[1], (32, cfg.d_in)) * 2
    resid = jax.random.normal(ks[2], (32, cfg.d_in))
    dead = jnp.zeros(cfg.d_sae, bool).at[
        jax.random.permutation(ks[3], cfg.d_sae)[:n_dead]].set(True)
    return params, x, resid, dead


# budgets 16/64/256: few dead (top-k within 16 columns), all dead used (cap < aux_k),
# the larger budget, more than a quarter dead (the uncompacted branch)
@pytest.mark.parametrize("n_dead,aux_k,apply_b_dec", [(3, 8, True), (10, 32, False),
                                                      (60, 8, True), (200, 8, False)])
def test_compacted_auxk_equals_the_literal_loss_and_gradients(n_dead, aux_k, apply_b_dec):
    cfg = dataclasses.replace(BASE, aux_k=aux_k, apply_b_dec_to_input=apply_b_dec)
    params, x, resid, dead = _case(cfg, n_dead)

    def literal(p):
        return auxk.dense_loss(p, sae.pre_activations(p, x, cfg), resid, dead, aux_k)

    def compact(p):
        return auxk.loss(p, x, sae.pre_activations(p, x, cfg), resid, dead, cfg,
                         sparse_path=False)

    loss_ref, g_ref = jax.value_and_grad(literal)(params)
    loss, g = jax.value_and_grad(compact)(params)
    assert float(loss_ref) > 0
    np.testing.assert_allclose(loss, loss_ref, rtol=2e-5)
    for name in g_ref:
        scale = float(jnp.abs(g_ref[name]).max()) + 1e-12
        np.testing.assert_allclose(g[name] / scale, g_ref[name] / scale, atol=1e-5,
                                   err_msg=name)
    # Only dead latents' encoder columns and decoder rows get an AuxK gradient.
    live = ~np.asarray(dead)
    assert not np.asarray(g["W_dec"])[live].any()
    assert not np.asarray(g["W_enc"])[:, live].any()


def test_every_budget_that_holds_the_dead_gives_the_same_loss():
    cfg = BASE
    params, x, resid, dead = _case(cfg, 14)
    budgets = auxk.caps(cfg)
    assert budgets == (16, 64, 256)

    @jax.jit
    def at(params, x, resid, dead, i):
        return auxk.loss(params, x, sae.pre_activations(params, x, cfg), resid, dead, cfg,
                         sparse_path=False, bucket_index=i)

    got = [float(at(params, x, resid, dead, jnp.int32(i))) for i in range(len(budgets))]
    np.testing.assert_allclose(got, got[-1], rtol=2e-5)
    # A budget smaller than n_dead drops dead latents: a different (wrong) loss, which is
    # why callers pass a budget that holds every run's dead latents.
    params2, x2, resid2, dead2 = _case(cfg, 40, seed=1)
    small, right = (float(at(params2, x2, resid2, dead2, jnp.int32(i))) for i in (0, 1))
    assert abs(small - right) > 1e-4 * right


def test_bucket_is_the_smallest_budget_holding_the_dead():
    got = [int(auxk.bucket(jnp.int32(n), BASE)) for n in (0, 1, 16, 17, 64, 65, 256)]
    assert got == [0, 0, 0, 1, 1, 2, 2]


def test_no_compaction_below_the_width_threshold(monkeypatch):
    monkeypatch.setattr(auxk, "COMPACT_MIN_D_SAE", 4096)
    assert auxk.caps(BASE) == (BASE.d_sae,)
    assert auxk.caps(dataclasses.replace(BASE, d_sae=4096)) == (256, 1024, 4096)


def test_sweep_step_with_unequal_dead_counts_equals_each_run_alone():
    """Two runs with 10 and 50 dead latents share the budget of 64 inside one vmapped
    step; each equals the same run stepped alone (the first with its own budget of 16)."""
    cfg = BASE
    x = jax.random.normal(jax.random.key(3), (64, cfg.d_in))
    states = []
    for i, n_dead in enumerate((10, 50)):
        st = training.init_state(jax.random.key(i), cfg, x)
        since = jnp.zeros(cfg.d_sae, jnp.int32).at[:n_dead].set(cfg.dead_tokens)
        states.append(st._replace(since_fired=since))
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    source = sae.array_source(x, batch_size=64)
    step = training.make_step(cfg, source, sweep=True)
    (_, swept), m_sweep = jax.jit(step)((source.init(jax.random.key(9)), stacked),
                                        jax.random.key(4))
    assert np.all(np.asarray(m_sweep["aux_loss"]) > 0)
    for i, st in enumerate(states):
        _, xb = source.sample(source.init(jax.random.key(9)), jax.random.key(4))
        alone, m = jax.jit(lambda s, xb: training.update(s, xb, cfg))(st, xb)
        np.testing.assert_allclose(m_sweep["aux_loss"][i], m["aux_loss"], rtol=1e-5)
        for name in alone.params:
            np.testing.assert_allclose(swept.params[name][i], alone.params[name], rtol=1e-4,
                                       atol=1e-6, err_msg=name)
