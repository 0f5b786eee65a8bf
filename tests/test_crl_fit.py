"""Fitting CRL models by SVI: recovery on small problems, vmap == separate, checkpoints, errors."""

import jax
import numpy as np
import pytest

from jaxcrl.crl import CRLConfig, fit, load_fit
from jaxcrl.crl.evaluate import score_fit
from jaxcrl.metrics import mcc
from jaxcrl.scm import DatasetConfig, MixingConfig, SCMConfig, make_dataset


@pytest.fixture(scope="module")
def small_data():
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=2), mixing=MixingConfig(n_layers=2),
                        n_per_env=2000)
    return jax.vmap(lambda k: make_dataset(k, cfg))(jax.random.split(jax.random.key(0), 2))


def _cfg(**kw):
    base = dict(latent_dim=2, n_envs=3, steps=1500, batch_size=512, lr=1e-2, warmup=50,
                flow_layers=2, restarts=1)
    base.update(kw)
    return CRLConfig(**base)


def test_latent_scm_recovers_small_latents_in_seconds(small_data):
    ds = small_data
    result = fit(_cfg(), ds.x, ds.env, targets=ds.targets, key=jax.random.key(0),
                 progress=False)
    z_hat = np.asarray(result.encode(ds.x))
    scores = [mcc(np.asarray(ds.z[r]), z_hat[r]).value for r in range(2)]
    assert min(scores) > 0.8, scores
    # the exact log-likelihood improved a lot from its initial value
    loss = result.history["loss"]
    assert loss[-100:].mean() < loss[:10].mean() - 1.0


def test_vmapped_multi_seed_fit_equals_separate_fits(small_data):
    ds = jax.tree.map(lambda a: a[0], small_data)
    keys = jax.random.split(jax.random.key(3), 2)
    cfg = _cfg(steps=60)
    together = fit(cfg, ds.x, ds.env, targets=ds.targets, key=keys, progress=False)
    for r in range(2):
        alone = fit(cfg, ds.x, ds.env, targets=ds.targets, key=keys[r:r + 1], progress=False)
        for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a)[r], np.asarray(b)[0], rtol=2e-4,
                                       atol=2e-5)


@pytest.mark.parametrize("method", ["latent_scm", "latent_scm_vae", "beta_vae", "ivae"])
def test_checkpoint_restore_rescores_identically(small_data, tmp_path, method):
    ds = small_data
    result = fit(_cfg(method=method, steps=100), ds.x, ds.env, targets=ds.targets,
                 key=jax.random.key(1), progress=False)
    before = score_fit(result, ds.x, ds.z, ds.env, adj_true=ds.adj, targets_true=ds.targets)
    result.save(tmp_path / "ckpt")
    restored = load_fit(tmp_path / "ckpt")
    after = score_fit(restored, ds.x, ds.z, ds.env, adj_true=ds.adj, targets_true=ds.targets)
    np.testing.assert_equal(after, before)  # NaN-aware (edge AUROC is NaN with no true edges)
    assert restored.cfg == result.cfg
    if result.cfg.learns_graph:
        np.testing.assert_array_equal(restored.graph(), result.graph())


def test_vae_methods_decrease_their_loss(small_data):
    ds = small_data
    for method in ("latent_scm_vae", "beta_vae", "ivae"):
        r = fit(_cfg(method=method, steps=300), ds.x, ds.env, targets=ds.targets,
                key=jax.random.key(2), progress=False)
        loss = r.history["loss"]
        assert np.all(np.isfinite(loss)), method
        assert loss[-50:].mean() < loss[:10].mean(), method


def test_unknown_targets_mode_runs_and_estimates_one_target_per_env(small_data):
    ds = small_data
    r = fit(_cfg(targets="unknown", steps=200), ds.x, ds.env, key=jax.random.key(4),
            progress=False)
    t = np.asarray(r.targets())
    assert t.shape == (2, 3, 2)
    assert not t[:, 0].any() and (t[:, 1:].sum(-1) == 1).all()


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x, e, t: (x.at[0, 0, 0].set(np.nan), e, t), "NaN"),
        (lambda x, e, t: (x, e.at[0, 0].set(7), t), "env indices"),
        (lambda x, e, t: (x, e[:, :-1], t), "env must have shape"),
        (lambda x, e, t: (x[0, :, 0], e, t), r"x must be \[N, D\]"),
        (lambda x, e, t: (x, e, t[:, :2]), "targets must be"),
        (lambda x, e, t: (x, e.astype(np.float32), t), "integer"),
    ],
)
def test_bad_input_raises_before_training(small_data, mutate, match, monkeypatch):
    from jaxcrl.train import driver

    monkeypatch.setattr(driver, "drive", lambda *a, **k: pytest.fail("training started"))
    x, e, t = mutate(small_data.x, small_data.env, small_data.targets)
    with pytest.raises(ValueError, match=match):
        fit(_cfg(), x, e, targets=t, key=jax.random.key(0), progress=False)


def test_restarts_keep_the_lowest_loss_restart_per_seed(small_data):
    ds = small_data
    r = fit(_cfg(steps=200, restarts=3), ds.x, ds.env, targets=ds.targets,
            key=jax.random.key(5), progress=False)
    all_loss = r.history["loss_restarts"]  # [steps, S, R]
    assert all_loss.shape == (200, 2, 3)
    tail = all_loss[-10:].mean(0)
    np.testing.assert_array_equal(r.history["restart_chosen"], tail.argmin(1))
    np.testing.assert_allclose(r.history["loss"], all_loss[:, [0, 1], tail.argmin(1)])
    # the criterion is recorded: every restart's, and the chosen one's per seed
    np.testing.assert_allclose(r.history["final_loss_restarts"], tail, rtol=1e-5)
    np.testing.assert_allclose(r.history["final_loss"], tail.min(1), rtol=1e-5)
    # the chosen restart equals a single-restart fit with that restart's key
    seed_keys = jax.random.split(jax.random.key(5), 2)
    for s in range(2):
        k = jax.random.fold_in(seed_keys[s], int(r.history["restart_chosen"][s]))
        alone = fit(_cfg(steps=200), ds.x[s:s + 1], ds.env[s:s + 1],
                    targets=ds.targets[s:s + 1], key=k[None], progress=False)
        np.testing.assert_allclose(np.asarray(r.graph()[s]), np.asarray(alone.graph()[0]),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(alone.history["final_loss"], r.history["final_loss"][s:s + 1],
                                   rtol=1e-4)


def _h_numpy(w: np.ndarray) -> float:
    """``tr((I + W o W / d)^d) - d`` in float64 numpy (off-diagonal ``W``)."""
    d = len(w)
    a = (np.asarray(w, np.float64) ** 2) * (1 - np.eye(d)) / d
    return float(np.trace(np.linalg.matrix_power(np.eye(d) + a, d)) - d)


def test_restarts_chosen_by_acyclicity_keep_the_restart_whose_w_is_nearest_a_dag(small_data):
    ds = small_data
    kw = dict(steps=200, restarts=3)
    by_h = fit(_cfg(**kw, restart_choice="acyclicity"), ds.x, ds.env, targets=ds.targets,
               key=jax.random.key(5), progress=False)
    by_loss = fit(_cfg(**kw), ds.x, ds.env, targets=ds.targets, key=jax.random.key(5),
                  progress=False)
    # the same restarts trained: only the choice differs
    np.testing.assert_allclose(by_h.history["final_loss_restarts"],
                               by_loss.history["final_loss_restarts"], rtol=1e-5)
    h = by_h.history["acyclicity_restarts"]  # [S, R]
    assert h.shape == (2, 3) and np.all(h >= 0)
    np.testing.assert_array_equal(by_h.history["restart_chosen"], h.argmin(1))
    for s in range(2):  # each kept W's h, recomputed in numpy, at both choices
        assert _h_numpy(by_h.graph()[s]) == pytest.approx(h[s].min(), rel=1e-4, abs=1e-9)
        chosen = by_loss.history["restart_chosen"][s]
        assert _h_numpy(by_loss.graph()[s]) == pytest.approx(h[s, chosen], rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("kw", [dict(scm="flow"), dict(holdout=0.2), dict(method="beta_vae")])
def test_restart_choice_by_acyclicity_needs_a_w_that_can_be_cyclic(kw):
    with pytest.raises(ValueError, match="restart_choice='acyclicity'"):
        _cfg(restart_choice="acyclicity", **kw)
    with pytest.raises(ValueError, match="restart_choice must be one of"):
        _cfg(restart_choice="held-out")


def test_known_targets_required(small_data):
    with pytest.raises(ValueError, match="targets='known' needs"):
        fit(_cfg(), small_data.x, small_data.env, key=jax.random.key(0), progress=False)


def test_killed_and_resumed_fit_is_bit_identical(small_data, tmp_path):
    """2 seeds x 2 restarts, checkpoints every 20 steps, chunks of 15: delete the last
    checkpoint (killed before writing it) and resume; params, chosen restarts and the
    resumed losses equal the uninterrupted fit's exactly. Other data: refused."""
    import shutil

    from jaxcrl.checkpoint import CheckpointManager
    from jaxcrl.train import ConfigMismatchError

    ds = small_data
    cfg = _cfg(steps=60, restarts=2)
    kw = dict(targets=ds.targets, key=jax.random.key(7), progress=False, eval_every=15,
              save_every=20, workdir=tmp_path / "w")
    full = fit(cfg, ds.x, ds.env, **kw)
    mgr = CheckpointManager(tmp_path / "w", kind="crl_train")
    assert mgr.steps() == [40, 60]
    shutil.rmtree(mgr.step_path(60))
    resumed = fit(cfg, ds.x, ds.env, **kw)
    np.testing.assert_array_equal(resumed.history["restart_chosen"],
                                  full.history["restart_chosen"])
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"][40:])
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(a, b)
    # a finished run resumed again has nothing left to do and returns the same fit
    again = fit(cfg, ds.x, ds.env, **kw)
    np.testing.assert_array_equal(again.history["restart_chosen"],
                                  full.history["restart_chosen"])
    np.testing.assert_array_equal(jax.tree.leaves(again.params)[0],
                                  jax.tree.leaves(full.params)[0])
    with pytest.raises(ConfigMismatchError, match="fingerprint"):
        fit(cfg, ds.x[::-1], ds.env[::-1], **{**kw, "targets": ds.targets[::-1]})
    with pytest.raises(ConfigMismatchError, match=r"lr: 0.01 \(checkpoint\) vs 0.02"):
        fit(_cfg(steps=60, restarts=2, lr=2e-2), ds.x, ds.env, **kw)


def test_init_params_start_the_fit_where_given(small_data):
    ds = small_data
    kw = dict(targets=ds.targets, progress=False)
    prev = fit(_cfg(steps=300), ds.x, ds.env, key=jax.random.key(0), **kw)
    same = lambda a, b: jax.tree.all(jax.tree.map(  # noqa: E731
        lambda u, v: bool(np.array_equal(np.asarray(u), np.asarray(v))), a, b))
    # the first step of warmup has learning rate 0: stopped after it, the fit ends where it
    # started, for every restart of each seed
    kw["stop_at"] = 1
    cont = fit(_cfg(steps=2, restarts=2), ds.x, ds.env, key=jax.random.key(1),
               init_params=prev.params, **kw)
    assert same(cont.params, prev.params)
    # an encoder alone: that encoder, and a freshly initialized prior (numpyro draws it from
    # the key in another order than without init_params, so not the fresh fit's own)
    enc = fit(_cfg(steps=2), ds.x, ds.env, key=jax.random.key(1),
              init_params={"encoder$params": prev.params["encoder$params"]}, **kw)
    fresh = fit(_cfg(steps=2), ds.x, ds.env, key=jax.random.key(1), **kw)
    assert same(enc.params["encoder$params"], prev.params["encoder$params"])
    assert not same(enc.params["prior"], prev.params["prior"])
    w_init = np.abs(np.asarray(fresh.params["prior"].w)).max()
    assert np.abs(np.asarray(enc.params["prior"].w)).max() < 2 * w_init
    assert np.abs(np.asarray(prev.params["prior"].w)).max() > 10 * w_init
    assert not same(fresh.params["encoder$params"], prev.params["encoder$params"])
    # training from the fitted parameters starts at the fitted loss, not the initial one
    del kw["stop_at"]
    more = fit(_cfg(steps=50), ds.x, ds.env, key=jax.random.key(1), init_params=prev.params,
               **kw)
    assert more.history["loss"][0].max() < prev.history["loss"][:5].mean(0).min() - 1.0


@pytest.mark.parametrize("bad, match", [
    (lambda p: {**p, "nope": p["prior"]}, "unknown sites"),
    (lambda p: jax.tree.map(lambda a: a[:1], p), "leading axis of S=2"),
    (lambda p: {"encoder$params": jax.tree.map(lambda a: a * np.nan, p["encoder$params"])},
     "NaN"),
    (lambda p: {"encoder$params": p["prior"]}, "structure"),
])
def test_bad_init_params_raise_naming_the_problem(small_data, bad, match):
    ds = small_data
    prev = fit(_cfg(steps=1), ds.x, ds.env, targets=ds.targets, key=jax.random.key(0),
               progress=False)
    with pytest.raises(ValueError, match=match):
        fit(_cfg(steps=1), ds.x, ds.env, targets=ds.targets, key=jax.random.key(0),
            progress=False, init_params=bad(prev.params))
    with pytest.raises(ValueError, match="warm_steps"):
        fit(_cfg(steps=1, warm_steps=1), ds.x, ds.env, targets=ds.targets,
            key=jax.random.key(0), progress=False, init_params=prev.params)


def test_screening_keeps_the_restarts_lowest_at_screen_steps_and_trains_them_unchanged(
        small_data):
    """4 candidates per seed screened to 2 at step 60 of 200: the criterion is the
    candidates' mean loss over steps 54-59 of the unscreened fit of all 4, the kept ones
    are its 2 lowest, and each kept restart ends exactly where it ends unscreened."""
    ds = small_data
    kw = dict(targets=ds.targets, key=jax.random.key(5), progress=False, eval_every=20)
    every = fit(_cfg(steps=200, restarts=4), ds.x, ds.env, **kw)
    scr = fit(_cfg(steps=200, restarts=2, screen_restarts=4, screen_steps=60), ds.x, ds.env,
              **kw)
    all_loss = every.history["loss_restarts"]  # [steps, S, 4]
    crit = all_loss[54:60].mean(0)
    np.testing.assert_allclose(scr.history["screen_loss"], crit, rtol=1e-5)
    kept = np.sort(np.argsort(crit, 1)[:, :2], 1)
    np.testing.assert_array_equal(scr.history["screen_kept"], kept)
    # the two phases make one history of the kept restarts, equal to their unscreened one
    np.testing.assert_allclose(scr.history["loss_restarts"],
                               np.stack([all_loss[:, s, kept[s]] for s in range(2)], 1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        scr.history["final_loss_restarts"],
        np.stack([every.history["final_loss_restarts"][s, kept[s]] for s in range(2)]),
        rtol=1e-5)
    chosen = scr.history["restart_chosen"]  # index among the seed's 4 candidates
    assert all(chosen[s] in kept[s] for s in range(2))
    # the chosen restart is the kept one with the lowest final loss
    for s in range(2):
        fl = every.history["final_loss_restarts"][s]
        assert chosen[s] == kept[s][np.argmin(fl[kept[s]])]
    if (chosen == every.history["restart_chosen"]).all():  # same winner: same fit
        np.testing.assert_allclose(np.asarray(scr.graph()), np.asarray(every.graph()),
                                   rtol=1e-4, atol=1e-5)


def test_screened_fit_killed_after_screening_resumes_bit_identically(small_data, tmp_path):
    ds = small_data
    cfg = _cfg(steps=100, restarts=2, screen_restarts=3, screen_steps=30)
    kw = dict(targets=ds.targets, key=jax.random.key(3), progress=False, eval_every=10,
              save_every=20, workdir=tmp_path / "w")
    full = fit(cfg, ds.x, ds.env, **kw)
    first = fit(cfg, ds.x, ds.env, **{**kw, "workdir": tmp_path / "v", "stop_at": 60})
    np.testing.assert_array_equal(first.history["screen_kept"], full.history["screen_kept"])
    resumed = fit(cfg, ds.x, ds.env, **{**kw, "workdir": tmp_path / "v"})
    np.testing.assert_array_equal(resumed.history["screen_kept"], full.history["screen_kept"])
    np.testing.assert_array_equal(resumed.history["restart_chosen"],
                                  full.history["restart_chosen"])
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"][60:])
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="before the screening"):
        fit(cfg, ds.x, ds.env, **{**kw, "workdir": None, "stop_at": 20})


@pytest.mark.parametrize("kw", [dict(screen_restarts=2, restarts=2),
                                dict(screen_restarts=4, restarts=2, screen_steps=0),
                                dict(screen_restarts=4, restarts=2, screen_steps=101)])
def test_bad_screening_settings_are_refused(kw):
    with pytest.raises(ValueError, match="screen_restarts"):
        _cfg(steps=200, **kw)
