"""The consensus refit of the contrastive route (issue 13): the per-slot consensus against a
loop written out, the frozen encoder, the distilled encoder, and the refit's key schedule."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl.crl import CRLConfig, fit
from jaxcrl.crl.consensus import distill_encoder, slot_consensus, slot_majority
from jaxcrl.crl.svi import Preprocess


def _loop_consensus(zs):
    runs, _, d = zs.shape
    chosen = []
    for i in range(d):
        agree = [np.mean([abs(np.corrcoef(zs[r, :, i], zs[q, :, i])[0, 1])
                          for q in range(runs) if q != r]) for r in range(runs)]
        chosen.append(int(np.argmax(agree)))
    return np.stack([zs[c, :, i] for i, c in enumerate(chosen)], 1), chosen


def test_slot_consensus_takes_each_slot_from_the_run_the_others_agree_with():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(500, 3))
    zs = np.stack([truth + 0.3 * rng.normal(size=truth.shape) for _ in range(4)])
    zs[0, :, 1] = rng.normal(size=500)  # run 0 lost latent 1, run 2 lost latent 0
    zs[2, :, 0] = rng.normal(size=500)
    zs[3, :, 2] *= -5.0  # sign and scale do not matter
    z, chosen = slot_consensus(jnp.asarray(zs, jnp.float32))
    want_z, want = _loop_consensus(zs)
    assert np.asarray(chosen).tolist() == want
    assert want[0] != 2 and want[1] != 0
    np.testing.assert_allclose(np.asarray(z), want_z, rtol=1e-5)


def _loop_average(zs, tau):
    medoid, chosen = _loop_consensus(zs)
    u = (zs - zs.mean(1, keepdims=True)) / zs.std(1, keepdims=True)
    cols = []
    for i, m in enumerate(chosen):
        members = [(np.sign(np.corrcoef(u[m, :, i], u[r, :, i])[0, 1]), r)
                   for r in range(zs.shape[0])
                   if r == m or abs(np.corrcoef(u[m, :, i], u[r, :, i])[0, 1]) >= tau]
        cols.append(np.mean([sgn * u[r, :, i] for sgn, r in members], 0))
    return np.stack(cols, 1), chosen


def test_slot_consensus_average_means_the_runs_that_found_each_latent():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(2000, 3))
    zs = np.stack([truth + 0.5 * rng.normal(size=truth.shape) for _ in range(5)])
    zs[0, :, 1] = rng.normal(size=2000)  # a lost latent must be left out of the mean
    zs[3, :, 2] *= -5.0  # a flipped, rescaled run must be aligned, not cancel
    z_med, chosen_med = slot_consensus(jnp.asarray(zs, jnp.float32))
    z, chosen = slot_consensus(jnp.asarray(zs, jnp.float32), average=0.5)
    want_z, want = _loop_average(zs, 0.5)
    assert np.asarray(chosen).tolist() == want == np.asarray(chosen_med).tolist()
    np.testing.assert_allclose(np.asarray(z), want_z, rtol=1e-4, atol=1e-5)
    for i in range(3):  # 5 (4 for slot 1) noisy copies beat one: corr 0.89 -> ~0.97
        r_avg = abs(np.corrcoef(np.asarray(z)[:, i], truth[:, i])[0, 1])
        r_med = abs(np.corrcoef(np.asarray(z_med)[:, i], truth[:, i])[0, 1])
        assert r_avg > r_med + 0.04 and r_avg > 0.95, (i, r_avg, r_med)
    # tau = 1 keeps the medoid alone: its slot, standardized
    z1, _ = slot_consensus(jnp.asarray(zs, jnp.float32), average=1.0)
    med = np.asarray(z_med)
    np.testing.assert_allclose(np.asarray(z1), (med - med.mean(0)) / med.std(0),
                               rtol=1e-4, atol=1e-5)


def _loop_majority(zs, loss, threshold):
    """slot_majority written out: per slot, every run's cluster, the largest, then the one
    holding the lowest loss, then the tightest; the mean of its aligned members."""
    runs, _, d = zs.shape
    u = (zs - zs.mean(1, keepdims=True)) / zs.std(1, keepdims=True)
    cols, chosen, members = [], [], []
    for i in range(d):
        c = np.array([[np.corrcoef(u[r, :, i], u[q, :, i])[0, 1] for q in range(runs)]
                      for r in range(runs)])
        best = None
        for r in range(runs):
            mem = [q for q in range(runs) if q == r or abs(c[r, q]) >= threshold]
            key = (len(mem), -min(loss[q] for q in mem), sum(abs(c[r, q]) for q in mem))
            if best is None or key > best[0]:
                best = (key, r, mem)
        _, r, mem = best
        cols.append(np.mean([np.sign(c[r, q]) * u[q, :, i] for q in mem], 0))
        chosen.append(r)
        members.append([int(q in mem) for q in range(runs)])
    return np.stack(cols, 1), chosen, members


def _swapped_runs(n_right, n_swapped, seed=2):
    """Noisy copies of a 3-latent truth; the last ``n_swapped`` have latents 0 and 1
    exchanged, one of them sign-flipped and rescaled."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(3000, 3))
    zs = np.stack([truth + 0.3 * rng.normal(size=truth.shape)
                   for _ in range(n_right + n_swapped)])
    zs[n_right:] = zs[n_right:][:, :, [1, 0, 2]]
    zs[-1] *= -3.0
    return truth, zs


def test_slot_majority_breaks_a_two_against_two_swap_by_the_lower_loss():
    """Two runs right, two with latents 0 and 1 swapped: slots 0 and 1 go to the camp
    holding the lowest-loss run (either way round), slot 2 averages all four runs."""
    truth, zs = _swapped_runs(2, 2)
    for loss, camp in (([0.1, 0.3, 0.2, 0.4], [1, 1, 0, 0]), ([0.3, 0.2, 0.1, 0.4], [0, 0, 1, 1])):
        z, chosen, members = slot_majority(jnp.asarray(zs, jnp.float32), jnp.asarray(loss))
        want_z, _, want_members = _loop_majority(zs, loss, 0.9)
        assert np.asarray(members).tolist() == want_members == [camp, camp, [1, 1, 1, 1]]
        # the centre of a cluster is any of its members (equal |r| sums tie in rounding);
        # the consensus slot is the same up to its sign
        assert all(want_members[i][c] for i, c in enumerate(np.asarray(chosen).tolist()))
        sign = np.sign(np.sum(np.asarray(z) * want_z, 0))
        np.testing.assert_allclose(np.asarray(z) * sign, want_z, rtol=1e-4, atol=1e-5)
        r = [abs(np.corrcoef(np.asarray(z)[:, i], truth[:, j])[0, 1])
             for i, j in ((0, 0), (0, 1))]
        assert (r[0] > 0.97) == (camp[0] == 1) and (r[1] > 0.97) == (camp[0] == 0)


def test_slot_majority_prefers_three_runs_to_the_lowest_loss_alone():
    """Three runs right and one swapped with the lowest loss: the three win every slot
    (the medoid of slot_consensus may too, but only the majority ignores the loss here)."""
    truth, zs = _swapped_runs(3, 1, seed=3)
    loss = [0.5, 0.4, 0.6, 0.1]
    z, _, members = slot_majority(jnp.asarray(zs, jnp.float32), jnp.asarray(loss))
    assert np.asarray(members).tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    want_z, _, _ = _loop_majority(zs, loss, 0.9)
    sign = np.sign(np.sum(np.asarray(z) * want_z, 0))
    np.testing.assert_allclose(np.asarray(z) * sign, want_z, rtol=1e-4, atol=1e-5)
    for i in range(3):  # the mean of three noisy copies beats one (corr 0.96 -> ~0.985)
        assert abs(np.corrcoef(np.asarray(z)[:, i], truth[:, i])[0, 1]) > 0.98


def test_slot_majority_rejects_bad_losses_latents_and_thresholds():
    zs = jnp.ones((3, 10, 2))
    with pytest.raises(ValueError, match="one loss per run"):
        slot_majority(zs, jnp.zeros(2))
    with pytest.raises(ValueError, match="losses contain NaN"):
        slot_majority(zs, jnp.array([0.0, jnp.nan, 1.0]))
    with pytest.raises(ValueError, match="latents contain NaN"):
        slot_majority(jnp.full((3, 10, 2), jnp.nan), jnp.zeros(3))
    with pytest.raises(ValueError, match="threshold"):
        slot_majority(zs, jnp.zeros(3), threshold=0.0)
    with pytest.raises(ValueError, match="R >= 2"):
        slot_majority(jnp.ones((1, 10, 2)), jnp.zeros(1))


def test_slot_consensus_rejects_one_run_and_nan():
    with pytest.raises(ValueError, match="R >= 2"):
        slot_consensus(jnp.zeros((1, 10, 2)))
    with pytest.raises(ValueError, match="NaN"):
        slot_consensus(jnp.full((2, 10, 2), jnp.nan))
    with pytest.raises(ValueError, match="average"):
        slot_consensus(jnp.ones((2, 10, 2)), average=1.5)


def test_distill_encoder_regresses_the_encoder_onto_the_target_latents():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2000, 6)), jnp.float32)
    z = jnp.tanh(x[:, :2] @ jnp.array([[1.0, 0.5], [-0.5, 1.0]])) * 3.0 + 1.0
    cfg = CRLConfig(method="contrastive", latent_dim=2, hidden=(32,))
    pre = Preprocess(x.mean(0), jnp.eye(6))
    params = distill_encoder(cfg, pre, x, z, jax.random.key(0), steps=1500, lr=3e-3)
    from jaxcrl.crl.models import contrastive_encoder

    out = np.asarray(contrastive_encoder(cfg).apply({"params": params}, pre(x)))
    for i in range(2):
        assert np.corrcoef(out[:, i], np.asarray(z[:, i]))[0, 1] > 0.98


def _tiny():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 2))
    z[100:200, 0] = 2.0 + 0.3 * rng.normal(size=100)
    z[200:, 1] = -2.0 + 0.3 * rng.normal(size=100)
    x = np.tanh(z @ rng.normal(size=(2, 5))).astype(np.float32)
    env = np.repeat(np.arange(3), 100)
    targets = np.array([[0, 0], [1, 0], [0, 1]], bool)
    cfg = CRLConfig(method="contrastive", latent_dim=2, n_envs=3, steps=30, batch_size=64,
                    warmup=1, hidden=(8,), restarts=1, recon=1.0)
    return cfg, x, env, targets, z


def test_a_frozen_encoder_is_not_updated_while_the_prior_is():
    cfg, x, env, targets, _ = _tiny()
    start = fit(dataclasses.replace(cfg, steps=2), x, env, targets=targets,
                key=jax.random.key(3), progress=False)
    init = {"encoder$params": start.params["encoder$params"]}
    kw = dict(targets=targets, key=jax.random.key(0), progress=False, init_params=init)
    frozen = fit(dataclasses.replace(cfg, encoder_freeze=20), x, env, stop_at=20, **kw)
    moved = fit(cfg, x, env, stop_at=20, **kw)
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(frozen.params["encoder$params"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(frozen.params["prior"].w),
                           np.asarray(start.params["prior"].w))
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(init), jax.tree.leaves(moved.params["encoder$params"]), strict=True))


def test_consensus_refit_runs_its_first_fits_with_their_own_keys_and_records_them():
    cfg, x, env, targets, z = _tiny()
    ccfg = dataclasses.replace(cfg, consensus_runs=2, consensus_steps=20, encoder_freeze=5)
    key = jax.random.key(7)
    r = fit(ccfg, x, env, targets=targets, key=key, z_true=z, progress=False)
    h = r.history
    assert h["consensus_loss"].shape == (2, 1) and h["consensus_chosen"].shape == (1, 2)
    assert h["consensus_run_mcc"].shape == (2, 1) and h["consensus_mcc"].shape == (1,)
    first = dataclasses.replace(cfg, steps=20)
    for k in range(2):  # run k is the ordinary fit with key fold_in(key, 100 + k)
        alone = fit(first, x, env, targets=targets, key=jax.random.fold_in(key, 100 + k),
                    progress=False)
        np.testing.assert_allclose(h["consensus_loss"][k], alone.history["final_loss"],
                                   rtol=1e-5)
    assert r.cfg.consensus_runs == 2 and np.isfinite(h["loss"]).all()
    assert r.encode(x).shape == (1, 300, 2)
    from jaxcrl.crl.synthetic import _consensus_diagnostics  # what results files record

    rec = _consensus_diagnostics(h)["consensus"]
    np.testing.assert_array_equal(rec["run_mcc"], h["consensus_run_mcc"])
    assert set(rec) == {"final_loss", "chosen", "wall_s", "run_mcc", "mcc"}
    assert _consensus_diagnostics({"loss": h["loss"]}) == {}


def test_consensus_and_freeze_settings_are_checked():
    with pytest.raises(ValueError, match="encoder_freeze"):
        CRLConfig(steps=10, encoder_freeze=10)
    with pytest.raises(ValueError, match="consensus_runs"):
        CRLConfig(consensus_runs=1)
    with pytest.raises(ValueError, match="align"):
        CRLConfig(consensus_runs=2, targets="unknown")
    with pytest.raises(ValueError, match="consensus_average"):
        CRLConfig(consensus_average=-0.1)
    cfg, x, env, targets, _ = _tiny()
    with pytest.raises(ValueError, match="workdir"):
        fit(dataclasses.replace(cfg, consensus_runs=2), x, env, targets=targets,
            key=jax.random.key(0), progress=False, stop_at=3)
