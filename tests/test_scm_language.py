"""Latent-SCM language: token format, exact Bayes predictor vs brute force, sampling, do()."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl.scm import GraphConfig, descendants
from jaxcrl.scm import language as T

TINY = T.TaskConfig.tiny()


@pytest.fixture(scope="module")
def tiny_task():
    return T.make_task(jax.random.key(3), TINY)


@pytest.fixture(scope="module")
def default_task():
    cfg = T.TaskConfig()
    return T.make_task(jax.random.key(cfg.seed), cfg)


# --------------------------------------------------------------------------- brute force


def _np_prior(task) -> dict:
    """p(z) by looping over states and variables (independent of the vectorised code)."""
    cfg = task.cfg
    adj, bias, emb = (np.asarray(a, np.float64) for a in (task.adj, task.bias, task.emb))
    d, K = cfg.n_latents, cfg.n_values
    out = {}
    for z in itertools.product(range(K), repeat=d):
        p = 1.0
        for j in range(d):
            pa = [i for i in range(d) if adj[i, j]]
            logits = cfg.root_scale * bias[j].copy()
            for i in pa:
                logits += cfg.strength * emb[i, j, z[i]] / math.sqrt(max(len(pa), 1))
            q = np.exp(logits - logits.max())
            p *= q[z[j]] / q.sum()
        out[z] = p
    return out


def _np_predictive(task, prior, tokens) -> np.ndarray:
    """[T, V] next-token probabilities of one sequence by direct enumeration over z."""
    cfg = task.cfg
    d, K, V, eps = cfg.n_latents, cfg.n_values, cfg.vocab_size, cfg.noise
    out = np.zeros((len(tokens), V))
    for t in range(len(tokens)):
        if t % 2 == 0:  # next token is a cue
            out[t, 1:1 + d] = 1.0 / d
            continue
        cue = tokens[t] - 1
        num = np.zeros(K)
        for z, pz in prior.items():
            w = pz
            for s in range(1, t, 2):  # earlier complete pairs (cue at s, value at s + 1)
                c, v = tokens[s] - 1, T.token_value(cfg, tokens[s + 1])
                w *= (1 - eps) * (z[c] == v) + eps / K
            num += w * ((1 - eps) * (np.arange(K) == z[cue]) + eps / K)
        out[t, [T.value_token(cfg, cue, k) for k in range(K)]] = num / num.sum()
    return out


def test_prior_matches_brute_force(tiny_task):
    prior = _np_prior(tiny_task)
    states = T.joint_states(TINY)
    got = np.exp(np.asarray(tiny_task.log_prior, np.float64))
    want = np.array([prior[tuple(s)] for s in states])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert abs(want.sum() - 1) < 1e-9


@pytest.mark.parametrize("vocab", T.VALUE_VOCABS)
def test_bayes_predictive_and_posterior_match_brute_force(vocab):
    tiny_task = T.make_task(jax.random.key(3), T.TaskConfig.tiny(value_vocab=vocab))
    b = T.sample(tiny_task, jax.random.key(0), 5, with_posterior=True)
    lp = np.asarray(T.bayes_logprobs(tiny_task, b.tokens))
    prior = _np_prior(tiny_task)
    d, K = TINY.n_latents, TINY.n_values
    for n in range(5):
        toks = np.asarray(b.tokens[n])
        np.testing.assert_allclose(np.exp(lp[n]), _np_predictive(tiny_task, prior, toks),
                                   atol=2e-6)
        # posterior marginals at the value position of the 3rd pair: pairs 0..2 observed
        t = 6
        post = np.zeros((d, K))
        for z, pz in prior.items():
            w = pz
            for s in range(1, t, 2):
                c, v = toks[s] - 1, T.token_value(tiny_task.cfg, toks[s + 1])
                w *= (1 - TINY.noise) * (z[c] == v) + TINY.noise / K
            for i in range(d):
                post[i, z[i]] += w
        post /= post.sum(1, keepdims=True)
        np.testing.assert_allclose(np.asarray(b.posterior[n, t]), post, atol=2e-6)
    nll = T.bayes_loss(tiny_task, tokens=b.tokens, targets=b.targets)
    np.testing.assert_allclose(nll, -np.take_along_axis(lp, np.asarray(b.targets)[..., None],
                                                        -1)[..., 0], rtol=1e-6)


def test_posterior_at_bos_is_the_prior(default_task):
    b = T.sample(default_task, jax.random.key(1), 3, with_posterior=True)
    np.testing.assert_allclose(b.posterior[:, 0], np.broadcast_to(
        T.prior_marginals(default_task), b.posterior[:, 0].shape), atol=1e-6)
    np.testing.assert_allclose(b.posterior.sum(-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- format, sampling


def test_token_format(default_task):
    cfg = default_task.cfg
    b = jax.jit(lambda k: T.sample(default_task, k, 64))(jax.random.key(0))
    B, Tn = b.tokens.shape
    assert (B, Tn) == (64, cfg.seq_len) and b.tokens.dtype == jnp.int32
    assert b.latents.shape == (64, cfg.n_latents)
    tok, tgt = np.asarray(b.tokens), np.asarray(b.targets)
    assert (tok[:, 0] == T.BOS).all()
    np.testing.assert_array_equal(tok[:, 1:], tgt[:, :-1])
    cues, vals = tok[:, 1::2], tgt[:, 1::2]
    assert ((cues >= 1) & (cues <= cfg.n_latents)).all()
    assert ((vals > cfg.n_latents) & (vals < cfg.vocab_size)).all()
    np.testing.assert_array_equal(np.asarray(b.value_mask)[0], np.arange(Tn) % 2 == 1)
    assert len(cfg.token_names()) == cfg.vocab_size
    # the value shown is the cued latent's value unless replaced by noise
    z = np.asarray(b.latents)
    shown = np.take_along_axis(z, cues - 1, 1)
    np.testing.assert_array_equal(vals, T.value_token(cfg, cues - 1, T.token_value(cfg, vals)))
    agree = (T.token_value(cfg, vals) == shown).mean()
    expect = 1 - cfg.noise + cfg.noise / cfg.n_values
    assert abs(agree - expect) < 0.03


def test_sampled_latents_follow_the_prior(default_task):
    n = 20_000
    b = jax.jit(lambda k: T.sample(default_task, k, n))(jax.random.key(5))
    emp = np.asarray(jax.nn.one_hot(b.latents, default_task.cfg.n_values).mean(0))
    np.testing.assert_allclose(emp, T.prior_marginals(default_task), atol=0.015)


def test_jit_eager_vmap_agree(tiny_task):
    key = jax.random.key(7)
    eager = T.sample(tiny_task, key, 4)
    jitted = jax.jit(lambda k: T.sample(tiny_task, k, 4))(key)
    np.testing.assert_array_equal(eager.tokens, jitted.tokens)
    keys = jax.random.split(key, 3)
    one = jax.jit(lambda k: T.sample(tiny_task, k, 4))
    vm = jax.jit(jax.vmap(one))(keys)
    for i in range(3):
        np.testing.assert_array_equal(vm.tokens[i], one(keys[i]).tokens)
    lp = T.bayes_logprobs(tiny_task, eager.tokens)
    np.testing.assert_allclose(jax.jit(T.bayes_logprobs)(tiny_task, eager.tokens), lp,
                               atol=1e-6)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(lp, -1), 0.0, atol=1e-5)


# --------------------------------------------------------------------------- losses


def test_bayes_loss_is_calibrated_and_below_baselines(default_task):
    """If the predictor is the true conditional, E[-log p(target)] = E[entropy of p]."""
    b = jax.jit(lambda k: T.sample(default_task, k, 2048))(jax.random.key(11))
    lp = T.bayes_logprobs(default_task, b.tokens)
    nll = np.asarray(T.token_nll(lp, b.targets))[:, 1::2].mean(1)
    ent = np.asarray(-(jnp.exp(lp) * jnp.where(jnp.isfinite(lp), lp, 0)).sum(-1))[:, 1::2]
    ent = ent.mean(1)
    se = nll.std() / math.sqrt(len(nll))
    assert abs(nll.mean() - ent.mean()) < 4 * se, (nll.mean(), ent.mean(), se)
    base = T.baseline_losses(default_task)
    bayes = T.expected_bayes_loss(default_task, jax.random.key(12), 2048)
    indep = T.expected_bayes_loss(default_task, jax.random.key(12), 2048,
                                  predictor=T.independent(default_task))
    # latents and the causal graph both matter in the default language
    assert bayes["value"] < indep["value"] - 0.02 < base["cue_only_value"] - 0.1
    assert base["cue_only_value"] < base["unigram_value"]
    assert bayes["value"] < base["unigram_value"] - 0.2
    # cue positions cost exactly log d
    np.testing.assert_allclose(np.asarray(T.token_nll(lp, b.targets))[:, ::2], base["cue"],
                               rtol=1e-5)
    np.testing.assert_allclose(bayes["all"], 0.5 * (bayes["value"] + base["cue"]), rtol=1e-5)


def test_unigram_losses_match_empirical_frequencies(default_task):
    base = T.baseline_losses(default_task)
    assert T.unigram_loss(default_task, positions="all") == base["unigram_all"]
    b = jax.jit(lambda k: T.sample(default_task, k, 8192))(jax.random.key(13))
    vals = np.asarray(b.targets)[:, 1::2].ravel()
    f = np.bincount(vals, minlength=default_task.cfg.vocab_size) / vals.size
    f = f[f > 0]
    assert abs(-(f * np.log(f)).sum() - base["unigram_value"]) < 0.01
    allt = np.asarray(b.targets).ravel()
    f = np.bincount(allt) / allt.size
    f = f[f > 0]
    assert abs(-(f * np.log(f)).sum() - base["unigram_all"]) < 0.01


# --------------------------------------------------------------------------- interventions


def test_intervention_sets_the_target_and_moves_only_descendants(default_task):
    cfg = default_task.cfg
    adj = np.asarray(default_task.adj)
    src = int(np.argmax(adj.sum(1)))  # a node with children
    desc = np.asarray(descendants(default_task.adj, src)).astype(bool)
    iv = T.do(cfg, {src: 1})
    b = jax.jit(lambda k: T.sample(default_task, k, 512, iv))(jax.random.key(2))
    assert (np.asarray(b.latents)[:, src] == 1).all()
    obs = np.asarray(T.prior_marginals(default_task))
    do_m = np.asarray(T.prior_marginals(T.intervene(default_task, iv)))
    np.testing.assert_allclose(do_m[src], np.eye(cfg.n_values)[1], atol=1e-6)
    for j in range(cfg.n_latents):
        if j != src and not desc[j]:
            np.testing.assert_allclose(do_m[j], obs[j], atol=1e-5)
    assert any(np.abs(do_m[j] - obs[j]).max() > 1e-3 for j in np.nonzero(desc)[0])
    # the intervened Bayes predictor is exact for interventional data: it beats the
    # observational predictor on it
    itask = T.intervene(default_task, iv)
    l_do = T.bayes_loss(itask, tokens=b.tokens, targets=b.targets)[:, 1::2].mean()
    l_obs = T.bayes_loss(default_task, tokens=b.tokens, targets=b.targets)[:, 1::2].mean()
    assert l_do < l_obs
    # vmap over interventions
    ivs = jax.vmap(lambda v: T.DoIntervention(jnp.eye(cfg.n_latents, dtype=bool)[src],
                                            jnp.full((cfg.n_latents,), v)))(jnp.arange(3))
    lp = jax.vmap(lambda i: T.intervene(default_task, i).log_prior)(ivs)
    assert lp.shape == (3, cfg.n_states)


def test_do_rejects_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        T.do(TINY, {5: 0})


def test_config_validation():
    with pytest.raises(ValueError, match="joint states"):
        T.TaskConfig(n_latents=7, n_values=4)
    with pytest.raises(ValueError, match="noise"):
        T.TaskConfig(noise=1.5)
    cfg = T.TaskConfig(graph=GraphConfig(kind="chain"))
    task = T.make_task(jax.random.key(0), cfg)
    assert int(task.adj.sum()) == cfg.n_latents - 1
    with pytest.raises(ValueError, match="tokens must be"):
        T.bayes_logprobs(task, jnp.zeros((2, 3), jnp.int32))


# --------------------------------------------------------------------------- text corpus


def test_char_corpus(tmp_path):
    text = "the quick brown fox jumps over the lazy dog\n" * 20
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    corpus = T.CharCorpus.from_file(path)
    assert corpus.vocab == "".join(sorted(set(text)))
    assert corpus.decode(corpus.encode("lazy dog")) == "lazy dog"
    b = jax.jit(lambda k: T.sample_text(corpus, k, 8, 16))(jax.random.key(0))
    assert b.tokens.shape == b.targets.shape == (8, 16)
    np.testing.assert_array_equal(b.tokens[:, 1:], b.targets[:, :-1])
    for row, tgt in zip(np.asarray(b.tokens), np.asarray(b.targets), strict=True):
        window = corpus.decode(row) + corpus.decode(tgt[-1:])
        assert window in text
    train, held = corpus.split(0.75)
    assert train.vocab == held.vocab and train.data.shape[0] == 660
    counts = {c: text.count(c) / len(text) for c in set(text)}
    want = -sum(p * math.log(p) for p in counts.values())
    assert abs(T.unigram_text_loss(corpus) - want) < 1e-9
    with pytest.raises(ValueError, match="shorter"):
        T.sample_text(held, jax.random.key(0), 2, 500)


def test_new_tasks_reuse_the_compiled_sampler_and_bayes_loss():
    """The task is a traced argument, not a constant of a new jitted closure per call."""
    t1 = T.make_task(jax.random.key(0), T.TaskConfig.tiny())
    t2 = T.make_task(jax.random.key(1), T.TaskConfig.tiny())
    b1 = T.sample_jit(t1, jax.random.key(2), 8, with_posterior=True)
    size = T.sample_jit._cache_size()
    b2 = T.sample_jit(t2, jax.random.key(2), 8, with_posterior=True)
    assert T.sample_jit._cache_size() == size
    assert not np.array_equal(np.asarray(b1.posterior), np.asarray(b2.posterior))
    T.expected_bayes_loss(t1, jax.random.key(3), 64, 32)
    size = T._bayes_batch._cache_size()
    T.expected_bayes_loss(t2, jax.random.key(3), 64, 32)
    assert T._bayes_batch._cache_size() == size
