"""Evaluators with reset / update / result, usable inside training loops.

``GenerationEvaluator``: feed uint8 samples, get FID, sFID, IS, precision and recall
against a reference. ``ReconstructionEvaluator``: feed (real, reconstruction) pairs,
get per-image PSNR / SSIM / LPIPS means and rFID of the reconstructions against the
real images fed (the stated reference).
"""

import numpy as np
import torch
from tqdm import tqdm

from eval.frechet import frechet_distance, statistics
from eval.inception import InceptionFeatures
from eval.metrics import GENERATION_METRICS, IS_SPLIT_SIZE, METRICS, Context, Unavailable
from eval.recon import check_convention, psnr, ssim, to_unit
from eval.sets import ImageSet

IS_CONVENTION = ("ADM: softmax of pool3 x classifier weight (no bias), "
                 f"mean over consecutive splits of {IS_SPLIT_SIZE} samples")


def extract(extractor: InceptionFeatures, images, batch_size: int = 50,
            desc: str = "features", progress: bool = True) -> dict[str, np.ndarray]:
    """Inception features of uint8 images [N, H, W, 3] (an array, or an ``ImageSet``
    streamed batch by batch) with a progress bar in images."""
    if isinstance(images, ImageSet):
        total, batches = images.count, images.batches(batch_size)
    else:
        total = len(images)
        batches = (images[i:i + batch_size] for i in range(0, total, batch_size))
    parts: dict[str, list] = {}
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            for key, value in extractor(batch).items():
                parts.setdefault(key, []).append(value.numpy())
            bar.update(len(batch))
    if not parts:
        raise ValueError(f"{desc}: no images could be read")
    return {k: np.concatenate(v) for k, v in parts.items()}


class Reference:
    """Reference features/statistics and a sentence saying what they are."""

    def __init__(self, description: str, pool=None, spatial=None, stats=None):
        self.description = description
        self.pool, self.spatial = pool, spatial
        stats = dict(stats or {})
        if "mu" not in stats and pool is not None:
            stats["mu"], stats["sigma"] = statistics(pool)
        if "mu_s" not in stats and spatial is not None:
            stats["mu_s"], stats["sigma_s"] = statistics(spatial)
        self.stats = stats


class GenerationEvaluator:
    def __init__(self, extractor: InceptionFeatures, reference: Reference,
                 metrics=GENERATION_METRICS, batch_size: int = 50, progress: bool = True):
        unknown = set(metrics) - set(GENERATION_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {GENERATION_METRICS}")
        self.extractor, self.reference, self.metrics = extractor, reference, tuple(metrics)
        self.batch_size, self.progress = batch_size, progress
        self.reset()

    def reset(self) -> None:
        self._parts: dict[str, list] = {}

    def update(self, images: np.ndarray) -> None:
        for key, value in extract(self.extractor, images, self.batch_size, "samples",
                                  self.progress).items():
            self._parts.setdefault(key, []).append(value)

    def result(self, fid_method: str = "eig") -> dict:
        feats = {k: np.concatenate(v) for k, v in self._parts.items()}
        if not feats:
            raise ValueError("no samples were given to the evaluator")
        ref, out, unavailable = self.reference, {}, {}
        context = Context(feats, ref, fid_method, self.extractor.device,
                          self.extractor.weights.source, {})
        for name in self.metrics:
            try:
                out.update(METRICS[name].compute(context))
            except Unavailable as why:
                unavailable[name] = str(why)
        return {
            "metrics": out,
            "unavailable": unavailable,
            "num_samples": len(feats["pool"]),
            "reference": ref.description,
            "weights": self.extractor.weights.to_dict(),
            "resize": self.extractor.resize,
            "is_convention": IS_CONVENTION,
            "fid_method": fid_method,
        }


class ReconstructionEvaluator:
    """Per-image PSNR/SSIM/LPIPS means; rFID of reconstructions against the real inputs."""

    def __init__(self, lpips=None, extractor: InceptionFeatures | None = None,
                 real_features: np.ndarray | None = None, ssim_convention: str = "wang"):
        """real_features: pool features of the same real images, in the order ``update``
        will see them, computed once by the caller (saves an Inception pass per model).
        ssim_convention: "wang" or "llamagen" (see ``eval.recon``)."""

        self.lpips, self.extractor, self.real_features = lpips, extractor, real_features
        self.ssim_convention = check_convention(ssim_convention)
        self.reset()

    def reset(self) -> None:
        self.values: dict[str, list] = {"psnr": [], "ssim": [], "lpips": []}
        self._real, self._recon = [], []

    def update(self, real: torch.Tensor, recon: torch.Tensor) -> None:
        """real, recon: [N, 3, H, W] in [-1, 1] (or uint8)."""

        a, b = to_unit(real), to_unit(recon)
        self.values["psnr"].append(psnr(a, b))
        self.values["ssim"].append(ssim(a, b, self.ssim_convention))
        if self.lpips is not None:
            with torch.no_grad():
                self.values["lpips"].append(self.lpips(a.float() * 2 - 1, b.float() * 2 - 1).cpu())
        if self.extractor is not None:
            def u8(x):
                return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            if self.real_features is None:
                self._real.append(extract(self.extractor, u8(a), progress=False)["pool"])
            self._recon.append(extract(self.extractor, u8(b), progress=False)["pool"])

    def result(self) -> dict:
        out = {k: float(torch.cat(v).double().mean()) for k, v in self.values.items() if v}
        info = {"metrics": out, "num_images": int(sum(len(v) for v in self.values["psnr"])),
                "ssim_convention": self.ssim_convention}
        if self.extractor is not None:
            recon = np.concatenate(self._recon)
            real = np.concatenate(self._real) if self.real_features is None else \
                self.real_features[:len(recon)]
            out["rfid"] = frechet_distance(*statistics(recon), *statistics(real))
            info["rfid_reference"] = "the real images given to this evaluation"
            info["weights"] = self.extractor.weights.to_dict()
        if self.lpips is not None:
            info["lpips_backbone"] = self.lpips.vgg_info
        return info
