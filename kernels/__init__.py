"""Splatting featured 2D Gaussians into a feature map.

Conventions (written once here; every implementation follows them):

* ``out[b, :, y, x] = sum_i opacity[b, i] * exp(-q/2) * features[b, i, :]`` where
  ``q = d^T Sigma_i^-1 d``, ``d = (x, y) - mean_i`` in feature-map pixels, and
  ``Sigma_i = R(theta_i) diag(scale_i)^2 R(theta_i)^T``. A term is dropped where
  ``q > cutoff`` (default ``2 ln 255``: weights below 1/255 of the peak). A plain sum:
  no alpha compositing, no normalisation, no background.
* Means are in normalised ``[-1, 1]`` coordinates, ``means[..., 0]`` horizontal (x,
  width) and ``means[..., 1]`` vertical (y, height). Pixel *centres* sit at
  ``x_norm = (2 * col + 1) / W - 1`` (the ``align_corners=False`` convention), so -1
  and +1 are the outer edges of the map and ``col = (x_norm + 1) * W / 2 - 1/2``.
* Scales are standard deviations along the Gaussian's own axes, in feature-map
  pixels, and must be positive. Rotations are angles in radians; ``R(theta)`` turns
  the x axis towards the y axis.

Public entry point: :func:`kernels.splat.splat`. ``kernels.reference`` is the pure
PyTorch implementation (CPU path and test oracle); ``kernels.csrc`` holds the CUDA
kernel, compiled lazily by :mod:`kernels.build` on first use.

May import: nothing of the project.
"""

import math

DEFAULT_CUTOFF = 2.0 * math.log(255.0)
"""Mahalanobis^2 cut-off: ``exp(-q/2) >= 1/255`` exactly when ``q <= 2 ln 255``."""

from kernels.splat import splat  # noqa: E402  (the constant above is imported by splat)

__all__ = ["DEFAULT_CUTOFF", "splat"]
