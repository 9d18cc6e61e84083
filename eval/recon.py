"""Per-image reconstruction metrics on float images [N, 3, H, W] in [0, 1].

PSNR: 10 log10(1 / MSE) per image (never over a whole batch). SSIM has two
conventions, named in every result:
  "wang" (default): Wang et al. 2004, an 11-tap Gaussian window (sigma 1.5), K1 = 0.01,
      K2 = 0.03, population statistics, data range 1 (= skimage with
      ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``);
  "llamagen": what LlamaGen's tokenizer evaluation reports: skimage's defaults (7 x 7
      uniform window, sample covariance) with ``data_range=2.0`` on images in [0, 1],
      which inflates the stabilising constants 4x and reads 0.05-0.14 higher. (LlamaGen
      also rounds its reconstructions to uint8 first; we do not.)
Both average over the valid (unpadded) window positions and the channels.
"""

import torch
import torch.nn.functional as F

SSIM_SIGMA, SSIM_RADIUS, K1, K2 = 1.5, 5, 0.01, 0.03
SSIM_CONVENTIONS = ("wang", "llamagen")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] or float in [-1, 1] -> float64 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.double() / 255
    return ((images.double() + 1) / 2).clamp(0, 1)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two [N, C, H, W] batches of one shape, got {list(a.shape)} "
                         f"and {list(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N] PSNR in dB of images in [0, 1]; identical images give inf."""
    _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def check_convention(convention: str) -> str:
    if convention not in SSIM_CONVENTIONS:
        raise ValueError(f"SSIM convention must be one of {SSIM_CONVENTIONS}, "
                         f"got {convention!r}")
    return convention


def _window(convention: str, dtype, device) -> tuple[torch.Tensor, float, float]:
    """1-D window, data range and covariance normalisation of an SSIM convention."""
    if check_convention(convention) == "wang":
        x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
        g = torch.exp(-x * x / (2 * SSIM_SIGMA**2))
        return g / g.sum(), 1.0, 1.0
    return torch.full((7,), 1 / 7, dtype=dtype, device=device), 2.0, 49 / 48  # llamagen


def ssim(a: torch.Tensor, b: torch.Tensor, convention: str = "wang") -> torch.Tensor:
    """[N] mean SSIM of images in [0, 1] (at least window-sized: 11 x 11, or 7 x 7)."""
    _check_pair(a, b)
    a, b = a.double(), b.double()
    channels = a.shape[1]
    g, data_range, cov_norm = _window(convention, a.dtype, a.device)
    if min(a.shape[-2:]) < len(g):
        raise ValueError(f"SSIM ({convention}) needs images of at least {len(g)} x {len(g)} "
                         f"pixels, got {a.shape[-2]} x {a.shape[-1]}")
    kx = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    ky = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)

    def blur(x):  # separable, valid positions only
        return F.conv2d(F.conv2d(x, kx, groups=channels), ky, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = cov_norm * (blur(a * a) - mu_a**2)
    var_b = cov_norm * (blur(b * b) - mu_b**2)
    cov = cov_norm * (blur(a * b) - mu_a * mu_b)
    c1, c2 = (K1 * data_range)**2, (K2 * data_range)**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
