"""Identifiability metrics: MCC, R², DCI and the Amari distance.

These metrics score learned latents ``z_hat`` against ground-truth latents ``z_true``
up to the indeterminacies that identifiability theory allows (permutation, and
element-wise affine or monotone transforms, or a general invertible map for R²).

All functions are host-side: they accept numpy or jax arrays, convert them with
``np.asarray`` to float64, and return Python floats or numpy arrays. They are not
meant to be jitted. Inputs are validated at the boundary; a ``ValueError`` names the
offending argument and its shape (non-2-D arrays, mismatched sample counts, NaN/inf).

Shapes: ``z_true`` is ``[n, d_true]`` and ``z_hat`` is ``[n, d_hat]``; ``d_hat`` may
differ from ``d_true`` everywhere in this module.

Held-out splits (out-of-sample MCC, R², DCI) take ``split`` (the training fraction)
and ``key``: ``None`` gives the deterministic split "first ``round(split * n)``
samples train, the rest test"; an ``int`` seed is shorthand for
``jax.random.key(seed)``; a jax PRNG key (typed or raw ``uint32[2]``) gives the random
split ``jax.random.permutation(key, n)``. Data stored in blocks (e.g. environments
concatenated) should use a key, since the deterministic split is then not i.i.d.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.special
import scipy.stats
from numpy.typing import ArrayLike

from jaxcrl.metrics.regression import (
    LOO_ALPHAS,
    as_matrix,
    even_subsample,
    fit_ridge,
    hungarian_match,
    kernel_ridge_loo_predict,
    kernel_ridge_predict,
    median_heuristic_gamma,
    predict_linear,
    r2_score,
    standardize,
    standardizer,
)

__all__ = [
    "DCIResult",
    "MCCResult",
    "R2Result",
    "amari_distance",
    "dci",
    "dci_from_importance",
    "mcc",
    "mcc_out_of_sample",
    "r2",
    "score_latents",
]

CorrMethod = Literal["pearson", "spearman"]
Regressor = Literal["linear", "kernel"]


# --------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------


class MCCResult(NamedTuple):
    """Result of :func:`mcc` and :func:`mcc_out_of_sample`.

    Attributes:
        value: Mean absolute correlation over the matched pairs (``min(d_true, d_hat)``
            of them), in ``[0, 1]``.
        perm: ``[d_true]`` int array; ``perm[i]`` is the index of the learned latent
            matched to true latent ``i``, or ``-1`` if true latent ``i`` is unmatched
            (only possible when ``d_hat < d_true``).
        corr: ``[d_true, d_hat]`` absolute correlation matrix (on the held-out part for
            the out-of-sample variant).
        matched: ``[min(d_true, d_hat)]`` absolute correlations of the matched pairs,
            ordered by true-latent index (unmatched true latents skipped).
    """

    value: float
    perm: np.ndarray
    corr: np.ndarray
    matched: np.ndarray


class R2Result(NamedTuple):
    """Result of :func:`r2`.

    Attributes:
        mean: Mean of ``per_latent``.
        per_latent: ``[d_true]`` held-out coefficient of determination of each true
            latent predicted from all learned latents (can be negative).
        alpha: ``[d_true]`` kernel-ridge ``alpha`` used for each true latent (the
            leave-one-out choice for ``alpha="loo"``); ``None`` for ``"linear"``.
    """

    mean: float
    per_latent: np.ndarray
    alpha: np.ndarray | None = None


class DCIResult(NamedTuple):
    """Result of :func:`dci` (Eastwood & Williams, 2018).

    Attributes:
        disentanglement: Importance-weighted mean over codes of ``1 - H_{d_true}``.
        completeness: Mean over factors of ``1 - H_{d_hat}``.
        informativeness: Mean held-out R² of the linear regressor (higher is better).
    """

    disentanglement: float
    completeness: float
    informativeness: float


# --------------------------------------------------------------------------------------
# Validation and small helpers
# --------------------------------------------------------------------------------------



def _as_latent_pair(z_true: ArrayLike, z_hat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    zt = as_matrix(z_true, "z_true")
    zh = as_matrix(z_hat, "z_hat")
    if zt.shape[0] != zh.shape[0]:
        raise ValueError(
            "z_true and z_hat must have the same number of samples n, got z_true shape "
            f"{zt.shape} and z_hat shape {zh.shape}"
        )
    return zt, zh


def _check_method(method: str) -> None:
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")



def _abs_corr(zt: np.ndarray, zh: np.ndarray) -> np.ndarray:
    """``[d_true, d_hat]`` absolute Pearson correlation; 0 for constant columns."""
    corr = standardize(zt).T @ standardize(zh) / zt.shape[0]
    return np.clip(np.abs(corr), 0.0, 1.0)


def _transform(x: np.ndarray, method: str) -> np.ndarray:
    # Spearman correlation is the Pearson correlation of the (average-tie) ranks.
    return scipy.stats.rankdata(x, axis=0) if method == "spearman" else x



def _permutation(key: Any, n: int) -> np.ndarray:
    import jax  # Lazy: only the random splits need jax.

    if isinstance(key, (bool, np.bool_)):
        raise ValueError(f"key must be None, an int seed or a jax PRNG key, got {key!r}")
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    return np.asarray(jax.random.permutation(key, n))


def _split_indices(n: int, split: float, key: Any) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices: deterministic halves if ``key`` is None, else random."""
    if not 0.0 < split < 1.0:
        raise ValueError(f"split must be in (0, 1), got {split}")
    n_train = int(round(split * n))
    if n_train < 2 or n - n_train < 2:
        raise ValueError(
            f"split={split} of n={n} samples leaves fewer than 2 samples in the train or "
            "test part"
        )
    order = np.arange(n) if key is None else _permutation(key, n)
    return np.sort(order[:n_train]), np.sort(order[n_train:])



# --------------------------------------------------------------------------------------
# MCC
# --------------------------------------------------------------------------------------


def mcc(z_true: ArrayLike, z_hat: ArrayLike, method: CorrMethod = "pearson") -> MCCResult:
    """Mean correlation coefficient with Hungarian matching.

    Computes the absolute correlation matrix between true and learned latents, finds
    the one-to-one matching that maximizes the summed absolute correlation (Hungarian
    algorithm, ``scipy.optimize.linear_sum_assignment``), and averages the matched
    absolute correlations (Hyvärinen & Morioka, 2016; Khemakhem et al., 2020, "iVAE").
    Pearson scores identifiability up to permutation and affine maps, Spearman (Pearson
    on ranks) up to permutation and monotone element-wise maps.

    When ``d_hat != d_true`` the matching is rectangular: ``min(d_true, d_hat)`` pairs
    are matched; extra learned latents are ignored and extra true latents get
    ``perm == -1``. Constant columns have correlation 0 with everything.

    Args:
        z_true: ``[n, d_true]`` ground-truth latents.
        z_hat: ``[n, d_hat]`` learned latents.
        method: ``"pearson"`` or ``"spearman"``.

    Returns:
        An :class:`MCCResult` (``value``, ``perm`` ``[d_true]``, ``corr``
        ``[d_true, d_hat]``, ``matched`` ``[min(d_true, d_hat)]``).

    Raises:
        ValueError: On non-2-D inputs, NaN/inf, mismatched ``n`` or unknown ``method``.
    """
    _check_method(method)
    zt, zh = _as_latent_pair(z_true, z_hat)
    corr = _abs_corr(_transform(zt, method), _transform(zh, method))
    rows, cols, perm = hungarian_match(corr)
    matched = corr[rows, cols]
    return MCCResult(float(matched.mean()), perm, corr, matched)


def mcc_out_of_sample(
    z_true: ArrayLike,
    z_hat: ArrayLike,
    method: CorrMethod = "pearson",
    split: float = 0.5,
    key: Any = None,
) -> MCCResult:
    """Out-of-sample ("strong") MCC: match on one part of the data, score on the other.

    The matching (permutation) is fitted by Hungarian matching on the training part;
    the reported value is the mean absolute correlation of the *same* pairs on the
    held-out part, which removes the optimistic bias of in-sample matching (protocol of
    Buchholz et al., 2023, "Learning linear causal representations from interventions
    under general nonlinear mixing"). For Spearman, ranks are computed within each part.

    Args:
        z_true: ``[n, d_true]`` ground-truth latents.
        z_hat: ``[n, d_hat]`` learned latents.
        method: ``"pearson"`` or ``"spearman"``.
        split: Fraction of samples used to fit the matching, in ``(0, 1)``.
        key: ``None`` (first part / rest, deterministic), an ``int`` seed, or a jax PRNG
            key for a random split.

    Returns:
        An :class:`MCCResult` whose ``perm`` was fitted on the training part and whose
        ``corr`` and ``matched`` are computed on the held-out part.

    Raises:
        ValueError: On bad inputs (see :func:`mcc`) or a split leaving < 2 samples.
    """
    _check_method(method)
    zt, zh = _as_latent_pair(z_true, z_hat)
    train, test = _split_indices(zt.shape[0], split, key)
    corr_train = _abs_corr(_transform(zt[train], method), _transform(zh[train], method))
    rows, cols, perm = hungarian_match(corr_train)
    corr_test = _abs_corr(_transform(zt[test], method), _transform(zh[test], method))
    matched = corr_test[rows, cols]
    return MCCResult(float(matched.mean()), perm, corr_test, matched)


# --------------------------------------------------------------------------------------
# R²
# --------------------------------------------------------------------------------------



def r2(
    z_true: ArrayLike,
    z_hat: ArrayLike,
    regressor: Regressor = "linear",
    *,
    split: float = 0.5,
    key: Any = None,
    gamma: float | None = None,
    alpha: float | Literal["loo"] = "loo",
    max_train: int | None = 2000,
    max_test: int | None = None,
) -> R2Result:
    """Held-out R² of predicting each true latent from all learned latents.

    Fits a regressor ``z_hat -> z_true[:, j]`` on the training part of a split and
    reports the coefficient of determination ``1 - SS_res / SS_tot`` on the held-out
    part. A value near 1 means the true latent is recoverable from the learned
    representation (up to the regressor's function class); this is the "R² by
    nonlinear regression" score of e.g. von Kügelgen et al. (2021) and Liang et al.
    (2023). Works for any ``d_hat``.

    Regressors:
        * ``"linear"``: least squares with intercept
          (:func:`jaxcrl.metrics.regression.fit_ridge` with ``alpha=0``), on all training
          samples.
        * ``"kernel"``: kernel ridge regression with an RBF kernel on inputs
          standardized with training statistics, targets centred with the training
          mean; ``gamma`` from :func:`median_heuristic_gamma` unless given. The ridge
          ``alpha`` is added to the unit-diagonal Gram matrix (so it is relative to the
          kernel scale). With ``alpha="loo"`` (default) it is chosen separately for
          each true latent from :data:`LOO_ALPHAS` (``1e-4 .. 1e2``, 13 log-spaced
          values) by the exact leave-one-out error on the training part, computed in
          closed form from one eigendecomposition of the Gram matrix
          (:func:`kernel_ridge_loo_residuals`; the LOO refits keep the full training
          mean used for centring); the held-out part is never used for the choice. A
          fixed small ridge overfits: on independent noise it gives a clearly
          negative R² (about -0.1 to -0.4 for ``alpha=1e-3``), whereas the LOO choice
          shrinks towards the mean and gives R² close to 0. A float ``alpha`` fits
          exactly :func:`kernel_ridge_predict` (sklearn's ``KernelRidge``). At most
          ``max_train`` evenly spaced training samples (and ``max_test`` test
          samples, if set) are used to bound the ``O(n³)`` cost.

    Args:
        z_true: ``[n, d_true]`` ground-truth latents.
        z_hat: ``[n, d_hat]`` learned latents.
        regressor: ``"linear"`` or ``"kernel"``.
        split: Training fraction in ``(0, 1)``.
        key: ``None`` (deterministic first part / rest), an ``int`` seed or a jax key.
        gamma: RBF ``gamma`` for ``"kernel"``; median heuristic if ``None``.
        alpha: Ridge for ``"kernel"``: ``"loo"`` (per-latent leave-one-out choice) or
            a fixed float > 0. Ignored for ``"linear"``.
        max_train: Training-sample cap for ``"kernel"`` (``None``: no cap).
        max_test: Test-sample cap for ``"kernel"`` (``None``: no cap).

    Returns:
        An :class:`R2Result` (``mean``, ``per_latent`` ``[d_true]``, ``alpha``
        ``[d_true]`` for ``"kernel"``, else ``None``).

    Raises:
        ValueError: On bad inputs, an unknown ``regressor`` or ``alpha``, or a true
            latent that is constant on the test part.
    """
    if regressor not in ("linear", "kernel"):
        raise ValueError(f"regressor must be 'linear' or 'kernel', got {regressor!r}")
    if isinstance(alpha, str):
        if alpha != "loo":
            raise ValueError(f"alpha must be 'loo' or a float > 0, got {alpha!r}")
    elif not (np.isscalar(alpha) and np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be 'loo' or a float > 0, got {alpha!r}")
    zt, zh = _as_latent_pair(z_true, z_hat)
    train, test = _split_indices(zt.shape[0], split, key)
    alphas_used = None
    if regressor == "linear":
        pred = predict_linear(fit_ridge(zh[train], zt[train], alpha=0.0), zh[test])
    else:
        train = even_subsample(train, max_train)
        test = even_subsample(test, max_test)
        x_mean, x_scale = standardizer(zh[train])
        x_tr = (zh[train] - x_mean) / x_scale
        x_te = (zh[test] - x_mean) / x_scale
        y_mean = zt[train].mean(axis=0)
        g = median_heuristic_gamma(x_tr) if gamma is None else gamma
        y_tr = zt[train] - y_mean
        if isinstance(alpha, str):
            if not g > 0:
                raise ValueError(f"gamma must be > 0, got {g}")
            pred, alphas_used = kernel_ridge_loo_predict(x_tr, y_tr, x_te, gamma=g,
                                                         alphas=LOO_ALPHAS)
        else:
            pred = kernel_ridge_predict(x_tr, y_tr, x_te, gamma=g, alpha=float(alpha))
            alphas_used = np.full(zt.shape[1], float(alpha))
        pred += y_mean
    per_latent = r2_score(zt[test], pred, name="z_true")
    return R2Result(float(per_latent.mean()), per_latent, alphas_used)


# --------------------------------------------------------------------------------------
# DCI
# --------------------------------------------------------------------------------------


def _normalized_entropy(p: np.ndarray, axis: int, base: int) -> np.ndarray:
    """Entropy of distributions along ``axis`` in log base ``base`` (0 if base is 1)."""
    if base == 1:
        return np.zeros(p.shape[1 - axis])
    return scipy.special.entr(p).sum(axis=axis) / np.log(base)


def dci_from_importance(importance: ArrayLike) -> tuple[float, float]:
    """Disentanglement and completeness from an importance matrix.

    Eastwood & Williams (2018), "A framework for the quantitative evaluation of
    disentangled representations", Sec. 3. With ``R = |importance|`` of shape
    ``[d_hat, d_true]`` (``R_ij``: importance of code ``i`` for factor ``j``):

    * ``P_ij = R_ij / sum_k R_ik``; ``D_i = 1 - H_{d_true}(P_i.)`` (entropy in log base
      ``d_true``); disentanglement ``D = sum_i rho_i D_i`` with
      ``rho_i = sum_j R_ij / sum_ij R_ij``.
    * ``P~_ij = R_ij / sum_k R_kj``; completeness ``C = mean_j (1 - H_{d_hat}(P~_.j))``.

    Edge cases: with a single factor (``d_true == 1``) every code is trivially
    disentangled (``D_i = 1``); with a single code (``d_hat == 1``) every factor is
    trivially complete. Codes with zero importance get weight 0; a factor with zero
    importance in every code gets completeness 0.

    Args:
        importance: ``[d_hat, d_true]`` non-negative importances (absolute values are
            taken).

    Returns:
        ``(disentanglement, completeness)`` as floats in ``[0, 1]``.
    """
    imp = np.abs(as_matrix(importance, "importance", min_rows=1))
    total = imp.sum()
    if total <= 0:
        raise ValueError(f"importance (shape {imp.shape}) must have a positive entry")
    d_hat, d_true = imp.shape
    row_sum = imp.sum(axis=1)
    p_codes = imp / np.where(row_sum > 0, row_sum, 1.0)[:, None]
    d_per_code = 1.0 - _normalized_entropy(p_codes, axis=1, base=d_true)
    disentanglement = float(np.sum(row_sum / total * d_per_code))
    col_sum = imp.sum(axis=0)
    p_factors = imp / np.where(col_sum > 0, col_sum, 1.0)[None, :]
    c_per_factor = 1.0 - _normalized_entropy(p_factors, axis=0, base=d_hat)
    c_per_factor = np.where(col_sum > 0, c_per_factor, 0.0)
    return disentanglement, float(c_per_factor.mean())


def dci(
    z_true: ArrayLike,
    z_hat: ArrayLike,
    *,
    split: float = 0.5,
    key: Any = None,
    ridge: float = 0.0,
) -> DCIResult:
    """DCI disentanglement, completeness and informativeness (Eastwood & Williams, 2018).

    Importances: the absolute coefficients of a linear regression of the standardized
    true latents on the standardized learned latents (with ``ridge=0``, ordinary least
    squares; with ``ridge > 0``, :func:`~jaxcrl.metrics.regression.fit_ridge`) fitted on
    the training part. This is the lasso-free linear variant of the paper's
    importance matrix (the paper uses lasso or random-forest importances). D and C are
    computed from it with :func:`dci_from_importance`.

    Informativeness is reported as the mean held-out R² of the same linear regression
    (higher is better), not the paper's prediction error.

    Args:
        z_true: ``[n, d_true]`` ground-truth latents (factors).
        z_hat: ``[n, d_hat]`` learned latents (codes).
        split: Training fraction in ``(0, 1)``.
        key: ``None`` (deterministic first part / rest), an ``int`` seed or a jax key.
        ridge: Non-negative ridge penalty per sample on the standardized coefficients.

    Returns:
        A :class:`DCIResult`.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    zt, zh = _as_latent_pair(z_true, z_hat)
    train, test = _split_indices(zt.shape[0], split, key)
    x_mean, x_scale = standardizer(zh[train])
    y_mean, y_scale = standardizer(zt[train])
    x_tr = (zh[train] - x_mean) / x_scale
    y_tr = (zt[train] - y_mean) / y_scale
    # On standardized data the rescaling of fit_ridge is the identity, so its weights are
    # the standardized coefficients.
    coef = fit_ridge(x_tr, y_tr, alpha=ridge).w
    pred = ((zh[test] - x_mean) / x_scale) @ coef * y_scale + y_mean
    informativeness = float(r2_score(zt[test], pred, name="z_true").mean())
    if not np.any(np.abs(coef) > 0):
        return DCIResult(0.0, 0.0, informativeness)
    disentanglement, completeness = dci_from_importance(np.abs(coef))
    return DCIResult(disentanglement, completeness, informativeness)


# --------------------------------------------------------------------------------------
# Amari distance
# --------------------------------------------------------------------------------------


def amari_distance(w_unmix: ArrayLike, a_mix: ArrayLike) -> float:
    """Normalized Amari index of ``P = w_unmix @ a_mix``.

    Amari, Cichocki & Yang (1996), "A new learning algorithm for blind signal
    separation", normalized to ``[0, 1]``: for ``d x d`` ``P`` with ``p_ij = |P_ij|``,

        ``(1 / (2 d (d - 1))) * [sum_i (sum_j p_ij / max_j p_ij - 1)
        + sum_j (sum_i p_ij / max_i p_ij - 1)]``.

    It is 0 iff ``P`` is a scaled permutation matrix and 1 for a matrix of
    equal-magnitude entries. It is invariant to permuting rows or columns of ``P`` and to
    a global rescaling, but *not* to rescaling individual rows (or columns) of ``P``: the
    row term is row-scale invariant, the column term is not (and vice versa).

    Args:
        w_unmix: ``[d, D]`` unmixing matrix (estimated).
        a_mix: ``[D, d]`` mixing matrix (true).

    Returns:
        The normalized Amari distance (0.0 when ``d == 1``).

    Raises:
        ValueError: If shapes do not give a square product, on NaN/inf, or if ``P`` has
            an all-zero row or column.
    """
    w = as_matrix(w_unmix, "w_unmix", min_rows=1)
    a = as_matrix(a_mix, "a_mix", min_rows=1)
    if w.shape[1] != a.shape[0] or w.shape[0] != a.shape[1]:
        raise ValueError(
            "w_unmix @ a_mix must be a square matrix: need w_unmix [d, D] and a_mix [D, d], "
            f"got w_unmix shape {w.shape} and a_mix shape {a.shape}"
        )
    p = np.abs(w @ a)
    d = p.shape[0]
    row_max, col_max = p.max(axis=1), p.max(axis=0)
    if np.any(row_max == 0) or np.any(col_max == 0):
        raise ValueError("w_unmix @ a_mix has an all-zero row or column; Amari index undefined")
    if d == 1:
        return 0.0
    rows = np.sum(p.sum(axis=1) / row_max - 1.0)
    cols = np.sum(p.sum(axis=0) / col_max - 1.0)
    return float((rows + cols) / (2.0 * d * (d - 1)))


# --------------------------------------------------------------------------------------
# Convenience
# --------------------------------------------------------------------------------------


def score_latents(
    z_true: ArrayLike,
    z_hat: ArrayLike,
    *,
    seed: int = 0,
    kernel_max_train: int = 1000,
    kernel_max_test: int = 2000,
) -> dict[str, float]:
    """The standard latent-recovery scores used by the experiment scripts.

    In-sample and out-of-sample (random 50/50 split from ``seed``) Pearson and Spearman
    MCC, held-out linear R² and kernel-ridge R² (same split, ridge chosen per latent by
    leave-one-out as in :func:`r2`; the kernel part subsampled to ``kernel_max_train``
    / ``kernel_max_test`` points so that ``n=10000, d=5`` takes about half a second or
    less, dominated by one ``kernel_max_train``-sized eigendecomposition).

    Args:
        z_true: ``[n, d_true]`` ground-truth latents.
        z_hat: ``[n, d_hat]`` learned latents.
        seed: Seed of the random split (``jax.random.key(seed)``).
        kernel_max_train: Training-point cap for the kernel R².
        kernel_max_test: Test-point cap for the kernel R².

    Returns:
        ``{"mcc_pearson", "mcc_spearman", "mcc_pearson_oos", "mcc_spearman_oos",
        "r2_linear", "r2_kernel"}`` mapped to floats.
    """
    zt, zh = _as_latent_pair(z_true, z_hat)
    return {
        "mcc_pearson": mcc(zt, zh, "pearson").value,
        "mcc_spearman": mcc(zt, zh, "spearman").value,
        "mcc_pearson_oos": mcc_out_of_sample(zt, zh, "pearson", key=seed).value,
        "mcc_spearman_oos": mcc_out_of_sample(zt, zh, "spearman", key=seed).value,
        "r2_linear": r2(zt, zh, "linear", key=seed).mean,
        "r2_kernel": r2(
            zt, zh, "kernel", key=seed, max_train=kernel_max_train, max_test=kernel_max_test
        ).mean,
    }
