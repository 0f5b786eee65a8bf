"""Mutation check: break one line of each core module on purpose and see a test fail.

Run by hand (pytest does not collect this file: its name does not match ``test_*.py``)::

    python tests/mutation_check.py                 # all mutations
    python tests/mutation_check.py --only crl      # ids or modules containing "crl"
    python tests/mutation_check.py --list

Each mutation replaces one exact line fragment of a library file (a sign, an index, a
transpose, a dropped term) in a temporary copy of the repository, runs the tests named
beside it there (``pytest -x``), and reports CAUGHT (some test failed), MISSED (all passed)
or ERROR (the fragment was not found, or pytest could not collect). The working tree is
never modified. Results are recorded in ``tests/README.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    module: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


M = Mutation
MUTATIONS = [
    # ------------------------------------------------------------------ scm
    M("scm-linear-sign", "scm", "jaxcrl/scm/mechanisms.py",
      "return z @ params.weights, scale", "return -(z @ params.weights), scale",
      ("tests/test_scm_sampling.py::test_linear_closed_form_and_fixed_point_agree",),
      "linear mechanism uses -W"),
    M("scm-closure-one-step", "scm", "jaxcrl/scm/graphs.py",
      "for _ in range((d - 1).bit_length()):", "for _ in range(0):",
      ("tests/test_scm_graphs.py::test_transitive_closure_matches_dfs",),
      "transitive closure stops at direct edges"),
    M("scm-strength-kl-direction", "scm", "jaxcrl/scm/strength.py",
      "forward = jnp.mean(_gauss_kl(me, se, m0, s0), 0) * on",
      "forward = jnp.mean(_gauss_kl(m0, s0, me, se), 0) * on",
      ("tests/test_scm_strength.py",),
      "intervention_kl's forward term is KL(p_0 || p_e)"),
    M("crl-strength-no-reverse", "crl", "jaxcrl/crl/svi.py",
      "return s_in / jnp.maximum(count, 1.0) - s_obs / jnp.maximum(count[0], 1.0)",
      "return s_in / jnp.maximum(count, 1.0)",
      ("tests/test_scm_strength.py::test_a_fits_own_strength_estimates_the_true_one_and_flags_a_null_intervention",),
      "FitResult.intervention_strength drops the reverse KL"),
    M("crl-strength-padding-counted", "crl", "jaxcrl/crl/svi.py",
      "ec = jnp.pad(ee, (0, pad), constant_values=-1)",
      "ec = jnp.pad(ee, (0, pad), constant_values=0)",
      ("tests/test_scm_strength.py::test_a_fits_own_strength_estimates_the_true_one_and_flags_a_null_intervention",),
      "FitResult.intervention_strength counts the chunks' padding as observational samples"),
    M("crl-majority-no-loss-tiebreak", "crl", "jaxcrl/crl/consensus.py",
      "    ok &= best == best.min(-1, keepdims=True)",
      "    pass",
      ("tests/test_crl_consensus.py::test_slot_majority_breaks_a_two_against_two_swap_by_the_lower_loss",),
      "slot_majority ignores the loss on a two-against-two tie"),
    M("crl-majority-no-size", "crl", "jaxcrl/crl/consensus.py",
      "    ok = size == size.max(-1, keepdims=True)",
      "    ok = size > 0",
      ("tests/test_crl_consensus.py::test_slot_majority_prefers_three_runs_to_the_lowest_loss_alone",),
      "slot_majority lets the lowest loss beat a larger cluster"),
    # ------------------------------------------------------------------ metrics
    M("metrics-shd-reversal-twice", "metrics", "jaxcrl/metrics/graph.py",
      "cost = np.maximum(missing + missing.T, extra + extra.T)",
      "cost = missing + missing.T + extra + extra.T",
      ("tests/test_metrics.py::test_shd_single_edit_cases_each_cost_one",),
      "SHD counts a reversed edge twice"),
    M("metrics-align-transpose", "metrics", "jaxcrl/metrics/graph.py",
      "out[np.ix_(idx, idx)] = g[np.ix_(p[idx], p[idx])]",
      "out[np.ix_(idx, idx)] = g.T[np.ix_(p[idx], p[idx])]",
      ("tests/test_crl_evaluate.py",),
      "align_graph transposes the learned graph"),
    M("metrics-oos-scores-train-half", "metrics", "jaxcrl/metrics/identifiability.py",
      "corr_test = _abs_corr(_transform(zt[test], method), _transform(zh[test], method))",
      "corr_test = _abs_corr(_transform(zt[train], method), _transform(zh[train], method))",
      ("tests/test_metrics.py::test_in_sample_mcc_of_noise_is_biased_above_out_of_sample_mcc",),
      "out-of-sample MCC scored on the matching half"),
    # ------------------------------------------------------------------ crl
    M("crl-standardize-inverted", "crl", "jaxcrl/crl/evaluate.py",
      "return np.asarray(w) * sd[:, None] / sd[None, :]",
      "return np.asarray(w) * sd[None, :] / sd[:, None]",
      ("tests/test_crl_evaluate.py",),
      "standardized_graph uses sd_j / sd_i"),
    M("crl-targets-unaligned", "crl", "jaxcrl/crl/evaluate.py",
      "t_hat = np.asarray(targets_hat)[:, perm]",
      "t_hat = np.asarray(targets_hat)",
      ("tests/test_crl_evaluate.py::test_target_accuracy_reads_learned_targets_through_the_mcc_permutation",),
      "target accuracy ignores the MCC permutation"),
    M("crl-discover-unstandardized", "crl", "jaxcrl/crl/fit.py",
      "w_std = w * sd[:, None] / sd[None, :]", "w_std = w",
      ("tests/test_crl_evaluate.py::test_discover_graph_prunes_by_standardized_weight_whatever_the_latent_scales",),
      "discover_graph prunes raw (scale-dependent) weights"),
    M("crl-logdet-sign", "crl", "jaxcrl/crl/prior.py",
      "return jnp.linalg.slogdet(jnp.eye(d) - w_env)[1]",
      "return -jnp.linalg.slogdet(jnp.eye(d) - w_env)[1]",
      ("tests/test_crl_recovery.py::test_latent_scm_beats_identity_pca_and_fastica_out_of_sample_at_d3",),
      "latent SCM prior: log|det(I - W)| with the wrong sign"),
    M("crl-restart-worst", "crl", "jaxcrl/crl/fit.py",
      "best = np.nanargmin(np.where(np.isfinite(final), final, np.inf), axis=1)",
      "best = np.nanargmax(np.where(np.isfinite(final), final, -np.inf), axis=1)",
      ("tests/test_crl_fit.py::test_restarts_keep_the_lowest_loss_restart_per_seed",),
      "restarts keep the worst likelihood"),
    M("crl-nondeterministic-key", "crl", "jaxcrl/crl/fit.py",
      "run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)",
      "run_keys = jax.vmap(lambda k: jax.random.fold_in(k, time.time_ns() % 997))(keys)",
      ("tests/test_crl_recovery.py::test_cpu_fit_is_bit_reproducible_with_the_same_key",),
      "training key depends on the clock"),
    M("crl-polish-no-shift", "crl", "jaxcrl/crl/polish.py",
      'c = -pol.mean @ m - mle["shift"]', "c = -pol.mean @ m",
      ("tests/test_crl_polish.py::test_polished_fit_encodes_the_polish_of_the_raw_fit",
       "tests/test_crl_polish.py::test_polished_fit_is_a_consistent_model_of_the_data"),
      "the polish folds the map but not the intercepts' shift into the encoder"),
    # ------------------------------------------------------------------ lm
    M("lm-anticausal-mask", "lm", "jaxcrl/lm/model.py",
      "allowed = key_pos[None, :] <= positions[:, None]",
      "allowed = key_pos[None, :] >= positions[:, None]",
      ("tests/test_lm_model.py::test_causality",),
      "attention looks at the future"),
    M("lm-probe-posterior-off-by-one", "lm", "jaxcrl/analysis/probes.py",
      '"post": post[rows, pos].reshape(-1, d * K),',
      '"post": post[rows, np.maximum(pos - 2, 0)].reshape(-1, d * K),',
      ("tests/test_analysis_probes.py",),
      "probe targets the posterior one report too early"),
    # ------------------------------------------------------------------ sae
    M("sae-topk-strict", "sae", "jaxcrl/sae/architectures.py",
      "return (acts >= thr[:, None]) & (acts > 0)",
      "return (acts > thr[:, None]) & (acts > 0)",
      ("tests/test_sae_model.py::test_topk_keeps_exactly_the_k_largest_per_row",),
      "TopK drops the k-th largest"),
    M("sae-ce-recovered-reference", "sae", "jaxcrl/sae/metrics.py",
      '"ce_loss_recovered": (zero - spliced) / (zero - clean)}',
      '"ce_loss_recovered": (zero - spliced) / zero}',
      ("tests/test_sae_store.py::test_ce_loss_recovered_is_one_for_perfect_and_zero_for_zero_ablation",),
      "CE recovered normalised by the wrong reference"),
    M("sae-store-layer-off-by-one", "sae", "jaxcrl/sae/store.py",
      "stop = None if layer is None else layer + 1",
      "stop = None if layer is None else max(layer, 1)",
      ("tests/test_sae_store.py::test_streamed_rows_are_run_with_cache_rows_of_the_drawn_sequences",),
      "the stream stops before the hook's block"),
    M("sae-never-refresh", "sae", "jaxcrl/sae/training.py",
      "        if i > 0:\n            carry = (source.refresh(",
      "        if i < 0:\n            carry = (source.refresh(",
      ("tests/test_sae_train.py::test_npy_source_refreshes_between_rounds",),
      "training never refreshes its source"),
    # ------------------------------------------------------------------ analysis
    M("analysis-no-closure", "analysis", "jaxcrl/analysis/interventions.py",
      "desc = np.asarray(transitive_closure(adj)) & ~np.eye(len(adj), dtype=bool)",
      "desc = adj & ~np.eye(len(adj), dtype=bool)",
      ("tests/test_analysis_interventions.py",),
      "score_effects scores against direct edges, not descendants"),
    M("analysis-effects-transposed", "analysis", "jaxcrl/analysis/interventions.py",
      "return shift.mean(1).reshape(d, n, -1).mean(1)",
      "return shift.mean(1).reshape(d, n, -1).mean(1).T",
      ("tests/test_analysis_interventions.py",),
      "effect matrix transposed (effect on i of editing j)"),
    # ------------------------------------------------------------------ checkpoint
    M("checkpoint-no-hash-check", "checkpoint", "jaxcrl/checkpoint.py",
      'if _sha256(p) != entry["sha256"]:', "if False:",
      ("tests/test_checkpoint.py", "tests/test_checkpoint_checksum.py"),
      "corrupt files are not detected"),
    M("checkpoint-prune-newest", "checkpoint", "jaxcrl/checkpoint.py",
      "for s in self.steps()[: -self.keep_last]:", "for s in self.steps()[self.keep_last:]:",
      ("tests/test_checkpoint.py::test_manager_keeps_last_k_and_resumes_latest",
       "tests/test_checkpoint_previous_survives.py"),
      "keep-last-N deletes the newest checkpoints"),
    # ------------------------------------------------------------------ train
    M("train-same-key-every-step", "train", "jaxcrl/train/loop.py",
      "jax.random.fold_in(key, t))", "jax.random.fold_in(key, 0))",
      ("tests/test_train_loop.py",),
      "unbatched runs reuse one key at every step"),
    M("train-resume-restarts-key-stream", "train", "jaxcrl/train/loop.py",
      "steps = jnp.arange(start_step + done, start_step + done + m)",
      "steps = jnp.arange(done, done + m)",
      ("tests/test_train_loop.py::test_resume_continues_the_same_trajectory",),
      "resume restarts the key stream at step 0"),
]


def _copy_repo(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "out", "__pycache__", ".pytest_cache",
                                    "*.egg-info", ".ruff_cache")
    shutil.copytree(ROOT, dst, ignore=ignore, dirs_exist_ok=True)


def run_one(m: Mutation, repo: Path, timeout: int) -> tuple[str, float, str]:
    path = repo / m.file
    original = path.read_text()
    if original.count(m.old) != 1:
        return "ERROR", 0.0, f"fragment found {original.count(m.old)} times in {m.file}"
    path.write_text(original.replace(m.old, m.new))
    env = {**os.environ, "PYTHONPATH": str(repo), "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            *m.tests], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=timeout)
        code, tail = r.returncode, (r.stdout + r.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        code, tail = -1, ["timeout"]
    finally:
        path.write_text(original)
    wall = time.perf_counter() - t0
    status = {0: "MISSED", 1: "CAUGHT"}.get(code, "ERROR")
    return status, wall, " ".join(tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="run mutations whose id or module contains this")
    p.add_argument("--list", action="store_true")
    p.add_argument("--timeout", type=int, default=900, help="seconds per mutation")
    args = p.parse_args(argv)
    todo = [m for m in MUTATIONS if args.only in m.id or args.only in m.module]
    if args.list:
        for m in todo:
            print(f"{m.id:36s} {m.module:10s} {m.what}  <- {', '.join(m.tests)}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="jaxcrl-mut-") as tmp:
        repo = Path(tmp)
        _copy_repo(repo)
        for m in todo:
            status, wall, tail = run_one(m, repo, args.timeout)
            results.append((m, status, wall))
            print(f"{status:7s} {m.id:36s} {m.module:10s} {wall:6.1f} s  {tail}", flush=True)
    print("\n| module | mutation | catching test(s) | result |\n|---|---|---|---|")
    for m, status, _ in results:
        tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in m.tests)
        print(f"| {m.module} | {m.what} (`{m.file}`) | {tests} | {status.lower()} |")
    modules = sorted({m.module for m in todo})
    uncaught = [mod for mod in modules
                if not any(s == "CAUGHT" for mm, s, _ in results if mm.module == mod)]
    print(f"\nmodules with a caught mutation: {len(modules) - len(uncaught)}/{len(modules)}"
          + (f"; none caught in {uncaught}" if uncaught else ""))
    return 0 if not uncaught and all(s == "CAUGHT" for _, s, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
