"""Argument checks shared by every splat implementation.

Errors name the argument and its actual shape, dtype or device, so that a wrong call
fails here with a ValueError instead of inside a kernel.
"""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_splat_args(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    features: torch.Tensor,
    opacity: torch.Tensor | None,
    height: int,
    width: int,
    cutoff: float,
) -> None:
    """Raise ValueError unless the arguments describe one valid splat call.

    Expected: means [B, N, 2], scales [B, N, 2], rotations [B, N], features [B, N, C],
    opacity [B, N] or None, all floating point and on one device; height, width >= 1;
    cutoff > 0.
    """
    named = {"means": means, "scales": scales, "rotations": rotations, "features": features}
    if opacity is not None:
        named["opacity"] = opacity
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    if features.dim() != 3:
        raise ValueError(f"features must be [B, N, C], got shape {_shape(features)}")
    B, N, C = features.shape
    if C < 1:
        raise ValueError(f"features must have at least one channel, got shape {_shape(features)}")
    expected = {"means": (B, N, 2), "scales": (B, N, 2), "rotations": (B, N), "opacity": (B, N)}
    for name, t in named.items():
        if name != "features" and tuple(t.shape) != expected[name]:
            want = "[" + ", ".join(map(str, expected[name])) + "]"
            raise ValueError(
                f"{name} must have shape {want} to match features {_shape(features)}, "
                f"got {_shape(t)}"
            )
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all splat inputs must be on one device, got {listing}")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(cutoff, (int, float)) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive number, got {cutoff!r}")
