"""Intervention-effect matrices recover a planted causal chain; the pieces obey their math."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl.analysis import (
    effect_matrix,
    latent_beliefs,
    probe_readout,
    score_effects,
    steering_deltas,
)
from jaxcrl.lm import HookedTransformer, TransformerConfig, add_vector
from jaxcrl.scm import GraphConfig
from jaxcrl.scm.language import TaskConfig

D_LAT, K = 3, 2
HOOK = "blocks.0.hook_resid_post"
# the planted model speaks the shared-value layout: value k is token 1 + d + k
TASK = TaskConfig(n_latents=D_LAT, n_values=K, graph=GraphConfig(kind="chain"),
                  value_vocab="shared")


@dataclasses.dataclass(frozen=True)
class PlantedModel:
    """A 'model' whose answer is known by construction.

    Its residual stream at ``HOOK`` holds two coordinates per latent (logits of z_i = 0, 1)
    computed from the reports in the tokens. *After* the hook, beliefs propagate along
    ``adj`` in topological order: the logits of z_j receive ``gain`` times the (already
    propagated) logits of each parent. Editing z_i's coordinates at the hook can then only
    move the beliefs about z_i's descendants.
    """

    adj: tuple

    def _resid(self, tokens):
        # reports of value k for cue i: pairs (1 + i, 1 + d + k) at positions (2p+1, 2p+2)
        cues = tokens[:, 1:-1:2] - 1                      # [B, P]
        vals = tokens[:, 2::2] - 1 - D_LAT                # [B, P]
        counts = jnp.einsum("bpi,bpk->bik", jax.nn.one_hot(cues, D_LAT),
                            jax.nn.one_hot(vals, K))       # [B, d, K]
        return counts.reshape(tokens.shape[0], D_LAT * K)  # [B, dK]

    def run_with_hooks(self, params, tokens, hooks=None):
        h = self._resid(tokens)
        if hooks:
            h = hooks[HOOK](h[:, None, :])[:, 0, :]
        logit = h.reshape(-1, D_LAT, K)
        adj = np.asarray(self.adj)
        out = []
        for j in range(D_LAT):  # topological order 0..d-1 by construction of the test graphs
            lj = logit[:, j]
            for i in range(j):
                if adj[i, j]:
                    lj = lj + 2.0 * out[i]
            out.append(lj)
        value_logits = jnp.stack(out, 1)  # [B, d, K]
        # logits [B, T, V]: only the last position matters, value ids 1 + d + k for cue j
        cue = tokens[:, -1] - 1
        last = value_logits[jnp.arange(tokens.shape[0]), cue]  # [B, K]
        v = 1 + D_LAT + K
        logits = jnp.zeros((tokens.shape[0], tokens.shape[1], v))
        return logits.at[:, -1, 1 + D_LAT:].set(last)

    def apply(self, params, tokens):
        return self.run_with_hooks(params, tokens)


def _tokens(key, b=64, pairs=6):
    kc, kv = jax.random.split(key)
    cues = jax.random.randint(kc, (b, pairs), 0, D_LAT)
    vals = jax.random.randint(kv, (b, pairs), 0, K)
    pairs_tok = jnp.stack([1 + cues, 1 + D_LAT + vals], -1).reshape(b, 2 * pairs)
    seq = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), pairs_tok], 1)
    return seq[:, :-1]  # ends on a cue position


def _effects(model):
    tokens = _tokens(jax.random.key(0))
    acts = model._resid(tokens)
    w = jnp.eye(D_LAT * K)  # the readout is known by construction: coordinate = logit
    deltas = steering_deltas(w, n_latents=D_LAT, n_values=K, scale=3.0)
    base = latent_beliefs(model, None, tokens, task_cfg=TASK)

    def beliefs(delta):
        hook = add_vector(delta)
        return latent_beliefs(model, None, tokens, task_cfg=TASK, hooks={HOOK: hook})

    assert acts.shape == (64, D_LAT * K)
    return effect_matrix(beliefs, deltas, base)


def test_effect_matrix_recovers_planted_chain():
    chain = ((0, 1, 0), (0, 0, 1), (0, 0, 0))
    e = np.asarray(_effects(PlantedModel(chain)))
    desc = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]], bool)
    off = ~np.eye(3, dtype=bool)
    assert e[desc].min() > 0.05
    np.testing.assert_allclose(e[off & ~desc], 0.0, atol=1e-6)
    s = score_effects(e, np.array(chain))
    assert s["auroc_descendants"] == 1.0 and s["shd_descendants"] == 0
    # Effects of edit 0 grow along the chain (gain 2 per edge), so E[0, 2] (a descendant,
    # not an edge) outranks the edge 1 -> 2: the edge-count-matched direct-graph SHD keeps
    # 0 -> 1 and 0 -> 2, i.e. misses 1 -> 2 and adds 0 -> 2: 2.
    assert e[0, 2] > e[1, 2]
    assert s["shd_graph"] == 2 and s["auroc_graph"] == pytest.approx(0.75)
    assert s["effect_on_descendants"] == pytest.approx(e[desc].mean(), rel=1e-6)
    assert s["effect_on_others"] == pytest.approx(0.0, abs=1e-6)
    assert s["own_effect"] == pytest.approx(np.diag(e).mean(), rel=1e-6)


def test_score_effects_hand_worked_case():
    chain = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])  # descendants: 01, 02, 12
    e = np.array([[0.9, 0.5, 0.45], [0.1, 0.8, 0.4], [0.2, 0.05, 0.7]])
    s = score_effects(e, chain)
    # descendants {.5, .45, .4} all above others {.1, .2, .05}: AUROC 1; top 3 = the
    # descendant relation: SHD 0
    assert s["auroc_descendants"] == 1.0 and s["shd_descendants"] == 0
    # direct edges {01 = .5, 12 = .4} vs {02 = .45, 10, 20, 21}: .5 beats 4, .4 beats 3 ->
    # 7 / 8; matched top 2 = 01, 02: 12 missing, 02 extra -> SHD 2
    assert s["auroc_graph"] == pytest.approx(7 / 8) and s["shd_graph"] == 2
    assert s["effect_on_descendants"] == pytest.approx(0.45)
    assert s["effect_on_others"] == pytest.approx(0.35 / 3)
    assert s["own_effect"] == pytest.approx(0.8)
    # the transposed matrix (edit j, effect on i) reverses every pair: AUROC 0, 3 reversals
    t = score_effects(e.T, chain)
    assert t["auroc_descendants"] == 0.0 and t["shd_descendants"] == 3


def test_effect_matrix_of_an_anticausal_model_scores_badly():
    # the graph 2 -> 1 -> 0 written in index order would be reversed: plant 0 -> 1 -> 2 in
    # the model but score against the reversed truth
    e = np.asarray(_effects(PlantedModel(((0, 1, 0), (0, 0, 1), (0, 0, 0)))))
    reversed_truth = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    s = score_effects(e, reversed_truth)
    assert s["auroc_descendants"] == 0.0 and s["shd_descendants"] > 0


def test_steering_deltas_move_only_their_latent_readout():
    key = jax.random.key(1)
    w = jax.random.normal(key, (16, D_LAT * K))
    deltas = steering_deltas(w, n_latents=D_LAT, n_values=K, scale=0.5)
    moved = np.asarray(jnp.einsum("ikd,dm->ikm", deltas, w)).reshape(D_LAT, K, D_LAT, K)
    for i in range(D_LAT):
        for v in range(K):
            want = np.zeros((D_LAT, K))
            want[i] = -0.5 / K
            want[i, v] += 0.5
            np.testing.assert_allclose(moved[i, v], want, atol=1e-5)


def test_probe_readout_recovers_a_linear_map():
    key1, key2 = jax.random.split(jax.random.key(2))
    x = jax.random.normal(key1, (2000, 8))
    w_true = jax.random.normal(key2, (8, 3))
    w = probe_readout(x, x @ w_true + 1.0, ridge=1e-8)
    np.testing.assert_allclose(w, w_true, atol=1e-3)
    with pytest.raises(ValueError, match="share N"):
        probe_readout(x, x[:10])


def test_latent_beliefs_match_per_cue_forwards():
    cfg = TransformerConfig.tiny(vocab_size=1 + D_LAT + K, n_ctx=12)
    model = HookedTransformer(cfg)
    params = model.init(jax.random.key(3))
    tokens = _tokens(jax.random.key(4), b=5)
    p = np.asarray(latent_beliefs(model, params, tokens, task_cfg=TASK))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    for j in range(D_LAT):
        t = tokens.at[:, -1].set(1 + j)
        logits = model.apply(params, t)[:, -1, 1 + D_LAT:]
        np.testing.assert_allclose(p[:, j], jax.nn.softmax(logits, -1), atol=1e-5)
