"""The causal-features experiment runs end to end at a tiny size and its numbers mean what
they say."""

import json

import numpy as np
from conftest import load_experiment

causal_features = load_experiment("experiments/causal_features.py")


def test_causal_features_tiny_end_to_end(tmp_path):
    out = tmp_path / "cf"
    res = causal_features.main(["--tiny", "--out", str(out), "--no-progress"])
    data = json.loads((out / "results.json").read_text())
    assert (out / "effects.png").stat().st_size > 0
    assert (out / "identifiability.png").stat().st_size > 0
    layers = data["methods"]
    assert list(layers) == ["embed", "L0"]
    # the embedding of the last (cue) token knows nothing about the beliefs; a trained block
    # does: the probe must see the difference
    assert layers["L0"]["probe"]["mcc_pearson"] > layers["embed"]["probe"]["mcc_pearson"] + 0.4
    for lab in layers:
        r = layers[lab]
        assert 0.0 <= r["sae"]["topk"]["mcc_pearson_oos"] <= 1.0
        assert r["sae"]["topk"]["l0"] <= 8 + 1e-6  # TopK k = 8
        assert 0 <= r["crl"]["shd"] <= 3 and 0.0 <= r["crl"]["edge_auroc"] <= 1.0
        for eff in r["effects"].values():
            assert 0.0 <= eff["auroc_descendants"] <= 1.0
            assert eff["own_effect"] >= 0.0
    e = res["_arrays"]["L0/effects_probe"]
    assert e.shape == (3, 3) and np.all(e >= 0)
    g = np.asarray(data["true_graph"])  # a chain over a random node order
    assert g.sum() == 2 and g.sum(0).max() == 1 and g.sum(1).max() == 1
