"""The latent-SCM fit recovers what a trivial method cannot, on the same data.

A recovery test that raw ``x`` or FastICA also passes says nothing about the method (at
d = 2 identity scores 0.80-0.93 MCC on a 2-layer mixing). Here, at d = 3, the fit must beat
identity, PCA and FastICA out of sample by a clear margin on every seed; unknown targets
must be recovered on an easy setting; and a CPU fit must be bit-reproducible.
"""

import jax
import numpy as np
import pytest

from jaxcrl.crl import CRLConfig, fast_ica, fit, pca
from jaxcrl.crl.evaluate import score_fit
from jaxcrl.metrics import mcc_out_of_sample
from jaxcrl.scm import DatasetConfig, GraphConfig, MixingConfig, SCMConfig, make_dataset

D = 3


@pytest.fixture(scope="module")
def data_d3():
    """Two seeds of d = 3, ER p = 0.5, 1 + 3 perfect single-node interventions, 2-layer
    invertible MLP mixing, 2000 samples per environment."""
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=D, graph=GraphConfig(edge_prob=0.5)),
                        mixing=MixingConfig(n_layers=2), n_per_env=2000)
    return jax.vmap(lambda k: make_dataset(k, cfg))(jax.random.split(jax.random.key(0), 2))


def _cfg(**kw):
    base = dict(latent_dim=D, n_envs=D + 1, steps=3000, batch_size=512, lr=1e-2, warmup=50,
                flow_layers=2, restarts=2)
    base.update(kw)
    return CRLConfig(**base)


def test_latent_scm_beats_identity_pca_and_fastica_out_of_sample_at_d3(data_d3):
    # Measured (keys fixed): fit 0.996 / 0.999, best baseline 0.80 / 0.77 (identity on
    # seed 0, PCA on seed 1). Bars: fit >= 0.95 and >= 0.10 above every baseline.
    ds = data_d3
    result = fit(_cfg(), ds.x, ds.env, targets=ds.targets, key=jax.random.key(0),
                 progress=False)
    z_fit = np.asarray(result.encode(ds.x))
    for s in range(2):
        x, z = ds.x[s], np.asarray(ds.z[s])
        baselines = {
            "identity": np.asarray(x[:, :D]),
            "pca": np.asarray(pca(x, D)(x)),
            "fast_ica": np.asarray(fast_ica(x, D, jax.random.key(1))(x)),
        }
        ours = mcc_out_of_sample(z, z_fit[s], key=s).value
        theirs = {k: mcc_out_of_sample(z, v, key=s).value for k, v in baselines.items()}
        assert ours >= 0.95, (s, ours, theirs)
        assert ours >= max(theirs.values()) + 0.10, (s, ours, theirs)


def test_unknown_targets_are_recovered_on_an_easy_setting(data_d3):
    # d = 3, 2 mixing layers: the learned single-node targets, read through the MCC
    # permutation, equal the true ones in every environment (measured: accuracy 1.0, MCC
    # 0.97 / 1.00 on both seeds).
    ds = data_d3
    result = fit(_cfg(targets="unknown"), ds.x, ds.env, key=jax.random.key(4), progress=False)
    t_hat = np.asarray(result.targets())
    assert t_hat.shape == (2, D + 1, D)
    assert not t_hat[:, 0].any() and (t_hat[:, 1:].sum(-1) == 1).all()
    scores = score_fit(result, ds.x, ds.z, ds.env, adj_true=ds.adj, targets_true=ds.targets)
    for s in scores:
        assert s["mcc_pearson_oos"] > 0.9, s
        assert s["target_accuracy"] == 1.0, s


def test_cpu_fit_is_bit_reproducible_with_the_same_key(data_d3):
    # BENCHMARKS: "CPU runs are bit-reproducible": same key, fit twice, equal bits.
    ds = jax.tree.map(lambda a: a[0], data_d3)
    cfg = _cfg(steps=100, restarts=1)
    a = fit(cfg, ds.x, ds.env, targets=ds.targets, key=jax.random.key(7), progress=False)
    b = fit(cfg, ds.x, ds.env, targets=ds.targets, key=jax.random.key(7), progress=False)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    np.testing.assert_array_equal(np.asarray(a.encode(ds.x)), np.asarray(b.encode(ds.x)))
