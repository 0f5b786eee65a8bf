"""Regression helpers shared by every probe and metric: ridge, R², Hungarian matching, kernel ridge.

The one home of these estimators; :mod:`jaxcrl.metrics.identifiability`,
:mod:`jaxcrl.analysis.probes`, :mod:`jaxcrl.sae.probe` and :mod:`jaxcrl.analysis` call them.
Everything here is host-side numpy/scipy in float64 (not meant to be jitted); inputs are
validated at the boundary and a ``ValueError`` names the offending argument.

**The penalty convention** (:func:`fit_ridge`). Features are rescaled to unit variance
before the penalty applies, either per feature (``standardize=True``) or by one common
factor, the root of the mean feature variance (``standardize=False``, which keeps the
geometry of ``x``: the read-out directions are those of ridge on raw features). The fit
minimises ``(1/n) Σ_i ‖y_i − b − x̃_i W̃‖² + alpha ‖W̃‖²`` over the rescaled features ``x̃``,
i.e. ``alpha · n`` is added to the diagonal of the rescaled, centred Gram matrix, and the
intercept is not penalised. So ``alpha`` is a penalty *per sample, in units of feature
variance*: the same ``alpha`` means the same at every layer, width and sample count. It
equals ``sklearn.linear_model.Ridge(alpha=alpha * n)`` fitted on ``x̃``. ``alpha=0`` is
least squares (minimum-norm solution, ``numpy.linalg.lstsq``).

Kernel ridge (:func:`kernel_ridge_predict`, :func:`kernel_ridge_loo_residuals`,
:func:`kernel_ridge_loo_predict`) follows sklearn's ``KernelRidge``: ``alpha`` is added to
the diagonal of the RBF Gram matrix, whose diagonal is 1, so it too is relative to the
kernel's scale.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.spatial.distance
from numpy.typing import ArrayLike

__all__ = [
    "LOO_ALPHAS",
    "RidgeFit",
    "fit_ridge",
    "hungarian_match",
    "kernel_ridge_loo_predict",
    "kernel_ridge_loo_residuals",
    "kernel_ridge_predict",
    "median_heuristic_gamma",
    "predict_linear",
    "r2_score",
]

# A column whose standard deviation is below this fraction of its largest absolute
# value is treated as constant.
_CONST_RTOL = 1e-12

# Ridge candidates for the leave-one-out choice of the kernel ridge: half-decade steps
# from 1e-4 to 1e2, relative to the unit diagonal of the RBF Gram matrix.
LOO_ALPHAS = np.logspace(-4.0, 2.0, 13)


# --------------------------------------------------------------------------------------
# Validation and standardisation
# --------------------------------------------------------------------------------------


def as_matrix(x: ArrayLike, name: str, *, min_rows: int = 2) -> np.ndarray:
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



def constant_columns(x: np.ndarray, std: np.ndarray) -> np.ndarray:
    return std <= _CONST_RTOL * np.abs(x).max(axis=0)


def standardize(x: np.ndarray) -> np.ndarray:
    """Column-standardizes ``x`` ``[n, d]``; constant columns become all zeros."""
    xc = x - x.mean(axis=0)
    std = np.sqrt(np.mean(xc**2, axis=0))
    const = constant_columns(x, std)
    out = xc / np.where(const, 1.0, std)
    out[:, const] = 0.0
    return out


def standardizer(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of training columns; constant columns get scale 1."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    return mean, np.where(constant_columns(x_train, std), 1.0, std)



def even_subsample(idx: np.ndarray, max_size: int | None) -> np.ndarray:
    """At most ``max_size`` evenly spaced entries of ``idx`` (deterministic)."""
    if max_size is None or len(idx) <= max_size:
        return idx
    if max_size < 2:
        raise ValueError(f"subsample size must be at least 2, got {max_size}")
    return idx[(np.arange(max_size) * len(idx)) // max_size]


# --------------------------------------------------------------------------------------
# Ridge regression and R²
# --------------------------------------------------------------------------------------


class RidgeFit(NamedTuple):
    """A fitted linear read-out ``y ≈ x @ w + b`` on the original (raw) features.

    Attributes:
        w: ``[d, m]`` weights (``[d]`` if the targets were 1-D), in raw-feature units (the
            rescaling of :func:`fit_ridge` is folded in).
        b: ``[m]`` intercept (``[]`` for 1-D targets).
    """

    w: np.ndarray
    b: np.ndarray


def _as_targets(y: ArrayLike, n: int, name: str = "y") -> tuple[np.ndarray, bool]:
    arr = np.asarray(y, dtype=np.float64)
    squeeze = arr.ndim == 1
    arr = as_matrix(arr[:, None] if squeeze else arr, name, min_rows=1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have n={n} rows like x, got shape {np.shape(y)}")
    return arr, squeeze


def fit_ridge(x: ArrayLike, y: ArrayLike, *, alpha: float = 1e-3,
              standardize: bool = True) -> RidgeFit:
    """Ridge regression with an unpenalised intercept, in closed form (float64).

    See the module docstring for the penalty convention: ``alpha · n`` is added to the
    diagonal of the centred Gram matrix of features rescaled to unit variance (per feature
    with ``standardize``, else by the root mean feature variance). Constant features get
    weight 0.

    Args:
        x: ``[n, d]`` features.
        y: ``[n, m]`` or ``[n]`` targets.
        alpha: penalty per sample in units of feature variance (>= 0; 0 is least squares).
        standardize: rescale each feature to unit variance (else all by one factor).

    Returns:
        A :class:`RidgeFit` on raw features (``w`` ``[d, m]`` or ``[d]``, ``b``).

    Raises:
        ValueError: non-2-D ``x``, NaN/inf, mismatched rows, or ``alpha < 0``.
    """
    if not (np.isscalar(alpha) and np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite float >= 0, got {alpha!r}")
    xa = as_matrix(x, "x", min_rows=1)
    ya, squeeze = _as_targets(y, xa.shape[0])
    n = xa.shape[0]
    x_mean, x_scale = standardizer(xa)
    if not standardize:
        x_scale = np.full_like(x_scale, np.sqrt(np.mean((xa - x_mean) ** 2)) or 1.0)
    xs = (xa - x_mean) / x_scale
    xs[:, constant_columns(xa, xa.std(axis=0))] = 0.0
    y_mean = ya.mean(axis=0)
    if alpha == 0:
        w, *_ = np.linalg.lstsq(xs, ya - y_mean, rcond=None)
    else:
        gram = xs.T @ xs
        gram[np.diag_indices_from(gram)] += alpha * n
        w = scipy.linalg.solve(gram, xs.T @ (ya - y_mean), assume_a="pos")
    w = w / x_scale[:, None]
    b = y_mean - x_mean @ w
    return RidgeFit(w[:, 0], b[0]) if squeeze else RidgeFit(w, b)


def predict_linear(fit: RidgeFit, x: ArrayLike) -> np.ndarray:
    """``x @ w + b``: ``[n, d] -> [n, m]`` (``[n]`` for 1-D targets)."""
    xa = as_matrix(x, "x", min_rows=1)
    if xa.shape[1] != fit.w.shape[0]:
        raise ValueError(f"x must have d={fit.w.shape[0]} columns like the fit, got shape "
                         f"{xa.shape}")
    return xa @ fit.w + fit.b


def r2_score(y: ArrayLike, pred: ArrayLike, *, groups: int | None = None,
             name: str = "y") -> np.ndarray:
    """Coefficient of determination ``1 − SS_res / SS_tot`` per column or group of columns.

    Equals ``sklearn.metrics.r2_score(y, pred, multioutput="raw_values")`` per column. With
    ``groups=g`` the ``m`` columns are split into ``g`` consecutive groups of ``m / g`` and
    the sums of squares are added within each group (e.g. the ``K`` probabilities of one
    categorical latent scored together).

    Args:
        y: ``[n, m]`` targets (``[n]`` is one column).
        pred: predictions, the shape of ``y``.
        groups: number of column groups (``None``: every column alone).
        name: what ``y`` is called in error messages.

    Returns:
        ``[m]`` (or ``[groups]``) scores; can be negative.

    Raises:
        ValueError: mismatched shapes, ``m`` not divisible by ``groups``, or a column
            (group) whose targets are constant: R² is undefined for it.
    """
    ya = np.asarray(y, dtype=np.float64)
    ya = as_matrix(ya[:, None] if ya.ndim == 1 else ya, name, min_rows=2)
    pa = np.asarray(pred, dtype=np.float64)
    pa = pa[:, None] if pa.ndim == 1 else pa
    if pa.shape != ya.shape:
        raise ValueError(f"pred must have the shape of {name} {ya.shape}, got "
                         f"{np.shape(pred)}")
    n, m = ya.shape
    g = m if groups is None else groups
    if g < 1 or m % g:
        raise ValueError(f"groups must divide the {m} columns of y, got groups={groups}")
    ss_res = ((ya - pa) ** 2).reshape(n, g, -1).sum((0, 2))
    ss_tot = ((ya - ya.mean(axis=0)) ** 2).reshape(n, g, -1).sum((0, 2))
    scale = np.abs(ya).reshape(n, g, -1).max((0, 2))
    const = np.sqrt(ss_tot / n) <= _CONST_RTOL * scale
    if np.any(const):
        what = "columns" if groups is None else "column groups"
        raise ValueError(f"{name} {what} {np.flatnonzero(const).tolist()} are constant; R² "
                         "is undefined for them")
    return 1.0 - ss_res / ss_tot


def hungarian_match(weights: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum-weight one-to-one matching of rows to columns (Hungarian algorithm).

    ``scipy.optimize.linear_sum_assignment(weights, maximize=True)``; rectangular matrices
    match ``min(rows, cols)`` pairs.

    Args:
        weights: ``[a, b]`` matching weights (e.g. absolute correlations or cosines).

    Returns:
        ``(rows, cols, perm)``: the matched pairs (``rows`` ascending) and ``perm`` ``[a]``
        with ``perm[i]`` the column matched to row ``i`` or ``-1`` if unmatched.
    """
    w = as_matrix(weights, "weights", min_rows=1)
    rows, cols = scipy.optimize.linear_sum_assignment(w, maximize=True)
    perm = np.full(w.shape[0], -1, dtype=np.int64)
    perm[rows] = cols
    return rows, cols, perm


# --------------------------------------------------------------------------------------
# Kernel ridge
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
    arr = as_matrix(x, "x")
    sub = arr[even_subsample(np.arange(arr.shape[0]), max_points)]
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
    xtr = as_matrix(x_train, "x_train", min_rows=1)
    xte = as_matrix(x_test, "x_test", min_rows=1)
    y = np.asarray(y_train, dtype=np.float64)
    squeeze = y.ndim == 1
    ytr = as_matrix(y[:, None] if squeeze else y, "y_train", min_rows=1)
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
    xtr = as_matrix(x_train, "x_train")
    y = np.asarray(y_train, dtype=np.float64)
    squeeze = y.ndim == 1
    ytr = as_matrix(y[:, None] if squeeze else y, "y_train")
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


def kernel_ridge_loo_predict(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    *,
    gamma: float,
    alphas: ArrayLike = LOO_ALPHAS,
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel ridge (as :func:`kernel_ridge_predict`) with ``alpha`` chosen per target column.

    The ridge of each target column is the candidate in ``alphas`` with the smallest exact
    leave-one-out error on the training set (:func:`kernel_ridge_loo_residuals`, one
    eigendecomposition for all candidates); ties go to the smallest ``alpha``.

    Args:
        x_train: ``[n_train, d]`` training inputs.
        y_train: ``[n_train, k]`` training targets.
        x_test: ``[n_test, d]`` test inputs.
        gamma: RBF inverse squared length scale (> 0).
        alphas: ``[n_alphas]`` candidate ridges (each > 0).
        block_size: Test rows per kernel block.

    Returns:
        ``([n_test, k] predictions, [k] selected alphas)``.
    """
    xtr = as_matrix(x_train, "x_train")
    xte = as_matrix(x_test, "x_test", min_rows=1)
    ytr, _ = _as_targets(y_train, xtr.shape[0], "y_train")
    alphas = _check_alphas(alphas)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    s, u = _gram_eigh(_rbf_gram(xtr, xtr, gamma))
    loo_mse = np.mean(_loo_residuals(s, u, ytr, alphas) ** 2, axis=1)  # [A, k]
    best = alphas[np.argmin(loo_mse, axis=0)]
    # c = (K + alpha_j I)^-1 y_j = U diag(1 / (s + alpha_j)) U^T y_j, per column j.
    coef = u @ ((u.T @ ytr) / (s[:, None] + best[None, :]))
    return _rbf_predict(xtr, coef, xte, gamma, block_size), best
