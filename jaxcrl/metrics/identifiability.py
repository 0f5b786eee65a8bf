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
import scipy.linalg
import scipy.optimize
import scipy.spatial.distance
import scipy.special
import scipy.stats
from numpy.typing import ArrayLike

__all__ = [
    "DCIResult",
    "MCCResult",
    "R2Result",
    "amari_distance",
    "dci",
    "dci_from_importance",
    "kernel_ridge_loo_residuals",
    "kernel_ridge_predict",
    "mcc",
    "mcc_out_of_sample",
    "median_heuristic_gamma",
    "r2",
    "score_latents",
]

CorrMethod = Literal["pearson", "spearman"]
Regressor = Literal["linear", "kernel"]

# A column whose standard deviation is below this fraction of its largest absolute
# value is treated as constant (its correlations are defined to be 0).
_CONST_RTOL = 1e-12

# Ridge candidates for ``r2(..., regressor="kernel", alpha="loo")``: half-decade steps
# from 1e-4 to 1e2, relative to the unit diagonal of the RBF Gram matrix.
LOO_ALPHAS = np.logspace(-4.0, 2.0, 13)


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


def _as_matrix(x: ArrayLike, name: str, *, min_rows: int = 2) -> np.ndarray:
    """Converts ``x`` to a finite float64 ``[n, d]`` array or raises ``ValueError``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real numeric array, got {type(x).__name__}") from err
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape [n, d], got shape {arr.shape}")
    if arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least {min_rows} rows and 1 column, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ValueError(
            f"{name} (shape {arr.shape}) contains {n_nan} NaN and {n_inf} inf values"
        )
    return arr


def _as_latent_pair(z_true: ArrayLike, z_hat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    zt = _as_matrix(z_true, "z_true")
    zh = _as_matrix(z_hat, "z_hat")
    if zt.shape[0] != zh.shape[0]:
        raise ValueError(
            "z_true and z_hat must have the same number of samples n, got z_true shape "
            f"{zt.shape} and z_hat shape {zh.shape}"
        )
    return zt, zh


def _check_method(method: str) -> None:
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")


def _constant_columns(x: np.ndarray, std: np.ndarray) -> np.ndarray:
    return std <= _CONST_RTOL * np.abs(x).max(axis=0)


def _standardize(x: np.ndarray) -> np.ndarray:
    """Column-standardizes ``x`` ``[n, d]``; constant columns become all zeros."""
    xc = x - x.mean(axis=0)
    std = np.sqrt(np.mean(xc**2, axis=0))
    const = _constant_columns(x, std)
    out = xc / np.where(const, 1.0, std)
    out[:, const] = 0.0
    return out


def _standardizer(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of training columns; constant columns get scale 1."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    return mean, np.where(_constant_columns(x_train, std), 1.0, std)


def _abs_corr(zt: np.ndarray, zh: np.ndarray) -> np.ndarray:
    """``[d_true, d_hat]`` absolute Pearson correlation; 0 for constant columns."""
    corr = _standardize(zt).T @ _standardize(zh) / zt.shape[0]
    return np.clip(np.abs(corr), 0.0, 1.0)


def _transform(x: np.ndarray, method: str) -> np.ndarray:
    # Spearman correlation is the Pearson correlation of the (average-tie) ranks.
    return scipy.stats.rankdata(x, axis=0) if method == "spearman" else x


def _hungarian(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum-weight matching on ``corr`` ``[d_true, d_hat]``: (rows, cols, perm)."""
    rows, cols = scipy.optimize.linear_sum_assignment(corr, maximize=True)
    perm = np.full(corr.shape[0], -1, dtype=np.int64)
    perm[rows] = cols
    return rows, cols, perm


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


def _even_subsample(idx: np.ndarray, max_size: int | None) -> np.ndarray:
    """At most ``max_size`` evenly spaced entries of ``idx`` (deterministic)."""
    if max_size is None or len(idx) <= max_size:
        return idx
    if max_size < 2:
        raise ValueError(f"subsample size must be at least 2, got {max_size}")
    return idx[(np.arange(max_size) * len(idx)) // max_size]


def _r2_scores(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-column coefficient of determination ``1 - SS_res / SS_tot``."""
    ss_res = np.sum((y - pred) ** 2, axis=0)
    ss_tot = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    const = _constant_columns(y, np.sqrt(ss_tot / y.shape[0]))
    if np.any(const):
        raise ValueError(
            f"z_true columns {np.flatnonzero(const).tolist()} are constant on the test "
            "split; R² is undefined for them"
        )
    return 1.0 - ss_res / ss_tot


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
    rows, cols, perm = _hungarian(corr)
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
    rows, cols, perm = _hungarian(corr_train)
    corr_test = _abs_corr(_transform(zt[test], method), _transform(zh[test], method))
    matched = corr_test[rows, cols]
    return MCCResult(float(matched.mean()), perm, corr_test, matched)


# --------------------------------------------------------------------------------------
# R²
# --------------------------------------------------------------------------------------


def median_heuristic_gamma(x: ArrayLike, *, max_points: int = 1000) -> float:
    """RBF ``gamma`` from the median heuristic: ``gamma = 1 / (2 * median ||x_a - x_b||²)``.

    The kernel is ``k(a, b) = exp(-gamma ||a - b||²)``, i.e. bandwidth ``sigma`` equal to
    the median pairwise distance (Gretton et al., 2012). Uses at most ``max_points``
    evenly spaced rows.

    Args:
        x: ``[n, d]`` inputs (callers usually standardize them first).
        max_points: Cap on the rows used for the pairwise distances.

    Returns:
        ``gamma`` as a float (1.0 if all points coincide).
    """
    arr = _as_matrix(x, "x")
    sub = arr[_even_subsample(np.arange(arr.shape[0]), max_points)]
    sq = scipy.spatial.distance.pdist(sub, "sqeuclidean")
    sq = sq[sq > 0]
    if sq.size == 0:
        return 1.0
    return float(1.0 / (2.0 * np.median(sq)))


def kernel_ridge_predict(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    *,
    gamma: float,
    alpha: float,
    block_size: int = 4096,
) -> np.ndarray:
    """Kernel ridge regression with an RBF kernel, no intercept.

    Solves ``(K + alpha I) c = y_train`` with ``K_ab = exp(-gamma ||x_a - x_b||²)``
    (Cholesky via ``scipy.linalg.solve(..., assume_a="pos")``) and predicts
    ``K(x_test, x_train) @ c``. This is the same estimator as
    ``sklearn.kernel_ridge.KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma)``.

    Args:
        x_train: ``[n_train, d]`` training inputs.
        y_train: ``[n_train, k]`` (or ``[n_train]``) training targets.
        x_test: ``[n_test, d]`` test inputs.
        gamma: RBF inverse squared length scale (> 0).
        alpha: Ridge added to the kernel diagonal (> 0).
        block_size: Test rows per kernel block (bounds memory).

    Returns:
        ``[n_test, k]`` predictions (``[n_test]`` if ``y_train`` is 1-D).
    """
    xtr = _as_matrix(x_train, "x_train", min_rows=1)
    xte = _as_matrix(x_test, "x_test", min_rows=1)
    y = np.asarray(y_train, dtype=np.float64)
    squeeze = y.ndim == 1
    ytr = _as_matrix(y[:, None] if squeeze else y, "y_train", min_rows=1)
    if ytr.shape[0] != xtr.shape[0]:
        raise ValueError(
            f"y_train must have n_train={xtr.shape[0]} rows like x_train, got shape {y.shape}"
        )
    if xte.shape[1] != xtr.shape[1]:
        raise ValueError(
            f"x_test must have d={xtr.shape[1]} columns like x_train, got shape {xte.shape}"
        )
    if not (gamma > 0 and alpha > 0):
        raise ValueError(f"gamma and alpha must be > 0, got gamma={gamma}, alpha={alpha}")
    gram = _rbf_gram(xtr, xtr, gamma)
    gram[np.diag_indices_from(gram)] += alpha
    coef = scipy.linalg.solve(gram, ytr, assume_a="pos")
    pred = _rbf_predict(xtr, coef, xte, gamma, block_size)
    return pred[:, 0] if squeeze else pred


def kernel_ridge_loo_residuals(
    x_train: ArrayLike,
    y_train: ArrayLike,
    *,
    gamma: float,
    alphas: ArrayLike = LOO_ALPHAS,
) -> np.ndarray:
    """Exact leave-one-out residuals of RBF kernel ridge regression for many ridges.

    For the estimator of :func:`kernel_ridge_predict` (no intercept) the hat matrix is
    ``H = K (K + alpha I)^-1 = U diag(s / (s + alpha)) U^T`` with ``K = U diag(s) U^T``,
    and the residual of the model refitted without sample ``i``, evaluated at ``i``, is
    ``e_i = (y_i - (H y)_i) / (1 - H_ii)`` exactly (the PRESS identity, Allen 1974). One
    eigendecomposition of ``K`` serves every ``alpha``; both the numerator and
    ``1 - H_ii = sum_j U_ij² alpha / (s_j + alpha)`` are formed from the shrinkage
    factors ``alpha / (s + alpha)``, so they stay accurate when ``H_ii`` is close to 1.

    Args:
        x_train: ``[n_train, d]`` training inputs.
        y_train: ``[n_train, k]`` (or ``[n_train]``) training targets.
        gamma: RBF inverse squared length scale (> 0).
        alphas: ``[n_alphas]`` ridges (each > 0); defaults to :data:`LOO_ALPHAS`.

    Returns:
        ``[n_alphas, n_train, k]`` residuals ``y_i - f_{-i}(x_i)``
        (``[n_alphas, n_train]`` if ``y_train`` is 1-D).
    """
    xtr = _as_matrix(x_train, "x_train")
    y = np.asarray(y_train, dtype=np.float64)
    squeeze = y.ndim == 1
    ytr = _as_matrix(y[:, None] if squeeze else y, "y_train")
    if ytr.shape[0] != xtr.shape[0]:
        raise ValueError(
            f"y_train must have n_train={xtr.shape[0]} rows like x_train, got shape {y.shape}"
        )
    alphas = _check_alphas(alphas)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    s, u = _gram_eigh(_rbf_gram(xtr, xtr, gamma))
    resid = _loo_residuals(s, u, ytr, alphas)
    return resid[..., 0] if squeeze else resid


def _rbf_gram(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * scipy.spatial.distance.cdist(a, b, "sqeuclidean"))


def _rbf_predict(
    x_train: np.ndarray, coef: np.ndarray, x_test: np.ndarray, gamma: float, block_size: int
) -> np.ndarray:
    """``K(x_test, x_train) @ coef`` in blocks of ``block_size`` test rows."""
    pred = np.empty((x_test.shape[0], coef.shape[1]))
    for start in range(0, x_test.shape[0], block_size):
        block = x_test[start : start + block_size]
        pred[start : start + block_size] = _rbf_gram(block, x_train, gamma) @ coef
    return pred


def _gram_eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0: ``K`` is PSD up to rounding) and eigenvectors."""
    s, u = scipy.linalg.eigh(gram, overwrite_a=True, check_finite=False, driver="evd")
    return np.clip(s, 0.0, None), u


def _check_alphas(alphas: ArrayLike) -> np.ndarray:
    arr = np.asarray(alphas, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"alphas must be a non-empty 1-D array of finite values > 0, got {arr}")
    return arr


def _loo_residuals(
    s: np.ndarray, u: np.ndarray, y: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """``[n_alphas, n, k]`` exact LOO residuals from ``K = u diag(s) u^T`` (see above)."""
    n, k = y.shape
    shrink = alphas[None, :] / (s[:, None] + alphas[None, :])  # [n, A]: 1 - s/(s+alpha)
    uty = u.T @ y  # [n, k]
    # y - H y = U diag(alpha / (s + alpha)) U^T y, for all alphas in one product.
    resid = u @ (shrink[:, :, None] * uty[:, None, :]).reshape(n, -1)
    one_minus_h = (u * u) @ shrink  # [n, A]
    resid = resid.reshape(n, len(alphas), k) / one_minus_h[:, :, None]
    return resid.transpose(1, 0, 2)


def _kernel_ridge_loo_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    gamma: float,
    alphas: np.ndarray,
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel ridge with ``alpha`` chosen per target column by exact LOO error.

    Returns ``([n_test, k] predictions, [k] selected alphas)``. Ties go to the
    smallest ``alpha``.
    """
    s, u = _gram_eigh(_rbf_gram(x_train, x_train, gamma))
    loo_mse = np.mean(_loo_residuals(s, u, y_train, alphas) ** 2, axis=1)  # [A, k]
    best = alphas[np.argmin(loo_mse, axis=0)]
    # c = (K + alpha_j I)^-1 y_j = U diag(1 / (s + alpha_j)) U^T y_j, per column j.
    coef = u @ ((u.T @ y_train) / (s[:, None] + best[None, :]))
    return _rbf_predict(x_train, coef, x_test, gamma, block_size), best


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
        * ``"linear"``: least squares with intercept (``numpy.linalg.lstsq``), on all
          training samples.
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
        pred = _linear_fit_predict(zh[train], zt[train], zh[test])
    else:
        train = _even_subsample(train, max_train)
        test = _even_subsample(test, max_test)
        x_mean, x_scale = _standardizer(zh[train])
        x_tr = (zh[train] - x_mean) / x_scale
        x_te = (zh[test] - x_mean) / x_scale
        y_mean = zt[train].mean(axis=0)
        g = median_heuristic_gamma(x_tr) if gamma is None else gamma
        y_tr = zt[train] - y_mean
        if isinstance(alpha, str):
            if not g > 0:
                raise ValueError(f"gamma must be > 0, got {g}")
            pred, alphas_used = _kernel_ridge_loo_predict(x_tr, y_tr, x_te, g, LOO_ALPHAS)
        else:
            pred = kernel_ridge_predict(x_tr, y_tr, x_te, gamma=g, alpha=float(alpha))
            alphas_used = np.full(zt.shape[1], float(alpha))
        pred += y_mean
    per_latent = _r2_scores(zt[test], pred)
    return R2Result(float(per_latent.mean()), per_latent, alphas_used)


def _linear_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray):
    """Least squares with intercept on standardized inputs; returns test predictions."""
    x_mean, x_scale = _standardizer(x_train)
    design = np.column_stack([np.ones(len(x_train)), (x_train - x_mean) / x_scale])
    coef, *_ = np.linalg.lstsq(design, y_train, rcond=None)
    return coef[0] + ((x_test - x_mean) / x_scale) @ coef[1:]


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
    imp = np.abs(_as_matrix(importance, "importance", min_rows=1))
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
    squares via ``lstsq``; with ``ridge > 0``, ``(X'X + ridge * n I)^-1 X'y``) fitted on
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
    x_mean, x_scale = _standardizer(zh[train])
    y_mean, y_scale = _standardizer(zt[train])
    x_tr = (zh[train] - x_mean) / x_scale
    y_tr = (zt[train] - y_mean) / y_scale
    if ridge > 0:
        gram = x_tr.T @ x_tr + ridge * len(train) * np.eye(x_tr.shape[1])
        coef = scipy.linalg.solve(gram, x_tr.T @ y_tr, assume_a="pos")
    else:
        coef, *_ = np.linalg.lstsq(x_tr, y_tr, rcond=None)
    pred = ((zh[test] - x_mean) / x_scale) @ coef * y_scale + y_mean
    informativeness = float(_r2_scores(zt[test], pred).mean())
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
    w = _as_matrix(w_unmix, "w_unmix", min_rows=1)
    a = _as_matrix(a_mix, "a_mix", min_rows=1)
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
