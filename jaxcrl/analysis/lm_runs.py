"""The transformer a study analyses: trained from a config, or loaded from a checkpoint."""

from __future__ import annotations

from typing import Any

from jaxcrl.lm.training import LMTrainConfig, load, make_source, train

# The transformer of the studies' seconds-long runs (tests): LMTrainConfig.tiny, 150 steps.
TINY_LM = LMTrainConfig.tiny(steps=150, eval_every=150, eval_batch=128)


def trained_lm(cfg: LMTrainConfig, *, checkpoint: str | None = None, progress: bool = True
               ) -> tuple[Any, Any, Any, dict[str, Any]]:
    """A trained model on a latent-SCM language.

    Args:
      cfg: the run to train (ignored when ``checkpoint`` is given).
      checkpoint: an LM run workdir or checkpoint (``kind="lm"``) to load instead.
      progress: progress bar while training.

    Returns:
      ``(model, params, task, info)``; ``info`` records the checkpoint, or the training's
      final held-out value loss, the exact Bayes and unigram losses and the wall time.
    """
    if checkpoint:
        model, params, lm_cfg = load(checkpoint)
        task, _ = make_source(lm_cfg)
        return model, params, task, {"checkpoint": str(checkpoint)}
    r = train(cfg, progress=progress)
    info = {"final_eval_value_loss": float(r.history["eval_value_loss"][-1]),
            "bayes_value_loss": r.reference["bayes_value_loss"],
            "unigram_value_loss": r.reference["unigram_value"], "train_wall_s": r.wall_s}
    return r.model, r.params, r.source, info
