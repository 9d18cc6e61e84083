"""Vector quantisation with an EMA codebook, and the scalar geometry quantiser.

VectorQuantizer: nearest code by Euclidean distance (computed in fp32), codebook
updated by exponential moving averages of assignments (not by gradients),
initialised by k-means on the first training batch, with dead codes (EMA
usage below a fraction of a uniform code's share) restarted at random encoder
outputs. Gradients reach the encoder either straight through or by the rotation
trick (Fifty et al. 2024, arXiv 2410.06424).
Contract: ``forward(z [..., D]) -> (quantized [..., D], indices [...], losses)``;
``codes(indices) -> quantized``. With ``l2_norm`` (LlamaGen's VQ) encoder outputs are
normalised to unit length before the search and the codebook is kept on the unit
sphere (k-means centres, EMA means and restarts are normalised as they are written).

Distributed training: the trainer passes in ``set_collectives(reduce, broadcast)``, a
function that sums a tensor over ranks and one that copies rank 0's tensor, and the EMA
statistics and restarts stay identical everywhere; the model imports nothing distributed.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.config import QuantizerConfig


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def rotation_trick(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Value e, gradient through the rotation + rescaling that maps z onto e."""
    eps = 1e-8
    z_norm = z.norm(dim=-1, keepdim=True).clamp_min(eps)
    e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)
    u, w = (z / z_norm).detach(), (e / e_norm).detach()
    r = F.normalize(u + w, dim=-1, eps=eps).detach()
    rotated = z - 2 * (z * r).sum(-1, keepdim=True) * r + 2 * (z * u).sum(-1, keepdim=True) * w
    return rotated * (e_norm / z_norm).detach()


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("codebook", torch.randn(cfg.codebook_size, cfg.dim))
        self.register_buffer("ema_count", torch.ones(cfg.codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))
        self.reduce = _identity
        self.broadcast = _identity

    def set_collectives(self, reduce, broadcast) -> None:
        """Under data parallelism: ``reduce(t)`` sums t over ranks, ``broadcast(t)`` copies
        rank 0's t (both return it), so every rank's codebook stays the same."""
        self.reduce, self.broadcast = reduce, broadcast

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices [M] of the nearest codes to z [M, D], distances in fp32."""
        z, cb = z.float(), self.codebook.float()
        dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ cb.T + cb.pow(2).sum(1)[None]
        return dist.argmin(1)

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codebook)

    def _sphere(self, x: torch.Tensor) -> torch.Tensor:
        """x on the unit sphere with l2_norm, else x."""
        return F.normalize(x, dim=-1) if self.cfg.l2_norm else x

    @torch.no_grad()
    def _kmeans_init(self, z: torch.Tensor) -> None:
        k = self.cfg.codebook_size
        z = z[torch.isfinite(z).all(1)]  # once per run, so the host sync is harmless
        if z.shape[0] == 0:
            return  # nothing usable yet: initialise on the next batch
        g = torch.Generator(device="cpu").manual_seed(0)
        pick = torch.randint(0, z.shape[0], (k,), generator=g).to(z.device)
        centres = self.broadcast(z[pick].clone())
        for _ in range(self.cfg.kmeans_iters):
            self.codebook.copy_(centres)
            assign = self.nearest(z)
            sums = self.reduce(torch.zeros_like(centres).index_add_(0, assign, z))
            counts = self.reduce(torch.bincount(assign, minlength=k).float())
            centres = torch.where(counts[:, None] > 0,
                                  self._sphere(sums / counts.clamp_min(1)[:, None]), centres)
        self.codebook.copy_(centres)
        self.ema_sum.copy_(centres)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        k, decay = self.cfg.codebook_size, self.cfg.ema_decay
        # rows with NaN/inf (a diverging step the trainer will skip) must not poison the
        # codebook; masking instead of branching keeps this free of host syncs
        valid = torch.isfinite(z).all(1)
        z = torch.where(valid[:, None], z, torch.zeros_like(z))
        counts = self.reduce(torch.bincount(indices, weights=valid.float(), minlength=k))
        sums = self.reduce(torch.zeros(k, z.shape[1], device=z.device).index_add_(0, indices, z))
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (total + k * 1e-5) * total  # Laplace smoothing
        self.codebook.copy_(self._sphere(self.ema_sum / smoothed[:, None]))
        # dead: EMA usage below a fraction of a uniform code's share of this batch
        dead = self.ema_count < self.cfg.dead_fraction * z.shape[0] / k
        if dead.any():  # restart dead codes at random encoder outputs (same on all ranks)
            pick = torch.randint(0, z.shape[0], (k,), device=z.device)
            fresh = self.broadcast(z[pick].clone())
            self.codebook[dead] = fresh[dead]
            self.ema_sum[dead] = fresh[dead]
            self.ema_count[dead] = 1.0

    def forward(self, z: torch.Tensor):
        shape = z.shape
        flat = self._sphere(z.reshape(-1, shape[-1]).float())  # [M, D]
        if self.training and not bool(self.initialised):
            self._kmeans_init(flat.detach())
        indices = self.nearest(flat.detach())
        e = self.codes(indices)
        if self.training:
            self._ema_update(flat.detach(), indices)
        commitment = self.cfg.commitment * F.mse_loss(flat, e.detach())
        if not torch.is_grad_enabled():
            q = e  # exactly the code, so decode(indices) reproduces it bit for bit
        elif self.cfg.gradient == "rotation":
            q = rotation_trick(flat, e)
        else:
            q = e + (flat - flat.detach())  # straight-through; value exactly e
        stats = torch.bincount(indices, minlength=self.cfg.codebook_size).float()
        return (q.view(shape).to(z.dtype), indices.view(shape[:-1]),
                {"commitment": commitment, "code_counts": stats.detach()})


def uniform_quantize(x: torch.Tensor, lo: float, hi: float, bins: int):
    """Bin index of x in [lo, hi] and the straight-through bin centre."""
    width = (hi - lo) / bins
    index = ((x.detach() - lo) / width).floor().clamp(0, bins - 1).long()
    centre = lo + (index.to(x.dtype) + 0.5) * width
    return index, x + (centre - x).detach()


def uniform_dequantize(index: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    return lo + (index.float() + 0.5) * ((hi - lo) / bins)
