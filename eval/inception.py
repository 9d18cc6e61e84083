"""Inception-v3 (inception-2015-12-05) features for FID, sFID and IS.

Images are resized to 299 x 299 and mapped to (x - 128) / 128, then run through the
TorchScript trunk layer by layer, which lets us tap the spatial features of sFID on
the way: the first 7 channels of ``mixed_6``'s 1x1 branch (``mixed_6/conv``), 7 x 17 x
17 = 2023 values, as the ADM evaluator defines them. ``pool`` is the 2048-d pool3
vector of FID; ``logits`` (1008 classes) exist only when the weights carry the
classifier head (NVIDIA's file does, the packaged trunk does not).

Resize conventions (recorded in every result):
  "tf-bilinear": bilinear, align_corners=False, no antialias, on float pixels: what
      the TF graph of the ADM evaluator does to its uint8 input (the default, for
      comparisons with ADM reference batches);
  "clean": clean-fid's PIL bicubic with antialias on each float channel.
"""

import numpy as np
import torch
import torch.nn.functional as F

from eval.weights import ResolvedWeights

RESIZES = ("tf-bilinear", "clean")
SPATIAL_CHANNELS = 7


def _trunk(module):
    if hasattr(module, "layers"):
        return module.layers
    if hasattr(module, "net") and hasattr(module.net, "layers"):
        return module.net.layers
    raise ValueError("the Inception TorchScript has no 'layers' trunk")


class InceptionFeatures(torch.nn.Module):
    """uint8 images [N, H, W, 3] (numpy or tensor) -> dict of pool, spatial (and logits)."""

    def __init__(self, weights: ResolvedWeights, resize: str = "tf-bilinear"):
        super().__init__()
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
        self.weights, self.resize = weights, resize
        self.module = torch.jit.load(weights.path, map_location="cpu").eval()
        self.layers = list(_trunk(self.module).named_children())
        self.head = getattr(self.module, "output", None)

    @property
    def has_logits(self) -> bool:
        return self.head is not None

    def preprocess(self, images) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, 299, 299] in [-1, 1)."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} "
                             f"{list(images.shape)}")
        device = next(iter(self.module.parameters())).device
        x = images.to(device).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (299, 299):
            if self.resize == "tf-bilinear":
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            else:
                x = _clean_resize(x)
        return (x - 128) / 128

    @torch.no_grad()
    def forward(self, images) -> dict[str, torch.Tensor]:
        x = self.preprocess(images)
        spatial = None
        for name, layer in self.layers:
            if name == "mixed_6":
                spatial = layer.conv(x)[:, :SPATIAL_CHANNELS].flatten(1)
            x = layer(x)
        out = {"pool": x.flatten(1).double().cpu(), "spatial": spatial.double().cpu()}
        if self.head is not None:
            out["logits"] = self.head(x.flatten(1)).double().cpu()
        return out


def _clean_resize(x: torch.Tensor) -> torch.Tensor:
    """clean-fid's resize: PIL bicubic (antialiased) per float channel to 299 x 299."""
    from PIL import Image

    out = np.empty((*x.shape[:2], 299, 299), dtype=np.float32)
    arr = x.cpu().numpy()
    for n in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[n, c].astype(np.float32), mode="F")
            out[n, c] = np.asarray(img.resize((299, 299), resample=Image.BICUBIC))
    return torch.from_numpy(out).to(x.device).clamp_(0, 255)
