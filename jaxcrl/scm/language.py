"""Token languages with known latent causes, with their exact Bayes-optimal predictor.

**The latent-SCM language.** Each sequence has ``d`` discrete latent variables
``z = (z_0, ..., z_{d-1})``, ``z_i in {0..K-1}``, drawn from a discrete structural causal
model over a random DAG (:func:`jaxcrl.scm.make_graph`, ``adj[i, j] = 1`` for ``i -> j``)::

    p(z_j | z_pa(j)) = softmax_k( root_scale * b_j[k]
                                  + strength / sqrt(|pa(j)|) * sum_{i in pa(j)} E_ij[z_i, k] )

with ``b_j ~ N(0, I_K)`` and ``E_ij ~ N(0, I_{KxK})`` drawn from the task key, so parents
strongly shift their children. The tokens reveal ``z`` only noisily and one variable at a
time: after a ``BOS`` token come ``n_pairs`` pairs ``(cue, value)``; the cue names a variable
``c ~ Uniform{0..d-1}`` (i.i.d.), the value token shows ``z_c`` with probability ``1 - noise``
and a uniformly random value otherwise. To predict a value well a model must pool all earlier
noisy reports of that variable *and* of its causes and effects, i.e. infer the posterior over
``z`` and propagate it along the graph.

Token ids, with ``value_vocab="per_variable"`` (default, ``V = 1 + d + d K``)::

    0                BOS
    1 + i            cue "z_i ?"               (i = 0..d-1)
    1 + d + i K + k  value "z_i = k"           (k = 0..K-1; only after cue i)

and with ``value_vocab="shared"`` (``V = 1 + d + K``) one token per value, ``1 + d + k``
("= k"), for every variable: the model must then bind each value to the cue before it.

A sampled sequence has ``2 * n_pairs + 1`` tokens; the model input is ``tokens = seq[:-1]``
``[B, T]`` (``T = 2 * n_pairs``) and ``targets = seq[1:]``. Odd positions ``t = 2p + 1`` hold
the cue of pair ``p`` and their target is its value ("value positions"); even positions hold
``BOS`` or a value and their target is the next cue (uniform, loss ``log d`` for any model
that learned the format).

**Exact Bayes.** ``K**d`` joint states are few (``<= 4096``), so the posterior
``p(z | prefix)`` is computed by enumeration (vectorised over states, positions and batch)
and the Bayes-optimal next-token distribution is exact::

    p(value = v | prefix, cue c) = (1 - noise) * p(z_c = v | prefix) + noise / K

:func:`bayes_logprobs` returns it for every position with the same ``[B, T, V]`` layout as a
model's log-softmax, so :func:`bayes_loss` is the exact per-position lower bound of any
model's expected loss. :func:`baseline_losses` gives the exact losses of context-free
(unigram) and cue-only predictors. :func:`intervene` turns the task into ``do(z_i = v)``.

**Character corpus.** :class:`CharCorpus` reads any local text file (vocabulary = the
sorted set of its characters) and samples random windows on device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.checkpoint import register_config
from jaxcrl.scm.graphs import GraphConfig, make_graph

BOS = 0
MAX_STATES = 4096
VALUE_VOCABS = ("per_variable", "shared")


# --------------------------------------------------------------------------- config


@register_config(aliases=("jaxcrl.lm.tasks:TaskConfig",))  # its home before the move
@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """A latent-SCM token language.

    Attributes:
      n_latents: number of latent variables ``d``.
      n_values: values per latent ``K`` (``K**d <= 4096`` for exact enumeration).
      graph: DAG family (``jaxcrl.scm.GraphConfig``; e.g. ``GraphConfig(kind="chain")``).
      strength: scale of the parents' effect on a child's logits.
      root_scale: scale of each variable's own logits (the only term for root nodes).
      noise: probability that a value token is uniform instead of the cued latent's value.
      n_pairs: (cue, value) pairs per sequence; model context ``T = 2 * n_pairs``.
      value_vocab: ``"per_variable"`` (value tokens name their variable) or ``"shared"``
        (one token per value, shared by all variables); see the token ids above.
      seed: seed of the task's graph and conditional probability tables.
    """

    n_latents: int = 5
    n_values: int = 3
    graph: GraphConfig = GraphConfig(kind="er", edge_prob=0.6)
    strength: float = 6.0
    root_scale: float = 1.0
    noise: float = 0.3
    n_pairs: int = 16
    value_vocab: str = "per_variable"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_latents < 1 or self.n_values < 2:
            raise ValueError(f"TaskConfig: need n_latents >= 1 and n_values >= 2, got "
                             f"{self.n_latents}, {self.n_values}")
        if self.n_values ** self.n_latents > MAX_STATES:
            raise ValueError(f"TaskConfig: n_values**n_latents = "
                             f"{self.n_values ** self.n_latents} joint states exceed "
                             f"{MAX_STATES} (exact enumeration)")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"TaskConfig.noise must be in [0, 1], got {self.noise}")
        if self.value_vocab not in VALUE_VOCABS:
            raise ValueError(f"TaskConfig.value_vocab must be one of {VALUE_VOCABS}, got "
                             f"{self.value_vocab!r}")
        if self.n_pairs < 1:
            raise ValueError(f"TaskConfig.n_pairs must be >= 1, got {self.n_pairs}")
        if self.strength < 0 or self.root_scale < 0:
            raise ValueError("TaskConfig: strength and root_scale must be >= 0")
        self.graph.validate_for(self.n_latents)

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_latents + self.n_value_tokens

    @property
    def n_value_tokens(self) -> int:
        per_var = self.value_vocab == "per_variable"
        return self.n_values * (self.n_latents if per_var else 1)

    @property
    def seq_len(self) -> int:
        """Model context ``T`` (input tokens per sequence)."""
        return 2 * self.n_pairs

    @property
    def n_states(self) -> int:
        return self.n_values ** self.n_latents

    @classmethod
    def tiny(cls, **override) -> TaskConfig:
        """For tests: 3 latents with 2 values on a chain, 6 pairs."""
        return cls(**{"n_latents": 3, "n_values": 2, "graph": GraphConfig(kind="chain"),
                      "n_pairs": 6, **override})

    def token_names(self) -> list[str]:
        """Readable name of every token id: ``BOS``, ``z0?``.., ``z0=0``.. (or ``=0``..)."""
        if self.value_vocab == "shared":
            values = [f"={k}" for k in range(self.n_values)]
        else:
            values = [f"z{i}={k}" for i in range(self.n_latents) for k in range(self.n_values)]
        return ["BOS"] + [f"z{i}?" for i in range(self.n_latents)] + values


def cue_token(cfg: TaskConfig, i):
    """Token id of the cue for variable ``i``."""
    return 1 + i


def value_token(cfg: TaskConfig, i, k):
    """Token id of the value ``k`` of variable ``i``."""
    if cfg.value_vocab == "shared":
        return 1 + cfg.n_latents + k + 0 * i
    return 1 + cfg.n_latents + i * cfg.n_values + k


def token_value(cfg: TaskConfig, token):
    """The value ``k`` shown by a value token (inverse of :func:`value_token` in ``k``)."""
    return (token - 1 - cfg.n_latents) % cfg.n_values


def joint_states(cfg: TaskConfig) -> np.ndarray:
    """All ``K**d`` joint states, ``[S, d] int32`` (state ``s`` in base ``K``, variable 0 most
    significant)."""
    return np.asarray(list(np.ndindex(*(cfg.n_values,) * cfg.n_latents)),
                      np.int32).reshape(cfg.n_states, cfg.n_latents)


# --------------------------------------------------------------------------- task pytree


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("adj", "bias", "emb", "log_cond", "log_prior"),
                   meta_fields=("cfg",))
@dataclasses.dataclass(frozen=True)
class Task:
    """A drawn latent-SCM language (a pytree; ``cfg`` is static).

    Attributes:
      cfg: its :class:`TaskConfig`.
      adj: ``[d, d]`` DAG, ``adj[i, j] = 1`` for ``i -> j``.
      bias: ``[d, K]`` own logits ``b_j``.
      emb: ``[d, d, K, K]`` parent effects ``E_ij[z_i, z_j]`` (used where ``adj[i, j]``).
      log_cond: ``[S, d]`` ``log p(z_j | z_pa(j))`` at every joint state (the mechanisms).
      log_prior: ``[S]`` log-probability of every joint state under the current
        (observational or intervened) distribution; ``-inf`` where impossible.
    """

    cfg: TaskConfig
    adj: jax.Array
    bias: jax.Array
    emb: jax.Array
    log_cond: jax.Array
    log_prior: jax.Array


class DoIntervention(NamedTuple):
    """``do(z_i = value[i])`` for every ``i`` with ``mask[i]`` (a hard intervention on the
    language's discrete latents; :class:`jaxcrl.scm.Intervention` is the continuous SCM's).

    Attributes:
      mask: ``[d] bool`` intervened variables.
      value: ``[d] int32`` values they are set to (ignored where not masked).
    """

    mask: jax.Array
    value: jax.Array


def do(cfg: TaskConfig, assignment: Mapping[int, int]) -> DoIntervention:
    """``do({i: v, ...})`` as a :class:`DoIntervention`, e.g. ``do(cfg, {2: 1})``."""
    mask = np.zeros(cfg.n_latents, bool)
    value = np.zeros(cfg.n_latents, np.int32)
    for i, v in assignment.items():
        if not 0 <= i < cfg.n_latents or not 0 <= v < cfg.n_values:
            raise ValueError(f"do: variable {i} / value {v} out of range "
                             f"(d={cfg.n_latents}, K={cfg.n_values})")
        mask[i], value[i] = True, v
    return DoIntervention(jnp.asarray(mask), jnp.asarray(value))


def _log_cond(cfg: TaskConfig, adj, bias, emb) -> jax.Array:
    """``[S, d]`` log p(z_j | parents) at every joint state."""
    states = jnp.asarray(joint_states(cfg))  # [S, d]
    d = cfg.n_latents
    n_pa = adj.sum(0)  # [d]
    # parent_logits[s, j, k] = sum_i adj[i, j] * emb[i, j, states[s, i], k]
    eff = emb[jnp.arange(d)[None, :, None], jnp.arange(d)[None, None, :], states[:, :, None]]
    # eff: [S, i, j, K]
    parent = jnp.einsum("ij,sijk->sjk", adj, eff)
    logits = (cfg.root_scale * bias[None]
              + cfg.strength * parent / jnp.sqrt(jnp.maximum(n_pa, 1.0))[None, :, None])
    logp = jax.nn.log_softmax(logits, axis=-1)  # [S, d, K]
    return jnp.take_along_axis(logp, states[:, :, None], axis=-1)[..., 0]


def make_task(key: jax.Array, cfg: TaskConfig) -> Task:
    """Draws the graph and conditional probability tables of a language.

    Args:
      key: PRNG key (e.g. ``jax.random.key(cfg.seed)``).
      cfg: the task config.

    Returns:
      The observational :class:`Task`.
    """
    k_graph, k_bias, k_emb = jax.random.split(key, 3)
    d, K = cfg.n_latents, cfg.n_values
    adj = make_graph(k_graph, cfg.graph, d)
    bias = jax.random.normal(k_bias, (d * K,)).reshape(d, K)
    emb = jax.random.normal(k_emb, (d * d * K * K,)).reshape(d, d, K, K)
    log_cond = _log_cond(cfg, adj, bias, emb)
    return Task(cfg=cfg, adj=adj, bias=bias, emb=emb, log_cond=log_cond,
                log_prior=log_cond.sum(-1))


def intervene(task: Task, intervention: DoIntervention) -> Task:
    """The task under ``do(z_i = v_i)``: intervened mechanisms replaced by point masses.

    Jit- and vmap-able in ``intervention``. The result's :func:`bayes_logprobs` is the exact
    predictor *under the intervention* (it knows the intervention).
    """
    states = jnp.asarray(joint_states(task.cfg))
    mask = jnp.asarray(intervention.mask, bool)
    hit = jnp.where(states == jnp.asarray(intervention.value)[None], 0.0, -jnp.inf)
    log_prior = jnp.where(mask[None], hit, task.log_cond).sum(-1)
    return dataclasses.replace(task, log_prior=log_prior)


def independent(task: Task) -> Task:
    """The task with its prior replaced by the product of its marginals (same marginals, no
    dependence between latents): its :func:`bayes_logprobs` pools each variable's own reports
    but ignores the causal graph, a baseline for how much the graph matters."""
    marg = prior_marginals(task)  # [d, K]
    states = jnp.asarray(joint_states(task.cfg))
    logm = jnp.log(marg)[jnp.arange(task.cfg.n_latents)[None], states]  # [S, d]
    return dataclasses.replace(task, log_prior=logm.sum(-1))


def prior_marginals(task: Task) -> jax.Array:
    """``[d, K]`` marginals ``p(z_i = k)`` under the task's (possibly intervened) prior."""
    p = jnp.exp(task.log_prior)
    return jnp.einsum("s,sik->ik", p, _onehot_states(task.cfg))


def _onehot_states(cfg: TaskConfig) -> jax.Array:
    return jax.nn.one_hot(jnp.asarray(joint_states(cfg)), cfg.n_values)  # [S, d, K]


# --------------------------------------------------------------------------- sampling


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("tokens", "targets", "latents", "value_mask", "posterior"),
                   meta_fields=())
@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch of sequences.

    Attributes:
      tokens: ``[B, T] int32`` model input.
      targets: ``[B, T] int32`` next tokens.
      latents: ``[B, d] int32`` true latent values (``None`` for text).
      value_mask: ``[B, T] bool`` positions whose target is a value token (``None`` for text).
      posterior: ``[B, T, d, K]`` exact ``p(z_i = k | tokens[:t+1])`` (only when asked for).
    """

    tokens: jax.Array
    targets: jax.Array
    latents: jax.Array | None = None
    value_mask: jax.Array | None = None
    posterior: jax.Array | None = None


def _sample_one(task: Task, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = task.cfg
    n, d, K = cfg.n_pairs, cfg.n_latents, cfg.n_values
    k_z, k_cue, k_flip, k_rand = jax.random.split(key, 4)
    s = jax.random.categorical(k_z, task.log_prior)
    z = jnp.asarray(joint_states(cfg))[s]  # [d]
    cues = jax.random.randint(k_cue, (n,), 0, d)
    flip = jax.random.uniform(k_flip, (n,)) < cfg.noise
    values = jnp.where(flip, jax.random.randint(k_rand, (n,), 0, K), z[cues])
    pairs = jnp.stack([cue_token(cfg, cues), value_token(cfg, cues, values)], -1).reshape(2 * n)
    seq = jnp.concatenate([jnp.array([BOS]), pairs]).astype(jnp.int32)
    return seq, z


def sample(task: Task, key: jax.Array, batch_size: int,
           intervention: DoIntervention | None = None, *, with_posterior: bool = False
           ) -> Batch:
    """Samples ``batch_size`` sequences (jit-able; ``batch_size``/``with_posterior`` static).

    Args:
      task: the language.
      key: PRNG key.
      batch_size: ``B``.
      intervention: sample from ``do(...)`` instead (see :func:`do`, :func:`intervene`).
      with_posterior: also compute the exact per-position posterior marginals.

    Returns:
      :class:`Batch` with ``tokens``/``targets`` ``[B, 2 * n_pairs]``, ``latents [B, d]``.
    """
    if intervention is not None:
        task = intervene(task, intervention)
    seq, z = jax.vmap(lambda k: _sample_one(task, k))(jax.random.split(key, batch_size))
    tokens, targets = seq[:, :-1], seq[:, 1:]
    value_mask = jnp.broadcast_to(jnp.arange(tokens.shape[1]) % 2 == 1, tokens.shape)
    post = posterior_marginals(task, tokens) if with_posterior else None
    return Batch(tokens=tokens, targets=targets, latents=z.astype(jnp.int32),
                 value_mask=value_mask, posterior=post)


# --------------------------------------------------------------------------- exact Bayes


# ``sample`` compiled once per batch size (the task's tables are traced arguments, so a new
# task reuses the program; use this instead of jitting a closure over a task).
sample_jit = jax.jit(sample, static_argnames=("batch_size", "with_posterior"))


def _check_tokens(cfg: TaskConfig, tokens) -> jax.Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] % 2 or tokens.shape[1] > cfg.seq_len:
        raise ValueError(f"tokens must be [B, T] with even T <= {cfg.seq_len}, "
                         f"got shape {tokens.shape}")
    return tokens


def _pair_loglik(cfg: TaskConfig, cues: jax.Array, values: jax.Array) -> jax.Array:
    """``[..., S]`` log p(value | z_state, cue) for every joint state."""
    states = jnp.asarray(joint_states(cfg))  # [S, d]
    shown = states[:, cues]  # [S, ...]
    shown = jnp.moveaxis(shown, 0, -1)
    hit = shown == values[..., None]
    K = cfg.n_values
    return jnp.log(jnp.where(hit, 1.0 - cfg.noise + cfg.noise / K, cfg.noise / K))


def _log_posteriors(task: Task, tokens: jax.Array, n_obs: int) -> jax.Array:
    """``[B, n_obs + 1, S]`` log p(z | first m pairs) for m = 0..n_obs (pairs read from
    ``tokens``: cue of pair p at ``2p + 1``, value at ``2p + 2``)."""
    cfg = task.cfg
    cues = tokens[:, 1:2 * n_obs:2] - 1  # [B, n_obs]
    values = token_value(cfg, tokens[:, 2:2 * n_obs + 1:2])
    ll = _pair_loglik(cfg, cues, values)  # [B, n_obs, S]
    cum = jnp.concatenate([jnp.zeros_like(ll[:, :1]), jnp.cumsum(ll, axis=1)], axis=1)
    return jax.nn.log_softmax(task.log_prior[None, None] + cum, axis=-1)


def bayes_logprobs(task: Task, tokens: jax.Array) -> jax.Array:
    """Exact Bayes-optimal next-token log-probabilities.

    Args:
      task: the language (intervened or not: the predictor uses ``task.log_prior``).
      tokens: ``[B, T] int32`` model input in this task's format (``T`` even).

    Returns:
      ``[B, T, V]`` ``log p(tokens[t+1] = v | tokens[:t+1])``.
    """
    cfg = task.cfg
    tokens = _check_tokens(cfg, tokens)
    B, T = tokens.shape
    n = T // 2
    d, K, V = cfg.n_latents, cfg.n_values, cfg.vocab_size
    logpost = _log_posteriors(task, tokens, n - 1)  # [B, n, S]: before pair p's value
    marg = jnp.einsum("bps,sik->bpik", jnp.exp(logpost), _onehot_states(cfg))  # [B, n, d, K]
    cues = tokens[:, 1::2] - 1  # [B, n]
    pz = jnp.take_along_axis(marg, cues[:, :, None, None], axis=2)[:, :, 0]  # [B, n, K]
    p_val = (1.0 - cfg.noise) * pz + cfg.noise / K
    ids = value_token(cfg, cues[..., None], jnp.arange(K))  # [B, n, K]
    val_lp = jnp.full((B, n, V), -jnp.inf).at[
        jnp.arange(B)[:, None, None], jnp.arange(n)[None, :, None], ids].set(jnp.log(p_val))
    cue_lp = jnp.concatenate([jnp.full((1,), -jnp.inf), jnp.full((d,), -math.log(d)),
                              jnp.full((cfg.n_value_tokens,), -jnp.inf)])
    cue_lp = jnp.broadcast_to(cue_lp, (B, n, V))
    return jnp.stack([cue_lp, val_lp], axis=2).reshape(B, T, V)


def token_nll(logprobs: jax.Array, targets: jax.Array) -> jax.Array:
    """``[B, T]`` ``-log p(targets)`` from ``[B, T, V]`` log-probabilities."""
    return -jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]


def bayes_loss(task: Task, *, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    """``[B, T]`` per-position loss (nats) of the exact Bayes-optimal predictor."""
    return token_nll(bayes_logprobs(task, tokens), jnp.asarray(targets))


def posterior_marginals(task: Task, tokens: jax.Array) -> jax.Array:
    """``[B, T, d, K]`` exact ``p(z_i = k | tokens[:t+1])`` (what position ``t`` can know).

    Position ``0`` (BOS) and the cue of pair ``p`` hold the posterior given pairs ``< p``;
    the value of pair ``p`` the posterior given pairs ``<= p``.
    """
    cfg = task.cfg
    tokens = _check_tokens(cfg, tokens)
    n = tokens.shape[1] // 2
    logpost = _log_posteriors(task, tokens, n - 1)  # [B, n, S]
    marg = jnp.einsum("bms,sik->bmik", jnp.exp(logpost), _onehot_states(cfg))
    # position 2p (BOS / value of pair p-1) and 2p+1 (cue of pair p) both know p pairs
    return jnp.repeat(marg, 2, axis=1)


# --------------------------------------------------------------------------- baselines


def baseline_losses(task: Task) -> dict[str, float]:
    """Exact expected losses (nats/token) of predictors that ignore the latents.

    Returns:
      ``unigram_value``: a context-free predictor on value positions (entropy of the value
      marginal); ``cue_only_value``: a predictor that sees only the current cue (entropy of
      ``p(value | cue)``, averaged over cues); ``cue``: loss on cue positions (``log d``, also
      Bayes-optimal there); ``unigram_all``: a context-free predictor over all positions (the
      entropy of the token marginal); ``cue_only_all``: position-aware, cue-only predictor
      averaged over all positions.
    """
    cfg = task.cfg
    d, K, eps = cfg.n_latents, cfg.n_values, cfg.noise
    pv = (1 - eps) * np.asarray(prior_marginals(task), np.float64) + eps / K  # [d, K]
    ent = lambda p: float(-(p * np.log(np.where(p > 0, p, 1.0))).sum(-1).mean())  # noqa: E731
    # marginal distribution of the value token at a value position
    q = pv.mean(0) if cfg.value_vocab == "shared" else pv.reshape(-1) / d
    unigram_value = ent(q)
    cue_only = ent(pv)
    tok = np.concatenate([np.full(d, 0.5 / d), 0.5 * q])
    return {"unigram_value": unigram_value, "cue_only_value": cue_only, "cue": math.log(d),
            "unigram_all": ent(tok), "cue_only_all": 0.5 * (cue_only + math.log(d))}


def unigram_loss(task: Task, *, positions: str = "value") -> float:
    """Exact loss (nats/token) of the best context-free predictor on ``"value"`` positions or
    on ``"all"`` positions (see :func:`baseline_losses`)."""
    if positions not in ("value", "all"):
        raise ValueError(f"positions must be 'value' or 'all', got {positions!r}")
    return baseline_losses(task)[f"unigram_{positions}"]


def expected_bayes_loss(task: Task, key: jax.Array, n_sequences: int = 4096,
                        chunk: int = 512, predictor: Task | None = None) -> dict[str, float]:
    """Monte-Carlo estimate of the Bayes-optimal loss (exact per sequence, averaged over
    ``n_sequences`` sequences sampled from ``task``): mean and standard error on value
    positions (``value``, ``value_se``) and on all positions (``all``, ``all_se``).

    ``predictor``: score the exact predictor of another prior instead (e.g.
    :func:`independent`), still on sequences from ``task``.
    """
    pred = task if predictor is None else predictor
    vals, alls = [], []
    for k in jax.random.split(key, max(1, n_sequences // chunk)):
        v, a = _bayes_batch(task, pred, k, chunk)
        vals.append(np.asarray(v))
        alls.append(np.asarray(a))
    v, a = np.concatenate(vals), np.concatenate(alls)
    return {"value": float(v.mean()), "value_se": float(v.std() / math.sqrt(len(v))),
            "all": float(a.mean()), "all_se": float(a.std() / math.sqrt(len(a)))}


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _bayes_batch(task: Task, predictor: Task, key: jax.Array, batch_size: int):
    """Per-sequence Bayes losses of one batch (tasks traced: compiled once per shape)."""
    b = sample(task, key, batch_size)
    nll = bayes_loss(predictor, tokens=b.tokens, targets=b.targets)
    return nll[:, 1::2].mean(1), nll.mean(1)


# --------------------------------------------------------------------------- text corpus


@functools.partial(jax.tree_util.register_dataclass, data_fields=("data",),
                   meta_fields=("vocab",))
@dataclasses.dataclass(frozen=True)
class CharCorpus:
    """A character-level corpus (a pytree: ``data`` on device, ``vocab`` static).

    Attributes:
      data: ``[N] int32`` the text as token ids.
      vocab: the sorted distinct characters; token id ``i`` is ``vocab[i]``.
    """

    data: jax.Array
    vocab: str

    @classmethod
    def from_text(cls, text: str) -> CharCorpus:
        if len(text) < 2:
            raise ValueError("CharCorpus: the text needs at least 2 characters")
        vocab = "".join(sorted(set(text)))
        lut = {c: i for i, c in enumerate(vocab)}
        return cls(data=jnp.asarray(np.fromiter((lut[c] for c in text), np.int32, len(text))),
                   vocab=vocab)

    @classmethod
    def from_file(cls, path: str | os.PathLike, encoding: str = "utf-8") -> CharCorpus:
        """Reads a local text file."""
        with open(path, encoding=encoding) as f:
            return cls.from_text(f.read())

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        lut = {c: i for i, c in enumerate(self.vocab)}
        return np.asarray([lut[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))

    def split(self, fraction: float = 0.9) -> tuple[CharCorpus, CharCorpus]:
        """Head/tail split (train, held-out) with the same vocabulary."""
        n = int(self.data.shape[0] * fraction)
        return (dataclasses.replace(self, data=self.data[:n]),
                dataclasses.replace(self, data=self.data[n:]))


def sample_text(corpus: CharCorpus, key: jax.Array, batch_size: int, seq_len: int) -> Batch:
    """Random windows: ``tokens``/``targets`` ``[B, seq_len]`` (targets shifted by one)."""
    n = corpus.data.shape[0]
    if n < seq_len + 1:
        raise ValueError(f"sample_text: corpus of {n} tokens is shorter than seq_len + 1 = "
                         f"{seq_len + 1}")
    start = jax.random.randint(key, (batch_size,), 0, n - seq_len)
    idx = start[:, None] + jnp.arange(seq_len + 1)[None]
    seq = corpus.data[idx]
    return Batch(tokens=seq[:, :-1], targets=seq[:, 1:])


def unigram_text_loss(corpus: CharCorpus) -> float:
    """Entropy (nats) of the corpus' character frequencies: a context-free predictor's loss."""
    counts = np.bincount(np.asarray(corpus.data), minlength=corpus.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
