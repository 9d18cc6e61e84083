"""The Fréchet distance between two Gaussians, computed stably in float64.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

"eig" (default): tr((S1 S2)^(1/2)) = sum sqrt(eigenvalues of A S2 A), with A = S1^(1/2)
from a symmetric eigendecomposition; A S2 A is symmetric positive semi-definite, so
its eigenvalues are real and >= 0 up to rounding (those under the rounding floor are
set to 0, which keeps the distance of a set to itself at 0 for rank-deficient
covariances). "sqrtm": scipy's
matrix square root of S1 S2, as pytorch-fid and clean-fid compute it.
"""

import numpy as np
import scipy.linalg

METHODS = ("eig", "sqrtm")


def _clip_rounding(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those below the rounding floor set to 0.

    eigh returns the zero eigenvalues of a rank-deficient covariance (fewer samples
    than dimensions) as +-1e-16 |lambda_max|; their square roots would add ~1e-8 each.
    """
    floor = w.size * np.finfo(np.float64).eps * max(np.abs(w).max(), 1e-300)
    return np.where(w > floor, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(_clip_rounding(w))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eig") -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    if method == "eig":
        a = _psd_sqrt(s1)
        m = a @ s2 @ a
        tr_covmean = np.sqrt(_clip_rounding(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    elif method == "sqrtm":
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # singular product: offset as pytorch-fid does
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
        tr_covmean = np.trace(covmean).real
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features, float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)
