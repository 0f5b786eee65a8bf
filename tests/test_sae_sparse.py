"""Sparse TopK / BatchTopK / JumpReLU path: kernels, and equality with the dense path (active
sets, gradients, parameters after N Adam steps with AuxK on, vmapped sweeps over k)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import sae
from jaxcrl.sae import sparse, training

BASE = sae.SAEConfig(architecture="topk", d_in=16, d_sae=96, k=4, steps=12, batch_size=64,
                     lr=3e-3, warmup=2, dead_tokens=128, aux_k=8)


def _data(n=512, d=16, seed=0):
    # heavy-tailed mixture so latents specialise and some die quickly
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (n, d)) * jax.random.exponential(k2, (n, 1))


def _jumprelu_params(params, x, cfg, quantile=0.93):
    """Thresholds at a per-latent quantile of ``relu(pre)`` on ``x``: few active per row,
    so the sparse branch is exact, with entries inside the straight-through band."""
    acts = jax.nn.relu(sae.pre_activations(params, x, cfg))
    return {**params, "threshold": jnp.quantile(acts, quantile, axis=0)}


@pytest.fixture(params=[True, False], ids=["loops", "gather"])
def kernels(request, monkeypatch):
    """Runs a test with the CPU loop kernels and with the accelerator gather kernels."""
    monkeypatch.setattr(sparse, "_loops", lambda: request.param)
    return request.param


def test_kernels_match_dense_formulas(kernels):
    B, K, n, d = 9, 3, 11, 5
    ks = jax.random.split(jax.random.key(0), 4)
    v = jax.random.normal(ks[0], (B, K))
    w = jax.random.normal(ks[1], (n, d))
    y = jax.random.normal(ks[2], (B, d))
    idx = jax.random.randint(ks[3], (B, K), 0, n)  # repeats across rows on purpose
    z = np.zeros((B, n))
    for b in range(B):
        for j in range(K):
            z[b, idx[b, j]] += v[b, j]
    np.testing.assert_allclose(sparse._combine(v, w, idx), z @ np.asarray(w), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(sparse._rowdot(y, w, idx),
                               np.take_along_axis(np.asarray(y) @ np.asarray(w).T, idx, 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparse._scatter(v, y, idx, n), z.T @ np.asarray(y),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_kth_largest_top_k_and_bitwise_search_agree(k):
    a = jax.nn.relu(jax.random.normal(jax.random.key(7), (6, 10)))
    a = a.at[0].set(0.0).at[1, :3].set(2.0)  # a row with no positive entry, and ties
    want = np.sort(np.asarray(a), 1)[:, ::-1][:, k - 1]
    np.testing.assert_array_equal(sae.model.kth_largest_nonneg(a, k), want)
    np.testing.assert_array_equal(sae.model.kth_largest_nonneg(a, jnp.int32(k), 8), want)
    traced = jax.jit(lambda a, k: sae.model.kth_largest_nonneg(a, k))(a, k)  # bitwise
    np.testing.assert_array_equal(traced, want)


def test_sorted_scatter_matches_the_per_example_scatter(monkeypatch):
    B, K, n, d = 64, 4, 300, 8  # B·K a multiple of the block
    ks = jax.random.split(jax.random.key(1), 3)
    v = jax.random.normal(ks[0], (B, K))
    y = jax.random.normal(ks[1], (B, d))
    idx = jax.random.randint(ks[2], (B, K), 0, n)
    per_example = sparse._scatter(v, y, idx, n)
    monkeypatch.setattr(sparse, "_SORTED_SCATTER_MIN", 1)
    monkeypatch.setattr(sparse, "_SCATTER_BLOCK", 32)
    np.testing.assert_allclose(sparse._scatter(v, y, idx, n), per_example, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("arch,apply_b_dec,loops", [("topk", True, True),
                                                     ("batchtopk", False, True),
                                                     ("topk", False, False),
                                                     ("jumprelu", True, True),
                                                     ("jumprelu", False, False)])
def test_forward_and_gradients_equal_the_dense_path(arch, apply_b_dec, loops, monkeypatch):
    monkeypatch.setattr(sparse, "_loops", lambda: loops)  # CPU loops or accelerator gathers
    cfg = dataclasses.replace(BASE, architecture=arch, apply_b_dec_to_input=apply_b_dec)
    x = _data(64)
    if arch == "jumprelu":  # normal inputs (a heavy tail fires many latents in some rows)
        cfg = dataclasses.replace(cfg, k=12, bandwidth=0.2)  # 48 slots of 96
        x = jax.random.normal(jax.random.key(9), (64, 16))
    dense, sp = (dataclasses.replace(cfg, decoder=m) for m in ("dense", "sparse"))
    params = sae.init_params(jax.random.key(1), cfg, b_dec=jnp.linspace(-0.3, 0.3, 16))
    if arch == "jumprelu":
        params = _jumprelu_params(params, x, cfg)
        pre = sae.pre_activations(params, x, cfg)
        sel = cfg.arch.sparse_select(params, pre, cfg, k=cfg.k, inference=False)
        assert bool(sel.exact), "the sparse branch must be the one tested"
        acts, thr = jax.nn.relu(pre), params["threshold"]
        assert int(((acts <= thr) & (acts > thr - cfg.bandwidth / 2)).sum()) > 0  # STE band
    xh_d, aux_d = sae.forward(params, x, dense)
    xh_s, aux_s = sae.forward(params, x, sp)
    assert "idx" in aux_s or arch != "topk"
    # same active sets and values
    np.testing.assert_array_equal(aux_s["z"] > 0, aux_d["z"] > 0)
    np.testing.assert_allclose(aux_s["z"], aux_d["z"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xh_s, xh_d, rtol=1e-5, atol=1e-5)
    # gradients of the whole loss, AuxK and the sparsity penalty included (half dead)
    dead = jnp.arange(cfg.d_sae) % 2 == 0
    kw = dict(k=jnp.int32(cfg.k), coefficient=jnp.float32(0.3), dead=dead)
    (l_d, p_d), g_d = jax.value_and_grad(training.loss_fn, has_aux=True)(params, x, cfg=dense,
                                                                           **kw)
    (l_s, p_s), g_s = jax.value_and_grad(training.loss_fn, has_aux=True)(params, x, cfg=sp,
                                                                           **kw)
    assert float(p_d["aux_loss"]) > 0
    np.testing.assert_allclose(l_s, l_d, rtol=1e-5)
    np.testing.assert_allclose(p_s["aux_loss"], p_d["aux_loss"], rtol=1e-5)
    for n in g_d:
        if n not in cfg.arch.frozen_params:  # every trained parameter, JumpReLU's threshold too
            assert float(jnp.abs(g_d[n]).max()) > 0, n
        scale = float(jnp.abs(g_d[n]).max()) + 1e-12
        np.testing.assert_allclose(g_s[n] / scale, g_d[n] / scale, atol=2e-6, err_msg=n)
    for n in ("fired", "l0", "smallest"):
        np.testing.assert_allclose(p_s[n], p_d[n], rtol=1e-6, err_msg=n)


@pytest.mark.parametrize("sparse_aux,loops", [(True, True), (False, True), (True, False)])
def test_auxk_sparse_and_dense_kernels_give_the_dense_loss_and_gradients(sparse_aux, loops,
                                                                         monkeypatch):
    monkeypatch.setattr(sparse, "_loops", lambda: loops)
    monkeypatch.setattr(sparse, "AUX_SPARSE_MIN_RATIO", 1 if sparse_aux else 10**9)
    cfg = dataclasses.replace(BASE, decoder="sparse")
    params = sae.init_params(jax.random.key(6), cfg, b_dec=jnp.linspace(-0.2, 0.2, 16))
    x = _data(32)
    resid = jax.random.normal(jax.random.key(7), (32, 16))
    dead = jnp.arange(cfg.d_sae) % 3 == 0
    def dense(p):
        return sae.auxk_loss(p, sae.pre_activations(p, x, cfg), resid, dead, cfg.aux_k)

    def sp(p):
        return sparse.auxk_loss(p, x, sae.pre_activations(p, x, cfg), resid, dead, cfg.aux_k,
                                cfg)

    (l_d, g_d), (l_s, g_s) = jax.value_and_grad(dense)(params), jax.value_and_grad(sp)(params)
    np.testing.assert_allclose(l_s, l_d, rtol=1e-5)
    for n in g_d:
        scale = float(jnp.abs(g_d[n]).max()) + 1e-12
        np.testing.assert_allclose(g_s[n] / scale, g_d[n] / scale, atol=2e-6, err_msg=n)


def test_sparse_decoder_gradient_is_zero_on_inactive_rows():
    cfg = dataclasses.replace(BASE, decoder="sparse", d_sae=512)
    params = sae.init_params(jax.random.key(1), cfg)
    x = _data(4)
    g = jax.grad(lambda p: jnp.sum(sae.forward(p, x, cfg)[0] ** 2))(params)
    _, aux = sae.forward(params, x, cfg)
    active = np.asarray((aux["z"] > 0).any(0))
    assert active.sum() <= 4 * cfg.k
    assert not np.asarray(g["W_dec"])[~active].any()
    assert not np.asarray(g["W_enc"])[:, ~active].any()
    assert np.abs(np.asarray(g["W_dec"])[active]).sum(1).min() > 0


SPARSE_ARCHS = [a.name for a in sae.architectures.ARCHITECTURES.values() if a.has_sparse_path]


def test_the_sparse_path_serves_bounded_active_sets_and_not_a_changed_activation():
    assert {"topk", "batchtopk", "jumprelu"} <= set(SPARSE_ARCHS)
    assert "relu" not in SPARSE_ARCHS

    class Clipped(sae.architectures.TopK):  # changes what is kept, inherits the selection
        name = "topk_clipped_test"

        def activate(self, params, pre, cfg, *, k, inference):
            return jnp.minimum(super().activate(params, pre, cfg, k=k, inference=inference), 1)

    assert not Clipped().has_sparse_path


#: Per-architecture settings of the N-step test. A large Adam eps where the paths sum in
#: different orders: Adam turns round-off-sized gradients (dead latents' b_enc, the
#: threshold STE) into lr-sized steps, so with eps 1e-8 the two paths drift apart by up to
#: ~lr/30 within 12 steps (measured for BatchTopK, whose sparse branch now uses the sparse
#: AuxK and its fallback the dense one: 1e-4 with eps 1e-8, 1e-7 with eps 1e-3). JumpReLU:
#: thresholds high enough that the rows fit the slots (the sparse branch runs), normal
#: inputs.
TRAIN_OVERRIDES = {"jumprelu": dict(threshold_init=2.5, bandwidth=0.05, l0_coefficient=0.1,
                                    k=8, adam_eps=1e-3),
                   "batchtopk": dict(adam_eps=1e-3)}


@pytest.mark.parametrize("arch", SPARSE_ARCHS)
def test_training_gives_the_same_parameters_after_n_steps(arch):
    cfg = dataclasses.replace(BASE, architecture=arch, d_sae=384,  # some die within 2 steps
                              **TRAIN_OVERRIDES.get(arch, {}))
    data = jax.random.normal(jax.random.key(0), (512, 16)) if arch == "jumprelu" \
        else _data()
    src = sae.array_source(data, cfg.batch_size)
    res = {m: sae.train(dataclasses.replace(cfg, decoder=m), src, jax.random.key(2),
                        progress=False, chunk_size=cfg.steps) for m in ("dense", "sparse")}
    d, s = res["dense"], res["sparse"]
    assert d.history["dead_frac"][-1] > 0, "AuxK must have been exercised"
    assert np.asarray(d.history["aux_loss"]).max() > 0
    np.testing.assert_allclose(s.history["loss"], d.history["loss"], rtol=1e-4)
    np.testing.assert_array_equal(s.history["l0"], d.history["l0"])
    np.testing.assert_array_equal(s.state.since_fired, d.state.since_fired)
    for n in d.state.params:
        np.testing.assert_allclose(s.state.params[n], d.state.params[n], rtol=1e-4, atol=2e-5,
                                   err_msg=n)
    x = data[:64] * s.state.act_scale
    _, aux_d = sae.forward(d.state.params, x, dataclasses.replace(cfg, decoder="dense"))
    _, aux_s = sae.forward(s.state.params, x, dataclasses.replace(cfg, decoder="sparse"))
    np.testing.assert_array_equal(aux_s["z"] > 0, aux_d["z"] > 0)
    if arch == "jumprelu":  # the sparse branch ran, and the thresholds moved
        pre = sae.pre_activations(s.state.params, x, cfg)
        assert bool(cfg.arch.sparse_select(s.state.params, pre, cfg, k=cfg.k,
                                           inference=False).exact)
        assert float(jnp.abs(s.state.params["threshold"] - cfg.threshold_init).max()) > 1e-3


def test_vmapped_sweep_over_k_equals_the_dense_sweep():
    src = sae.array_source(_data(), BASE.batch_size)
    res = {m: sae.train_sweep(dataclasses.replace(BASE, decoder=m), src, jax.random.key(3),
                              values={"k": [2, 4]}, progress=False, chunk_size=BASE.steps)
           for m in ("dense", "sparse")}
    np.testing.assert_array_equal(res["sparse"].history["l0"], res["dense"].history["l0"])
    assert (res["sparse"].history["l0"][-1] <= np.array([2, 4])).all()
    for n in res["dense"].state.params:
        np.testing.assert_allclose(res["sparse"].state.params[n], res["dense"].state.params[n],
                                   rtol=1e-4, atol=2e-5, err_msg=n)


def test_batchtopk_row_over_the_cap_falls_back_to_the_exact_dense_answer():
    cfg = dataclasses.replace(BASE, architecture="batchtopk", k=2, d_sae=64)
    params = sae.init_params(jax.random.key(4), cfg)
    x = _data(16).at[0].set(params["W_enc"].sum(1) * 3.0)  # fires nearly every latent
    _, aux_d = sae.forward(params, x, dataclasses.replace(cfg, decoder="dense"))
    _, aux_s = sae.forward(params, x, dataclasses.replace(cfg, decoder="sparse"))
    assert int((aux_d["z"][0] > 0).sum()) > sparse.BATCHTOPK_ROW_CAP * cfg.k
    np.testing.assert_array_equal(aux_s["z"] > 0, aux_d["z"] > 0)
    np.testing.assert_allclose(aux_s["z"], aux_d["z"], rtol=1e-6)


def test_jumprelu_row_over_its_slots_falls_back_to_the_exact_dense_answer():
    cfg = dataclasses.replace(BASE, architecture="jumprelu", k=2, d_sae=64)
    x = jax.random.normal(jax.random.key(4), (16, 16))
    params = _jumprelu_params(sae.init_params(jax.random.key(4), cfg), x, cfg, 0.97)
    x = x.at[0].set(params["W_enc"].sum(1) * 3.0)  # fires nearly every latent
    pre = sae.pre_activations(params, x, cfg)
    assert not bool(cfg.arch.sparse_select(params, pre, cfg, k=cfg.k, inference=False).exact)
    sp = dataclasses.replace(cfg, decoder="sparse")
    dense = dataclasses.replace(cfg, decoder="dense")
    for inference in (False, True):
        _, aux_d = sae.forward(params, x, dense, inference=inference)
        _, aux_s = sae.forward(params, x, sp, inference=inference)
        np.testing.assert_array_equal(aux_s["z"] > 0, aux_d["z"] > 0)
        np.testing.assert_allclose(aux_s["z"], aux_d["z"], rtol=1e-6)
    g = {m: jax.grad(lambda p, c=c: jnp.sum(sae.forward(p, x, c)[0] ** 2))(params)
         for m, c in (("dense", dense), ("sparse", sp))}
    for n in g["dense"]:
        np.testing.assert_allclose(g["sparse"][n], g["dense"][n], rtol=1e-5, atol=1e-6,
                                   err_msg=n)
    # the training step branches before the gradient: same loss and gradients as dense
    kw = dict(k=jnp.int32(cfg.k), coefficient=jnp.float32(0.3),
              dead=jnp.arange(cfg.d_sae) % 2 == 0)
    (l_s, _), g_s = training._value_and_grad(params, x, cfg=sp, **kw)
    (l_d, _), g_d = jax.value_and_grad(training.loss_fn, has_aux=True)(params, x, cfg=dense,
                                                                         **kw)
    np.testing.assert_allclose(l_s, l_d, rtol=1e-6)
    for n in g_d:
        np.testing.assert_allclose(g_s[n], g_d[n], rtol=1e-5, atol=1e-6, err_msg=n)


def test_bfloat16_compute_keeps_float32_params_and_trains():
    cfg = dataclasses.replace(BASE, compute_dtype="bfloat16", steps=16, dead_tokens=10**6)
    src = sae.array_source(_data(), cfg.batch_size)
    r16 = sae.train(cfg, src, jax.random.key(5), progress=False, chunk_size=16)
    r32 = sae.train(dataclasses.replace(cfg, compute_dtype="float32"), src, jax.random.key(5),
                    progress=False, chunk_size=16)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(r16.state.params))
    assert r16.history["fvu"][-1] < r16.history["fvu"][0]
    np.testing.assert_allclose(r16.history["fvu"][-1], r32.history["fvu"][-1], rtol=0.1)


def test_rule_and_bad_arguments():
    assert sparse.use_sparse(dataclasses.replace(BASE, d_sae=4096, k=32))
    assert not sparse.use_sparse(dataclasses.replace(BASE, d_sae=64, k=32))
    assert not sparse.use_sparse(dataclasses.replace(BASE, d_sae=4096, decoder="dense"))
    assert not sparse.use_sparse(dataclasses.replace(BASE, architecture="relu"))
    # JumpReLU has 4k slots per row: sparse from d_sae >= 64 * 4k
    assert sparse.use_sparse(dataclasses.replace(BASE, architecture="jumprelu", d_sae=4096,
                                                 k=16))
    assert not sparse.use_sparse(dataclasses.replace(BASE, architecture="jumprelu",
                                                     d_sae=4096, k=17))
    with pytest.raises(ValueError, match="decoder='sparse' needs an architecture"):
        dataclasses.replace(BASE, architecture="relu", decoder="sparse")
    with pytest.raises(ValueError, match="SAEConfig.decoder"):
        dataclasses.replace(BASE, decoder="csr")
    with pytest.raises(ValueError, match="SAEConfig.compute_dtype"):
        dataclasses.replace(BASE, compute_dtype="float16")
    with pytest.raises(ValueError, match="exceeds k_max"):
        sparse.select_topk(jnp.ones((2, 8)), 5, 4)
    with pytest.raises(ValueError, match="exceeds its static bound"):
        sae.model.kth_largest_nonneg(jnp.ones((2, 8)), jnp.int32(5), 4)


def test_batchtopk_inference_keeps_the_fixed_threshold_on_the_sparse_setting():
    cfg = dataclasses.replace(BASE, architecture="batchtopk")
    params = {**sae.init_params(jax.random.key(8), cfg), "threshold": jnp.float32(0.3)}
    x = _data(32)
    z = {m: sae.forward(params, x, dataclasses.replace(cfg, decoder=m), inference=True)[1]["z"]
         for m in ("dense", "sparse")}
    np.testing.assert_array_equal(z["sparse"], z["dense"])
    np.testing.assert_array_equal(z["sparse"] > 0, jax.nn.relu(sae.pre_activations(
        params, x, cfg)) > 0.3)
