"""Where the Gaussians start: a fixed grid, or a layout derived from each image.

Both land on position-bin centres, so a Gaussian that does not move costs nothing to
quantise, and a tiny move cannot flip its token (a cell centre of a grid whose side
divides the bin count evenly sits exactly on a bin *edge*: that trap is snapped away).

``content_layout`` is deterministic and batched (no Python loop over images): weighted
k-means of the image's content mass (|luminance - median luminance|: the ink of a
digit, the detail of a photograph), seeded greedily (each seed at the pixel of largest
mass x squared distance to the seeds so far, the deterministic variant of k-means++),
refined by Lloyd iterations, snapped to bin centres and sorted into raster order.
"""

import math

import torch
import torch.nn.functional as F

MASS_SIDE = 64  # the mass map is pooled to at most 64 x 64 before clustering
BACKGROUND = 1e-4  # mass everywhere, relative to the image's mean mass: a blank image still
# gets a layout (seeds spread over it), and clusters are never empty


def snap_to_bins(xy: torch.Tensor, bins: int) -> torch.Tensor:
    """Nearest position-bin centre of each normalised coordinate (bins uniform on [-1, 1])."""
    index = ((xy + 1) * (bins / 2)).floor().clamp(0, bins - 1)
    return (2 * index + 1) / bins - 1


def grid_layout(num: int, bins: int) -> torch.Tensor:
    """[num, 2] raster-ordered grid of sqrt(num) x sqrt(num) cell centres, on bin centres."""
    side = math.isqrt(num)
    if side * side != num:
        raise ValueError(f"a grid layout needs a square number of Gaussians, got {num}")
    # the nearest bin centre to each cell centre, a tie (cell centre on a bin edge) broken
    # towards the middle of the map so the grid stays symmetric
    u = (2 * torch.arange(side, dtype=torch.float64) + 1) * bins / (2 * side) - 0.5
    mid = (bins - 1) / 2
    index = torch.where(u > mid, torch.ceil(u - 0.5), torch.floor(u + 0.5)).clamp(0, bins - 1)
    centres = (2 * index + 1) / bins - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x, y], -1).reshape(num, 2).float()


def content_mass(images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, S, S] in [-1, 1] -> mass [B, m, m], m = min(S, 64), non-negative."""
    luma = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).float()
    side = min(luma.shape[-1], MASS_SIDE)
    luma = F.adaptive_avg_pool2d(luma[:, None], side)[:, 0]  # [B, m, m]
    median = luma.flatten(1).median(dim=1).values[:, None, None]
    mass = (luma - median).abs()
    floor = BACKGROUND * mass.flatten(1).mean(1).clamp_min(1e-6)[:, None, None]
    return mass + floor


@torch.no_grad()
def content_layout(images: torch.Tensor, num: int, bins: int, iters: int = 10) -> torch.Tensor:
    """images [B, 3, S, S] -> xy [B, num, 2] on bin centres, raster order; deterministic."""
    mass = content_mass(images)  # [B, m, m]
    B, m = mass.shape[0], mass.shape[-1]
    c = (2 * torch.arange(m, device=images.device, dtype=torch.float32) + 1) / m - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    pixels = torch.stack([x, y], -1).reshape(1, m * m, 2)  # [1, M, 2]
    w = mass.reshape(B, m * m)  # [B, M]
    # greedy seeding: the heaviest pixel, then the largest mass x distance^2 to the seeds
    d2 = torch.full_like(w, float("inf"))
    seeds = []
    for _ in range(num):
        score = torch.where(torch.isinf(d2), w, w * d2)
        pick = score.argmax(1)  # [B]
        seed = pixels[0, pick]  # [B, 2]
        seeds.append(seed)
        d2 = torch.minimum(d2, ((pixels - seed[:, None]) ** 2).sum(-1))
    centres = torch.stack(seeds, 1)  # [B, num, 2]
    for _ in range(iters):  # Lloyd: every pixel to its nearest centre, centres to mass means
        assign = torch.cdist(pixels.expand(B, -1, -1), centres).argmin(-1)  # [B, M]
        onehot = F.one_hot(assign, num).float() * w[..., None]  # [B, M, num]
        total = onehot.sum(1)  # [B, num]
        sums = onehot.transpose(1, 2) @ pixels.expand(B, -1, -1)  # [B, num, 2]
        means = sums / total.clamp_min(1e-12)[..., None]
        centres = torch.where(total[..., None] > 0, means, centres)
    xy = snap_to_bins(centres, bins)
    index = ((xy + 1) * (bins / 2)).floor()  # the position token's bins (centres: k + 1/2)
    key = index[..., 1] * bins + index[..., 0]
    order = torch.sort(key, dim=1, stable=True).indices
    return torch.gather(xy, 1, order[..., None].expand(-1, -1, 2))
