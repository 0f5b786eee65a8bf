"""LM training: exact resume, char corpus, and the experiment end to end (learning, probes)."""

import json
import runpy
import sys

import jax
import numpy as np
import pytest

from jaxcrl.lm.training import LMTrainConfig, cross_entropy, load, train
from jaxcrl.scm.language import TaskConfig
from jaxcrl.train import ConfigMismatchError

CFG = LMTrainConfig.tiny(steps=40, eval_every=10, save_every=20)


@pytest.fixture(scope="module")
def full_run():
    return train(CFG, progress=False)


def test_resume_continues_the_same_loss_curve(full_run, tmp_path):
    """Stopped at step 25 (between evaluations, after the checkpoint at 20) and resumed:
    bit-identical losses and parameters, one compiled chunk per call although the chunks
    are 10, 10, 5 and then 5, 10."""
    part = train(CFG, tmp_path, stop_at=25, progress=False)
    assert part.start_step == 0 and len(part.history["loss"]) == 25
    rest = train(CFG, tmp_path, progress=False)
    assert rest.start_step == 25 and len(rest.history["loss"]) == 15
    np.testing.assert_array_equal(part.history["loss"], full_run.history["loss"][:25])
    np.testing.assert_array_equal(rest.history["loss"], full_run.history["loss"][25:])
    for a, b in zip(jax.tree_util.tree_leaves(rest.state),
                    jax.tree_util.tree_leaves(full_run.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(rest.state.step) == 40
    assert int(part.history["traces"]) == 1 and int(rest.history["traces"]) == 1
    np.testing.assert_array_equal(rest.history["eval_step"], [30, 40])
    # the finished run's workdir loads as a model
    model, params, cfg = load(tmp_path)
    assert cfg == CFG
    tok = jax.numpy.zeros((2, CFG.context), jax.numpy.int32)
    np.testing.assert_allclose(model.apply(params, tok), rest.model.apply(rest.params, tok),
                               atol=1e-6)
    with pytest.raises(ConfigMismatchError, match=r"differs in \['lr'\] \(lr: 0.003 "
                                                  r"\(checkpoint\) vs 0.01"):
        train(LMTrainConfig.tiny(steps=40, eval_every=10, lr=1e-2), tmp_path, progress=False)
    with pytest.raises(ConfigMismatchError, match=r"model.d_model"):
        train(LMTrainConfig.tiny(steps=40, eval_every=10, d_model=16), tmp_path,
              progress=False)


def test_history_and_reference(full_run):
    h = full_run.history
    assert set(h) >= {"loss", "value_loss", "grad_norm", "lr", "eval_step", "eval_loss",
                      "eval_value_loss", "eval_gap_value"}
    np.testing.assert_array_equal(h["eval_step"], [10, 20, 30, 40])
    ref = full_run.reference
    assert ref["bayes_value_loss"] < ref["cue_only_value"] < ref["unigram_value"] + 1e-9
    assert full_run.tokens_per_s > 0
    assert h["lr"][0] == 0.0 and h["lr"].max() <= CFG.lr + 1e-9


def test_char_corpus_run(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcabcabd " * 300)
    cfg = LMTrainConfig.for_corpus(path, seq_len=16, d_model=32, n_layers=1, n_heads=2,
                                   steps=60, batch_size=16, lr=1e-2, warmup=5, eval_every=60,
                                   eval_batch=64)
    res = train(cfg, progress=False)
    assert res.history["eval_loss"][-1] < res.reference["unigram_all"] - 0.4


def test_cross_entropy_checks_shapes():
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(logits=np.zeros((2, 3)), targets=np.zeros((2, 3), int))


def test_config_validation():
    with pytest.raises(ValueError, match="vocab_size"):
        LMTrainConfig(model=LMTrainConfig().model, task=TaskConfig(n_values=4))
    assert LMTrainConfig(task=TaskConfig(n_values=4)).model.vocab_size == 1 + 5 + 20
    with pytest.raises(ValueError, match="steps"):
        LMTrainConfig.tiny(steps=0)


def test_train_lm_experiment_learns_and_writes_results(tmp_path, monkeypatch):
    """End to end at a tiny size: the loss falls well below unigram and cue-only and near
    the exact Bayes loss; the probes find the posterior in the residual stream."""
    out = tmp_path / "lm"
    monkeypatch.setattr(sys, "argv", [
        "train_lm.py", "--tiny", "--steps", "300", "--eval-every", "100", "--lr", "1e-2",
        "--final-eval", "512", "--probe-train", "512", "--probe-test", "256",
        "--peak-size", "256", "--no-progress", "--out", str(out)])
    runpy.run_path("experiments/train_lm.py", run_name="__main__")
    res = json.loads((out / "results.json").read_text())
    for k in ("final_loss", "unigram_loss", "bayes_loss", "tokens_per_s"):  # the contract
        assert res[k] == res["methods"]["transformer"][k], k
    m = res["methods"]["transformer"]
    for k in ("final_loss", "bayes_loss", "unigram_loss", "cue_only_loss", "graph_blind_loss",
              "tokens_per_s", "mfu", "wall_s"):
        assert k in m, k
    final, bayes = m["final_loss"], m["bayes_loss"]
    assert final < m["unigram_loss"] - 0.5 and final < m["cue_only_loss"] - 0.05, m
    assert bayes - 0.02 < final < bayes + 0.1, m
    assert m["bayes_loss"] < m["graph_blind_loss"] < m["cue_only_loss"]
    assert 0 < m["mfu"] < 1
    pr = res["probes"]
    assert pr["layers"] == ["embed", "L0", "L1"]
    assert pr["L1"]["r2_posterior"] > pr["embed"]["r2_posterior"] + 0.2
    # beliefs about every latent, not only the cued one. The default 5-latent language
    # reaches only ~0.5 (BENCHMARKS), so the bar is for --tiny; this 300-step run's figure
    # moves with the CPU's float rounding (0.84 on one host, 0.72 on another, same key), so
    # the bar is loose, and the probe's alignment with the posterior is checked exactly in
    # tests/test_analysis_probes.py.
    assert max(pr["L0"]["r2_posterior"], pr["L1"]["r2_posterior"]) > 0.65
    assert pr["L1"]["r2_cued"] > 0.8 > pr["embed"]["r2_cued"]
    assert pr["bayes"]["acc_latent_last"] >= pr["L1"]["acc_latent_last"] - 0.05
    assert (out / "loss_curve.png").stat().st_size > 0
    assert (out / "probes.png").stat().st_size > 0
    model, params, cfg = load(out / "ckpt")
    assert cfg.steps == 300 and cfg.model.n_layers == 2


def test_load_of_a_missing_workdir_is_a_clear_error_without_side_effects(tmp_path):
    from jaxcrl.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load(tmp_path / "typo" / "path")
    assert not (tmp_path / "typo").exists()


def test_load_falls_back_to_the_newest_step_that_verifies(tmp_path):
    train(CFG, tmp_path, progress=False)
    latest = max(p for p in tmp_path.iterdir() if p.name.startswith("step_"))
    victim = max((p for p in (latest / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.warns(UserWarning, match=r"resuming from step 20.*skipped step 40"):
        _, params, cfg = load(tmp_path)
    assert cfg == CFG
    part = train(CFG, stop_at=20, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(part.params),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
