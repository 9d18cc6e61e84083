"""Fréchet distance and precision/recall against independent references and known answers."""

import numpy as np
import pytest
import scipy.linalg

from eval.frechet import frechet_distance, statistics
from eval.prdc import knn_radii, precision_recall


def _random_stats(rng, d):
    a = rng.standard_normal((d, 3 * d))
    b = rng.standard_normal((d, 3 * d)) * 0.7 + a * 0.3
    return rng.standard_normal(d), a @ a.T / d, rng.standard_normal(d), b @ b.T / d


def _scipy_reference(mu1, s1, mu2, s2):
    """The textbook formula with scipy's sqrtm, in float64."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("d", [2, 16, 128])
@pytest.mark.parametrize("method", ["eig", "sqrtm"])
def test_matches_scipy_reference(d, method):
    stats = _random_stats(np.random.default_rng(d), d)
    expected = _scipy_reference(*stats)
    assert frechet_distance(*stats, method=method) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_diagonal_closed_form():
    """Commuting (diagonal) covariances: d^2 = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    mu1, mu2 = rng.standard_normal(50), rng.standard_normal(50)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_identical_and_rank_deficient_statistics_give_zero():
    feats = np.random.default_rng(2).standard_normal((40, 64))  # N < D: singular covariance
    mu, sigma = statistics(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree in shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_knn_radius_brute_force():
    x = np.random.default_rng(3).standard_normal((30, 5))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    expected = np.sort(d, axis=1)[:, 3]  # self at 0, then 1st, 2nd, 3rd neighbour
    np.testing.assert_allclose(knn_radii(__import__("torch").tensor(x), 3, block=7).numpy(),
                               expected, rtol=1e-12)


def test_precision_recall_known_answers():
    rng = np.random.default_rng(4)
    cluster_a = rng.standard_normal((200, 8)) * 0.1
    cluster_b = rng.standard_normal((200, 8)) * 0.1 + 50
    real = np.concatenate([cluster_a, cluster_b])
    assert precision_recall(real, real) == (1.0, 1.0)
    # mode dropping: samples are exactly one of the two modes -> precision 1, recall 1/2
    assert precision_recall(real, cluster_a) == (1.0, 0.5)
    # samples off the data manifold: precision 0, recall 0
    assert precision_recall(real, cluster_a + 1000) == (0.0, 0.0)
