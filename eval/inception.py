"""Inception-v3 (inception-2015-12-05) features for FID, sFID and IS.

Images are resized to 299 x 299 and mapped to (x - 128) / 128, then run through our
own copy of the network (eval/inception_net.py) layer by layer, which lets us tap the
spatial features of sFID on the way: the first 7 channels of ``mixed_6``'s 1x1 branch
(``mixed_6/conv``), 17 x 17 x 7 = 2023 values, flattened in TensorFlow's (row, column,
channel) order as the ADM evaluator flattens them, so that they match the ``mu_s`` /
``sigma_s`` stored in its reference batches. ``pool`` is the 2048-d pool3 vector of
FID; ``logits`` (1008 classes) exist only when the weights carry the classifier head
(NVIDIA's file does, the packaged trunk does not), and are computed as ADM computes
them for the Inception Score: pool3 times the head's weight, without its bias.

Resize conventions (recorded in every result):
  "tf1-bilinear" (default): TensorFlow 1's ResizeBilinear without half-pixel centres,
      which the ADM evaluator's graph applies to its float input: output pixel d reads
      the source at d * in / out (floor and the next pixel, clamped at the border).
      Use it for every comparison with ADM reference batches and published tables.
  "torch-bilinear": ``F.interpolate(bilinear, align_corners=False)`` (half-pixel
      centres), which is clean-fid's ``legacy_pytorch``; not ADM's resize.
  "clean": clean-fid's PIL bicubic with antialias on each float channel.

Weights: the tensors of a TorchScript file (NVIDIA's, or the packaged trunk) are read
once without torch.jit (eval/torchscript_reader.py, which runs none of the file's code)
and cached as safetensors under ~/.cache/gtgen/inception/<file sha1>.safetensors; a
.safetensors file of those tensors can also be given directly.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.files import atomic_write_bytes, load_weights
from eval.inception_net import InceptionV3
from eval.torchscript_reader import NotTorchScript, read_tensors
from eval.weights import ResolvedWeights

RESIZES = ("tf1-bilinear", "torch-bilinear", "clean")
ADM_RESIZE = "tf1-bilinear"
SPATIAL_CHANNELS = 7
CACHE = Path.home() / ".cache" / "gtgen" / "inception"


def _our_name(key: str) -> str | None:
    """``net.layers.conv.weight`` -> ``layers.conv.weight``; None outside the network."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in ("layers", "output"):
            return ".".join(parts[i:])
    return None


def inception_state(weights: ResolvedWeights) -> dict[str, torch.Tensor]:
    """The network's tensors by our names, from the safetensors cache (or converted from
    the TorchScript file once and cached)."""
    from safetensors.torch import load_file, save


    path = Path(weights.path)
    if path.suffix == ".safetensors":

        return load_weights(path)
    cached = CACHE / f"{weights.sha1}.safetensors"
    if cached.exists():
        try:
            return load_file(str(cached))
        except Exception:  # a damaged cache entry: convert again and overwrite it
            pass
    try:
        tensors = read_tensors(path)
    except (NotTorchScript, OSError) as err:
        raise ValueError(f"Inception weights {path}: not a TorchScript file ({err})") from None
    state = {name: t.contiguous() for key, t in tensors.items()
             if (name := _our_name(key)) is not None}
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cached, save(state))
    return state


def build_network(state: dict[str, torch.Tensor], where: str) -> InceptionV3:
    """InceptionV3 (with the classifier when the tensors hold one) loaded strictly."""
    net = InceptionV3(head="output.weight" in state)
    if net.output is not None and "output.bias" not in state:
        state = {**state, "output.bias": torch.zeros(net.output.out_features)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ValueError(f"Inception weights {where}: not the inception-2015-12-05 network "
                         f"({lines[1] if len(lines) > 1 else lines[0]})") from None
    return net.eval()


class InceptionFeatures(torch.nn.Module):
    """uint8 images [N, H, W, 3] (numpy or tensor) -> dict of pool, spatial (and logits)."""

    def __init__(self, weights: ResolvedWeights, resize: str = ADM_RESIZE):
        super().__init__()
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
        self.weights, self.resize = weights, resize
        self.net = build_network(inception_state(weights), weights.path)
        self.layers = list(self.net.layers.named_children())
        # ADM's IS multiplies by the classifier's matrix alone: without one, no logits
        self.head_weight = None if self.net.output is None else self.net.output.weight

    @property
    def device(self) -> torch.device:
        return self.net.layers.conv.weight.device

    @property
    def has_logits(self) -> bool:
        return self.head_weight is not None

    def preprocess(self, images) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, 299, 299] in [-1, 1)."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} "
                             f"{list(images.shape)}")
        x = images.to(self.device).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (299, 299):
            if self.resize == "tf1-bilinear":
                x = tf1_resize_bilinear(x, 299)
            elif self.resize == "torch-bilinear":
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
                spatial = adm_spatial(layer.conv(x))
            x = layer(x)
        out = {"pool": x.flatten(1).double().cpu(), "spatial": spatial.double().cpu()}
        if self.head_weight is not None:
            out["logits"] = head_logits(x.flatten(1), self.head_weight).double().cpu()
        return out


def adm_spatial(conv: torch.Tensor) -> torch.Tensor:
    """mixed_6/conv output [N, C, 17, 17] -> [N, 17 * 17 * 7] in ADM's order.

    ADM takes ``spatial[..., :7]`` of the NHWC tensor and reshapes it to [N, -1], so
    the channel index runs fastest: (row, column, channel)."""
    return conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)


def head_logits(pool: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[N, 2048] pool3 -> [N, 1008] logits as ADM's Inception Score takes them: the
    classifier's matrix product only (``softmax/logits/MatMul``), no bias."""
    return pool @ weight.to(pool.dtype).t()


def tf1_resize_weights(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] float64 interpolation matrix of TF1 ResizeBilinear along one axis
    (align_corners=False, half_pixel_centers=False).

    TensorFlow computes the source coordinate in float32: s = float(d) * (n_in / n_out),
    reads pixels floor(s) and min(ceil(s), n_in - 1), weighted 1 - (s - floor(s)) and
    s - floor(s)."""
    scale = np.float32(n_in / n_out)
    s = np.arange(n_out, dtype=np.float32) * scale
    lo = np.floor(s)
    frac = (s - lo).astype(np.float64)
    lo = lo.astype(np.int64)
    hi = np.minimum(np.ceil(s).astype(np.int64), n_in - 1)
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(w, (rows, lo), 1 - frac)
    np.add.at(w, (rows, hi), frac)
    return torch.from_numpy(w)


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] float -> [N, C, size, size] with TF1's ResizeBilinear (separable)."""
    wy = tf1_resize_weights(x.shape[-2], size).to(x.device, x.dtype)
    wx = tf1_resize_weights(x.shape[-1], size).to(x.device, x.dtype)
    return wy @ x @ wx.t()


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
