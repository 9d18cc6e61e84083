"""Independent oracles for the splat op: a brute-force float64 loop and input makers."""

import math

import numpy as np
import torch

from kernels import DEFAULT_CUTOFF


def brute_force_splat(means, scales, rotations, features, opacity, height, width,
                      cutoff=DEFAULT_CUTOFF):
    """Literal transcription of the definition: loop over images, Gaussians and pixels.

    Builds Sigma = R diag(s)^2 R^T and inverts it with numpy, independently of the
    frame-coordinate formulation the implementations use.
    """
    means, scales, rotations, features = (np.asarray(t.detach().double().cpu())
                                          for t in (means, scales, rotations, features))
    B, N, C = features.shape
    opacity = (np.ones((B, N)) if opacity is None
               else np.asarray(opacity.detach().double().cpu()))
    out = np.zeros((B, C, height, width))
    for b in range(B):
        for i in range(N):
            t = rotations[b, i]
            rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
            sigma = rot @ np.diag(scales[b, i] ** 2) @ rot.T
            inv = np.linalg.inv(sigma)
            # normalised [-1, 1] -> pixel units, pixel centres at integers
            mean = np.array([(means[b, i, 0] + 1) * width / 2 - 0.5,
                             (means[b, i, 1] + 1) * height / 2 - 0.5])
            for y in range(height):
                for x in range(width):
                    d = np.array([x, y]) - mean
                    q = d @ inv @ d
                    if q <= cutoff:
                        out[b, :, y, x] += opacity[b, i] * math.exp(-0.5 * q) * features[b, i]
    return torch.from_numpy(out)


def random_gaussians(B, N, C, *, generator, dtype=torch.float64, device="cpu",
                     mean_range=1.2, scale_range=(0.3, 4.0), opacity=True):
    """Random splat inputs; means spread a little past the map so some fall off it."""
    g = generator

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    means = (rand(B, N, 2) * 2 - 1) * mean_range
    lo, hi = scale_range
    scales = torch.exp(math.log(lo) + rand(B, N, 2) * (math.log(hi) - math.log(lo)))
    rotations = (rand(B, N) * 2 - 1) * math.pi
    features = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    opac = rand(B, N) * 0.9 + 0.1 if opacity else None
    tensors = [means, scales, rotations, features] + ([opac] if opacity else [])
    tensors = [t.to(dtype=dtype, device=device) for t in tensors]
    return (*tensors, None) if not opacity else tuple(tensors)


def min_cutoff_margin(means, scales, rotations, height, width, cutoff=DEFAULT_CUTOFF):
    """Smallest |q - cutoff| over all Gaussian/pixel pairs (finite differences need > 0)."""
    mx = ((means[..., 0] + 1) * width / 2 - 0.5)[..., None].double()
    my = ((means[..., 1] + 1) * height / 2 - 0.5)[..., None].double()
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dx, dy = xs.flatten().double() - mx, ys.flatten().double() - my
    c, s = torch.cos(rotations.double())[..., None], torch.sin(rotations.double())[..., None]
    a = (c * dx + s * dy) / scales[..., 0:1].double()
    b = (c * dy - s * dx) / scales[..., 1:2].double()
    return ((a * a + b * b) - cutoff).abs().min().item()
