"""The one table of generation metrics: name (the result key), label, leaderboard column,
which reference statistics suffice (else the reference's images are embedded), and how
each is computed from Inception features. Used by the evaluator, ``eval.fid``, the
leaderboard and the reports."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from eval.frechet import frechet_distance, statistics
from eval.prdc import DEFAULT_K, precision_recall

IS_SPLIT_SIZE = 5000


class Unavailable(Exception):
    """This metric cannot be computed here; the message says why."""


@dataclass(frozen=True)
class Context:
    """What a metric's ``compute`` sees: the samples' features (pool, spatial, logits
    where the weights have a classifier), the reference, the Fréchet route, the device,
    and a memo shared by the metrics of one result (precision and recall share a kNN)."""

    feats: dict
    reference: object  # eval.evaluator.Reference
    fid_method: str
    device: object
    weights_source: str
    memo: dict


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # tables and reports
    column: str  # leaderboard header
    digits: int  # leaderboard digits
    # stored reference statistics that suffice; None: the reference's images are needed
    reference_stats: tuple[str, ...] | None
    compute: Callable[[Context], dict]  # -> {result key: value}; raises Unavailable
    # fewest images of a set it is defined on (samples, and the reference when its images
    # are embedded): a covariance needs 2, k-nearest-neighbour radii need k + 1
    min_images: int = 2


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


def _fid(c: Context) -> dict:
    mu, sigma = statistics(c.feats["pool"])
    return {"fid": frechet_distance(mu, sigma, c.reference.stats["mu"],
                                    c.reference.stats["sigma"], c.fid_method)}


def _sfid(c: Context) -> dict:
    if "mu_s" not in c.reference.stats:
        raise Unavailable("the reference has no spatial statistics (mu_s, sigma_s)")
    mu, sigma = statistics(c.feats["spatial"])
    return {"sfid": frechet_distance(mu, sigma, c.reference.stats["mu_s"],
                                     c.reference.stats["sigma_s"], c.fid_method)}


def _is(c: Context) -> dict:
    if "logits" not in c.feats:
        raise Unavailable(f"the Inception weights in use ({c.weights_source}) have no "
                          "classifier head; set GTGEN_INCEPTION_WEIGHTS to NVIDIA's "
                          "inception-2015-12-05.pt or allow its download")
    score, std = inception_score(c.feats["logits"])
    return {"is": score, "is_std": std}


def _precision_recall(c: Context) -> tuple[float, float]:
    if c.reference.pool is None:
        raise Unavailable("the reference holds statistics only, no images to embed")
    if "prdc" not in c.memo:
        c.memo["prdc"] = precision_recall(c.reference.pool, c.feats["pool"], DEFAULT_K,
                                          device=c.device)
    return c.memo["prdc"]


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("fid", "FID", "gFID", 2, ("mu", "sigma"), _fid),
    Metric("sfid", "sFID", "sFID", 2, ("mu_s", "sigma_s"), _sfid),
    Metric("is", "IS", "IS", 1, (), _is, 1),
    Metric("prec", "Precision", "Prec", 2, None,
           lambda c: {"prec": _precision_recall(c)[0]}, DEFAULT_K + 1),
    Metric("recall", "Recall", "Rec", 2, None,
           lambda c: {"recall": _precision_recall(c)[1]}, DEFAULT_K + 1),
)}
GENERATION_METRICS = tuple(METRICS)


def metrics_needing_images(stats: dict, metrics) -> list[str]:
    """The requested metrics the reference's stored statistics do not suffice for: they
    need its images embedded."""
    return [name for name in metrics if METRICS[name].reference_stats is None
            or any(k not in stats for k in METRICS[name].reference_stats)]


def reference_needs_images(stats: dict, metrics) -> bool:
    """Whether the requested metrics need the reference's images embedded, or its
    stored statistics suffice."""
    return bool(metrics_needing_images(stats, metrics))


def too_few_images(count: int, metrics, where: str) -> str | None:
    """Why ``count`` images of ``where`` are too few for one of ``metrics`` (None: enough)."""
    for name in metrics:
        if count < METRICS[name].min_images:
            plural = "s" if count != 1 else ""
            return (f"{where}: holds {count} image{plural}; {METRICS[name].label} needs at "
                    f"least {METRICS[name].min_images}")
    return None
