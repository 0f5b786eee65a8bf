"""Training a :class:`~jaxcrl.lm.HookedTransformer` on a latent-SCM language or a text file.

One pure step ``train_step(state, key) -> (state, metrics)`` samples its own batch on device
from the step key (no host data loop), computes the next-token cross-entropy and applies
AdamW (linear warmup, cosine decay, global-norm clipping; :func:`jaxcrl.train.build_optimizer`).
It runs through the one driver, :func:`jaxcrl.train.drive`, in ``lax.scan`` chunks; between
chunks its callbacks stop on a NaN/inf loss, evaluate on a fixed held-out set (model loss vs
the exact Bayes-optimal loss of the same sequences and positions), save checkpoints
(``kind="lm"``) with :class:`jaxcrl.checkpoint.CheckpointManager` and update the progress
bar. ``train(cfg, workdir)`` resumes from the latest checkpoint in ``workdir`` and continues
the very same run (same key stream, same schedule), bit-identically; it refuses a checkpoint
of another config (:class:`jaxcrl.train.ConfigMismatchError`, naming the fields).

The module is ``jaxcrl.lm.training``; ``from jaxcrl.lm import train`` gives the function.

Keys: ``root = key(cfg.seed)``; ``init, train, eval = split(root, 3)``; step ``t`` uses
``fold_in(train, t)`` (done by the loop). The language itself is drawn from
``key(cfg.task.seed)`` so the same language can be trained on with different seeds.

Example::

    cfg = LMTrainConfig.default(steps=2000)
    res = train(cfg, workdir="runs/lm")
    res.history["eval_value_loss"][-1], res.bayes["value"]
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcrl.checkpoint import CheckpointManager, register_config
from jaxcrl.lm.config import TransformerConfig
from jaxcrl.lm.model import HookedTransformer, count_params
from jaxcrl.scm.language import (
    Batch,
    CharCorpus,
    Task,
    TaskConfig,
    baseline_losses,
    bayes_loss,
    expected_bayes_loss,
    independent,
    make_task,
    sample,
    sample_text,
    unigram_text_loss,
)
from jaxcrl.train import driver
from jaxcrl.train.mesh import constrain_batch, place_state, resolve_mesh
from jaxcrl.train.optim import build_optimizer

# --------------------------------------------------------------------------- config


@register_config
@dataclasses.dataclass(frozen=True)
class LMTrainConfig:
    """Everything that defines a language-model training run.

    Attributes:
      model: the transformer (``vocab_size``/``n_ctx`` must fit the data); default for a
        task: 2 layers, width 64, 4 heads, sized to the task's vocabulary and context.
      task: the latent-SCM language (ignored when ``corpus`` is set).
      corpus: path of a local text file: train a character-level model on it instead.
      seq_len: context for ``corpus`` windows (default ``model.n_ctx``).
      steps: optimizer steps.
      batch_size: sequences per step.
      lr: peak learning rate.
      warmup: linear warmup steps (from 0).
      end_lr_frac: final learning rate as a fraction of ``lr`` (cosine decay).
      weight_decay: AdamW decoupled weight decay (matrices only, not biases/LayerNorm).
      clip: global gradient-norm clip.
      b2: Adam second-moment decay.
      eval_every: steps between evaluations (also the scan chunk size, with ``save_every``).
      eval_batch: held-out sequences per evaluation.
      save_every: steps between checkpoints (default ``eval_every``); a final one is always
        written when training with a workdir.
      keep_last: checkpoints kept.
      seed: root seed of the run (init, batches, eval set).
    """

    model: TransformerConfig | None = None
    task: TaskConfig = TaskConfig()
    corpus: str | None = None
    seq_len: int | None = None
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    end_lr_frac: float = 0.05
    weight_decay: float = 0.01
    clip: float = 1.0
    b2: float = 0.99
    eval_every: int = 250
    eval_batch: int = 1024
    save_every: int | None = None
    keep_last: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model is None:
            if self.corpus is not None:
                raise ValueError("LMTrainConfig: give a model config for a corpus run "
                                 "(or use LMTrainConfig.for_corpus)")
            object.__setattr__(self, "model", TransformerConfig(
                vocab_size=self.task.vocab_size, n_ctx=self.task.seq_len, d_model=64,
                n_layers=2, n_heads=4))
        for name in ("steps", "batch_size", "eval_every", "eval_batch", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"LMTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.lr <= 0 or self.clip <= 0:
            raise ValueError("LMTrainConfig: need warmup >= 0, lr > 0, clip > 0")
        if self.save_every is not None and self.save_every < 1:
            raise ValueError(f"LMTrainConfig.save_every must be >= 1, got {self.save_every}")
        if self.corpus is None:
            if self.model.vocab_size != self.task.vocab_size:
                raise ValueError(f"LMTrainConfig: model.vocab_size={self.model.vocab_size} but "
                                 f"the task has {self.task.vocab_size} tokens")
            if self.model.n_ctx < self.task.seq_len:
                raise ValueError(f"LMTrainConfig: model.n_ctx={self.model.n_ctx} < task "
                                 f"sequence length {self.task.seq_len}")
        elif self.context > self.model.n_ctx:
            raise ValueError(f"LMTrainConfig: seq_len={self.seq_len} > model.n_ctx="
                             f"{self.model.n_ctx}")

    @property
    def context(self) -> int:
        """Tokens per training sequence ``T``."""
        if self.corpus is None:
            return self.task.seq_len
        return self.seq_len or self.model.n_ctx

    @property
    def checkpoint_every(self) -> int:
        return self.save_every or self.eval_every

    @classmethod
    def for_task(cls, task: TaskConfig, *, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4, **override) -> LMTrainConfig:
        """A run on ``task`` with a model sized to its vocabulary and context."""
        model = TransformerConfig(vocab_size=task.vocab_size, n_ctx=task.seq_len,
                                  d_model=d_model, n_layers=n_layers, n_heads=n_heads)
        return cls(**{"model": model, "task": task, **override})

    @classmethod
    def default(cls, **override) -> LMTrainConfig:
        """The default run of ``experiments/train_lm.py`` (default task, 2 layers, width 64)."""
        return cls.for_task(TaskConfig(), **override)

    @classmethod
    def tiny(cls, **override) -> LMTrainConfig:
        """For tests: tiny task, 1 layer of width 32, few steps."""
        task = override.pop("task", TaskConfig.tiny())
        return cls.for_task(task, **{"d_model": 32, "n_layers": 1, "n_heads": 2, "steps": 60,
                                     "batch_size": 32, "warmup": 10, "eval_every": 20,
                                     "eval_batch": 256, **override})

    @classmethod
    def for_corpus(cls, path: str | os.PathLike, *, seq_len: int = 64, d_model: int = 128,
                   n_layers: int = 2, n_heads: int = 4, **override) -> LMTrainConfig:
        """A character-level run on a local text file (vocabulary read from the file)."""
        vocab = CharCorpus.from_file(path).vocab_size
        model = TransformerConfig(vocab_size=vocab, n_ctx=seq_len, d_model=d_model,
                                  n_layers=n_layers, n_heads=n_heads)
        return cls(**{"model": model, "corpus": str(path), "seq_len": seq_len, **override})

    def with_task(self, task: TaskConfig) -> LMTrainConfig:
        """This run on the language ``task``, its model resized to the task's vocabulary
        and context (every other model setting kept)."""
        model = dataclasses.replace(self.model, vocab_size=task.vocab_size, n_ctx=task.seq_len)
        return dataclasses.replace(self, task=task, model=model, corpus=None, seq_len=None)


class TrainState(NamedTuple):
    """Params, optimizer state and the number of steps taken (a pytree)."""

    params: Any
    opt_state: Any
    step: jax.Array


# --------------------------------------------------------------------------- pieces


def cross_entropy(*, logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position next-token loss (nats).

    Args:
      logits: ``[B, T, V]`` float.
      targets: ``[B, T]`` int.

    Returns:
      ``[B, T]`` ``-log softmax(logits)[targets]``.
    """
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"cross_entropy: logits [B, T, V] and targets [B, T] expected, got "
                         f"{logits.shape} and {targets.shape}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"cross_entropy: targets must be int, got {targets.dtype}")
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``x`` over ``mask`` (all entries when ``mask`` is None)."""
    if mask is None:
        return x.mean()
    mask = mask.astype(x.dtype)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def schedule(cfg: LMTrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup`` steps, then cosine to ``end_lr_frac*lr``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup,
        decay_steps=max(cfg.steps, cfg.warmup + 1), end_value=cfg.lr * cfg.end_lr_frac)


def optimizer(cfg: LMTrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping + AdamW (weight decay on parameters with >= 2 dims only)."""
    decay_mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)  # noqa: E731
    return build_optimizer(learning_rate=schedule(cfg), b1=0.9, b2=cfg.b2, clip=cfg.clip,
                           weight_decay=cfg.weight_decay, decay_mask=decay_mask)


def make_source(cfg: LMTrainConfig) -> tuple[Task | CharCorpus, Task | CharCorpus]:
    """The training data source and its held-out counterpart: the task (twice: fresh samples
    are held out), or the text corpus split 90/10."""
    if cfg.corpus is None:
        task = make_task(jax.random.key(cfg.task.seed), cfg.task)
        return task, task
    corpus = CharCorpus.from_file(cfg.corpus)
    if corpus.vocab_size != cfg.model.vocab_size:
        raise ValueError(f"{cfg.corpus}: {corpus.vocab_size} distinct characters but "
                         f"model.vocab_size={cfg.model.vocab_size}")
    return corpus.split(0.9)


def draw(source: Task | CharCorpus, key: jax.Array, batch_size: int, seq_len: int) -> Batch:
    """A batch from a task or a corpus (jit-able; sizes static)."""
    if isinstance(source, Task):
        return sample(source, key, batch_size)
    return sample_text(source, key, batch_size, seq_len)


def init_state(cfg: LMTrainConfig, key: jax.Array) -> TrainState:
    """Fresh parameters and optimizer state."""
    params = HookedTransformer(cfg.model).init(key)
    return TrainState(params, optimizer(cfg).init(params), jnp.zeros((), jnp.int32))


def make_train_step(cfg: LMTrainConfig, source: Task | CharCorpus, mesh: Any = None):
    """The pure ``train_step(state, key) -> (state, metrics)`` of a run.

    With a ``mesh`` (:mod:`jaxcrl.train.mesh`) the batch drawn on device is split over its
    ``"data"`` axis (data parallelism: XLA all-reduces the gradients); parameters follow the
    placement of the state (:func:`jaxcrl.train.mesh.place_state`).

    Metrics: ``loss`` (all positions: the objective), ``value_loss`` (value positions, tasks
    only), ``grad_norm`` (before clipping), ``lr``.
    """
    model = HookedTransformer(cfg.model)
    tx = optimizer(cfg)
    lr_fn = schedule(cfg)

    def train_step(state: TrainState, key: jax.Array) -> tuple[TrainState, dict]:
        batch = constrain_batch(draw(source, key, cfg.batch_size, cfg.context), mesh)

        def loss_fn(params):
            nll = cross_entropy(logits=model.apply(params, batch.tokens), targets=batch.targets)
            return nll.mean(), nll

        (loss, nll), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_fn(state.step)}
        if batch.value_mask is not None:
            metrics["value_loss"] = masked_mean(nll, batch.value_mask)
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def make_eval_fn(cfg: LMTrainConfig, heldout: Task | CharCorpus, key: jax.Array):
    """``eval_fn(params) -> metrics`` on a fixed held-out batch, and that batch's reference
    losses (tasks: ``bayes_*`` the exact Bayes-optimal loss on the same sequences, and
    ``graph_blind_*`` that of the exact predictor that ignores the dependence between latents,
    see :func:`jaxcrl.scm.language.independent`)."""
    if cfg.eval_batch > 256 and cfg.eval_batch % 256:
        raise ValueError(f"eval_batch must be <= 256 or a multiple of 256, got {cfg.eval_batch}")
    model = HookedTransformer(cfg.model)
    batch = jax.jit(lambda k: draw(heldout, k, cfg.eval_batch, cfg.context))(key)
    ref: dict[str, float] = {}
    if isinstance(heldout, Task):
        nll = bayes_loss(heldout, tokens=batch.tokens, targets=batch.targets)
        blind = bayes_loss(independent(heldout), tokens=batch.tokens, targets=batch.targets)
        ref = {"bayes_loss": float(nll.mean()),
               "bayes_value_loss": float(masked_mean(nll, batch.value_mask)),
               "graph_blind_loss": float(blind.mean()),
               "graph_blind_value_loss": float(masked_mean(blind, batch.value_mask))}

    @jax.jit
    def eval_fn(params):
        nll = jax.lax.map(lambda tt: cross_entropy(logits=model.apply(params, tt[0]),
                                                   targets=tt[1]),
                          (batch.tokens.reshape(-1, min(256, cfg.eval_batch), cfg.context),
                           batch.targets.reshape(-1, min(256, cfg.eval_batch), cfg.context)))
        nll = nll.reshape(batch.tokens.shape)
        out = {"eval_loss": nll.mean()}
        if batch.value_mask is not None:
            out["eval_value_loss"] = masked_mean(nll, batch.value_mask)
        return out

    return eval_fn, ref


# --------------------------------------------------------------------------- train


@dataclasses.dataclass
class LMTrainResult:
    """What :func:`train` returns.

    Attributes:
      config: the run's config.
      model: the :class:`HookedTransformer`.
      state: final :class:`TrainState` (``state.params`` for the model).
      source: the task (or training corpus).
      history: per-step ``loss``/``value_loss``/``grad_norm``/``lr`` ``[n]`` for the steps run
        in this call (from ``start_step``), and per-evaluation ``eval_step``, ``eval_loss``,
        ``eval_value_loss`` ``[n_evals]``.
      reference: ``bayes_loss``/``bayes_value_loss`` of the held-out set (tasks), and
        ``unigram_*``/``cue_only_*`` exact baselines.
      start_step: step the run (re)started from.
      wall_s: wall time of the loop; ``tokens_per_s``: training throughput excluding the
        first (compiling) chunk and evaluations.
    """

    config: LMTrainConfig
    model: HookedTransformer
    state: TrainState
    source: Any
    history: dict
    reference: dict
    start_step: int
    wall_s: float
    tokens_per_s: float

    @property
    def params(self):
        return self.state.params


def train(cfg: LMTrainConfig, workdir: str | os.PathLike | None = None, *, resume: bool = True,
          stop_at: int | None = None, progress: bool | Sequence[str] = True,
          mesh: Any = None) -> LMTrainResult:
    """Trains (or resumes) a run.

    Args:
      cfg: the run.
      workdir: checkpoint directory (``workdir/step_*``, kind ``"lm"``); None: no checkpoints.
      resume: continue from the latest checkpoint in ``workdir`` if there is one.
      stop_at: stop at this global step (as if preempted; the schedule still spans
        ``cfg.steps``), saving a checkpoint there.
      progress: progress bar: True (loss, held-out loss), False, or the metric names.
      mesh: None (default): all local devices
        (:func:`jaxcrl.train.mesh.runs_mesh` of ``cfg.batch_size``; all 8 cores of a
        Colab TPU; nothing changes on one device); a
        ``("data", "model")`` mesh (:func:`jaxcrl.train.mesh.make_mesh`): batch over
        ``"data"``, parameters and Adam moments FSDP-style over ``"model"``; False: one
        device. The run is the same run on any mesh (same keys and batches; float
        reassociation aside), so a checkpoint resumes on another device count.

    Returns:
      :class:`LMTrainResult`.

    Raises:
      jaxcrl.train.ConfigMismatchError: ``workdir`` holds a checkpoint of another run.
      jaxcrl.train.NonFiniteError: the loss became NaN/inf (names the step; the checkpoints
        before it stay loadable).
    """
    source, heldout = make_source(cfg)
    mesh = resolve_mesh(mesh, cfg.batch_size, "batch_size")
    k_init, k_train, k_eval = jax.random.split(jax.random.key(cfg.seed), 3)
    state = init_state(cfg, k_init)
    start = 0
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    eval_fn, ref = make_eval_fn(cfg, heldout, k_eval)
    ref.update(reference_losses(source))

    def evaluate(ev: driver.Event) -> dict | None:
        if ev.step % cfg.eval_every and not ev.final:
            return None
        extra = {k: float(v) for k, v in jax.device_get(eval_fn(ev.state.params)).items()}
        if "bayes_value_loss" in ref:
            extra["eval_gap_value"] = extra["eval_value_loss"] - ref["bayes_value_loss"]
        return extra

    callbacks: list[driver.Callback] = [driver.NonFiniteGuard(("loss",)),
                                        driver.Evaluate(evaluate, every=cfg.eval_every)]
    if workdir is not None:
        mgr = CheckpointManager(workdir, kind="lm", save_every=cfg.checkpoint_every,
                                keep_last=cfg.keep_last)
        if resume:
            got = driver.restore(mgr, config=cfg, template=state, ignore=_LOGGING_FIELDS)
            if got is not None:
                state, start = got
        callbacks[0].manager = mgr
        callbacks.append(driver.Checkpoint(mgr, config=cfg))
    callbacks += driver.progress_callbacks(progress, ("loss", "eval_loss"), "lm")

    state = place_state(mesh, state)
    step_fn = make_train_step(cfg, source, mesh)
    t0 = time.perf_counter()
    out = driver.drive(step_fn, state, k_train, start_step=start, end_step=max(end, start),
                       total_steps=cfg.steps, chunk_size=cfg.eval_every, callbacks=callbacks)
    wall = time.perf_counter() - t0
    # Throughput without the first (compiling) chunk and without the callbacks.
    steps_t, secs = out.chunk_steps[1:], out.chunk_s[1:]
    if secs:
        tps = sum(steps_t) * cfg.batch_size * cfg.context / sum(secs)
    else:
        tps = max(end - start, 0) * cfg.batch_size * cfg.context / wall
    history = {**out.history, "traces": np.asarray(out.traces)}
    return LMTrainResult(config=cfg, model=HookedTransformer(cfg.model), state=out.state,
                         source=source, history=history, reference=ref, start_step=start,
                         wall_s=wall, tokens_per_s=float(tps))


# Fields that only set logging and checkpoint cadence: a run may resume with others.
_LOGGING_FIELDS = ("eval_every", "eval_batch", "save_every", "keep_last")


def reference_losses(source: Task | CharCorpus, key: jax.Array | None = None,
                     n_sequences: int = 0) -> dict[str, float]:
    """Exact baselines of a task (``unigram_value``, ``cue_only_value``, ``unigram_all``,
    ``cue_only_all``, ``cue``) or the unigram loss of a corpus; with ``n_sequences > 0`` also
    Monte-Carlo estimates of the Bayes and graph-blind (independent-latents) Bayes losses."""
    if isinstance(source, CharCorpus):
        return {"unigram_all": unigram_text_loss(source)}
    out = baseline_losses(source)
    if n_sequences > 0:
        key = jax.random.key(0) if key is None else key
        b = expected_bayes_loss(source, key, n_sequences)
        i = expected_bayes_loss(source, key, n_sequences, predictor=independent(source))
        out.update({"mc_bayes_value": b["value"], "mc_bayes_value_se": b["value_se"],
                    "mc_bayes_all": b["all"], "mc_independent_value": i["value"],
                    "mc_independent_all": i["all"]})
    return out


def load(workdir_or_path: str | os.PathLike, step: int | None = None
         ) -> tuple[HookedTransformer, Any, LMTrainConfig]:
    """Loads a trained model: ``(model, params, config)`` from a run's workdir (latest step,
    or ``step``) or from one checkpoint directory."""
    from jaxcrl import checkpoint as ckpt

    def target(cfg: LMTrainConfig):
        return jax.eval_shape(lambda: init_state(cfg, jax.random.key(0)))

    path = os.fspath(workdir_or_path)
    if os.path.exists(os.path.join(path, "manifest.json")):
        c = ckpt.load(path, kind="lm", target=target)
    else:  # a run's workdir: the newest step that verifies (or ``step``)
        c = CheckpointManager(path, kind="lm").restore(step, target=target)
    cfg = c.config
    return HookedTransformer(cfg.model), c.state.params, cfg


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul throughput (FLOP/s) of ``jit(a @ b)`` on ``[n, n]``: the peak
    that model FLOPs utilisation is quoted against (best of ``repeats``)."""
    a = jax.random.normal(jax.random.key(0), (n * n,)).reshape(n, n)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def model_flops_per_token(cfg: TransformerConfig, params: Any, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token: ``6 N`` (N = all parameters) and the attention term
    ``6 * 2 * n_layers * seq_len * d_model`` (QK^T and AV, forward+backward, causal half not
    discounted)."""
    n = count_params(params)
    attn = 12 * cfg.n_layers * seq_len * cfg.d_model
    return {"n_params": n, "six_n": 6.0 * n, "attention": float(attn)}
