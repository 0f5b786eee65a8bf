"""Every experiment script runs end to end at a tiny size and writes its contract."""

import json
import runpy
import sys

import numpy as np
import pytest

# The experiments' default encoder (8 dense flow layers x 8 terms) compiles for ~10 s per
# program at -O0; the scripts' contracts do not depend on its size.
SMALL_ENCODER = ("--set", "crl.flow_layers=2", "--set", "crl.flow_terms=2")

def _run(script, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(script, run_name="__main__")


def test_quickstart_writes_results_and_plots(tmp_path, monkeypatch):
    out = tmp_path / "qs"
    _run("experiments/quickstart.py",
         ["--samples-per-env", "400", "--seeds", "2", "--out", str(out)], monkeypatch)
    res = json.loads((out / "results.json").read_text())
    methods = res["methods"]
    assert set(methods) == {"oracle_inverse", "identity", "pca", "fast_ica"}
    # The oracle inverse recovers z exactly: the simulator and the metrics agree.
    assert methods["oracle_inverse"]["mcc_pearson_oos"]["mean"] > 0.999
    assert len(methods["pca"]["mcc_pearson_oos"]["per_seed"]) == 2
    for m in ("identity", "pca", "fast_ica"):
        assert methods[m]["mcc_pearson_oos"]["mean"] < 0.99
    assert (out / "true_graph.png").stat().st_size > 0
    assert (out / "mcc_matrix.png").stat().st_size > 0


def test_crl_synthetic_writes_the_results_contract(tmp_path, monkeypatch):
    out = tmp_path / "crl"
    _run("experiments/crl_synthetic.py",
         ["--latent-dim", "2", "--samples-per-env", "300", "--seeds", "2", "--steps", "60",
          "--batch-size", "128", "--methods", "latent_scm,beta_vae,ivae", "--no-progress",
          *SMALL_ENCODER,
          "--out", str(out)], monkeypatch)
    res = json.loads((out / "results.json").read_text())
    assert res["setup"]["data"]["scm"]["latent_dim"] == 2 and res["setup"]["seeds"] == 2
    lat = res["methods"]["latent_scm"]
    for key in ("mcc_pearson_oos", "mcc_spearman", "r2", "shd", "edge_auroc"):
        assert len(lat[key]["per_seed"]) == 2, key
        assert set(lat[key]) == {"mean", "std", "per_seed"}
    assert lat["wall_s"] > 0 and lat["steps_per_s"] > 0
    rs = lat["restarts"]  # every restart, per seed; the kept one has the lowest final loss
    loss = np.asarray(rs["final_loss"])
    assert loss.shape == np.shape(rs["mcc"]) == (2, res["setup"]["crl"]["restarts"])
    np.testing.assert_array_equal(rs["chosen"], np.argmin(loss, 1))
    assert "shd" not in res["methods"]["beta_vae"]  # graph metrics only where a graph is learned
    for png in ("graphs.png", "mcc_matrix.png", "training.png"):
        assert (out / png).stat().st_size > 0


def test_crl_synthetic_rejects_unknown_methods(monkeypatch):
    with pytest.raises(SystemExit):
        _run("experiments/crl_synthetic.py", ["--methods", "magic"], monkeypatch)


def test_crl_generalization_runs_config_variants(tmp_path, monkeypatch):
    out = tmp_path / "gen"
    _run("experiments/crl_generalization.py",
         ["--rows", "d=3|unknown targets", "--seeds", "1", "--steps", "20", "--set",
          "data.n_per_env=200", "--set", "crl.batch_size=64", "--set", "crl.restarts=1",
          *SMALL_ENCODER,
          "--out", str(out), "--tag", "_t"], monkeypatch)
    res = json.loads((out / "generalization_t.json").read_text())
    assert list(res["rows"]) == ["d=3", "unknown targets"]
    d3 = json.loads((out / "d3" / "results.json").read_text())
    assert d3["setup"]["data"]["scm"]["latent_dim"] == 3 and d3["setup"]["crl"]["steps"] == 20
    unk = json.loads((out / "unknown_targets" / "results.json").read_text())
    assert unk["setup"]["targets"] == "unknown"
    assert len(res["rows"]["d=3"]["latent_scm"]["mcc_pearson_oos"]["per_seed"]) == 1
    own = res["rows"]["d=3"]["latent_scm"]["strength_per_latent"]["per_seed"]
    assert np.shape(own) == (1, 3) and np.all(np.isfinite(own))  # the fit's own estimate


def test_polished_default_row_keeps_the_most_acyclic_restart_and_reports_its_polish(
        tmp_path, monkeypatch):
    row = "default, four restarts by acyclicity, polished"
    out = tmp_path / "gen"
    _run("experiments/crl_generalization.py",
         ["--rows", row, "--seeds", "2", "--steps", "30", "--set", "data.n_per_env=200",
          "--set", "crl.batch_size=64", *SMALL_ENCODER, "--out", str(out), "--tag", "_t"],
         monkeypatch)
    res = json.loads((out / "default_four_restarts_by_acyclicity_polished" /
                      "results.json").read_text())
    crl = res["setup"]["crl"]
    assert (crl["restarts"], crl["restart_choice"], crl["polish"]) == (4, "acyclicity", True)
    assert (crl["graph_min_r2"], crl["edge_threshold"]) == (0.05, 0.1)
    lat = res["methods"]["latent_scm"]
    h = np.asarray(lat["restarts"]["acyclicity"])
    assert h.shape == (2, 4) and np.all(h >= 0)
    np.testing.assert_array_equal(lat["restarts"]["chosen"], h.argmin(1))
    kept, ll = np.asarray(lat["polish"]["kept"]), np.asarray(lat["polish"]["loglik"])
    assert kept.shape == (2,) and ll.shape == (2, 2)
    np.testing.assert_array_equal(kept, ll[:, 1] >= ll[:, 0])  # kept by the likelihood
    # the scored W: the polish's DAG where kept, else the kept restart's own (cyclic) W
    scored = np.asarray(lat["acyclicity"]["per_seed"])
    np.testing.assert_allclose(scored, np.where(kept, 0.0, h.min(1)), rtol=1e-4, atol=1e-9)


def test_crl_graph_rescore_reproduces_the_saved_rows_shd(tmp_path, monkeypatch):
    """A row fitted with --save, re-scored at its own graph settings: the same SHD per seed
    as its results file (the data rebuilt from the keys, the fit loaded from its
    checkpoint); other settings are scored beside it."""
    monkeypatch.syspath_prepend("experiments")  # the script imports crl_generalization
    out = tmp_path / "gen"
    common = ["--rows", "d=3", "--seeds", "2", "--steps", "20", "--set", "data.n_per_env=300",
              "--set", "crl.batch_size=64", "--set", "crl.restarts=1", *SMALL_ENCODER,
              "--out", str(out)]
    _run("experiments/crl_generalization.py", [*common, "--save"], monkeypatch)
    _run("experiments/crl_graph_rescore.py",
         [*common, "--min-r2", "0,0.05", "--thresholds", "0.3,0"], monkeypatch)
    saved = json.loads((out / "d3" / "results.json").read_text())["methods"]["latent_scm"]
    res = json.loads((out / "d3" / "graph_rescore.json").read_text())["methods"]["latent_scm"]
    own = [c for c in res["settings"] if c["graph_min_r2"] == 0 and c["edge_threshold"] == 0.3]
    assert own[0]["shd"] == saved["shd"]["per_seed"]
    assert len(res["settings"]) == 4 and res["true_edges"] == [
        int(v) for v in res["true_edges"]]


def test_crl_graph_sensitivity_scores_exact_latents_perfectly_without_the_prune(
        tmp_path, monkeypatch):
    monkeypatch.syspath_prepend("experiments")
    out = tmp_path / "sens.json"
    _run("experiments/crl_graph_sensitivity.py",
         ["--rows", "d=3", "--seeds", "2", "--min-r2", "0,0.05", "--thresholds", "0",
          "--out", str(out)], monkeypatch)
    cells = json.loads(out.read_text())["rows"]["d=3"]["cells"]
    exact = [c for c in cells if c["perturbation"] == "none"]
    assert len(exact) == 2 and all(c["shd"] == [0.0, 0.0] for c in exact)
    assert all(c["corr_mean"] == pytest.approx(1.0) for c in exact)
    noisy = {(c["perturbation"], c["size"]) for c in cells}
    assert ("leak", 0.1) in noisy and ("tanh", 1.0) in noisy
    # another root's data, the true latents alone: different data sets, still exact
    _run("experiments/crl_graph_sensitivity.py",
         ["--rows", "d=3", "--seeds", "2", "--min-r2", "0", "--thresholds", "0", "--seed", "3",
          "--perturbations", "none:0", "--out", str(out)], monkeypatch)
    other = json.loads(out.read_text())
    assert other["seed"] == 3
    (cell,) = other["rows"]["d=3"]["cells"]
    assert cell["perturbation"] == "none" and cell["shd"] == [0.0, 0.0]
    with pytest.raises(SystemExit):
        _run("experiments/crl_graph_sensitivity.py", ["--perturbations", "shear:1",
             "--out", str(out)], monkeypatch)


def test_crl_soft_classes_regroups_a_stored_run_exactly(tmp_path, monkeypatch):
    """The by-node-kind table of BENCHMARKS.md, recomputed from the stored summary (the true
    graphs rebuilt from the root seed): the same numbers as the stored table file."""
    out = tmp_path / "classes.json"
    _run("experiments/crl_soft_classes.py",
         ["experiments/results/crl_gen_v3_soft.json", "--out", str(out)], monkeypatch)
    got = json.loads(out.read_text())
    want = json.loads(open("experiments/results/crl_soft_classes.json").read())
    assert got and all(got[k] == want[k] for k in got)
    groups = got["crl_gen_v3_soft.json: soft interventions"]["groups"]
    assert sum(g["n"] for g in groups.values()) == 25


@pytest.mark.slow  # a one-off diagnostic script (CI's 30 minutes)
def test_crl_restart_pairings_records_every_restart(tmp_path, monkeypatch):
    out = tmp_path / "pairings"
    _run("experiments/crl_restart_pairings.py",
         ["--steps", "8", "--restarts", "2", "--seeds", "2", "--batch-size", "64",
          *SMALL_ENCODER, "--out", str(out)], monkeypatch)
    res = json.loads((out / "results.json").read_text())
    for arm in ("same order", "permuted"):
        a = res["arms"][arm]
        assert len(a["mcc"]) == 2 and len(a["mcc"][0]) == 2
        for s, c in enumerate(a["chosen"]):  # the chosen restart is the lowest-loss one
            assert c == min(range(2), key=lambda r: a["loss"][s][r])
            assert a["chosen_mcc"][s] == a["mcc"][s][c]
    # restart 0 is never permuted: it is the same run in both arms
    assert [m[0] for m in res["arms"]["same order"]["mcc"]] == \
        [m[0] for m in res["arms"]["permuted"]["mcc"]]
    # one data set of the two, screened: the same runs as in the full fit; the screen keeps
    # the lowest criterion and chooses the lowest final loss among those it keeps
    out1 = tmp_path / "one"
    _run("experiments/crl_restart_pairings.py",
         ["--steps", "8", "--restarts", "3", "--seeds", "2", "--batch-size", "64",
          "--arms", "same", "--only", "1", "--screen-steps", "4", "--screen-keep", "2",
          *SMALL_ENCODER, "--out", str(out1)], monkeypatch)
    a = json.loads((out1 / "results.json").read_text())["arms"]["same order"]
    assert list(json.loads((out1 / "results.json").read_text())["arms"]) == ["same order"]
    assert a["data_sets"] == [1]
    assert a["loss"][0][:2] == pytest.approx(res["arms"]["same order"]["loss"][1], rel=1e-5)
    crit, kept, loss = a["screen_loss"][0], a["screen_kept"][0], a["loss"][0]
    assert kept == sorted(sorted(range(3), key=crit.__getitem__)[:2])
    assert a["screened_chosen"][0] == min(kept, key=loss.__getitem__)
    assert a["first_k_chosen"][0] == min(range(2), key=loss.__getitem__)


def test_restart_agreement_is_the_mean_slotwise_abs_correlation_with_the_other_restarts():
    sys.path.insert(0, "experiments")
    try:
        from crl_restart_agreement import agreement
    finally:
        sys.path.remove("experiments")
    rng = np.random.default_rng(0)
    d = 4
    z = rng.normal(size=(20_000, d))
    swapped = z[:, [1, 0, 2, 3]]
    got = agreement(np.stack([z, -2.0 * z + 1.0, swapped]))  # sign and scale do not matter
    want = [(1 + (d - 2) / d) / 2, (1 + (d - 2) / d) / 2, (d - 2) / d]
    np.testing.assert_allclose(got, want, atol=0.02)
    assert int(np.argmax(got)) != 2  # the swapped restart is never the medoid


def test_restart_consensus_leaves_out_a_swapped_restart_and_averages_the_others():
    """Three restarts of one data set: the truth plus noise, the truth plus other noise,
    sign-flipped and rescaled, and the truth with latents 0 and 1 swapped. The averaged
    consensus (tau = 0.5) beats either noisy restart alone and finds the graph the truth
    finds; each slot's medoid (tau = 0) is never the swapped restart in slots 0 and 1."""
    import dataclasses

    sys.path.insert(0, "experiments")
    try:
        from crl_restart_agreement import consensus_scores
    finally:
        sys.path.remove("experiments")
    from jaxcrl.crl.discovery import pruned_dag_search
    from jaxcrl.crl.synthetic import SyntheticConfig, simulate
    from jaxcrl.metrics import mcc_out_of_sample, shd

    base = SyntheticConfig()
    cfg = dataclasses.replace(base, seeds=1, data=dataclasses.replace(base.data, n_per_env=4000))
    data = simulate(cfg)
    zt, env, t, adj = (np.asarray(a[0]) for a in (data.z, data.env, data.targets, data.adj))
    rng = np.random.default_rng(0)
    sd = zt.std(0)
    a = zt + 0.6 * sd * rng.normal(size=zt.shape)
    b = -2.0 * (zt + 0.6 * sd * rng.normal(size=zt.shape)) + 1.0
    swapped = zt[:, [1, 0, 2, 3, 4]] + 0.1 * sd[[1, 0, 2, 3, 4]] * rng.normal(size=zt.shape)
    z = np.stack([a, b, swapped])
    crl = cfg.method_config("latent_scm")
    avg = consensus_scores(z, zt, env, t, adj, 0.5, cfg=crl, seed=0)
    single = max(mcc_out_of_sample(zt, r, "pearson", key=0).value for r in (a, b))
    assert avg["mcc"] > single + 0.02
    truth = pruned_dag_search(zt, env, t, min_r2=crl.graph_min_r2,
                              edge_threshold=crl.edge_threshold)
    assert avg["shd"] == float(shd(adj, truth)) == 0.0
    medoid = consensus_scores(z, zt, env, t, adj, 0.0, cfg=crl, seed=0)
    assert 2 not in medoid["chosen"][:2] and medoid["mcc"] < avg["mcc"]


@pytest.mark.parametrize("holdout", [0.0, 0.25])
def test_crl_restart_agreement_fits_the_runs_of_a_multi_restart_fit(tmp_path, monkeypatch,
                                                                     holdout):
    """Restarts 0 and 1 of the script are the runs of a 2-restart fit with the same keys:
    the same final losses, and the same choice (by held-out loss with ``holdout``).
    ``--rescore`` of the ``--save-latents`` file gives the same results without a fit, and
    refuses a mismatched or pickled file."""
    import dataclasses

    import jax

    from jaxcrl.crl import fit
    from jaxcrl.crl.prior import acyclicity_f64
    from jaxcrl.crl.synthetic import SyntheticConfig, simulate

    argv = ["--steps", "8", "--restarts", "3", "--seeds", "2", "--set", "crl.batch_size=64",
            "--set", "crl.warmup=2", "--set", f"crl.holdout={holdout}", *SMALL_ENCODER]
    out = tmp_path / "agree"
    _run("experiments/crl_restart_agreement.py", [*argv, "--out", str(out), "--save-latents"],
         monkeypatch)
    res = json.loads((out / "results.json").read_text())["restarts"]
    # --rescore DIR: the same scores from the saved latents, with no fit
    out2 = tmp_path / "rescored"
    _run("experiments/crl_restart_agreement.py",
         [*argv, "--out", str(out2), "--rescore", str(out)], monkeypatch)
    assert json.loads((out2 / "results.json").read_text())["restarts"] == res
    assert set(res["majority"]) == {"0.8", "0.9", "0.95"}
    with np.load(out / "latents.npz") as f:  # the majority's tie-break: the criterion
        z, loss = f["z"], f["heldout_loss" if holdout else "loss"]
    from jaxcrl.crl.consensus import slot_majority
    for s, row in enumerate(res["majority"]["0.9"]["members"]):  # the library's choice
        assert row == np.asarray(slot_majority(z[s], loss[s])[2]).astype(int).tolist()
    (out / "results.json").write_text('[{"wall_s": "import os"}]')  # a crafted file: no wall
    _run("experiments/crl_restart_agreement.py",
         [*argv, "--out", str(out2), "--rescore", str(out)], monkeypatch)
    assert json.loads((out2 / "results.json").read_text())["restarts"]["wall_s"] is None
    four = [*argv]
    four[four.index("--restarts") + 1] = "4"
    with pytest.raises(ValueError, match="--seeds/--restarts"):
        _run("experiments/crl_restart_agreement.py",
             [*four, "--out", str(out2), "--rescore", str(out)], monkeypatch)
    np.savez(out / "latents.npz", z=np.array([object()], dtype=object))  # a crafted file
    with pytest.raises(ValueError):
        _run("experiments/crl_restart_agreement.py",
             [*argv, "--out", str(out2), "--rescore", str(out)], monkeypatch)
    assert np.shape(res["loss"]) == (2, 3) == np.shape(res["agreement"])
    assert res["criterion"] == ("heldout_loss" if holdout else "final_loss")
    criterion = res["heldout_loss"] if holdout else res["loss"]
    for name, crit in (("by_loss", np.argmin(criterion, 1)),
                       ("by_agreement", np.argmax(res["agreement"], 1)),
                       ("by_acyclicity", np.argmin(res["acyclicity"], 1))):
        assert res[name]["chosen"] == crit.tolist()
        assert res[name]["mcc"] == [res["mcc"][s][c] for s, c in enumerate(crit)]
    base = SyntheticConfig()
    cfg = dataclasses.replace(base, seeds=2, crl=dataclasses.replace(
        base.crl, steps=8, batch_size=64, warmup=2, flow_layers=2, flow_terms=2, restarts=2,
        holdout=holdout))
    data = simulate(cfg)
    ref = fit(cfg.method_config("latent_scm"), data.x, data.env, targets=data.targets,
              key=jax.random.fold_in(jax.random.key(cfg.seed), 1), seeds=2, progress=False)
    np.testing.assert_allclose(ref.history["final_loss_restarts"],
                               np.asarray(res["loss"])[:, :2], rtol=1e-5)
    assert res["first_two_by_loss"]["chosen"] == ref.history["restart_chosen"].tolist()
    # h(W) of each data set's chosen restart is that of the fit's kept run
    chosen = ref.history["restart_chosen"]
    np.testing.assert_allclose(np.asarray(res["acyclicity"])[[0, 1], chosen],
                               acyclicity_f64(ref.graph()), rtol=1e-3, atol=1e-9)
    if holdout == 0.0:  # the default's two restarts: loss and acyclicity choose, no agreement
        two = [*argv]
        two[two.index("--restarts") + 1] = "2"
        _run("experiments/crl_restart_agreement.py", [*two, "--out", str(out2)], monkeypatch)
        res2 = json.loads((out2 / "results.json").read_text())["restarts"]
        assert "agreement" not in res2 and res2["majority"] == {}
        np.testing.assert_allclose(res2["loss"], np.asarray(res["loss"])[:, :2], rtol=1e-5)
        assert res2["by_acyclicity"]["chosen"] == np.argmin(res2["acyclicity"], 1).tolist()
        one = [*argv]
        one[one.index("--restarts") + 1] = "1"
        with pytest.raises(ValueError, match="--restarts must be >= 2"):
            _run("experiments/crl_restart_agreement.py", [*one, "--out", str(out2)],
                 monkeypatch)


@pytest.mark.slow  # a one-off diagnostic script (CI's 30 minutes)
def test_crl_flow_diag_scores_every_unpooled_run_against_the_truth(tmp_path, monkeypatch):
    """The linear-prior diagnostic: every run of every data set is scored; the truth's
    latent NLL (the linear prior fitted on z_true) is close to, and not below, that of an
    unrestricted Gaussian per environment (a superset family, independent route)."""

    out = tmp_path / "diag.json"
    _run("experiments/crl_flow_diag.py",
         ["--row", "default", "--seeds", "1", "--steps", "20", "--prior-steps", "1500",
          "--unpooled", "2", "--set", "data.n_per_env=2000", "--set", "crl.batch_size=128",
          *SMALL_ENCODER, "--out", str(out)], monkeypatch)
    rows = json.loads(out.read_text())
    assert [(r["seed"], r["run"]) for r in rows] == [(0, 0), (0, 1)]
    assert rows[0]["nll_fit"] != rows[1]["nll_fit"]  # two independent fits
    assert rows[0]["nll_true"] == rows[1]["nll_true"]
    for r in rows:  # 20 steps are far from the truth's likelihood
        assert r["nll_true"] < r["nll_fit"] - 0.5
    import dataclasses

    import jax

    from jaxcrl.crl.synthetic import SyntheticConfig
    from jaxcrl.scm import make_dataset

    data = dataclasses.replace(SyntheticConfig().data, n_per_env=2000)
    ds = make_dataset(jax.random.split(jax.random.key(0), 1)[0], data)
    z, env = np.asarray(ds.z, np.float64), np.asarray(ds.env)
    gauss = 0.0
    for e in np.unique(env):
        ze = z[env == e]
        cov = np.cov(ze.T, bias=True)
        gauss += len(ze) * 0.5 * (np.linalg.slogdet(2 * np.pi * cov)[1] + z.shape[1])
    gauss /= len(z)
    assert gauss - 0.01 <= rows[0]["nll_true_latents"] < gauss + 0.1


@pytest.mark.slow  # a one-off diagnostic script (CI's 30 minutes)
def test_crl_swap_diag_scores_every_transposition(tmp_path, monkeypatch):
    fit_dir = tmp_path / "crl"
    _run("experiments/crl_synthetic.py",
         ["--latent-dim", "3", "--samples-per-env", "300", "--seeds", "1", "--steps", "30",
          "--batch-size", "64", "--restarts", "1", "--methods", "latent_scm", "--save",
          *SMALL_ENCODER, "--no-progress", "--out", str(fit_dir)], monkeypatch)
    for frozen, lr in ((False, "1e-3"), (True, "1e-3"), (False, "1e-9")):
        out = tmp_path / f"swap_{frozen}_{lr}.json"
        _run("experiments/crl_swap_diag.py",
             ["--fit", str(fit_dir / "ckpt_latent_scm"), "--set", "data.scm.latent_dim=3",
              "--set", "data.n_per_env=300", "--steps", "20", "--batch-size", "64",
              "--lr", lr, "--out", str(out), *(["--frozen"] if frozen else [])], monkeypatch)
        (rec,) = json.loads(out.read_text())
        cands = rec["candidates"]
        assert [c["swap"] for c in cands] == [None, [0, 1], [0, 2], [1, 2]]
        losses = [c["final_loss"] for c in cands]
        assert rec["chosen"] == cands[losses.index(min(losses))]["swap"]
        assert len(set(losses)) == 4  # the pairings differ in likelihood
        # frozen, or trained at a vanishing rate: every candidate starts from (and keeps)
        # the fitted encoder's latents
        if frozen or lr == "1e-9":
            for c in cands:
                assert abs(c["mcc"] - rec["fitted_mcc"]) < 1e-5
                assert c["perm"] == rec["fitted_perm"]


def test_crl_graph_search_scores_both_searches_on_the_true_latents(tmp_path, monkeypatch):
    out = tmp_path / "graph.json"
    _run("experiments/crl_graph_search.py",
         ["--seeds", "2", "--set", "data.scm.latent_dim=3", "--set", "data.n_per_env=400",
          "--set", "data.scm.mechanism=nonlinear", "--taus", "0,0.05", "--out", str(out)],
         monkeypatch)
    rows = json.loads(out.read_text())
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        t = r["true_latents"]
        for name in ("additive", "location_scale"):
            assert set(t[f"shd_{name}"]) == {"0.0", "0.05"}
            # pruning only removes edges: the SHD of a pruned graph differs by at most the
            # number of edges it removes
            eff = np.asarray(t[f"effects_{name}"])
            assert ((eff >= 0) & (eff <= 1)).all() and (np.diag(eff) == 0).all()
            removed = int(((eff > 0) & (eff < 0.05)).sum())
            assert abs(t[f"shd_{name}"]["0.05"] - t[f"shd_{name}"]["0.0"]) <= removed


def test_crl_consensus_average_reproduces_the_rows_own_consensus(tmp_path, monkeypatch):
    """The script reruns the contrastive row's first stage with consensus_fit's keys: on all
    samples its consensus at the row's own consensus_average has exactly the MCC the row
    recorded for its consensus, and the same medoid runs."""
    monkeypatch.syspath_prepend("experiments")
    row = "contrastive, d=10, D=100, unknown targets"
    common = ["--seeds", "2", "--steps", "2001", "--row-set", "data.n_per_env=200",
              "--set", "crl.batch_size=64", "--set", "crl.restarts=1",
              "--row-set", "crl.encoder_freeze=5", "--row-set", "crl.steps=30",
              "--row-set", "crl.consensus_steps=20", "--row-set", "crl.consensus_runs=3",
              "--row-set", "crl.hidden=16,16"]  # the row's freeze (2000) needs steps > 2000
    out = tmp_path / "gen"
    _run("experiments/crl_generalization.py", ["--rows", row, "--out", str(out), *common],
         monkeypatch)
    saved = json.loads(next(out.rglob("results.json")).read_text())
    cons = saved["methods"]["contrastive"]["consensus"]
    average = saved["methods"]["contrastive"]["config"]["consensus_average"]
    assert average == 0.5  # the row's setting; the medoid (0) is scored beside it
    res_path = tmp_path / "avg.json"
    _run("experiments/crl_consensus_average.py",
         [*common, "--average", "0", "--average", "0.5", "--out", str(res_path)], monkeypatch)
    res = json.loads(res_path.read_text())
    assert res["subsample"] == 11 * 200 and res["runs"] == 3
    got = [s[f"average={average:g}"] for s in res["per_seed"]]
    assert got == pytest.approx(cons["mcc"], abs=1e-5)
    assert [s["chosen"] for s in res["per_seed"]] == cons["chosen"]
    runs = np.array([s["runs"] for s in res["per_seed"]])  # [S, R]
    assert runs.T == pytest.approx(np.asarray(cons["run_mcc"]), abs=1e-5)


def test_crl_intervention_strength_pairs_each_latents_kl_with_its_recorded_mcc(
        tmp_path, monkeypatch):
    import dataclasses

    import jax
    from scipy import stats

    from jaxcrl.crl.synthetic import SyntheticConfig, simulate, variant
    from jaxcrl.scm.strength import dataset_intervention_kl

    base = SyntheticConfig(seeds=2, seed=3)
    base = dataclasses.replace(base, data=dataclasses.replace(base.data, n_per_env=20))
    rng = np.random.default_rng(0)
    flat = {"setup": dataclasses.asdict(base), "methods": {"latent_scm": {
        "mcc_per_latent": {"per_seed": rng.uniform(0.3, 1.0, (2, 5)).tolist()},
        "strength_per_latent": {"per_seed": rng.uniform(0.0, 5.0, (2, 5)).tolist()},
        "config": {"targets": "known"}}}}
    rows = {"setup": {"base": dataclasses.asdict(base), "rows": ["d=3"]}, "rows": {"d=3": {
        "latent_scm": {"mcc_per_latent": {"per_seed": rng.uniform(0.3, 1.0, (2, 3)).tolist()}}}}}
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    out = tmp_path / "strength.json"
    _run("experiments/crl_intervention_strength.py",
         ["--result", str(tmp_path / "flat.json"), "--result", f"{tmp_path / 'rows.json'}::d=3",
          "--n", "500", "--out", str(out)], monkeypatch)
    res = json.loads(out.read_text())
    recs = res["records"]
    assert len(recs) == 2 * 5 + 2 * 3
    for cfg, label, mccs in ((base, "flat.json", flat["methods"]["latent_scm"]),
                             (variant(base, "d=3"), "rows.json::d=3",
                              rows["rows"]["d=3"]["latent_scm"])):
        data = simulate(cfg)
        for s in range(2):  # the script's key: fold_in(key(0), s), n = 500
            ds = jax.tree.map(lambda a, s=s: a[s], data)
            fwd, rev = dataset_intervention_kl(ds, jax.random.fold_in(jax.random.key(0), s), 500)
            mine = [r for r in recs if r["result"] == label and r["data_set"] == s]
            np.testing.assert_allclose([r["strength"] for r in mine],
                                       np.asarray(fwd + rev).sum(0), rtol=1e-5)
            assert [r["mcc"] for r in mine] == mccs["mcc_per_latent"]["per_seed"][s]
            assert [r["in_degree"] for r in mine] == np.asarray(ds.adj).sum(0).tolist()
            want = (mccs["strength_per_latent"]["per_seed"][s] if "strength_per_latent" in mccs
                    else [None] * len(mine))
            assert [r["fitted_strength"] for r in mine] == want
    rho = stats.spearmanr([r["strength"] for r in recs], [r["mcc"] for r in recs]).statistic
    assert res["summary"]["spearman"] == pytest.approx(rho)
    assert sum(b["n"] for b in res["summary"]["bins"]) == len(recs)
    paired = [r for r in recs if r["fitted_strength"] is not None]
    assert res["fitted"]["n"] == len(paired) == 10
    assert res["fitted"]["spearman_true"] == pytest.approx(stats.spearmanr(
        [r["fitted_strength"] for r in paired], [r["strength"] for r in paired]).statistic)
    # a file whose recorded data config the typed parser cannot rebuild is refused
    flat["setup"]["data"]["scm"]["latent_dim"] = "import os"
    (tmp_path / "bad.json").write_text(json.dumps(flat))
    with pytest.raises(ValueError, match="latent_dim"):
        _run("experiments/crl_intervention_strength.py",
             ["--result", str(tmp_path / "bad.json"), "--out", str(out)], monkeypatch)


def test_crl_linear_polish_scores_saved_fits_before_as_their_results_file(tmp_path,
                                                                           monkeypatch):
    """The script rebuilds a saved row's data and fit: its "before" scores are the results
    file's MCC and SHD per seed, and it records the polished ones beside them."""
    monkeypatch.syspath_prepend("experiments")
    out = tmp_path / "gen"
    common = ["--rows", "d=3", "--seeds", "2", "--steps", "20", "--set", "data.n_per_env=300",
              "--set", "crl.batch_size=64", "--set", "crl.restarts=1", *SMALL_ENCODER,
              "--out", str(out)]
    _run("experiments/crl_generalization.py", [*common, "--save"], monkeypatch)
    _run("experiments/crl_linear_polish.py", [*common, "--graph", "0:0.3"], monkeypatch)
    saved = json.loads((out / "d3" / "results.json").read_text())["methods"]["latent_scm"]
    res = json.loads((out / "d3" / "linear_polish.json").read_text())
    before = [s["before"] for s in res["per_seed"]]
    assert [b["shd"] for b in before] == saved["shd"]["per_seed"]
    np.testing.assert_allclose([b["mcc_pearson_oos"] for b in before],
                               saved["mcc_pearson_oos"]["per_seed"], rtol=1e-6)
    assert len(res["per_seed"]) == 2 and all(
        0 <= s["after"]["mcc_pearson_oos"] <= 1 and s["history"] for s in res["per_seed"])
    # the --graph setting equal to the row's own gives the row's SHD
    assert [s["before"]["shd_graphs"][0] for s in res["per_seed"]] == saved["shd"]["per_seed"]
