"""Attribution graphs: the frozen local replacement reproduces the model, its edges are the
finite-difference effects, pruning keeps the influential nodes, and ablating the node with
the largest predicted effect moves the full model's logit the predicted way."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl import lm, sae
from jaxcrl.analysis import attribution, replacement
from jaxcrl.sae import clt


def _setup():
    mcfg = lm.TransformerConfig.tiny(vocab_size=11, n_ctx=8)
    model = lm.HookedTransformer(mcfg)
    params = model.init(jax.random.key(0))
    ins, outs = replacement.mlp_hooks(2)
    cfg = sae.CLTConfig.tiny(d_in=32, d_out=32, d_sae=16, k=3, n_layers=2, in_hooks=ins,
                             out_hooks=outs)
    p = clt.init_params(jax.random.key(1), cfg, b_dec=jnp.zeros((2, 32)))
    p["b_enc"] = p["b_enc"] + 0.5
    # decoder writes of the size of this random model's residual stream (norm ~0.1), as a
    # trained dictionary's would be; unit writes would swamp the frozen norm scales
    p["W_dec"] = p["W_dec"] * 0.05
    toks = np.array([1, 4, 2, 7, 3, 9])
    return model, params, cfg, p, toks


def test_graph_edges_are_exact_linear_effects_and_ablations_follow_them(tmp_path):
    model, params, cfg, p, toks = _setup()
    fn, info = attribution.local_replacement(model, params, toks, cfg, p)
    z0 = info["z"]
    T = len(toks)
    ones, werr = jnp.ones(T), jnp.ones((2, T))
    pre, logits = fn(ones, z0, werr)
    # the frozen local replacement reproduces the model exactly at the clean point
    np.testing.assert_allclose(np.asarray(logits), np.asarray(info["logits"]), atol=1e-4)
    g = attribution.attribution_graph(model, params, toks, cfg, p, node_threshold=1.0,
                                      edge_threshold=1.0)
    nodes, adj = g["_arrays"]["nodes"], g["_arrays"]["adjacency"]
    feats = [i for i, nd in enumerate(nodes) if nd["kind"] == "feature"]
    assert len(feats) == int((np.asarray(z0) > 0).sum())
    # every layer-0 -> layer-1 edge equals a finite difference of the frozen model
    src = [i for i in feats if nodes[i]["layer"] == 0]
    dst = [i for i in feats if nodes[i]["layer"] == 1]
    assert src and dst
    eps = 1e-2
    for j in src[:4]:
        s = nodes[j]
        bumped = z0.at[s["layer"], s["pos"], s["feature"]].add(eps)
        pre2, _ = fn(ones, bumped, werr)
        for i in dst:
            t = nodes[i]
            fd = float(pre2[1, t["pos"], t["feature"]] - pre[1, t["pos"], t["feature"]]) / eps
            assert abs(fd * s["activation"] - adj[i, j]) < 2e-3 * (1 + abs(adj[i, j])), (i, j)
        # a feature never reaches its own layer or an earlier position
        for i in feats:
            if nodes[i]["layer"] == 0 or nodes[i]["pos"] < s["pos"]:
                assert adj[i, j] == 0.0
    # completeness: the logit nodes are their inputs' contributions plus a constant
    lg = [i for i, nd in enumerate(nodes) if nd["kind"] == "logit"]
    zero_pre, zero_lg = fn(jnp.zeros(T), jnp.zeros_like(z0), jnp.zeros((2, T)))
    pos = g["target_pos"]
    for i in lg:
        v = nodes[i]["token"]
        total = float(zero_lg[pos, v]) + adj[i].sum()
        assert abs(total - float(logits[pos, v])) < 1e-3
    # the full model moves the way the graph predicts when its strongest feature is ablated
    eff = attribution.predicted_logit_effects(g)[:, 0]
    best = int(np.argmax(np.abs(eff)))
    nd = nodes[feats[best]]
    ablated = attribution.ablate_feature(model, params, toks, cfg, p, nd["layer"], nd["pos"],
                                         nd["feature"])
    v = nodes[lg[0]]["token"]
    actual = float(ablated[pos, v] - info["logits"][pos, v])
    assert np.sign(actual) == np.sign(eff[best]) and abs(actual) > 0.3 * abs(eff[best]), (
        actual, eff[best])
    # pruning keeps fewer features, sorted by influence; the JSON round-trips
    pr = attribution.attribution_graph(model, params, toks, cfg, p, node_threshold=0.5)
    kept = [nd for nd in pr["nodes"] if nd["kind"] == "feature"]
    assert 0 < len(kept) < len(feats)
    assert min(nd["influence"] for nd in kept) >= max(
        nodes[i]["influence"] for i in feats if i not in {nd["id"] for nd in kept}) - 1e-12
    path = attribution.write_graph(pr, tmp_path / "graph.json")
    doc = json.loads(path.read_text())
    assert {"nodes", "edges", "tokens", "target_pos"} <= set(doc)
    ids = {nd["id"] for nd in doc["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in doc["edges"])
    attribution.plot_graph(pr)
