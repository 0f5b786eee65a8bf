"""The SAE experiment scripts run end to end at tiny sizes and write their outputs."""

import json

from conftest import load_experiment as _load


def test_sae_toy_tiny(tmp_path):
    _load("experiments/sae_toy.py").main([
        "--out", str(tmp_path), "--n-features", "24", "--dim", "12", "--sae-width", "24",
        "--steps", "30", "--batch-size", "64", "--avg-active", "2",
        "--architectures", "topk,jumprelu", "--no-progress"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["architectures"]) == {"topk", "jumprelu"}
    for m in res["architectures"].values():
        assert {"mmcs", "l0", "fvu", "dead_fraction"} <= set(m)
        assert 0 < m["mmcs"] <= 1
    assert res["setup"]["toy"]["n_features"] == 24
    assert (tmp_path / "sae_toy.png").stat().st_size > 0


def test_sae_speed_tiny(tmp_path):
    out = tmp_path / "b.json"
    _load("experiments/bench/sae_speed.py").main([
        "--d-in", "16", "--d-sae", "64", "--batch", "32", "--k", "4", "--steps", "2",
        "--sweep-ks", "2,4", "--sweep-steps", "2", "--rows", "128", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["matmul_peak_gflops"] > 0 and res["fraction_of_peak"] > 0
    assert res["sweep"]["S"] == 2 and res["sweep"]["speedup"] > 0
