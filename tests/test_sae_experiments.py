"""The SAE experiment scripts run end to end at tiny sizes and write their outputs."""

import json

import pytest
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


@pytest.mark.slow  # ~70 s of CI's 2 cores; the JumpReLU test below runs both libraries too
def test_sae_speed_tiny(tmp_path):
    """The SAELens comparison end to end at a tiny shape: one jaxcrl worker (auto: the
    sparse path here) and one SAELens worker, AuxK active, and the vmapped sweep."""
    out = tmp_path / "b.json"
    _load("experiments/bench/sae_speed.py").main([
        "--shapes", "16x64", "--batch", "32", "--k", "4", "--steps", "2", "--repeats", "1",
        "--auxk-regimes", "active", "--jax-decoders", "auto", "--sweep-ks", "2,4",
        "--sweep-steps", "2", "--rows", "128", "--out", str(out)])
    res = json.loads(out.read_text())
    assert min(res["matmul_peak_gflops_before_after"]) > 0
    (row,) = res["results"]
    assert (row["d_in"], row["d_sae"], row["auxk"]) == (16, 64, "active")
    for name in ("jaxcrl_auto", "saelens"):
        assert row[name]["tokens_per_s"] > 0 and row[name]["peak_rss_mb"] > 0
    assert row["speedup_jaxcrl_auto_vs_saelens"] == pytest.approx(
        row["jaxcrl_auto"]["tokens_per_s"] / row["saelens"]["tokens_per_s"])
    assert res["sweep"]["S"] == 2 and res["sweep"]["speedup"] > 0


@pytest.mark.slow  # a benchmark smoke test (CI's 30 minutes)
def test_sae_speed_jumprelu_tiny_fires_about_k_latents_in_both_libraries(tmp_path):
    """The JumpReLU comparison: both libraries start at the threshold where ~k of d_sae
    standard-normal pre-activations fire, jaxcrl on its sparse path (auto: d_sae >= 64 x 4k)."""
    out = tmp_path / "b.json"
    _load("experiments/bench/sae_speed.py").main([
        "--architecture", "jumprelu", "--shapes", "32x2048", "--batch", "256", "--k", "8",
        "--steps", "1", "--repeats", "1", "--auxk-regimes", "idle", "--jax-decoders", "auto",
        "--sweep-ks", "", "--rows", "512", "--out", str(out)])
    res = json.loads(out.read_text())
    (row,) = res["results"]
    assert res["setup"]["architecture"] == "jumprelu" and row["jaxcrl_auto"]["sparse"]
    for name in ("jaxcrl_auto", "saelens"):
        assert 5 < row[name]["l0_last_step"] < 12, name
