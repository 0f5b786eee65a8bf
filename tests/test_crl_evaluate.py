"""Scoring CRL fits against ground truth, on worked cases computed by hand.

``standardized_graph``, ``score_run`` (alignment by the MCC permutation, threshold and
edge-count-matched SHD, edge AUROC, SHD of a discrete DAG, target accuracy) and
``FitResult.discover_graph`` produce every CRL headline number; each is checked here
against a case whose answer is worked out in the comments.
"""

import types

import jax
import numpy as np
import pytest

from jaxcrl.crl import CRLConfig, FitResult
from jaxcrl.crl.discovery import exact_dag_search
from jaxcrl.crl.evaluate import score_run, standardized_graph
from jaxcrl.metrics import shd
from jaxcrl.scm import DatasetConfig, SCMConfig, make_dataset

CHAIN = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])  # true 0 -> 1 -> 2


def test_standardized_graph_scales_by_sd_of_source_over_sd_of_target():
    z_obs = np.array([[1.0, 4.0], [-1.0, -4.0]])  # sd (ddof 0) = [1, 4]
    w = np.array([[0.0, 2.0], [3.0, 0.0]])
    # W_std[i, j] = W[i, j] sd_i / sd_j: [0, 1] = 2 * 1 / 4, [1, 0] = 3 * 4 / 1
    np.testing.assert_allclose(standardized_graph(w, z_obs), [[0.0, 0.5], [12.0, 0.0]])


def _permuted_case():
    """True latents z [N, 3] (exactly standardized) and a learned copy with learned latent
    k = true latent q[k] times scale s[k], q = [2, 0, 1], s = [1, 2, 4]; so the MCC
    permutation (perm[i] = learned latent of true latent i) is [1, 2, 0]."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 3))
    z = (z - z.mean(0)) / z.std(0)
    q, s = np.array([2, 0, 1]), np.array([1.0, 2.0, 4.0])
    return z, z[:, q] * s


def test_score_run_aligns_standardizes_and_counts_edges_by_hand():
    z, z_hat = _permuted_case()
    env = np.zeros(len(z), int)
    # Learned weights (learned indices) and their standardized values W sd_i / sd_j:
    #   [1, 2] = 1.0 -> 1.0 * 2 / 4 = 0.50  -> true 0 -> 1 (perm: learned 1 = true 0, 2 = 1)
    #   [2, 0] = 0.1 -> 0.1 * 4 / 1 = 0.40  -> true 1 -> 2
    #   [0, 2] = 1.8 -> 1.8 * 1 / 4 = 0.45  -> true 2 -> 1 (reverse of a true edge)
    #   [0, 1] = 0.5 -> 0.5 * 1 / 2 = 0.25  -> true 2 -> 0 (below the 0.3 threshold)
    w_hat = np.zeros((3, 3))
    w_hat[1, 2], w_hat[2, 0], w_hat[0, 2], w_hat[0, 1] = 1.0, 0.1, 1.8, 0.5
    out = score_run(z, z_hat, env, adj_true=CHAIN, w_hat=w_hat, edge_threshold=0.3)
    assert out["mcc_pearson"] == pytest.approx(1.0, abs=1e-9)
    assert out["mcc_pearson_oos"] == pytest.approx(1.0, abs=1e-9)
    # |W_std| > 0.3: 0 -> 1, 1 -> 2, 2 -> 1. Pair {1, 2} holds the true edge plus its
    # reverse (one extra edge): SHD 1. (Unstandardized, |W| > 0.3 would keep 2 -> 1 and
    # 2 -> 0 and drop 1 -> 2: SHD 3.)
    assert out["shd_svi"] == 1
    # Edge count matched (2): keep 0.50 (0 -> 1) and 0.45 (2 -> 1): 1 -> 2 reversed: SHD 1.
    assert out["shd_matched"] == 1
    # AUROC: positives {0.50, 0.40}; negatives {0.45, 0.25, 0, 0}: 0.50 beats all 4,
    # 0.40 beats 3 -> 7 / 8.
    assert out["edge_auroc"] == pytest.approx(7 / 8)
    assert out["shd"] == out["shd_svi"]  # no discrete DAG given


def test_score_run_scores_a_discrete_dag_through_the_mcc_permutation():
    z, z_hat = _permuted_case()
    env = np.zeros(len(z), int)
    w_hat = np.zeros((3, 3))
    # learned 1 -> 2 = true 0 -> 1; learned 2 -> 0 = true 1 -> 2: the true chain exactly
    w_dag = np.zeros((3, 3))
    w_dag[1, 2] = w_dag[2, 0] = 0.7
    assert score_run(z, z_hat, env, adj_true=CHAIN, w_hat=w_hat, w_dag=w_dag)["shd"] == 0
    assert shd(CHAIN, w_dag) == 2  # unaligned, the same DAG would look wrong
    # learned 0 -> 2 = true 2 -> 1 instead of 1 -> 2: one reversal
    w_dag[2, 0], w_dag[0, 2] = 0.0, 0.7
    assert score_run(z, z_hat, env, adj_true=CHAIN, w_hat=w_hat, w_dag=w_dag)["shd"] == 1
    # learned 0 -> 1 = true 2 -> 0 added: one extra edge more
    w_dag[0, 1] = 0.7
    assert score_run(z, z_hat, env, adj_true=CHAIN, w_hat=w_hat, w_dag=w_dag)["shd"] == 2


def test_target_accuracy_reads_learned_targets_through_the_mcc_permutation():
    z, z_hat = _permuted_case()
    env = np.zeros(len(z), int)
    t_true = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], bool)
    # learned latent of true i is perm[i] = [1, 2, 0][i]
    t_hat = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], bool)
    s = score_run(z, z_hat, env, targets_true=t_true, targets_hat=t_hat)
    assert s["target_accuracy"] == 1.0 and s["targets_right"] == 1.0
    assert np.mean(np.all(t_hat == t_true, 1)) == 0.25  # unaligned: only env 0 agrees
    t_hat[3] = [0, 1, 0]  # env 3 now names true latent 0 instead of 2
    s = score_run(z, z_hat, env, targets_true=t_true, targets_hat=t_hat)
    assert s["target_accuracy"] == 0.75  # 3 of 4 environments, the observational one counted
    assert s["targets_right"] == pytest.approx(2 / 3)  # 2 of the 3 interventional ones
    assert "target_accuracy" not in score_run(z, z_hat, env, targets_true=t_true)


def _oracle_fit(z, threshold):
    """A FitResult whose encoder returns the given latents ``z [S, N, d]``: isolates the
    search, pruning and target handling of ``discover_graph`` from training."""
    cfg = CRLConfig(latent_dim=z.shape[-1], n_envs=z.shape[-1] + 1, edge_threshold=threshold)
    pre = types.SimpleNamespace(mean=np.zeros((z.shape[0], 1)))
    res = FitResult(cfg=cfg, params={}, preprocess=pre, history={})
    res.encode = lambda x: z
    return res


@pytest.fixture(scope="module")
def two_seeds_d4():
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=4), n_per_env=3000)
    return jax.vmap(lambda k: make_dataset(k, cfg))(jax.random.split(jax.random.key(3), 2))


def test_discover_graph_on_true_latents_finds_the_true_dag(two_seeds_d4):
    ds = two_seeds_d4
    z, env, t = (np.asarray(a) for a in (ds.z, ds.env, ds.targets))
    w = _oracle_fit(z, 0.0).discover_graph(ds.x, env, t)
    assert w.shape == (2, 4, 4)
    for s in range(2):
        assert shd(np.asarray(ds.adj[s]), w[s]) == 0
        np.testing.assert_allclose(w[s], np.asarray(ds.weights[s]), atol=0.05)
        np.testing.assert_allclose(w[s], exact_dag_search(z[s], env[s], t[s])[0])


def test_discover_graph_prunes_by_standardized_weight_whatever_the_latent_scales(two_seeds_d4):
    ds = two_seeds_d4
    z, env, t = (np.asarray(a) for a in (ds.z, ds.env, ds.targets))
    s = 0
    w_full = exact_dag_search(z[s], env[s], t[s])[0]
    sd = z[s][env[s] == 0].std(0)
    w_std = np.abs(w_full * sd[:, None] / sd[None, :])
    kept = np.sort(w_std[w_std > 0])
    assert len(kept) >= 2
    thr = 0.5 * (kept[0] + kept[1])  # prunes exactly the weakest edge
    want = np.where(w_std >= thr, w_full, 0.0)
    got = _oracle_fit(z, thr).discover_graph(ds.x, env, t)[s]
    np.testing.assert_allclose(got, want)
    assert (got != 0).sum() == len(kept) - 1
    # Rescaling learned latents (arbitrary per latent) must not change which edges stay.
    scale = np.array([1.0, 10.0, 0.1, 3.0])
    got_scaled = _oracle_fit(z * scale, thr).discover_graph(ds.x, env, t)[s]
    np.testing.assert_array_equal(got_scaled != 0, want != 0)


def test_score_run_reports_per_latent_mcc_by_index_and_by_causal_position():
    """True chain 2 -> 0 -> 1 (order 2, 0, 1); learned latents copy true 0 and 1 exactly
    and true 2 with noise, so only true latent 2's entry (the root, first in causal order)
    is below 1."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3000, 3))
    z_hat = z.copy()
    z_hat[:, 2] = z[:, 2] + rng.normal(size=3000)  # corr 1/sqrt(2)
    adj = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]])
    w = np.zeros((3, 3))
    out = score_run(z, z_hat, np.zeros(3000, int), adj_true=adj, w_hat=w)
    per = out["mcc_per_latent"]
    assert len(per) == 3 and per[0] == pytest.approx(1) and per[1] == pytest.approx(1)
    assert per[2] == pytest.approx(2**-0.5, abs=0.03)
    np.testing.assert_allclose(out["mcc_per_latent_topo"], [per[2], per[0], per[1]])
    assert np.mean(per) == pytest.approx(out["mcc_pearson"])


def test_score_run_reports_the_soft_shear_class_r2_only_for_soft_data():
    """Chain 2 -> 0 -> 1: learned latent 1 is true 1 sheared by its single parent 0 (inside
    the soft class: class R² 1, MCC below 1); learned 0 is true 0 sheared by 1, its child
    (outside: class R² = MCC², nothing more is allowed for a single-parent node's child)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3000, 3))
    z_hat = z.copy()
    z_hat[:, 1] = z[:, 1] + 0.8 * z[:, 0]
    z_hat[:, 0] = z[:, 0] + 0.5 * z[:, 1]
    adj = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert "class_r2" not in score_run(z, z_hat, np.zeros(3000, int), adj_true=adj)
    out = score_run(z, z_hat, np.zeros(3000, int), adj_true=adj, soft=True)
    per, mcc2 = out["class_r2_per_latent"], np.square(out["mcc_per_latent"])
    assert per[1] == pytest.approx(1) and mcc2[1] < 0.7
    assert per[0] == pytest.approx(mcc2[0], abs=0.01) and per[0] < 0.9
    assert per[2] == pytest.approx(1) and out["class_r2"] == pytest.approx(np.mean(per))
    # Labelled (known targets): a shear so strong that MCC matching pairs learned 1 with
    # true 0 is still scored against true 1, inside the class.
    z_hat[:, 1] = z[:, 1] + 5.0 * z[:, 0]
    out = score_run(z, z_hat, np.zeros(3000, int), adj_true=adj, soft=True)
    assert out["mcc_labelled_per_latent"][0] > 0.97  # matching paired true 0 with learned 1
    out = score_run(z, z_hat, np.zeros(3000, int), adj_true=adj, soft=True, labelled=True)
    assert out["class_r2_per_latent"][1] == pytest.approx(1)
    assert out["mcc_labelled_per_latent"][1] == pytest.approx(1 / np.sqrt(26), abs=0.03)
    assert out["mcc_labelled_per_latent"][0] == pytest.approx(2 / np.sqrt(5), abs=0.03)


def test_summarize_seeds_keeps_per_latent_lists_position_by_position():
    from jaxcrl.results import summarize_seeds

    s = summarize_seeds([{"m": 0.5, "per": [1.0, 0.2]}, {"m": 0.7, "per": [0.0, 0.4]}])
    assert s["m"]["mean"] == pytest.approx(0.6)
    np.testing.assert_allclose(s["per"]["mean"], [0.5, 0.3])
    np.testing.assert_allclose(s["per"]["std"], [0.5, 0.1])
    assert s["per"]["per_seed"] == [[1.0, 0.2], [0.0, 0.4]]


def test_score_run_reports_the_fitted_graphs_acyclicity_zero_only_for_a_dag():
    z, z_hat = _permuted_case()
    env = np.zeros(len(z), int)
    dag = np.zeros((3, 3))
    dag[0, 1], dag[1, 2], dag[0, 2] = 1.5, -2.0, 0.7
    assert score_run(z, z_hat, env, w_hat=dag)["acyclicity"] == 0.0
    # A 2-cycle 0 <-> 1 (weights a, b) in d = 3: with A = W o W, tr((I + A/3)^3) - 3 =
    # tr(A) + tr(A^2)/3 + tr(A^3)/27 = 0 + 2 a^2 b^2 / 3 + 0 (no closed walks of length 1, 3).
    a, b = 0.5, 2.0
    cyc = dag.copy()
    cyc[1, 0] = b
    cyc[0, 1] = a
    out = score_run(z, z_hat, env, w_hat=cyc, adj_true=CHAIN)
    assert out["acyclicity"] == pytest.approx(2 * a**2 * b**2 / 3, rel=1e-5)
    # Closed walks do not depend on the latents' scales: D^-1 W D has the same value.
    scale = np.diag([1.0, 3.0, 0.2])
    rescaled = np.linalg.inv(scale) @ cyc @ scale
    assert score_run(z, z_hat, env, w_hat=rescaled)["acyclicity"] == pytest.approx(
        out["acyclicity"], rel=1e-5)
    # where an order cuts W's cycles (the flow prior), they are not the fit's: not reported
    assert "acyclicity" not in score_run(z, z_hat, env, w_hat=cyc, w_can_cycle=False)
