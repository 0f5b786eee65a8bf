"""Train a small transformer on a latent-SCM language and compare it with the exact Bayes loss.

Command::

    python experiments/train_lm.py --out out/train_lm

Expected runtime: about 4-5 minutes on 2 CPU cores (default: 5 latents with 3 values on a
random DAG, 16 noisy (cue, value) pairs per sequence; a 2-layer, width-64 transformer (103k
parameters); 3000 steps of 64 sequences, 6.1M tokens). Expected result: held-out loss on value
positions within about 0.01 nats/token of the exact Bayes-optimal loss (bar: 0.05), far below
the unigram and cue-only losses and below the exact predictor that pools each latent's own
reports but ignores the causal graph (so the model uses the graph); ridge probes read the
cued variable's posterior from the residual stream with R² about 0.96 after the first block.
``--set task.value_vocab=shared`` is a harder variant (values must be bound to their cue by
attention). Every setting is a field of :class:`TrainLMExperiment` (``--set path=value``;
``--steps``, ``--lr``, ... are short forms of ``lm.steps``, ``lm.lr``, ...).

Losses are reported on *value positions* (targets that reveal a latent; cue positions cost
``log d`` for every model that learned the format) and on all positions; the Bayes, unigram
and cue-only losses are computed on the same positions (Bayes on the very same held-out
sequences). With ``--corpus FILE`` it trains a character-level model on a local text file
instead (no Bayes bound or probes then).

Writes ``OUT/results.json`` (setup, losses of the transformer and of the reference
predictors, throughput and MFU, per-layer probe scores), ``OUT/ckpt`` (the checkpoint, kind
``lm``), ``OUT/loss_curve.png`` and ``OUT/probes.png``, and prints tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxcrl import plot
from jaxcrl.analysis import probes as probe
from jaxcrl.config import parse_config
from jaxcrl.lm.training import (
    LMTrainConfig,
    make_eval_fn,
    make_source,
    matmul_peak_flops,
    model_flops_per_token,
    reference_losses,
    train,
)
from jaxcrl.results import format_table, write_results
from jaxcrl.scm.language import CharCorpus, TaskConfig


@dataclasses.dataclass(frozen=True)
class TrainLMExperiment:
    """Settings of this script (set any field with ``--set path=value``).

    Attributes:
      task: the latent-SCM language (``lm.task`` is replaced by it and ``lm.model`` sized to
        it; e.g. ``--set task.value_vocab=shared`` for the harder variant).
      lm: the run: :meth:`LMTrainConfig.default` (the small default transformer, 2 layers,
        width 64) unless changed (``--set lm.model.d_model=128``).
      final_eval: held-out sequences for the final loss (paired with the Bayes loss).
      probe_train, probe_test: sequences to fit / score the per-layer probes on.
      peak_size: ``n`` of the ``n x n`` float32 matmul whose speed is the MFU reference.
    """

    task: TaskConfig = TaskConfig()
    lm: LMTrainConfig = LMTrainConfig.default()
    final_eval: int = 4096
    probe_train: int = 2048
    probe_test: int = 1024
    peak_size: int = 2048

    @classmethod
    def tiny(cls) -> TrainLMExperiment:
        """Tiny task and model (tests): ``LMTrainConfig.tiny`` with 2 layers, 8 pairs."""
        return cls(task=TaskConfig.tiny(n_pairs=8), lm=LMTrainConfig.tiny(n_layers=2))

    def lm_config(self, corpus: str | None = None, seq_len: int = 64) -> LMTrainConfig:
        """The :class:`LMTrainConfig` of the run (on ``corpus``, a text file, if given)."""
        if corpus is None:
            return self.lm.with_task(self.task)
        vocab = CharCorpus.from_file(corpus).vocab_size
        model = dataclasses.replace(self.lm.model, vocab_size=vocab, n_ctx=seq_len)
        return dataclasses.replace(self.lm, model=model, corpus=str(corpus), seq_len=seq_len)


ALIASES = {"--steps": "lm.steps", "--batch-size": "lm.batch_size", "--lr": "lm.lr",
           "--warmup": "lm.warmup", "--eval-every": "lm.eval_every", "--seed": "lm.seed",
           "--final-eval": "final_eval", "--probe-train": "probe_train",
           "--probe-test": "probe_test", "--peak-size": "peak_size"}


def parse(argv=None) -> tuple[argparse.Namespace, TrainLMExperiment]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/train_lm")
    p.add_argument("--corpus", default=None, help="train on this local text file instead")
    p.add_argument("--seq-len", type=int, default=64, help="context for --corpus")
    p.add_argument("--resume", action="store_true",
                   help="continue OUT/ckpt instead of starting afresh")
    p.add_argument("--no-progress", action="store_true")
    args, exp = parse_config(p, TrainLMExperiment(), argv, aliases=ALIASES,
                             tiny=TrainLMExperiment.tiny())
    try:
        exp.lm_config(args.corpus, args.seq_len)
    except ValueError as err:
        p.error(str(err))
    return args, exp


def plot_curves(res, ref: dict, path: Path, task_mode: bool) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    h = res.history
    key = "value_loss" if task_mode else "loss"
    y = np.asarray(h.get(key, np.zeros(0)))
    steps = res.start_step + np.arange(1, len(y) + 1)
    if len(y):
        w = max(1, len(y) // 100)
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        where = "value positions" if task_mode else "all positions"
        ax.plot(steps[w - 1:], smooth, lw=1, label=f"train ({where})")
    if "eval_step" in h:  # (absent when a resumed run had no steps left)
        ax.plot(h["eval_step"], h["eval_value_loss" if task_mode else "eval_loss"], "o-",
                ms=3, label="held-out")
    lines = ({"Bayes-optimal": ref["bayes_value_loss"], "graph-blind Bayes":
              ref["graph_blind_value_loss"], "cue only": ref["cue_only_value"]} if task_mode
             else {"unigram": ref["unigram_all"]})
    for (label, v), c in zip(lines.items(), ("k", "tab:purple", "tab:gray"), strict=False):
        ax.axhline(v, ls="--", lw=0.8, color=c, label=f"{label} {v:.3f}")
    if task_mode:  # zoom on the interesting range; the unigram loss is far above it
        low, high = ref["bayes_value_loss"], ref["cue_only_value"]
        ax.set_ylim(low - 0.2 * (high - low), high + 0.6 * (high - low))
        ax.plot([], [], " ", label=f"(unigram {ref['unigram_value']:.3f}, off scale)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("LM training on a latent-SCM language" if task_mode else "char LM")
    ax.legend(fontsize=7)
    plot.savefig(ax, path)


def plot_probes(pr: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(len(pr["layers"]))
    for key, label in (("r2_posterior", "R² posterior (all positions)"),
                       ("r2_cued", "R² cued variable's posterior"),
                       ("r2_latent_last", "R² true z (last position)"),
                       ("acc_latent_last", "accuracy true z (last)")):
        ax.plot(x, [pr[lab][key] for lab in pr["layers"]], "o-", label=label)
    ax.axhline(pr["bayes"]["acc_latent_last"], ls="--", color="tab:green", lw=0.8,
               label="Bayes accuracy (ceiling)")
    ax.axhline(pr["bayes"]["r2_latent_last"], ls="--", color="tab:orange", lw=0.8,
               label="Bayes R² z (ceiling)")
    ax.set_xticks(x, pr["layers"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("residual stream")
    ax.set_title("linear probes of the latents (held-out)")
    ax.legend(fontsize=7)
    plot.savefig(ax, path)


def main(argv=None) -> dict:
    args, exp = parse(argv)
    cfg = exp.lm_config(args.corpus, args.seq_len)
    task_mode = cfg.corpus is None
    out = Path(args.out)
    ckpt_dir = out / "ckpt"
    if ckpt_dir.exists() and not args.resume:
        shutil.rmtree(ckpt_dir)  # our own output: a fresh run unless --resume
    peak = matmul_peak_flops(exp.peak_size)
    t0 = time.perf_counter()
    res = train(cfg, ckpt_dir, progress=not args.no_progress)
    train_wall = time.perf_counter() - t0

    # Final loss on a larger held-out set, paired with the exact Bayes loss of the same
    # sequences (a fresh key: not the set monitored during training).
    n_final = exp.final_eval if exp.final_eval <= 256 else (exp.final_eval // 256) * 256
    eval_fn, ref = make_eval_fn(dataclasses.replace(cfg, eval_batch=n_final),
                                make_source(cfg)[1], jax.random.key(cfg.seed + 10_000))
    final = {k: float(v) for k, v in eval_fn(res.params).items()}
    ref.update(reference_losses(res.source))

    flops = model_flops_per_token(cfg.model, res.params, cfg.context)
    mfu = flops["six_n"] * res.tokens_per_s / peak
    mfu_attn = (flops["six_n"] + flops["attention"]) * res.tokens_per_s / peak
    row = {"final_loss": final.get("eval_value_loss", final["eval_loss"]),
           "final_loss_all": final["eval_loss"],
           "tokens_per_s": res.tokens_per_s, "mfu": mfu, "mfu_with_attention": mfu_attn,
           "n_params": flops["n_params"], "wall_s": train_wall, "train_loop_s": res.wall_s,
           "steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size * cfg.context}
    methods = {"transformer": row}
    if task_mode:
        row.update({"bayes_loss": ref["bayes_value_loss"], "bayes_loss_all": ref["bayes_loss"],
                    "gap_to_bayes": row["final_loss"] - ref["bayes_value_loss"],
                    "unigram_loss": ref["unigram_value"], "unigram_loss_all": ref["unigram_all"],
                    "cue_only_loss": ref["cue_only_value"],
                    "graph_blind_loss": ref["graph_blind_value_loss"],
                    "cue_only_loss_all": ref["cue_only_all"]})
        methods["bayes_optimal"] = {"final_loss": ref["bayes_value_loss"],
                                    "final_loss_all": ref["bayes_loss"]}
        methods["graph_blind_bayes"] = {"final_loss": ref["graph_blind_value_loss"],
                                        "final_loss_all": ref["graph_blind_loss"]}
        methods["cue_only"] = {"final_loss": ref["cue_only_value"],
                               "final_loss_all": ref["cue_only_all"]}
        methods["unigram"] = {"final_loss": ref["unigram_value"],
                              "final_loss_all": ref["unigram_all"]}
    else:
        row["unigram_loss"] = ref["unigram_all"]
        methods["unigram"] = {"final_loss": ref["unigram_all"], "final_loss_all":
                              ref["unigram_all"]}

    probes = None
    if task_mode:
        probes = probe.probe_latents(res.model, res.params, res.source,
                                     jax.random.key(cfg.seed + 30_000),
                                     n_train=exp.probe_train, n_test=exp.probe_test)
    out.mkdir(parents=True, exist_ok=True)
    if probes is not None:
        plot_probes(probes, out / "probes.png")
    plot_curves(res, ref, out / "loss_curve.png", task_mode)
    command = " ".join(argv if argv is not None else sys.argv[1:])
    setup = {"config": cfg, "experiment": exp,
             "command": "python experiments/train_lm.py " + command,
             "loss_positions": "value positions (final_loss); all positions (*_all)"
             if task_mode else "all positions", "device": str(jax.devices()[0]),
             "matmul_peak_flops": peak, "flops_per_token_6n": flops["six_n"],
             "reference": ref}
    # The headline figures also sit at the top level, where the contract puts them.
    headline = {k: row[k] for k in ("final_loss", "unigram_loss", "bayes_loss", "tokens_per_s")
                if k in row}
    write_results(out, setup, methods, probes=probes, **headline,
                  history={k: np.asarray(v).tolist() for k, v in res.history.items()
                           if k.startswith("eval_")})
    print(format_table(methods, ["final_loss", "final_loss_all"]))
    print(f"tokens/s {res.tokens_per_s:,.0f}  MFU {mfu:.1%} of {peak / 1e9:.1f} GFLOP/s "
          f"(6N; {mfu_attn:.1%} with attention)  wall {train_wall:.0f}s")
    if probes is not None:
        print(probe.format_probe_table(probes))
    return {"methods": methods, "probes": probes}


if __name__ == "__main__":
    main()
