"""experiments/sae_probe.py runs the whole SAE pipeline at a tiny size, and its numbers obey
their definitions."""

import json

import pytest
from conftest import load_experiment as _load


# About 2 CPU-minutes: `make test-all` runs it (CI's 30-minute budget for `make test`).
@pytest.mark.slow
def test_sae_probe_tiny_end_to_end(tmp_path):
    _load("experiments/sae_probe.py").main(["--tiny", "--out", str(tmp_path), "--no-progress"])
    res = json.loads((tmp_path / "results.json").read_text())
    archs = res["methods"]
    assert set(archs) == {"topk", "relu"}
    for name in ("frontier.png", "density.png", "mcc_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0
    topk = archs["topk"]["frontier"]
    for point in topk:  # TopK keeps k latents per vector (fewer only if some are <= 0)
        assert 0.9 * point["k"] <= point["l0"] <= point["k"] + 1e-6
    # more latents per token reconstruct better
    assert topk[1]["fvu"] < topk[0]["fvu"]
    for arch in archs.values():
        for key in ("l0", "fvu", "ce_loss_recovered", "dead_fraction", "latent_mcc",
                    "sparse_probe_accuracy"):
            assert key in arch
        assert 0 <= arch["dead_fraction"] <= 1 and 0 <= arch["latent_mcc"] <= 1
        for point in arch["frontier"]:
            # splicing in a reconstruction cannot beat the clean model by much
            assert point["ce_sae"] >= point["ce_clean"] - 1e-3
    assert 0.5 <= res["raw_probe"]["full"] <= 1.0
