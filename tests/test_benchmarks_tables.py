"""The tables in BENCHMARKS.md match the results files kept in ``experiments/results/``.

Each kept file is the ``results.json`` written by the command printed above its table
(regenerate it with that command and copy ``OUT/results.json`` over the file). Only
deterministic columns are compared (wall times and throughputs vary with the machine).
Tables whose runs are too long to regenerate cheaply have no file yet (tests/README.md).
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def _table_after(marker: str) -> list[list[str]]:
    """Rows (cells stripped, header and rule dropped) of the first markdown table after the
    first line of BENCHMARKS.md containing ``marker``."""
    lines = (ROOT / "BENCHMARKS.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    i = next(j for j in range(start, len(lines)) if lines[j].startswith("|"))
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]]
        rows.append(cells)
        i += 1
    return rows[2:]


def _num(cell: str) -> float:
    """The first number of a cell (bold and brackets ignored)."""
    return float(re.search(r"-?\d+(?:\.\d+)?", cell.replace("*", "")).group())


def _mean_std(cell: str) -> tuple[float, float]:
    mean, std = cell.replace("*", "").split("±")
    return float(mean), float(std)


def _check_mcc_shd_per_seed(cells: list[str], m: dict) -> None:
    """Cells ``MCC mean ± sd | SHD mean | per-seed MCCs; per-seed SHDs`` against a method's
    summary ``m`` of a results file."""
    assert _mean_std(cells[0]) == pytest.approx((m["mcc_pearson_oos"]["mean"],
                                                 m["mcc_pearson_oos"]["std"]), abs=5e-4)
    assert _num(cells[1]) == pytest.approx(m["shd"]["mean"], abs=0.05)
    per_mcc, per_shd = cells[2].split(";")
    assert [float(v) for v in per_mcc.split()] == pytest.approx(
        m["mcc_pearson_oos"]["per_seed"], abs=5e-4)
    assert [float(v) for v in per_shd.split()] == m["shd"]["per_seed"]


def _check_mean_mcc_shd(cell: str, got: dict, what: str = "") -> tuple[float, float]:
    """A cell ``MCC; SHD`` against the means of ``got["mcc"]`` and ``got["shd"]`` (per data
    set lists of a results file); returns those means."""
    mcc, shd = cell.split(";")
    means = float(np.mean(got["mcc"])), float(np.mean(got["shd"]))
    assert _num(mcc) == pytest.approx(means[0], abs=5e-4), what
    assert _num(shd) == pytest.approx(means[1], abs=0.05), what
    return means


def _check_best_and_wall(cells: list[str], restarts: dict) -> None:
    """Cells ``best of R (truth)`` and ``fit wall`` against a restart-choice results file:
    the mean over data sets of the best restart's MCC, and the fit's wall time."""
    assert _num(cells[0]) == pytest.approx(np.mean(np.max(restarts["mcc"], 1)), abs=5e-4)
    assert _num(cells[1]) == pytest.approx(restarts["wall_s"], abs=0.5)


def _check_mean_row(cells: list[str], per_root: list[list[tuple[float, float]]]) -> None:
    """A table's mean row: each cell ``MCC; SHD`` against the mean over roots of the
    per-root means of its column (:func:`_check_mean_mcc_shd`'s returns)."""
    for col, (cell, means) in enumerate(zip(cells, per_root, strict=True)):
        mcc, shd = cell.split(";")
        assert _num(mcc) == pytest.approx(np.mean([m for m, _ in means]), abs=5e-4), col
        assert _num(shd) == pytest.approx(np.mean([h for _, h in means]), abs=0.005), col


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def test_quickstart_table_matches_its_results_file():
    res = _load("quickstart.json")["methods"]
    rows = _table_after("python experiments/quickstart.py --out out/quickstart")
    names = {"oracle inverse of the mixing": "oracle_inverse", "identity (x itself)": "identity",
             "PCA whitening": "pca", "FastICA": "fast_ica"}
    cols = ["mcc_pearson_oos", "mcc_spearman", "r2_linear", "r2_kernel"]
    assert [r[0] for r in rows] == list(names)
    for row in rows:
        m = res[names[row[0]]]
        for cell, key in zip(row[1:], cols, strict=True):
            mean, std = _mean_std(cell)
            assert mean == pytest.approx(m[key]["mean"], abs=5e-4), (row[0], key)
            assert std == pytest.approx(m[key]["std"], abs=5e-4), (row[0], key)


def _two_numbers(cell: str) -> tuple[float, float | None]:
    """``**0.775** (1.192)`` -> (0.775, 1.192); a cell without brackets -> (x, None)."""
    nums = re.findall(r"-?\d+(?:\.\d+)?", cell.replace("*", ""))
    return float(nums[0]), (float(nums[1]) if len(nums) > 1 and "(" in cell else None)


def test_train_lm_loss_table_matches_its_results_file():
    res = _load("train_lm.json")["methods"]
    rows = _table_after("python experiments/train_lm.py --out out/train_lm --no-progress")
    keys = ["transformer", "bayes_optimal", "graph_blind_bayes", "cue_only", "unigram"]
    assert len(rows) == len(keys)
    for row, key in zip(rows, keys, strict=True):
        value, value_all = _two_numbers(row[1])
        assert value == pytest.approx(res[key]["final_loss"], abs=5e-4), row
        assert value_all == pytest.approx(res[key]["final_loss_all"], abs=5e-4), row


def test_train_lm_probe_table_matches_its_results_file():
    pr = _load("train_lm.json")["probes"]
    rows = _table_after("Linear (ridge) probes of the residual stream")
    labels = {"embedding": "embed", "after block 0": "L0", "after block 1": "L1"}
    cols = ["r2_posterior", "r2_cued", "r2_latent_last", "acc_latent_last"]
    for row in rows[:3]:
        for cell, key in zip(row[1:], cols, strict=True):
            assert _num(cell) == pytest.approx(pr[labels[row[0]]][key], abs=5e-4), (row[0], key)
    ceiling = rows[3]
    assert ceiling[0].startswith("ceiling")
    assert _num(ceiling[3]) == pytest.approx(pr["bayes"]["r2_latent_last"], abs=5e-4)
    assert _num(ceiling[4]) == pytest.approx(pr["bayes"]["acc_latent_last"], abs=5e-4)


def test_sae_toy_held_out_table_matches_its_results_files():
    res = {**_load("sae_toy_seed2_topk_jumprelu.json")["methods"],
           **_load("sae_toy_seed2_batchtopk_relu.json")["methods"]}
    rows = _table_after("architecture (seed 2, held out)")
    names = {"TopK": "topk", "JumpReLU": "jumprelu", "BatchTopK": "batchtopk",
             "ReLU + norm-weighted L1": "relu"}
    cols = [("mmcs", 5e-4), ("mcc", 5e-4), ("l0", 0.05), ("fvu", 5e-4), ("dead_fraction", 5e-4)]
    assert [r[0] for r in rows] == list(names)
    for row in rows:
        m = res[names[row[0]]]
        for cell, (key, tol) in zip(row[1:6], cols, strict=True):
            assert _num(cell) == pytest.approx(m[key], abs=tol), (row[0], key)


def test_sharding_tables_match_their_results_file():
    res = _load("bench_sharding.json")
    rows = _table_after("| latent shards (mesh data x model) |")
    assert len(rows) == 4
    for row in rows:
        r = res["shards"][row[0].split()[0]]
        assert abs(_num(row[1]) - r["gib_per_device"]) < 6e-4
    rows = _table_after("| architecture | latent shards (data x model) |")
    assert len(rows) == 8
    for arch, shards, gib, coll in rows:
        r = res["trainer"][f"{arch}/{shards.split()[0]}"]
        assert abs(_num(gib) - r["gib_per_device"]) < 6e-4
        want = {f"{n} {c}" for c, n in r["collectives_in_hlo"].items() if n}
        assert set(coll.split(", ")) == want


def test_crl_contrastive_table_matches_its_results_files():
    rows = _table_after("--tag _contrastive --rows")
    files = ["crl_contrastive_D20.json", "crl_contrastive_d10_D100_unknown.json"]
    cols = ["mcc_pearson_oos", "mcc_spearman", "r2", "shd", "shd_svi", "edge_auroc"]
    assert len(rows) == len(files)
    for row, name in zip(rows, files, strict=True):
        m = _load(name)["methods"]["contrastive"]
        for cell, key in zip(row[1:7], cols, strict=True):
            mean, std = _mean_std(cell)
            tol = 5e-4 if key.startswith(("mcc", "r2", "edge")) else 0.05
            assert mean == pytest.approx(m[key]["mean"], abs=tol), (name, key)
            assert std == pytest.approx(m[key]["std"], abs=tol), (name, key)
        if "target_accuracy" in m:
            assert _num(row[7]) == pytest.approx(m["target_accuracy"]["mean"], abs=5e-3)


def test_transcoders_table_matches_its_results_file():
    res = _load("transcoders.json")["methods"]
    rows = _table_after("python experiments/transcoders.py --out out/transcoders")
    assert len(rows) == len(res) == 24
    for row in rows:
        name = f"{row[0]}/ortho{row[1]}/L{row[2]}"
        m = res[name]
        assert _num(row[3]) == pytest.approx(m["l0"], abs=0.05), name
        if "ce_loss_recovered" in m:
            ce, ce_all = _two_numbers(row[4].replace("/", "("))
            assert ce == pytest.approx(m["ce_loss_recovered"], abs=5e-4), name
            assert _num(row[5]) == pytest.approx(m["mlp_explained"], abs=5e-4), name
        assert _num(row[6]) == pytest.approx(m["mcc_oos"], abs=5e-4), name
        assert _num(row[7]) == pytest.approx(m["auroc_descendants"], abs=5e-3), name
        assert _num(row[9]) == pytest.approx(m["ortho"]["mean_abs_cos"], abs=5e-4), name


def test_transcoders_toy_table_matches_its_results_file():
    res = _load("transcoders_toy.json")["methods"]
    rows = _table_after("python experiments/transcoders_toy.py")
    assert len(rows) == 4
    for row in rows:
        name = "clt" if "cross-layer" in row[0] else "transcoder"
        r = res[f"{name}/{_num(row[1])}"]
        means = [float(v) for v in re.findall(r"\d\.\d+", row[2])]
        worst = [float(v) for v in re.findall(r"\d\.\d+", row[3])]
        assert means == pytest.approx(r["mmcs_mean"], abs=6e-4)
        assert worst == pytest.approx(r["mmcs_min"], abs=6e-4)
        assert _num(row[5]) == pytest.approx(r["fvu_mean"], abs=6e-4)


def test_crl_flow_prior_table_matches_its_results_files():
    rows = _table_after("--tag _flow --rows")
    files = {"flow": _load("crl_gen_flow_prior.json")["rows"],
             "old": _load("crl_gen_old_prior_5k.json")["rows"]}
    cols = ["mcc_pearson_oos", "mcc_spearman", "r2", "shd", "shd_svi"]
    assert len(rows) == 8
    for row in rows:
        m = files["flow" if row[1] == "flow" else "old"][row[0]]["latent_scm"]
        for cell, key in zip(row[2:7], cols, strict=True):
            mean, std = _mean_std(cell)
            tol = 5e-4 if key.startswith(("mcc", "r2")) else 0.05
            assert mean == pytest.approx(m[key]["mean"], abs=tol), (row[0], key)
            assert std == pytest.approx(m[key]["std"], abs=tol), (row[0], key)
        topo = [float(c) for c in row[7].split()]
        assert topo == pytest.approx(m["mcc_per_latent_topo"]["mean"], abs=5e-3), row[0]


def test_crl_flow_prior_10k_table_matches_its_results_file():
    rows = _table_after("--tag _flow10k --rows")
    res = _load("crl_gen_flow_prior_10k.json")["rows"]
    assert [r[0] for r in rows] == list(res)
    for row in rows:
        m = res[row[0]]["latent_scm"]
        for cell, key in zip(row[2:7], ["mcc_pearson_oos", "mcc_spearman", "r2", "shd",
                                        "shd_svi"], strict=True):
            mean, std = _mean_std(cell)
            tol = 5e-4 if key.startswith(("mcc", "r2")) else 0.05
            assert mean == pytest.approx(m[key]["mean"], abs=tol), (row[0], key)
            assert std == pytest.approx(m[key]["std"], abs=tol), (row[0], key)
        per_seed = [float(c) for c in row[8].split(",")]
        assert per_seed == pytest.approx(m["mcc_pearson_oos"]["per_seed"], abs=5e-4)


def test_sae_speed_table_matches_its_results_file():
    """Throughputs vary by machine, but the table must be the kept run's figures."""
    res = _load("bench_sae_speed.json")["results"]
    rows = _table_after("python experiments/bench/sae_speed.py --steps 2 --repeats 2")
    assert len(rows) == len(res)
    for row, r in zip(rows, res, strict=True):
        assert _num(row[0].replace(" x ", " ")) == r["d_in"] and row[1] == r["auxk"]
        for cell, name in zip(row[2:5], ("jaxcrl_auto", "jaxcrl_dense", "saelens"),
                              strict=True):
            assert _num(cell) == pytest.approx(r[name]["s_per_step"], abs=5e-4), (row, name)
        assert _num(row[5]) == pytest.approx(r["speedup_jaxcrl_auto_vs_saelens"], abs=5e-3)


def test_causal_features_crl_table_matches_its_results_file():
    rows = _table_after("--design envs:4 --design envs:0 --seeds 3 --ceiling")
    res = _load("causal_features_crl.json")
    layer = {"after block 0": "L0", "after block 1": "L1"}
    assert len(rows) == 10
    for row in rows:
        if row[0].startswith("ceiling"):
            fl = 0 if row[1] == "linear encoder" else 4
            m = res["ceiling"][f"flow_layers={fl}"]
            assert _num(row[2]) == pytest.approx(m["mcc_pooled_oos"], abs=5e-4), row
            assert _num(row[3]) == pytest.approx(m["mcc_distinct_oos"], abs=5e-4), row
            assert _num(row[4]) == pytest.approx(m["shd"], abs=0.05), row
            continue
        m = res["fits"][row[1].replace("*", "").split()[0]][layer[row[0]]]
        mean, std = _mean_std(row[2])
        assert (mean, std) == pytest.approx(tuple(m["mcc_pooled_oos"]), abs=5e-4), row
        assert _num(row[3]) == pytest.approx(m["mcc_distinct_oos"][0], abs=5e-4), row
        assert _num(row[4]) == pytest.approx(m["shd"][0], abs=0.05), row
        if row[5]:
            probe, obs = (float(c) for c in row[5].split("/"))
            assert probe == pytest.approx(res["probe"][layer[row[0]]]["mcc_pooled"], abs=5e-4)
            assert obs == pytest.approx(res["probe_obs"][layer[row[0]]], abs=5e-4)


def test_crl_default_v2_tables_match_their_results_files():
    rows = _table_after("### The default since issue 13")
    res = _load("crl_synthetic_v2.json")["methods"]
    cols = ["mcc_pearson_oos", "mcc_spearman", "r2"]
    assert [r[0].strip("`") for r in rows] == ["latent_scm", "beta_vae", "ivae"]
    for row in rows:
        m = res[row[0].strip("`")]
        for cell, key in zip(row[1:4], cols, strict=True):
            mean, std = _mean_std(cell)
            assert mean == pytest.approx(m[key]["mean"], abs=5e-4), (row[0], key)
            assert std == pytest.approx(m[key]["std"], abs=5e-4), (row[0], key)
    assert _mean_std(rows[0][4]) == pytest.approx((res["latent_scm"]["shd"]["mean"],
                                                   res["latent_scm"]["shd"]["std"]), abs=0.05)
    roots = _table_after("The same default on held-out root seeds")
    files = ["crl_synthetic_v2.json", *(f"crl_synthetic_v2_seed{s}.json" for s in range(1, 8))]
    assert len(roots) == len(files)
    for row, name in zip(roots, files, strict=True):
        m = _load(name)["methods"]["latent_scm"]
        _check_mcc_shd_per_seed(row[1:4], m)


def test_crl_flow_rows_v2_and_graph_search_tables_match_their_results_files():
    rows = _table_after("**The flow-prior rows at the new default**")
    res = _load("crl_gen_v2_flow_prior.json")["rows"]
    assert [r[0] for r in rows] == list(res)
    for row in rows:
        m = res[row[0]]["latent_scm"]
        assert _mean_std(row[1]) == pytest.approx((m["mcc_pearson_oos"]["mean"],
                                                   m["mcc_pearson_oos"]["std"]), abs=5e-4)
        assert [float(v) for v in row[2].split()] == pytest.approx(
            m["mcc_pearson_oos"]["per_seed"], abs=5e-4)
        assert _num(row[3]) == pytest.approx(m["shd"]["mean"], abs=0.05)
        assert _num(row[4]) == pytest.approx(m["shd_svi"]["mean"], abs=0.05)
    search = _table_after("python experiments/crl_graph_search.py --seeds 5")
    ls, nl = _load("crl_graph_search_ls_flow.json"), _load("crl_graph_search_nl_flow.json")
    taus = ("0.0", "0.02", "0.05", "0.1")
    for row, recs, part in ((search[0], ls, "true_latents"), (search[1], nl, "true_latents"),
                            (search[2], ls, "fit"), (search[3], nl, "fit")):
        got = [np.mean([r[part]["shd_linear"] for r in recs]),
               np.mean([r[part]["shd_additive"]["0.05"] for r in recs])]
        got += [np.mean([r[part]["shd_location_scale"][t] for r in recs]) for t in taus]
        assert [_num(c) for c in row[1:]] == pytest.approx(got, abs=0.05), row[0]
    for row, recs in ((search[2], ls), (search[3], nl)):
        assert _num(row[0].split("MCC ")[1]) == pytest.approx(
            np.mean([r["fit"]["mcc"] for r in recs]), abs=5e-4)


def test_crl_nonparametric_held_out_roots_table_matches_its_results_files():
    rows = _table_after("**Held-out roots for the two nonparametric rows**")
    assert len(rows) == 8
    for row in rows:
        mech = {"location-scale": "ls", "nonlinear": "nl"}[row[0]]
        root = int(row[1].split()[0])
        suf = "" if root == 0 else f"_seed{root}"
        search = _load(f"crl_graph_search_{mech}_flow{suf}.json")
        if mech == "ls" and root == 0:
            m = _load("crl_gen_v2_flow_prior.json")["rows"][
                "location-scale SCM, flow prior"]["latent_scm"]
        else:
            m = _load(f"crl_synthetic_{mech}_flow{suf}.json")["methods"]["latent_scm"]
            # the fit's own SHD (FitResult.discover_graph at the defaults) is the search
            # script's location-scale search at tau 0.05, data set by data set
            assert m["shd"]["per_seed"] == [r["fit"]["shd_location_scale"]["0.05"]
                                            for r in search]
        mcc = m["mcc_pearson_oos"]
        assert _mean_std(row[2]) == pytest.approx((mcc["mean"], mcc["std"]), abs=5e-4)
        assert [float(v) for v in row[3].split()] == pytest.approx(mcc["per_seed"], abs=5e-4)
        shd05 = [r["fit"]["shd_location_scale"]["0.05"] for r in search]
        assert _num(row[4]) == pytest.approx(np.mean(shd05), abs=0.05)
        assert [int(v) for v in row[5].split()] == shd05
        for cell, key, tau in ((row[6], "shd_location_scale", "0.02"),
                               (row[7], "shd_additive", "0.05")):
            assert _num(cell) == pytest.approx(
                np.mean([r["fit"][key][tau] for r in search]), abs=0.05)
        assert _num(row[8]) == pytest.approx(
            np.mean([r["fit"]["shd_linear"] for r in search]), abs=0.05)
        met_mcc, met_shd = mcc["mean"] >= 0.90, np.mean(shd05) <= 2
        assert ("both" in row[10]) == (met_mcc and met_shd), row[:2]
        assert (row[10] == "neither") == (not met_mcc and not met_shd), row[:2]


def test_crl_nonparametric_rows_with_the_faster_prior_match_their_results_files():
    """The re-run with the faster flow prior: MCC, the fit's own SHD, the fit wall (the
    10-minute bar) and how often the restart kept by training loss has the higher MCC."""
    rows = _table_after("**The nonparametric rows re-run with the faster flow prior**")
    assert len(rows) == 8
    for row in rows:
        mech = {"location-scale": "ls", "nonlinear": "nl"}[row[0]]
        root = int(row[1].split()[0])
        m = _load(f"crl_synthetic_{mech}_flow_v3{'' if root == 0 else f'_seed{root}'}.json"
                  )["methods"]["latent_scm"]
        mcc, shd_ = m["mcc_pearson_oos"], m["shd"]
        assert _mean_std(row[2]) == pytest.approx((mcc["mean"], mcc["std"]), abs=5e-4)
        assert [float(v) for v in row[3].split()] == pytest.approx(mcc["per_seed"], abs=5e-4)
        assert _num(row[4]) == pytest.approx(shd_["mean"], abs=0.05)
        assert [float(v) for v in row[5].split()] == shd_["per_seed"]
        assert _num(row[6]) == pytest.approx(m["wall_s"], abs=0.5)
        rs = m.get("restarts")  # (root 0's location-scale fit ran before they were recorded)
        if rs is None:
            assert row[7] == "–", row[:2]
        else:
            best = [int(np.argmax(mc) == ch)
                    for mc, ch in zip(rs["mcc"], rs["chosen"], strict=True)]
            assert row[7] == f"{sum(best)}/{len(best)}", row[:2]
        met_mcc, met_shd = mcc["mean"] >= 0.90, shd_["mean"] <= 2
        assert ("both" in row[-1]) == (met_mcc and met_shd), row[:2]
        assert (row[-1] == "neither") == (not met_mcc and not met_shd), row[:2]


def test_crl_prior_step_table_matches_its_benchmark_file():
    rows = _table_after("`python experiments/bench/crl_prior_step.py")
    res = _load("bench_crl_prior_step.json")["results"]
    assert [r[0] for r in rows] == ["perfect", "soft"]
    for row in rows:
        a = res[row[0]]
        want = (a["reference"]["prior_grad_ms"], a["library"]["prior_grad_ms"],
                a["speedup_prior"], a["reference"]["model_grad_ms"],
                a["library"]["model_grad_ms"], a["speedup_model"])
        assert [_num(c) for c in row[1:]] == pytest.approx(want, abs=0.06)
        assert a["max_rel_diff"] < 1e-5


def _latent_scm(fname: str, setting: str) -> dict:
    """The latent_scm summary of ``setting`` in a results file of either layout (a
    generalization summary with ``rows``, or one run with ``methods``)."""
    res = _load(fname)
    if "rows" in res:
        return res["rows"][re.sub(r"\s*\(.*\)$", "", setting)]["latent_scm"]
    return res["methods"]["latent_scm"]


def test_crl_generalization_rerun_table_matches_its_results_files():
    rows = _table_after("#### The table re-run with the final code")
    assert len(rows) >= 14
    for row in rows:
        m = _latent_scm(row[-1].strip("`"), row[0])
        mcc = m["mcc_pearson_oos"]
        assert _mean_std(row[1]) == pytest.approx((mcc["mean"], mcc["std"]), abs=5e-4), row[0]
        assert _num(row[2]) == pytest.approx(m["shd"]["mean"], abs=0.05), row[0]
        if "targets right" in row[4]:
            got = float(re.search(r"targets right (\d\.\d+)", row[4]).group(1))
            assert got == pytest.approx(m["targets_right"]["mean"], abs=5e-3), row[0]


def test_crl_two_per_node_held_out_roots_table_matches_its_results_files():
    rows = _table_after("#### Two perfect interventions per node on held-out roots")
    assert len(rows) >= 6
    for row in rows:
        res = _load(row[-1].strip("`"))
        assert res["setup"]["base"]["seed"] == int(row[1]), row[:2]
        m = res["rows"][row[0]]["latent_scm"]
        mcc, shd = m["mcc_pearson_oos"], m["shd"]
        assert _mean_std(row[2]) == pytest.approx((mcc["mean"], mcc["std"]), abs=5e-4), row[:2]
        assert _num(row[3]) == pytest.approx(shd["mean"], abs=0.05), row[:2]
        per = (" ".join(f"{x:.3f}" for x in mcc["per_seed"]) + "; "
               + " ".join(str(int(x)) for x in shd["per_seed"]))
        assert row[4] == per, row[:2]
        met = (mcc["mean"] >= 0.90, shd["mean"] <= 2)
        want = {(True, True): "both met", (True, False): "MCC met, SHD not",
                (False, True): "SHD met, MCC not", (False, False): "neither"}[met]
        assert row[5] == want, row[:2]
        assert _num(row[6]) == pytest.approx(m["wall_s"], abs=0.5), row[:2]


def test_crl_soft_class_table_matches_its_results_file():
    rows = _table_after("### Soft interventions identify the latents only up to shears")
    res = _load("crl_soft_classes.json")
    want = []
    for v in res.values():
        which = "two per node" if "two per node" in v["row"] else "one per node"
        for name, g in v["groups"].items():
            want.append([which, f"{v['l1']:g}", f"{name} ({g['n']})", f"{g['class_r2']:.3f}",
                         str(g["class_r2_ge_0.9"]), f"{g['corr']:.3f}", str(g["corr_ge_0.9"])])
    assert rows == want


def _check_contrastive_row(m: dict, marker: str) -> None:
    """The one-row table of a contrastive results summary ``m`` after ``marker``."""
    (row,) = _table_after(marker)
    cols = ["mcc_pearson_oos", "mcc_spearman", "r2", "shd", "shd_svi", "edge_auroc"]
    for cell, key in zip(row[1:7], cols, strict=True):
        mean, std = _mean_std(cell)
        tol = 5e-4 if key.startswith(("mcc", "r2", "edge")) else 0.05
        assert (mean, std) == pytest.approx((m[key]["mean"], m[key]["std"]), abs=tol), key
    assert _num(row[7]) == pytest.approx(m["target_accuracy"]["mean"], abs=5e-3)
    assert _num(row[8]) == pytest.approx(m["wall_s"], abs=0.5)


def _stages(m: dict, before: dict | None = None) -> list[list[str]]:
    """Per seed: the first-stage runs' MCC, the consensus, the refit (and ``before``'s)."""
    c = m["consensus"]
    rows = []
    for s in range(len(c["mcc"])):
        row = [str(s), " ".join(f"{r[s]:.3f}" for r in c["run_mcc"]), f"{c['mcc'][s]:.3f}",
               f"{m['mcc_pearson']['per_seed'][s]:.3f}"]
        if before is not None:
            row.append(f"{before['mcc_pearson']['per_seed'][s]:.3f}")
        rows.append(row)
    return rows


def test_crl_contrastive_consensus_tables_match_their_results_file():
    m = _load("crl_contrastive_d10_D100_consensus.json")["methods"]["contrastive"]
    assert m["config"]["consensus_runs"] == 4 and m["config"]["encoder_freeze"] == 2000
    _check_contrastive_row(m, "--tag _consensus --rows")
    assert _table_after("Per seed, the MCC of each stage (first-stage runs") == _stages(m)


def test_crl_contrastive_gauss_moments_tables_match_their_results_files():
    m = _load("crl_contrastive_d10_D100_consensus_gm1.json")["methods"]["contrastive"]
    before = _load("crl_contrastive_d10_D100_consensus.json")["methods"]["contrastive"]
    assert m["config"]["gauss_moments"] == 1.0 and m["config"]["consensus_runs"] == 4
    _check_contrastive_row(m, "--tag _consensus_gm1 --rows")
    stages = _table_after("With the penalty, per seed, the MCC of each stage")
    assert stages == _stages(m, before)
    sweep = {}
    for line in (RESULTS / "crl_contrastive_d10_D100_sweep.jsonl").read_text().splitlines():
        r = json.loads(line)
        sweep[r["tag"]] = r
    rows = _table_after("First-stage fits, targets given, 4 restarts of 5k steps")
    assert [r[0].strip("`") for r in rows] == ["0", "0.3", "1", "5"]
    for r, tag in zip(rows, ["gm0", "gm03", "gm1", "gm5"], strict=True):
        s = sweep[tag]
        assert f"crl.gauss_moments={r[0].strip('`')}" in s["ov"]
        assert _floats(r[1] + " " + r[2]) == pytest.approx(
            [v for seed in s["mcc_restarts"] for v in seed], abs=5.01e-4)  # 4 digits kept
        assert _num(r[3]) == pytest.approx(np.mean(s["mcc_restarts"]), abs=5e-4)
        assert _floats(r[4]) == pytest.approx(
            [s["seed0"]["mcc_pearson"], s["seed1"]["mcc_pearson"]], abs=5e-4)


def _floats(cell: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+\.\d+", cell)]


def test_crl_graph_sensitivity_table_matches_its_results_file():
    res = _load("crl_graph_sensitivity.json")["rows"]
    settings = [(0.0, 0.3), (0.0, 0.0), (0.05, 0.3), (0.05, 0.0)]
    rows = _table_after("python experiments/crl_graph_sensitivity.py --out experiments")
    names = {"default, d = 5": "default", "d = 8": "d=8",
             "contrastive d = 10": "contrastive, d=10, D=100, unknown targets"}
    name = None
    for r in rows:
        if r[0]:
            label, edges = re.match(r"(.*) \((\d+\.\d)\)", r[0]).groups()
            name = names[label]
            assert float(edges) == pytest.approx(np.mean(res[name]["true_edges"]), abs=0.05)
        kind, *size = r[1].split()
        size = float(size[0]) if size else (1.0 if kind == "tanh" else 0.0)
        cells = {(c["min_r2"], c["edge_threshold"]): c for c in res[name]["cells"]
                 if c["perturbation"] == kind and c["size"] == size}
        assert _num(r[2]) == pytest.approx(cells[settings[0]]["corr_mean"], abs=5e-4)
        for cell, key in zip(r[3:], settings, strict=True):
            assert _num(cell) == pytest.approx(cells[key]["shd_mean"], abs=0.05), (r, key)


def test_crl_graph_rescore_table_matches_its_results_files():
    rows = _table_after("python experiments/crl_graph_rescore.py --out out/crl_gen_graph")
    files = {"d = 8": ("crl_graph_rescore_d8.json", "latent_scm"),
             "contrastive d = 10": ("crl_graph_rescore_c10.json", "contrastive"),
             "contrastive d = 10, `gauss_moments=1`": ("crl_graph_rescore_c10_gm1.json",
                                                       "contrastive")}
    assert len(rows) == 3
    for r in rows:
        label = r[0].split(" (")[0]
        fname, method = files[label]
        settings = {(s["graph_min_r2"], s["edge_threshold"]): s
                    for s in _load(fname)["methods"][method]["settings"]}
        assert _num(r[1]) == pytest.approx(settings[(0.0, 0.3)]["shd_mean"], abs=0.05)
        assert _num(r[2]) == pytest.approx(settings[(0.0, 0.0)]["shd_mean"], abs=0.05)
        best = min(settings.values(), key=lambda s: s["shd_mean"])
        assert _num(r[3]) == pytest.approx(best["shd_mean"], abs=0.05)
        assert _num(r[4]) == pytest.approx(best["shd_true_latents_mean"], abs=0.05)


def _check_root_cells(cells: list[str], m: dict) -> None:
    """A contrastive root's cells: MCC, per seed MCC, lowest latent per seed, SHD, targets
    right, the first-stage runs' and the consensus's mean MCC."""
    k = m["mcc_pearson_oos"]
    assert _mean_std(cells[0]) == pytest.approx((k["mean"], k["std"]), abs=5e-4)
    assert cells[1] == " ".join(f"{v:.3f}" for v in k["per_seed"])
    assert cells[2] == " ".join(f"{min(v):.2f}" for v in m["mcc_per_latent"]["per_seed"])
    assert _num(cells[3]) == pytest.approx(m["shd"]["mean"], abs=0.05)
    assert _num(cells[4]) == pytest.approx(m["targets_right"]["mean"], abs=5e-3)
    assert _num(cells[5]) == pytest.approx(np.mean(m["consensus"]["run_mcc"]), abs=5e-4)
    assert _num(cells[6]) == pytest.approx(np.mean(m["consensus"]["mcc"]), abs=5e-4)


def test_crl_contrastive_gauss_moments_held_out_root_table_matches_its_results_files():
    rows = _table_after("**A held-out root** (root seed 1")
    files = ["crl_contrastive_d10_D100_consensus_seed1.json",
             "crl_contrastive_d10_D100_consensus_gm1_seed1.json"]
    assert len(rows) == 2
    for r, fname, weight in zip(rows, files, [0.0, 1.0], strict=True):
        res = _load(fname)
        assert res["setup"]["seed"] == 1
        m = res["methods"]["contrastive"]
        assert m["config"]["gauss_moments"] == weight
        _check_root_cells(r[1:8], m)


def test_crl_consensus_average_tables_match_their_results_files():
    taus = {root: _load(f"crl_consensus_average_seed{root}.json") for root in (0, 1)}
    rows = _table_after("**Choosing `tau`** on the first stage alone")
    assert [float(r[0].split()[0]) for r in rows] == [0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for r in rows:
        key = f"average={float(r[0].split()[0]):g}"
        for cell, root in zip(r[1:3], (0, 1), strict=True):
            assert taus[root]["root_seed"] == root
            assert _num(cell) == pytest.approx(taus[root]["mean"][key], abs=5e-4), (r, root)
    rows = _table_after("| root | consensus | MCC Pearson (oos) | per seed MCC")
    assert len(rows) == 6
    for r in rows:
        res = _load(r[-1].strip("`"))
        m = res["methods"]["contrastive"]
        assert res["setup"]["seed"] == int(r[0])
        # (files written before the field existed had the medoid consensus, its default 0)
        assert m["config"].get("consensus_average", 0.0) == (0.0 if r[1] == "medoid" else 0.5)
        assert m["config"]["gauss_moments"] == 1.0
        _check_root_cells(r[2:9], m)
        assert _num(r[9]) == pytest.approx(m["wall_s"], abs=0.5)
    avg = _load("crl_contrastive_d10_D100_consensus_avg.json")["methods"]["contrastive"]
    med = _load("crl_contrastive_d10_D100_consensus_gm1.json")["methods"]["contrastive"]
    assert avg["consensus"]["run_mcc"] == med["consensus"]["run_mcc"]  # the same first stage
    want = [[s, runs, c_med, c_avg, r_med, r_avg]
            for (s, runs, c_avg, r_avg), (_, _, c_med, r_med) in zip(
                _stages(avg), _stages(med), strict=True)]
    assert _table_after("Root 0, per seed, the MCC of each stage with the averaged") == want


def test_crl_intervention_strength_tables_match_their_results_file():
    res = _load("crl_intervention_strength.json")
    groups = {**res["by_family"], "all": res["summary"]}
    rows = _table_after("| row family | latents | Spearman (strength, MCC)")
    assert [r[0] for r in rows] == list(groups)
    for r in rows:
        g = groups[r[0]]
        assert int(r[1]) == g["n"]
        assert _num(r[2]) == pytest.approx(g["spearman"], abs=5e-3)
        assert _num(r[3]) == pytest.approx(g["mean_mcc"], abs=5e-4)
        weak = [b for b in g["bins"] if b["high"] <= 1.0]
        assert int(r[4]) == sum(b["n"] for b in weak)
        assert _num(r[5]) == pytest.approx(g["mean_mcc_weak"], abs=5e-4)
        assert _num(r[6]) == pytest.approx(g["mean_mcc_strong"], abs=5e-4)
        assert r[7] == f"{g['lost_weak']} / {g['lost_n']}"
    rows = _table_after("| fits | latents | Spearman (own estimate, true strength)")
    fitted = {k: v["fitted"] for k, v in groups.items() if v["fitted"] is not None}
    assert [r[0] for r in rows] == list(fitted)
    for r in rows:
        f = fitted[r[0]]
        assert int(r[1]) == f["n"]
        assert _num(r[2]) == pytest.approx(f["spearman_true"], abs=5e-3)
        assert _num(r[3]) == pytest.approx(f["spearman_mcc"], abs=5e-3)
        assert int(r[4]) == f["flagged"]
        assert _num(r[5]) == pytest.approx(f["mean_mcc_flagged"], abs=5e-4)
        assert _num(r[6]) == pytest.approx(f["mean_mcc_unflagged"], abs=5e-4)
        assert r[7] == f"{f['lost_flagged']} / {f['lost']}"


def test_crl_intervention_strength_sample_size_table_matches_its_results_files():
    res = _load("crl_intervention_strength_n100k.json")["by_result"]
    rows = _table_after("| samples per environment | MCC Pearson (oos) | weak latents")
    files = ["crl_contrastive_d10_D100_strength.json",
             "crl_contrastive_d10_D100_strength_n100k.json"]
    assert len(rows) == 2
    for r, fname, n in zip(rows, files, (50_000, 100_000), strict=True):
        fit = _load(fname)
        assert fit["setup"]["data"]["n_per_env"] == n == int(r[0].split()[0].replace(",", ""))
        m = fit["methods"]["contrastive"]
        assert _num(r[1]) == pytest.approx(m["mcc_pearson_oos"]["mean"], abs=5e-4)
        g = res[fname]
        assert int(r[2]) == sum(b["n"] for b in g["bins"] if b["high"] <= 1.0)
        assert _num(r[3]) == pytest.approx(g["mean_mcc_weak"], abs=5e-4)
        assert _num(r[4]) == pytest.approx(g["mean_mcc_strong"], abs=5e-4)
        assert r[5] == f"{g['lost_weak']} / {g['lost_n']}"
        assert _num(r[6]) == pytest.approx(m["wall_s"], abs=0.5)


def _default_row_arm(marker: str, arm: str):
    """(row, default's results, the arm's results) of a table of the default row, one row
    per root seed: ``crl_synthetic_v2[_seedR].json`` against ``ARM[_seedR].json``."""
    for row in _table_after(marker):
        root = int(_num(row[0]))
        suffix = "" if root == 0 else f"_seed{root}"
        yield (row, _load(f"crl_synthetic_v2{suffix}.json")["methods"]["latent_scm"],
               _load(f"{arm}{suffix}.json")["methods"]["latent_scm"])


def _check_arm_row(row: list[str], base: dict, arm: dict) -> None:
    """Cells ``root | default: MCC; SHD | MCC ± sd | SHD | per seed | better restart per
    seed | train wall`` against the default's and the arm's results."""
    b_mcc, b_shd = row[1].split(";")
    assert _num(b_mcc) == pytest.approx(base["mcc_pearson_oos"]["mean"], abs=5e-4)
    assert _num(b_shd) == pytest.approx(base["shd"]["mean"], abs=0.05)
    _check_mcc_shd_per_seed(row[2:5], arm)
    best = np.max(arm["restarts"]["mcc"], 1)  # the better restart of each data set
    assert [float(v) for v in row[5].split()] == pytest.approx(best, abs=5e-4)
    assert _num(row[6]) == pytest.approx(arm["wall_s"], abs=0.5)


def _check_arm_summary(marker: str, tables: list) -> None:
    """The two-row summary over all data sets of an arm against the default (``tables``
    from :func:`_default_row_arm`, the roots in order): MCC, SHD, data sets below 0.93,
    roots meeting both bars, roots with MCC >= 0.95."""
    for cells, which in zip(_table_after(marker), (1, 2), strict=True):
        per_root = [(r[which]["mcc_pearson_oos"]["per_seed"], r[which]["shd"]["per_seed"])
                    for r in tables]
        mcc = np.concatenate([m for m, _ in per_root])
        shd = np.concatenate([h for _, h in per_root])
        assert _num(cells[1]) == pytest.approx(mcc.mean(), abs=5e-4), cells[0]
        assert _num(cells[2]) == pytest.approx(shd.mean(), abs=0.005), cells[0]
        assert int(cells[3]) == int((mcc < 0.93).sum()), cells[0]
        both = [root for root, (m, h) in enumerate(per_root)
                if np.mean(m) >= 0.95 and np.mean(h) <= 1]
        assert cells[4] == f"{len(both)} ({', '.join(map(str, both))})", cells[0]
        assert int(cells[5]) == sum(np.mean(m) >= 0.95 for m, _ in per_root), cells[0]


def _linear_start_tables():
    """(row, default's results, linear start's results) of both linear-start tables."""
    yield from _default_row_arm("python experiments/crl_synthetic.py --methods latent_scm "
                                "--seed R --set crl.warm_steps=3000 --set "
                                "crl.warm_encoder=linear", "crl_synthetic_linstart")
    for row in _table_after("--rows 'd=8' --row-set crl.warm_steps=3000"):
        root = int(_num(row[0]))
        yield (row, _load(f"crl_d8_strength_seed{root}.json")["methods"]["latent_scm"],
               _load(f"crl_d8_linstart_seed{root}.json")["methods"]["latent_scm"])


def test_crl_linear_start_table_matches_its_results_files():
    tables = list(_linear_start_tables())
    assert len(tables) == 9  # six roots of the default row, three of d = 8
    for row, base, lin in tables:
        assert lin["config"]["warm_encoder"] == "linear" and lin["config"]["warm_restarts"] == 6
        _check_arm_row(row, base, lin)


def _one_change_arm(field: str, value, arm: str) -> list:
    """The default row's eight roots with ``crl.FIELD=VALUE`` (the table after the command
    ``crl_synthetic.py ... --set crl.FIELD=VALUE``): each arm's config is the default's
    but for that field, and each row is checked by :func:`_check_arm_row`."""
    tables = list(_default_row_arm("python experiments/crl_synthetic.py --methods latent_scm "
                                   f"--seed R --set crl.{field}={value}", arm))
    assert [int(_num(row[0])) for row, _, _ in tables] == list(range(8))
    for row, base, a in tables:
        assert a["config"][field] == value
        # otherwise the default's settings (files from before a field existed lack it)
        assert all(a["config"][k] == v for k, v in base["config"].items() if k != field), row[0]
        _check_arm_row(row, base, a)
    return tables


def test_crl_deep_encoder_tables_match_their_results_files():
    tables = _one_change_arm("flow_layers", 16, "crl_synthetic_deep16")
    _check_arm_summary("| encoder | MCC Pearson (oos), all data sets |", tables)
    # The diagnosis that chose the depth: two unpooled fits per data set of root 4.
    diag = _table_after("| encoder (root 4) | MCC per fit, mean |")
    for cells, arm in zip(diag, ("base", "t16", "l16"), strict=True):
        fits = _load(f"crl_encoder_diag_r4_{arm}.json")
        lower = [min((f for f in fits if f["seed"] == s), key=lambda f: f["final_loss"])["mcc"]
                 for s in range(5)]
        assert _num(cells[1]) == pytest.approx(np.mean([f["mcc"] for f in fits]), abs=5e-4)
        assert _num(cells[2]) == pytest.approx(
            np.mean([f["nll_fit"] - f["nll_true"] for f in fits]), abs=5e-4)
        assert _num(cells[3]) == pytest.approx(np.mean(lower), abs=5e-4)
        assert [float(v) for v in cells[4].split()] == pytest.approx(lower, abs=5e-4)


def test_crl_strong_acyclicity_penalty_table_matches_its_results_files():
    tables = _one_change_arm("penalty_max", 1.0, "crl_synthetic_pen1")
    for _, _, arm in tables:
        if "acyclicity" in arm:  # roots 4-7: every fit ends a DAG, to the stated bound
            assert max(arm["acyclicity"]["per_seed"]) <= 0.0042 + 5e-5
    assert sum("acyclicity" in arm for _, _, arm in tables) == 4
    _check_arm_summary("| acyclicity penalty | MCC Pearson (oos), all data sets |", tables)
    # the loss kept the worse restart (by > 0.01 in-sample MCC) on 6 of the 40 data sets
    worse = 0
    for _, _, arm in tables:
        m, chosen = np.asarray(arm["restarts"]["mcc"]), arm["restarts"]["chosen"]
        worse += sum(m[s].max() - m[s, c] > 0.01 for s, c in enumerate(chosen))
    assert worse == 6


def test_crl_restart_acyclicity_tables_match_their_results_files():
    """Four restarts chosen by the loss, the agreement, the majority and the fitted W's
    acyclicity; every cell and the summary recomputed from the per-restart arrays."""
    rows = _table_after("python experiments/crl_restart_agreement.py --out out/crl_h4_sR")
    roots = [int(_num(r[0])) for r in rows]
    assert roots == [4, 0, 3, 1, 2, 5, 6, 7]
    files = {root: _load(f"crl_restart_acyclicity_seed{root}.json")["restarts"]
             for root in roots}
    choices = {}
    for row in rows:
        a = files[int(_num(row[0]))]
        mcc, shd, h = (np.asarray(a[k]) for k in ("mcc", "shd", "acyclicity"))
        idx = np.arange(len(mcc))
        assert a["by_acyclicity"]["chosen"] == h.argmin(1).tolist()
        assert a["by_loss"]["chosen"] == np.asarray(a["loss"]).argmin(1).tolist()
        two = h[:, :2].argmin(1)
        cells = {"2 by loss": a["first_two_by_loss"],
                 "2 by acyclicity": {"mcc": mcc[idx, two], "shd": shd[idx, two]},
                 "4 by loss": a["by_loss"], "4 by agreement": a["by_agreement"],
                 "4 majority 0.8": a["majority"]["0.8"], "4 by acyclicity": a["by_acyclicity"]}
        for cell, (name, got) in zip(row[1:7], cells.items(), strict=True):
            _check_mean_mcc_shd(cell, got, name)
            choices.setdefault(name, []).append(got)
        assert _num(row[7]) == pytest.approx(np.mean(a["best_mcc"]), abs=5e-4)
        per_mcc, per_shd = row[8].split(";")
        assert [float(v) for v in per_mcc.split()] == pytest.approx(
            a["by_acyclicity"]["mcc"], abs=5e-4)
        assert [float(v) for v in per_shd.split()] == a["by_acyclicity"]["shd"]
        assert _num(row[9]) == pytest.approx(a["wall_s"], abs=0.5)
    summary = _table_after("| restart choice (roots 4, 0, 3, 1, 2, 5, 6, 7) |")
    assert [r[0] for r in summary] == list(choices)
    for cells in summary:
        per_root = choices[cells[0]]
        m = np.concatenate([np.asarray(g["mcc"]) for g in per_root])
        d = np.concatenate([np.asarray(g["shd"]) for g in per_root])
        assert _num(cells[1]) == pytest.approx(m.mean(), abs=5e-4), cells[0]
        assert _num(cells[2]) == pytest.approx(d.mean(), abs=0.005), cells[0]
        assert int(cells[3]) == int((m < 0.93).sum()), cells[0]
        both = [r for r, g in zip(roots, per_root, strict=True)
                if np.mean(g["mcc"]) >= 0.95 and np.mean(g["shd"]) <= 1]
        assert cells[4] == f"{len(both)} ({', '.join(map(str, both))})", cells[0]
    best = np.concatenate([files[r]["best_mcc"] for r in roots])
    assert best.mean() == pytest.approx(0.982, abs=5e-4)
    h4 = np.concatenate([np.ravel(files[r]["acyclicity"]) for r in roots])
    m4 = np.concatenate([np.ravel(files[r]["mcc"]) for r in roots])
    assert scipy.stats.spearmanr(h4, m4).statistic == pytest.approx(-0.74, abs=0.005)
    stuck = m4 < 0.93
    assert (stuck.sum(), (h4[~stuck] > 0.1).sum()) == (40, 17)
    assert (h4[stuck].min(), h4[stuck].max(), h4[~stuck].max()) == pytest.approx(
        (0.015, 0.49, 0.33), abs=0.005)
    # the flag: Spearman of h and MCC over the two-restart runs, and the h ranges quoted
    two = [_load(f"crl_restart_acyclicity_r2_seed{r}.json")["restarts"] for r in (4, 6)]
    h2, m2 = (np.concatenate([np.ravel(a[k]) for a in two]) for k in ("acyclicity", "mcc"))
    assert scipy.stats.spearmanr(h2, m2).statistic == pytest.approx(-0.66, abs=0.005)
    assert (m2 < 0.93).sum() == 10 and h2[m2 < 0.93].min() == pytest.approx(0.11, abs=0.005)
    assert h2[m2 < 0.93].max() == pytest.approx(0.49, abs=0.005)
    assert h2[m2 >= 0.93].max() == pytest.approx(0.23, abs=0.005)


def test_crl_restart_agreement_table_matches_its_results_files():
    rows = _table_after("python experiments/crl_restart_agreement.py --out out/crl_agree_sR")
    assert [int(_num(r[0])) for r in rows] == [4, 0, 3]
    for row in rows:
        a = _load(f"crl_restart_agreement_seed{int(_num(row[0]))}.json")["restarts"]
        for cell, key in zip(row[1:4], ("first_two_by_loss", "by_loss", "by_agreement"),
                             strict=True):
            _check_mean_mcc_shd(cell, a[key], key)
            assert a[key]["mcc"] == [a["mcc"][s][c] for s, c in enumerate(a[key]["chosen"])]
        assert a["by_loss"]["chosen"] == np.argmin(a["loss"], 1).tolist()
        assert a["by_agreement"]["chosen"] == np.argmax(a["agreement"], 1).tolist()
        assert _num(row[4]) == pytest.approx(np.mean(np.max(a["mcc"], 1)), abs=5e-4)
        by_loss, by_agree = row[5].split("/")
        assert [float(v) for v in by_loss.split()] == pytest.approx(a["by_loss"]["mcc"],
                                                                     abs=5e-4)
        assert [float(v) for v in by_agree.split()] == pytest.approx(a["by_agreement"]["mcc"],
                                                                      abs=5e-4)
        assert _num(row[6]) == pytest.approx(a["wall_s"], abs=0.5)


def test_crl_restart_consensus_table_matches_its_results_files():
    rows = _table_after("python experiments/crl_restart_agreement.py --out out/crl_cons_sR")
    roots = [int(_num(r[0])) for r in rows[:-1]]
    assert sorted(roots) == list(range(6)) and rows[-1][0].startswith("mean")
    keys = ("first_two_by_loss", "by_loss", "by_agreement", "0.0", "0.5", "0.8", "0.9")
    means = {k: [] for k in keys}
    for row in rows[:-1]:
        a = _load(f"crl_restart_consensus_seed{int(_num(row[0]))}.json")["restarts"]
        for cell, key in zip(row[1:8], keys, strict=True):
            got = a[key] if key in a else a["consensus"][key]
            means[key].append(_check_mean_mcc_shd(cell, got, key))
        assert a["by_agreement"]["chosen"] == np.argmax(a["agreement"], 1).tolist()
        _check_best_and_wall(row[8:10], a)
    _check_mean_row(rows[-1][1:8], [means[k] for k in keys])


def test_crl_restart_majority_table_matches_its_results_files():
    rows = _table_after("--rescore out/crl_tb_sR --out out/crl_maj_sR")
    roots = [int(_num(r[0])) for r in rows[:-1]]
    assert sorted(roots) == list(range(6)) and rows[-1][0].startswith("mean")
    keys = (("first_two_by_loss", None), ("by_loss", None), ("0.5", "consensus"),
            ("0.8", "majority"), ("0.9", "majority"), ("0.95", "majority"))
    means = {k: [] for k in keys}
    for row in rows[:-1]:
        res = _load(f"crl_restart_majority_seed{int(_num(row[0]))}.json")
        assert res["setup"]["rescored"] == f"out/crl_tb_s{int(_num(row[0]))}"
        a = res["restarts"]
        for cell, (key, group) in zip(row[1:7], keys, strict=True):
            got = a[group][key] if group else a[key]
            means[key, group].append(_check_mean_mcc_shd(cell, got, key))
        for t in ("0.8", "0.9", "0.95"):  # each slot's members: a cluster around its centre
            m = a["majority"][t]
            assert all(row_m[c] == 1 for s in range(len(m["chosen"]))
                       for row_m, c in zip(m["members"][s], m["chosen"][s], strict=True))
        _check_best_and_wall(row[7:9], a)
    _check_mean_row(rows[-1][1:7], [means[k] for k in keys])


def test_crl_restart_holdout_table_matches_its_results_files():
    rows = _table_after("--set crl.holdout=0.1 --save-latents")
    roots = [int(_num(r[0])) for r in rows[:-1]]
    assert roots == list(range(len(roots))) and rows[-1][0].startswith("mean")
    keys = ("first_two_by_loss", "by_loss", "train", "0.5", "0.8", "0.9")
    means = {k: [] for k in keys}
    for row in rows[:-1]:
        a = _load(f"crl_restart_holdout_seed{int(_num(row[0]))}.json")["restarts"]
        assert a["criterion"] == "heldout_loss"
        assert a["by_loss"]["chosen"] == np.argmin(a["heldout_loss"], 1).tolist()
        assert a["first_two_by_loss"]["chosen"] == np.argmin(
            np.asarray(a["heldout_loss"])[:, :2], 1).tolist()
        by_train = np.argmin(a["loss"], 1)  # the same fits chosen by training loss
        train = {k: [a[k][s][c] for s, c in enumerate(by_train)] for k in ("mcc", "shd")}
        cols = (a["first_two_by_loss"], a["by_loss"], train, a["consensus"]["0.5"],
                a["majority"]["0.8"], a["majority"]["0.9"])
        for cell, key, got in zip(row[1:7], keys, cols, strict=True):
            means[key].append(_check_mean_mcc_shd(cell, got, key))
        _check_best_and_wall(row[7:9], a)
    _check_mean_row(rows[-1][1:7], [means[k] for k in keys])


def test_crl_strength_chunk_table_matches_its_benchmark_file():
    rows = _table_after("python experiments/bench/crl_strength_chunk.py")
    res = _load("bench_crl_strength_chunk.json")["settings"]
    assert len(rows) == 2
    for row, name in zip(rows, ("chunk 8192", "one chunk of all N"), strict=True):
        assert _num(row[1]) == pytest.approx(res[name]["temp_mib"], abs=0.5)
        assert _num(row[2]) == pytest.approx(res[name]["wall_s"], abs=5e-3)
    assert res["chunk 8192"]["temp_mib"] < res["one chunk of all N"]["temp_mib"] / 4


def test_crl_linear_polish_table_matches_its_results_files():
    """The linear polish's table: every cell against its results file, every "before"
    against the row's committed results per data set, and the summary's means."""
    rows = _table_after("python experiments/crl_linear_polish.py --out out/d8_sR")
    names = {"d = 8": "d8", "default (d = 5)": "default"}
    assert [(names[r[0]], int(r[1])) for r in rows] == [
        *[("d8", r) for r in range(5)], *[("default", r) for r in (0, 1, 4, 6)]]
    before_files = {("d8", r): f"crl_d8_strength_seed{r}.json" for r in range(3)}
    before_files |= {("d8", r): f"crl_d8_seed{r}.json" for r in (3, 4)}
    before_files |= {("default", r): "crl_synthetic_v2.json" if r == 0
                     else f"crl_synthetic_v2_seed{r}.json" for r in (0, 1, 4, 6)}
    means: dict[str, list] = {"d8": [], "default": []}
    for row in rows:
        key = names[row[0]], int(row[1])
        res = _load(f"crl_linear_polish_{key[0]}_seed{key[1]}.json")
        ps = res["per_seed"]
        for cell, when in zip(row[2:5], ("before", "after", "kept"), strict=True):
            mcc, shd = cell.split(";")
            assert _num(mcc) == pytest.approx(res[f"mcc_pearson_oos_{when}"], abs=5e-4), key
            assert _num(shd) == pytest.approx(res[f"shd_{when}"], abs=0.05), key
            assert res[f"shd_{when}"] == pytest.approx(np.mean([s[when]["shd"] for s in ps]))
        # the library's rule: the polish where the likelihood does not fall
        for s in ps:
            assert s["polish_kept"] == (s["loglik_after"] >= s["loglik_before"])
            assert s["kept"] == (s["after"] if s["polish_kept"] else s["before"])
        assert row[5] == f"{sum(s['polish_kept'] for s in ps)} of 5", key
        per_mcc, per_shd = row[6].split(";")
        assert [float(v) for v in per_mcc.split()] == pytest.approx(
            [s["after"]["mcc_pearson_oos"] for s in ps], abs=5e-4), key
        assert [float(v) for v in per_shd.split()] == [s["after"]["shd"] for s in ps], key
        g = res["graphs"][0]
        assert (g["graph_min_r2"], g["edge_threshold"]) == (0.05, 0.1)
        gb, ga = (_num(v) for v in row[7].split("/"))
        assert (gb, ga) == pytest.approx((g["shd_before"], g["shd_after"]), abs=0.05), key
        assert _num(row[8]) == pytest.approx(res["polish_wall_s"], abs=0.5), key
        m = _load(before_files[key])["methods"]["latent_scm"]
        np.testing.assert_allclose([s["before"]["mcc_pearson_oos"] for s in ps],
                                   m["mcc_pearson_oos"]["per_seed"], atol=1e-6)
        assert [s["before"]["shd"] for s in ps] == m["shd"]["per_seed"], key
        means[key[0]] += ps
    # CRLConfig.polish at the end of a fresh fit: root 0's kept column, per data set
    cfg_run = _load("crl_d8_polish_seed0.json")["methods"]["latent_scm"]
    assert cfg_run["config"]["polish"] is True
    kept0 = _load("crl_linear_polish_d8_seed0.json")["per_seed"]
    np.testing.assert_allclose(cfg_run["mcc_pearson_oos"]["per_seed"],
                               [s["kept"]["mcc_pearson_oos"] for s in kept0], atol=1e-6)
    assert cfg_run["shd"]["per_seed"] == [s["kept"]["shd"] for s in kept0]
    assert cfg_run["wall_s"] < 600
    # the contrastive row: latents polished alone; "before" is the row's committed fit
    c10 = _load("crl_linear_polish_contrastive_d10_seed0.json")
    m = _load("crl_contrastive_d10_D100_strength.json")["methods"]["contrastive"]
    np.testing.assert_allclose([s["before"]["mcc_pearson_oos"] for s in c10["per_seed"]],
                               m["mcc_pearson_oos"]["per_seed"], atol=1e-6)
    assert [s["before"]["shd"] for s in c10["per_seed"]] == m["shd"]["per_seed"]
    text = (ROOT / "BENCHMARKS.md").read_text()
    per = " ".join(f"{s['before']['mcc_pearson_oos']:.3f}" for s in c10["per_seed"]) + " -> "
    per += " ".join(f"{s['after']['mcc_pearson_oos']:.3f}" for s in c10["per_seed"])
    assert per in " ".join(text.split())
    assert (round(c10["mcc_pearson_oos_before"], 3), round(c10["mcc_pearson_oos_after"], 3),
            c10["shd_before"], c10["shd_after"]) == (0.926, 0.926, 18.6, 17.2)
    assert f"{c10['polish_wall_s']:.0f} s)" in text
    d8, d5 = means["d8"], means["default"]

    def mean(ps, when, k):
        return float(np.mean([s[when][k] for s in ps]))

    assert (mean(d8, "before", "mcc_pearson_oos"), mean(d8, "after", "mcc_pearson_oos"),
            mean(d8, "kept", "mcc_pearson_oos")) == pytest.approx((0.918, 0.941, 0.941),
                                                                  abs=5e-4)
    assert (mean(d8, "before", "shd"), mean(d8, "after", "shd"),
            mean(d8, "kept", "shd")) == pytest.approx((8.92, 6.12, 6.44))
    gain = [s["after"]["mcc_pearson_oos"] - s["before"]["mcc_pearson_oos"] for s in d8]
    assert (sum(g > 0.005 for g in gain), sum(g < -0.005 for g in gain)) == (19, 2)
    assert (sum(s["before"]["shd"] <= 3 for s in d8),
            sum(s["after"]["shd"] <= 3 for s in d8)) == (4, 8)
    assert (mean(d5, "before", "mcc_pearson_oos"), mean(d5, "after", "mcc_pearson_oos"),
            mean(d5, "kept", "mcc_pearson_oos")) == pytest.approx((0.960, 0.955, 0.961),
                                                                  abs=5e-4)
    assert (mean(d5, "before", "shd"), mean(d5, "after", "shd"),
            mean(d5, "kept", "shd")) == pytest.approx((1.6, 1.45, 1.5))
    lose = [s for s in d5 if s["after"]["mcc_pearson_oos"]
            < s["before"]["mcc_pearson_oos"] - 0.005]
    win = [s for s in d5 if s["after"]["mcc_pearson_oos"]
           > s["before"]["mcc_pearson_oos"] + 0.005]
    assert (len(lose), sum(not s["polish_kept"] for s in lose)) == (6, 4)
    assert (len(win), sum(s["polish_kept"] for s in win)) == (4, 4)


def test_crl_default_polished_row_table_matches_its_results_files():
    """The row 'default, four restarts by acyclicity, polished' on eight roots beside the
    default (2 restarts by loss, unpolished, the graph at min R^2 0, prune 0.3)."""
    row_name = "default, four restarts by acyclicity, polished"
    rows = _table_after("python experiments/crl_generalization.py --out out/dpol_sR")
    roots = [int(_num(r[0])) for r in rows]
    assert sorted(roots) == list(range(8))
    both = {"default": [], "polished": []}
    pooled = {"default": [], "polished": []}
    for row in rows:
        root = int(_num(row[0]))
        res = _load(f"crl_default_polished_seed{root}.json")
        assert res["setup"]["seed"] == root
        crl = res["setup"]["crl"]
        assert (crl["restarts"], crl["restart_choice"], crl["polish"], crl["graph_min_r2"],
                crl["edge_threshold"]) == (4, "acyclicity", True, 0.05, 0.1), row_name
        m = res["methods"]["latent_scm"]
        d = _load("crl_synthetic_v2.json" if root == 0
                  else f"crl_synthetic_v2_seed{root}.json")["methods"]["latent_scm"]
        for name, s in (("default", d), ("polished", m)):
            mcc, shd = s["mcc_pearson_oos"]["per_seed"], s["shd"]["per_seed"]
            pooled[name].append((mcc, shd))
            if np.mean(mcc) >= 0.95 and np.mean(shd) <= 1:
                both[name].append(root)
        _check_mean_mcc_shd(row[1], {"mcc": d["mcc_pearson_oos"]["per_seed"],
                                     "shd": d["shd"]["per_seed"]}, "default")
        _check_mcc_shd_per_seed(row[2:5], m)
        h = np.asarray(m["restarts"]["acyclicity"])
        assert m["restarts"]["chosen"] == h.argmin(1).tolist()
        assert [int(v) for v in row[5].split()] == m["restarts"]["chosen"]
        # the same restarts the four-restart runs of the section above chose
        assert m["restarts"]["chosen"] == _load(f"crl_restart_acyclicity_seed{root}.json")[
            "restarts"]["by_acyclicity"]["chosen"]
        kept = m["polish"]["kept"]
        assert row[6] == f"{sum(kept)} of {len(kept)}"
        met = (m["mcc_pearson_oos"]["mean"] >= 0.95, m["shd"]["mean"] <= 1)
        want = {(True, True): "both met", (True, False): "MCC met, SHD not",
                (False, True): "SHD met, MCC not", (False, False): "neither"}[met]
        assert row[7] == want, root
        assert _num(row[8]) == pytest.approx(m["wall_s"], abs=0.5)
    summary = _table_after("| setting (eight roots, 40 data sets) |")
    assert [r[0] for r in summary] == ["default (2 by loss)", row_name]
    for cells, name in zip(summary, ("default", "polished"), strict=True):
        mcc = np.concatenate([m for m, _ in pooled[name]])
        shd = np.concatenate([s for _, s in pooled[name]])
        assert _num(cells[1]) == pytest.approx(mcc.mean(), abs=5e-4), name
        assert _num(cells[2]) == pytest.approx(shd.mean(), abs=0.005), name
        assert int(cells[3]) == int((mcc < 0.93).sum()), name
        roots_met = sorted(both[name])
        assert cells[4] == f"{len(roots_met)} ({', '.join(map(str, roots_met))})", name
    # the graph step's ceiling: the search over the true latents at both settings
    truth = {}
    for root in range(8):
        res = _load(f"crl_graph_truth_default_seed{root}.json")
        assert res["seed"] == root
        cells = res["rows"]["default"]["cells"]
        for c in cells:
            truth.setdefault((c["min_r2"], c["edge_threshold"]), []).extend(c["shd"])
    assert np.mean(truth[(0.0, 0.3)]) == pytest.approx(0.425)
    assert max(truth[(0.0, 0.3)]) == 3 and not any(truth[(0.05, 0.1)])


def test_crl_unknown_targets_by_acyclicity_figures_match_their_results_file():
    """The 'Not for unknown targets' figures of the restart-acyclicity section."""
    m = _load("crl_gen_unknown_targets_acyclicity.json")["methods"]["latent_scm"]
    before = _latent_scm("crl_gen_v3.json", "unknown targets")
    assert m["config"]["restart_choice"] == "acyclicity" and m["config"]["restarts"] == 4
    got = [m["mcc_pearson_oos"]["mean"], m["targets_right"]["mean"],
           before["mcc_pearson_oos"]["mean"], before["targets_right"]["mean"]]
    assert got == pytest.approx([0.903, 0.92, 0.943, 0.92], abs=5e-4)
    rs = m["restarts"]
    assert rs["chosen"] == np.argmin(rs["acyclicity"], 1).tolist()
    assert (rs["mcc"][0][rs["chosen"][0]], rs["mcc"][0][0]) == pytest.approx((0.818, 0.953),
                                                                             abs=5e-4)
    assert m["wall_s"] == pytest.approx(853, abs=0.5)
