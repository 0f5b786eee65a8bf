"""SCM sampling, interventions and multi-environment datasets.

Statistical checks use fixed keys and state their tolerance next to the assertion.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxcrl import scm

N_BIG = 200_000
N_DEP = 20_000
N_BINS = 20
# Correlation-ratio thresholds for n = 20k and 20 bins: under independence eta^2 is about
# chi2(19) / n = 0.001 +- 0.0003, so 0.004 is ~10 sd; parent dependence must exceed 0.02.
INDEPENDENT = 0.004
DEPENDENT = 0.02


def _correlation_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """eta^2: fraction of Var(y) explained by E[y | quantile bin of x] (any shape of mean)."""
    edges = np.quantile(x, np.linspace(0, 1, N_BINS + 1)[1:-1])
    bins = np.searchsorted(edges, x)
    counts = np.bincount(bins, minlength=N_BINS)
    means = np.bincount(bins, weights=y, minlength=N_BINS) / counts
    return float(np.sum(counts * (means - y.mean()) ** 2) / np.sum((y - y.mean()) ** 2))


def _dependence(a: np.ndarray, b: np.ndarray) -> float:
    """Dependence of ``b`` on ``a`` robust to nonlinearity: max of eta^2 of b and of b^2.

    The centred square catches parents that act on the noise scale (location-scale).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return max(_correlation_ratio(a, b), _correlation_ratio(a, (b - b.mean()) ** 2))


def _shift_zscore(a: np.ndarray, b: np.ndarray) -> float:
    """Largest of the two-sample z-scores of the mean and of the log-variance."""
    mean_z = abs(a.mean() - b.mean()) / np.sqrt(a.var() / a.size + b.var() / b.size)
    # sd of a log sample variance is sqrt((kurtosis - 1) / n); use the larger kurtosis
    kurt = max(stats.kurtosis(a, fisher=False), stats.kurtosis(b, fisher=False))
    logvar_z = abs(np.log(a.var() / b.var())) / np.sqrt((kurt - 1) * (1 / a.size + 1 / b.size))
    return float(max(mean_z, logvar_z))


def _topological(adj: np.ndarray) -> list[int]:
    """Reference causal order (Kahn's algorithm in pure Python)."""
    indegree = adj.sum(axis=0).astype(int).tolist()
    ready = [j for j in range(adj.shape[0]) if indegree[j] == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in np.flatnonzero(adj[i]):
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    return order


def _reference_sample(params: scm.SCMParams, eps: np.ndarray) -> np.ndarray:
    """Observational ancestral sampling in causal order, written out node by node in numpy."""
    adj, w = np.asarray(params.adj), np.asarray(params.weights, np.float64)
    z = np.zeros_like(eps, dtype=np.float64)

    def mlp(net: scm.NodeMLP, j: int) -> np.ndarray:
        w1, b1, w2 = (np.asarray(a, np.float64)[j] for a in (net.w1, net.b1, net.w2))
        pre = (z * w[:, j]) @ w1 + b1  # [n, hidden]
        return (np.tanh(pre) - np.tanh(b1)) @ w2

    for j in _topological(adj):
        scale = float(params.noise_scale[j])
        if params.mechanism == "linear":
            loc = z @ w[:, j]
        else:
            loc = mlp(params.mean_net, j)
        if params.mechanism == "location_scale":
            low, high = params.sigma_range
            g = mlp(params.scale_net, j)
            scale = scale * np.exp(0.5 * np.log(low * high) + 0.5 * np.log(high / low) * np.tanh(g))
        z[:, j] = loc + scale * eps[:, j]
    return z


def _middle_node(params: scm.SCMParams) -> tuple[int, np.ndarray, np.ndarray]:
    """A node with parents and descendants in a full DAG: (node, parents, descendants)."""
    order = np.asarray(scm.topological_order(params.adj))
    j = int(order[len(order) // 2])
    pa = np.flatnonzero(np.asarray(scm.parents(params.adj, j)))
    de = np.flatnonzero(np.asarray(scm.descendants(params.adj, j)))
    assert pa.size and de.size
    return j, pa, de


def _onehot(d: int, *nodes: int) -> np.ndarray:
    mask = np.zeros(d, dtype=bool)
    mask[list(nodes)] = True
    return mask


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize(
    ("family", "kurt_low", "kurt_high"),
    [("gaussian", -0.1, 0.1), ("laplace", 2.0, 4.0), ("uniform", -1.3, -1.1)],
)
def test_noise_families_are_standardized_with_right_kurtosis(
    family: str, kurt_low: float, kurt_high: float
) -> None:
    eps = np.asarray(scm.sample_noise(jax.random.key(0), (N_BIG,), family), np.float64)
    assert abs(eps.mean()) < 0.015  # sd 0.0022
    assert abs(eps.var() - 1.0) < 0.03  # sd <= 0.0045 (laplace)
    excess = stats.kurtosis(eps)  # gaussian 0, laplace 3, uniform -1.2
    assert kurt_low < excess < kurt_high


def test_noise_scale_scales_root_nodes() -> None:
    params = scm.init_scm(jax.random.key(0), _full4("linear"))
    params = dataclasses.replace(params, noise_scale=jnp.full(4, 2.5))
    z = np.asarray(scm.sample_scm(params, jax.random.key(1), N_DEP))
    root = int(scm.topological_order(params.adj)[0])
    assert z[:, root].std() == pytest.approx(2.5, rel=0.03)  # sd of a sample sd: 0.5 %


# --------------------------------------------------------------------------- linear SCM


LINEAR = scm.SCMConfig(latent_dim=5, graph=scm.GraphConfig(edge_prob=0.6), weight_high=1.5)


def _linear_params() -> scm.SCMParams:
    params = scm.init_scm(jax.random.key(3), LINEAR)
    assert int(params.adj.sum()) >= 5  # enough structure for the test to mean something
    return params


def test_linear_weights_live_on_the_graph_with_bounded_magnitude() -> None:
    params = scm.init_scm(jax.random.key(0), dataclasses.replace(LINEAR, latent_dim=12))
    adj, w = np.asarray(params.adj), np.asarray(params.weights)
    assert np.all(w[adj == 0] == 0)
    on = np.abs(w[adj == 1])
    assert on.min() >= LINEAR.weight_low and on.max() <= LINEAR.weight_high
    assert 0 < (w[adj == 1] > 0).mean() < 1  # both signs occur


@pytest.mark.parametrize(
    ("kind", "targets"), [(None, ()), ("perfect", (0, 3)), ("soft", (1,)), ("soft", (2, 4))]
)
def test_linear_empirical_moments_match_analytic(kind: str | None, targets: tuple) -> None:
    params = _linear_params()
    d = params.latent_dim
    iv = None
    if kind is not None:
        iv = scm.Intervention.make(
            _onehot(d, *targets), new_mean=1.5, new_scale=0.7, weight_factor=-0.5
        )
    kwargs = {} if kind is None else dict(kind=kind)
    z = np.asarray(scm.sample_scm(params, jax.random.key(4), N_BIG, iv, **kwargs), np.float64)
    cov = np.asarray(scm.analytic_covariance(params, iv, **kwargs), np.float64)
    mean = np.asarray(scm.analytic_mean(params, iv, **kwargs), np.float64)
    sd = np.sqrt(np.diag(cov))
    # Sampling sd of a covariance entry is <= sqrt(2 / n) * sd_i sd_j = 0.0032 sd_i sd_j.
    np.testing.assert_array_less(np.abs(np.cov(z.T) - cov), 0.02 * np.outer(sd, sd))
    np.testing.assert_array_less(np.abs(z.mean(axis=0) - mean), 0.02 * sd)  # sd 0.0022 sd_i


def test_perfect_intervention_analytic_covariance_cuts_incoming_edges() -> None:
    params = _linear_params()
    j = int(np.argmax(np.asarray(params.adj).sum(axis=0)))  # node with most parents
    iv = scm.Intervention.make(_onehot(5, j), new_scale=0.7)
    cov_obs = np.asarray(scm.analytic_covariance(params))
    cov = np.asarray(scm.analytic_covariance(params, iv))
    assert cov[j, j] == pytest.approx(0.49, rel=1e-5)
    for i in np.flatnonzero(np.asarray(scm.ancestors(params.adj, j))):
        assert abs(cov_obs[i, j]) > 0.05 and abs(cov[i, j]) < 1e-5


@pytest.mark.parametrize("kind", ["perfect", "soft"])
def test_linear_closed_form_and_fixed_point_agree(kind: str) -> None:
    params = _linear_params()
    eps = scm.sample_noise(jax.random.key(5), (1000, 5), "laplace")
    for iv in (None, scm.Intervention.make(_onehot(5, 1, 3), new_mean=2.0, weight_factor=0.4)):
        closed = scm.solve_scm(params, eps, iv, kind=kind, method="closed_form")
        fixed = scm.solve_scm(params, eps, iv, kind=kind, method="fixed_point")
        np.testing.assert_allclose(closed, fixed, atol=1e-4 * float(jnp.abs(closed).max()))
    reference = _reference_sample(params, np.asarray(eps, np.float64))
    np.testing.assert_allclose(scm.solve_scm(params, eps), reference, rtol=1e-4, atol=1e-4)


def test_closed_form_rejects_nonlinear_scm() -> None:
    params = scm.init_scm(jax.random.key(0), dataclasses.replace(LINEAR, mechanism="nonlinear"))
    with pytest.raises(ValueError, match="linear SCM"):
        scm.solve_scm(params, jnp.zeros((4, 5)), method="closed_form")
    with pytest.raises(ValueError, match="linear SCM"):
        scm.analytic_covariance(params)


# --------------------------------------------------------------------------- nonlinear SCMs


FULL4 = scm.GraphConfig(kind="full")


def _full4(mechanism: str, **kwargs: float) -> scm.SCMConfig:
    """The SCM family most tests share (one compilation each): a random-order full DAG."""
    return scm.SCMConfig(latent_dim=4, mechanism=mechanism, graph=FULL4, weight_high=1.5, **kwargs)


@pytest.mark.parametrize("mechanism", ["nonlinear", "location_scale"])
def test_fixed_point_sampling_matches_reference_ancestral_sampling(mechanism: str) -> None:
    params = scm.init_scm(jax.random.key(6), _full4(mechanism))
    eps = scm.sample_noise(jax.random.key(7), (500, 4), "gaussian")
    reference = _reference_sample(params, np.asarray(eps, np.float64))
    np.testing.assert_allclose(scm.solve_scm(params, eps), reference, rtol=1e-4, atol=1e-4)


def _noise_response(params: scm.SCMParams, j: int, n: int = 2000) -> np.ndarray:
    """``z_j(eps_j = 1) - z_j(eps_j = 0)`` with everything else shared = the noise scale of j."""
    eps = scm.sample_noise(jax.random.key(8), (n, params.latent_dim), "gaussian")
    z1 = scm.solve_scm(params, eps.at[:, j].set(1.0))
    z0 = scm.solve_scm(params, eps.at[:, j].set(0.0))
    return np.asarray(z1 - z0)[:, j]


def test_location_scale_noise_scale_depends_on_parents_within_range() -> None:
    params = scm.init_scm(jax.random.key(9), _full4("location_scale"))
    order = np.asarray(scm.topological_order(params.adj))
    root_sigma = _noise_response(params, int(order[0]))
    np.testing.assert_allclose(root_sigma, 1.0, atol=1e-5)  # no parents: sqrt(0.5 * 2)
    sigma = _noise_response(params, int(order[-1]))
    assert sigma.min() >= 0.5 - 1e-5 and sigma.max() <= 2.0 + 1e-5
    assert sigma.std() > 0.05  # heteroscedastic: the scale varies with the parents
    additive = scm.init_scm(jax.random.key(9), _full4("nonlinear"))
    additive = dataclasses.replace(additive, noise_scale=jnp.full(4, 0.5))
    np.testing.assert_allclose(_noise_response(additive, int(order[-1])), 0.5, atol=1e-5)


# --------------------------------------------------------------------------- interventions


@pytest.mark.parametrize("mechanism", ["linear", "nonlinear", "location_scale"])
def test_perfect_intervention_cuts_parents_and_shifts_descendants(mechanism: str) -> None:
    params = scm.init_scm(jax.random.key(10), _full4(mechanism))
    j, pa, de = _middle_node(params)
    iv = scm.Intervention.make(_onehot(4, j), new_mean=3.0, new_scale=0.5)
    z_obs = np.asarray(scm.sample_scm(params, jax.random.key(11), N_DEP))
    z_int = np.asarray(scm.sample_scm(params, jax.random.key(12), N_DEP, iv))
    for i in pa:
        assert _dependence(z_obs[:, i], z_obs[:, j]) > DEPENDENT  # the test can fail
        assert _dependence(z_int[:, i], z_int[:, j]) < INDEPENDENT
    np.testing.assert_allclose([z_int[:, j].mean(), z_int[:, j].std()], [3.0, 0.5], atol=0.02)
    for k in de:
        assert _shift_zscore(z_obs[:, k], z_int[:, k]) > 8  # sd 1 under no shift
    # With shared noise the intervention leaves every non-descendant untouched.
    z_same_noise = np.asarray(scm.sample_scm(params, jax.random.key(11), N_DEP, iv))
    unaffected = np.setdiff1d(np.arange(4), np.append(de, j))
    np.testing.assert_allclose(z_same_noise[:, unaffected], z_obs[:, unaffected], atol=1e-5)
    assert not np.allclose(z_same_noise[:, de], z_obs[:, de])


def test_linear_soft_intervention_rescales_parent_weights() -> None:
    params = scm.init_scm(jax.random.key(13), _full4("linear"))
    j, pa, _ = _middle_node(params)
    factor = 0.4
    iv = scm.Intervention.make(_onehot(4, j), new_mean=1.0, new_scale=0.8, weight_factor=factor)
    w = np.asarray(params.weights)[pa, j]
    for env_iv, expected, noise_sd in ((None, w, 1.0), (iv, factor * w, 0.8)):
        z = np.asarray(scm.sample_scm(params, jax.random.key(14), N_DEP, env_iv, kind="soft"))
        design = np.column_stack([z[:, pa], np.ones(N_DEP)])
        coef, residual, *_ = np.linalg.lstsq(design, z[:, j], rcond=None)
        np.testing.assert_allclose(coef[:-1], expected, atol=0.03)  # OLS sd ~0.007
        assert np.sqrt(residual[0] / N_DEP) == pytest.approx(noise_sd, rel=0.03)
        for i in pa:
            assert abs(np.corrcoef(z[:, i], z[:, j])[0, 1]) > 0.1  # sd 0.007 if independent


@pytest.mark.parametrize("mechanism", ["nonlinear", "location_scale"])
def test_soft_intervention_keeps_parent_dependence_but_changes_mechanism(mechanism: str) -> None:
    params = scm.init_scm(jax.random.key(15), _full4(mechanism))
    j, pa, _ = _middle_node(params)
    factor, mean, scale = -0.5, 1.0, 0.5
    iv = scm.Intervention.make(_onehot(4, j), new_mean=mean, new_scale=scale, weight_factor=factor)
    eps = scm.sample_noise(jax.random.key(16), (N_DEP, 4), "gaussian")
    z_obs, z_soft, z_perfect = (
        np.asarray(scm.solve_scm(params, eps, v, kind=k))
        for v, k in ((None, "soft"), (iv, "soft"), (iv, "perfect"))
    )
    for i in pa:
        assert _dependence(z_soft[:, i], z_soft[:, j]) > DEPENDENT
        assert _dependence(z_perfect[:, i], z_perfect[:, j]) < INDEPENDENT
    assert _shift_zscore(z_obs[:, j], z_soft[:, j]) > 8
    # Same noise: parents are untouched and z_j = factor * loc_j(pa) + mean + scale * eps_j,
    # where loc_j(pa) is the observational z_j with its own noise switched off.
    np.testing.assert_allclose(z_soft[:, pa], z_obs[:, pa], atol=1e-5)
    loc = np.asarray(scm.solve_scm(params, eps.at[:, j].set(0.0)))[:, j]
    assert np.std(loc) > 0.3  # parent effects are clearly visible
    expected = factor * loc + mean + scale * np.asarray(eps[:, j])
    np.testing.assert_allclose(z_soft[:, j], expected, atol=1e-4)


def test_multiple_targets_are_all_intervened() -> None:
    params = scm.init_scm(jax.random.key(17), _full4("nonlinear"))
    order = np.asarray(scm.topological_order(params.adj))
    targets = order[[1, 3]]
    iv = scm.Intervention.make(_onehot(4, *targets), new_mean=jnp.arange(4.0), new_scale=0.1)
    z = np.asarray(scm.sample_scm(params, jax.random.key(18), N_DEP, iv))
    np.testing.assert_allclose(z[:, targets].mean(axis=0), targets.astype(float), atol=0.01)
    np.testing.assert_allclose(z[:, targets].std(axis=0), 0.1, rtol=0.03)


def test_sample_intervention_respects_config_ranges() -> None:
    cfg = scm.InterventionConfig(kind="soft", soft_weight_low=1.5, soft_weight_high=2.5)
    targets = scm.random_targets(jax.random.key(0), 8, 3)
    assert int(targets.sum()) == 3
    iv = scm.sample_intervention(jax.random.key(1), cfg, targets)
    t = np.asarray(targets)
    factor = np.abs(np.asarray(iv.weight_factor))
    assert np.all((factor[t] >= 1.5) & (factor[t] <= 2.5)) and np.all(factor[~t] == 1.0)
    scale = np.asarray(iv.new_scale)
    assert np.all((scale[t] >= 0.5) & (scale[t] <= 1.5)) and np.all(scale[~t] == 1.0)
    assert np.all(np.asarray(iv.new_mean)[~t] == 0.0)


# --------------------------------------------------------------------------- reproducibility


def test_sampling_is_reproducible_and_vmap_consistent() -> None:
    params = scm.init_scm(jax.random.key(19), _full4("location_scale"))
    params = dataclasses.replace(params, noise="laplace")
    iv = scm.Intervention.make(_onehot(4, 2), new_mean=1.0, weight_factor=0.5)
    keys = jax.random.split(jax.random.key(20), 8)

    def draw(k: jax.Array) -> jax.Array:
        return scm.sample_scm(params, k, N_DEP, iv, kind="soft")

    looped = jnp.stack([draw(k) for k in keys])
    # sample_scm is jitted itself; eager-vs-jit of whole pipelines is tested on datasets.
    np.testing.assert_allclose(jax.vmap(draw)(keys), looped, rtol=1e-5, atol=1e-5)
    assert jnp.array_equal(draw(keys[0]), draw(keys[0]))
    assert not jnp.allclose(looped[0], looped[1])
    # Environments vmap too: the target mask is data.
    ivs = jax.tree.map(lambda *a: jnp.stack(a), iv, scm.Intervention.observational(4))
    both = jax.vmap(lambda v: scm.sample_scm(params, keys[0], N_DEP, v, kind="soft"))(ivs)
    np.testing.assert_allclose(both[0], looped[0], rtol=1e-5, atol=1e-5)


def test_bad_scm_arguments_raise() -> None:
    with pytest.raises(ValueError, match="SCMConfig.mechanism"):
        scm.SCMConfig(mechanism="quadratic")
    with pytest.raises(ValueError, match="SCMConfig.noise"):
        scm.SCMConfig(noise="cauchy")
    with pytest.raises(ValueError, match="latent_dim"):
        scm.SCMConfig(latent_dim=0)
    with pytest.raises(ValueError, match="expected_degree"):
        scm.SCMConfig(latent_dim=3, graph=scm.GraphConfig(expected_degree=4.0))
    with pytest.raises(ValueError, match="must exclude 1"):
        scm.InterventionConfig(soft_weight_low=0.5, soft_weight_high=1.5)
    with pytest.raises(ValueError, match="InterventionConfig.kind"):
        scm.InterventionConfig(kind="hard")
    params = scm.init_scm(jax.random.key(0), scm.SCMConfig(latent_dim=3))
    with pytest.raises(ValueError, match="intervention kind"):
        scm.sample_scm(params, jax.random.key(0), 10, kind="do")
    with pytest.raises(ValueError, match=r"intervention.targets must have shape \(3,\)"):
        scm.sample_scm(params, jax.random.key(0), 10, scm.Intervention.observational(4))


# --------------------------------------------------------------------------- datasets


SMALL = scm.DatasetConfig(
    scm=scm.SCMConfig(latent_dim=3, mechanism="nonlinear"),
    mixing=scm.MixingConfig(kind="injective", obs_dim=6),
    n_per_env=200,
)


def test_dataset_layout_and_ground_truth() -> None:
    ds = scm.make_dataset(jax.random.key(21), SMALL)
    assert ds.x.shape == (800, 6) and ds.z.shape == (800, 3) and ds.x.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ds.env), np.repeat(np.arange(4), 200))
    np.testing.assert_array_equal(np.asarray(ds.targets), np.vstack([np.zeros(3), np.eye(3)]))
    assert ds.n_total_envs == 4 and ds.adj.shape == (3, 3) and ds.weights.shape == (3, 3)
    assert ds.intervention_kind == "perfect"
    np.testing.assert_allclose(scm.apply_mixing(ds.mixing, ds.z), ds.x, atol=1e-6)
    x1, z1 = scm.env_slice(ds, 1)
    assert x1.shape == (200, 6) and isinstance(z1, np.ndarray)
    # Environment 1 intervenes perfectly on latent 0 with its sampled mean and scale.
    np.testing.assert_allclose(z1[:, 0].mean(), ds.interventions.new_mean[1, 0], atol=0.25)
    np.testing.assert_array_equal(np.asarray(ds.interventions.new_mean[0]), 0.0)
    with pytest.raises(ValueError, match="environment index"):
        scm.env_slice(ds, 4)


def test_dataset_scm_is_the_scm_make_dataset_draws() -> None:
    for seed in range(4):
        key = jax.random.key(seed)
        ds, truth = scm.make_dataset(key, SMALL), scm.dataset_scm(key, SMALL)
        np.testing.assert_array_equal(np.asarray(truth.adj), np.asarray(ds.adj))
        np.testing.assert_array_equal(np.asarray(truth.weights), np.asarray(ds.weights))
    assert not np.array_equal(np.asarray(scm.dataset_scm(jax.random.key(0), SMALL).weights),
                              np.asarray(scm.dataset_scm(jax.random.key(1), SMALL).weights))


def test_dataset_multi_target_soft_environments() -> None:
    cfg = dataclasses.replace(
        SMALL, intervention=scm.InterventionConfig(kind="soft", n_targets=2), n_envs=5
    )
    ds = scm.make_dataset(jax.random.key(22), cfg)
    targets = np.asarray(ds.targets)
    assert targets.shape == (6, 3) and not targets[0].any()
    assert np.all(targets[1:].sum(axis=1) == 2)
    assert ds.x.shape == (6 * 200, 6) and ds.intervention_kind == "soft"


def test_dataset_jit_equals_eager_and_vmap_equals_loop() -> None:
    key = jax.random.key(23)
    eager = scm.make_dataset(key, SMALL)
    jitted = jax.jit(scm.make_dataset, static_argnums=1)(key, SMALL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), eager, jitted)
    keys = jax.random.split(key, 8)
    batched = jax.jit(jax.vmap(lambda k: scm.make_dataset(k, SMALL)))(keys)
    assert batched.x.shape == (8, 800, 6) and batched.adj.shape == (8, 3, 3)
    for s in range(8):
        single = scm.make_dataset(keys[s], SMALL)
        jax.tree.map(
            lambda a, b, s=s: np.testing.assert_allclose(a, b[s], rtol=1e-5, atol=1e-5),
            single,
            batched,
        )
    assert not np.allclose(batched.x[0], batched.x[1])
    assert jnp.array_equal(scm.make_dataset(key, SMALL).x, eager.x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_per_env=-5), "n_per_env"),
        (dict(n_envs=-1), "n_envs"),
        (dict(intervention=scm.InterventionConfig(n_targets=4)), "n_targets"),
        (dict(mixing=scm.MixingConfig(kind="injective", obs_dim=2)), "obs_dim=2 < latent_dim=3"),
    ],
)
def test_bad_dataset_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **kwargs)


def test_dataset_program_makes_no_lapack_calls() -> None:
    # jaxlib's batched LAPACK kernels (QR, LU) can deadlock XLA's CPU thread pool when
    # several run at once; a vmapped generator with D ~ 100 used to hang that way.
    cfg = dataclasses.replace(SMALL, mixing=scm.MixingConfig(kind="injective", obs_dim=100))
    cfg = dataclasses.replace(cfg, scm=dataclasses.replace(cfg.scm, mechanism="linear"))
    keys = jax.random.split(jax.random.key(0), 4)
    hlo = jax.jit(jax.vmap(lambda k: scm.make_dataset(k, cfg))).lower(keys).as_text()
    assert "lapack" not in hlo.lower() and "custom_call" not in hlo
