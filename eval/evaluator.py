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
from eval.prdc import DEFAULT_K, precision_recall
from eval.recon import check_convention, psnr, ssim, to_unit
from eval.sets import ImageSet

GENERATION_METRICS = ("fid", "sfid", "is", "prec", "recall")
IS_SPLIT_SIZE = 5000
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


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) as the ADM evaluator computes it: over consecutive
    splits of ``split_size`` samples (the last may be shorter), mean and std of the
    split scores. ADM reports the mean only; at 50k samples that is 10 splits, at 10k
    it is 2 (not 10 splits of 1k, which reads lower: p(y) over fewer samples)."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for part in torch.split(log_p, split_size):
        log_py = torch.log(part.exp().mean(0, keepdim=True))
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(torch.exp(kl).item())
    return float(np.mean(scores)), float(np.std(scores))


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
        if "fid" in self.metrics:
            mu, sigma = statistics(feats["pool"])
            out["fid"] = frechet_distance(mu, sigma, ref.stats["mu"], ref.stats["sigma"],
                                          fid_method)
        if "sfid" in self.metrics:
            if "mu_s" in ref.stats:
                mu, sigma = statistics(feats["spatial"])
                out["sfid"] = frechet_distance(mu, sigma, ref.stats["mu_s"], ref.stats["sigma_s"],
                                               fid_method)
            else:
                unavailable["sfid"] = "the reference has no spatial statistics (mu_s, sigma_s)"
        if "is" in self.metrics:
            if "logits" in feats:
                out["is"], out["is_std"] = inception_score(feats["logits"])
            else:
                unavailable["is"] = (
                    f"the Inception weights in use ({self.extractor.weights.source}) have no "
                    "classifier head; set GTGEN_INCEPTION_WEIGHTS to NVIDIA's "
                    "inception-2015-12-05.pt or allow its download")
        if {"prec", "recall"} & set(self.metrics):
            if ref.pool is not None:
                prec, rec = precision_recall(ref.pool, feats["pool"], DEFAULT_K,
                                             device=self.extractor.device)
                out.update({k: v for k, v in (("prec", prec), ("recall", rec))
                            if k in self.metrics})
            else:
                for k in {"prec", "recall"} & set(self.metrics):
                    unavailable[k] = "the reference holds statistics only, no images to embed"
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
