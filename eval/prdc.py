"""Improved precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991).

Each set's manifold is the union of balls around its points, with radius the distance
to the point's k-th nearest neighbour within the set (k = 3). Precision: the fraction
of generated points inside the real manifold; recall: the fraction of real points
inside the generated manifold. Distances in float64, in row blocks to bound memory.
"""

import torch

DEFAULT_K = 3


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row."""
    if x.shape[0] <= k:
        raise ValueError(f"need more than k={k} points, got {x.shape[0]}")
    radii = []
    for i in range(0, x.shape[0], block):
        d = _pairwise(x[i:i + block], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
              block: int = 1024) -> float:
    inside = []
    for i in range(0, points.shape[0], block):
        d = _pairwise(points[i:i + block], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside).double().mean().item()


def precision_recall(real, fake, k: int = DEFAULT_K) -> tuple[float, float]:
    real = torch.as_tensor(real, dtype=torch.float64)
    fake = torch.as_tensor(fake, dtype=torch.float64)
    precision = _coverage(fake, real, knn_radii(real, k))
    recall = _coverage(real, fake, knn_radii(fake, k))
    return precision, recall
