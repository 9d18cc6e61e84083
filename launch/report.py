"""The demo's report: pictures and numbers of a finished pipeline run, as markdown.

Numbers: tokenizer PSNR / SSIM / LPIPS on held-out images; FID of generated vs
held-out real images beside the floor (a same-size subset of the training images vs
the held-out ones: what a perfect generator would score with this few images); the
class accuracy of generated samples by a classifier trained on real training images,
beside that classifier's own held-out accuracy.
"""

import json
from pathlib import Path

import numpy as np
import torch

from eval.sets import load_shard_images

CLASSIFIER_SIDE = 8  # images are average-pooled to 8x8 grey (sklearn digits' native size)


def _classifier_features(images: np.ndarray) -> np.ndarray:
    grey = images.astype(np.float64).mean(-1) / 255  # [N, S, S]
    n, s = grey.shape[0], grey.shape[1]
    k = s // CLASSIFIER_SIDE
    return grey[:, : k * CLASSIFIER_SIDE, : k * CLASSIFIER_SIDE].reshape(
        n, CLASSIFIER_SIDE, k, CLASSIFIER_SIDE, k).mean((2, 4)).reshape(n, -1)


def class_accuracy(train, **sets) -> dict:
    """SVM on real training images; its accuracy on each named (images, labels) set."""
    from sklearn.svm import SVC

    clf = SVC(gamma="scale", C=10.0).fit(_classifier_features(train[0]), train[1])
    return {name: float((clf.predict(_classifier_features(images)) == labels).mean())
            for name, (images, labels) in sets.items()}


def fid_floor(train_images: np.ndarray, heldout_dir: Path, n: int, seed: int = 0) -> float:
    """FID of n training images (a fixed random subset) against the held-out reference."""
    from eval.evaluator import extract
    from eval.fid import load_reference
    from eval.frechet import frechet_distance, statistics
    from eval.inception import InceptionFeatures
    from eval.weights import resolve_inception

    extractor = InceptionFeatures(resolve_inception())
    reference = load_reference(heldout_dir, extractor, 50, progress=False)
    pick = np.random.default_rng(seed).choice(len(train_images), n, replace=False)
    feats = extract(extractor, train_images[np.sort(pick)], 50, "floor", progress=False)
    return frechet_distance(*statistics(feats["pool"]), reference.stats["mu"],
                            reference.stats["sigma"])


def tokenizer_pictures(out: Path, heldout: tuple[np.ndarray, np.ndarray]) -> dict:
    from eval.lpips import LPIPS
    from eval.weights import resolve_vgg16
    from tokenizer.evaluate import evaluate
    from tokenizer.registry import load_tokenizer
    from tokenizer.visualize import reconstruction_sheet, to_uint8

    model, _ = load_tokenizer(out / "tokenizer" / "tokenizer.safetensors")
    pick = [int(np.flatnonzero(heldout[1] == c)[0]) for c in np.unique(heldout[1])][:10]
    images = torch.from_numpy(heldout[0][pick]).permute(0, 3, 1, 2).float() / 127.5 - 1
    reconstruction_sheet(model, images, zoom=3).save(out / "report-tokenizer.png")
    report = evaluate(model, out / "data" / "heldout", lpips=LPIPS(resolve_vgg16()),
                      progress=False)
    recon = []
    with torch.no_grad():
        for i in range(0, len(heldout[0]), 128):
            x = torch.from_numpy(heldout[0][i:i + 128]).permute(0, 3, 1, 2).float() / 127.5 - 1
            recon.append(to_uint8(model(x)[0]))
    return report["results"], np.concatenate(recon)


def write_report(out: Path, timings: dict | None = None) -> Path:
    out = Path(out)
    train = load_shard_images(out / "data" / "train")
    heldout = load_shard_images(out / "data" / "heldout")
    with np.load(out / "sample" / "samples.npz") as f:
        generated = (f["arr_0"], f["arr_1"])
    recon, recon_images = tokenizer_pictures(out, heldout)
    result = json.loads((out / "eval" / "result.json").read_text())
    floor = fid_floor(train[0], out / "data" / "heldout", len(generated[0]))
    acc = class_accuracy(train, heldout_real=heldout, reconstructed=(recon_images, heldout[1]),
                         generated=generated)
    q = recon["tokens"]["metrics"]
    cont = recon.get("continuous geometry", {}).get("metrics", {})
    tok_cfg = json.loads((out / "tokenizer" / "stage.json").read_text())["config"]
    gpt_cfg = json.loads((out / "gpt" / "stage.json").read_text())["config"]
    source = json.loads((out / "data" / "train" / "build.json").read_text())["source"]
    lines = [
        f"# Demo report: {out}",
        "",
        f"Data `{source.removesuffix('/train')}`: {len(train[0])} training and "
        f"{len(heldout[0])} held-out images "
        f"({train[0].shape[1]} px). Tokenizer `{tok_cfg['size']}`, {tok_cfg['steps']} steps; "
        f"GPT-{gpt_cfg['size']}, {gpt_cfg['steps']} steps (DeepSpeed, one CPU process).",
        "",
        "## Tokenizer: held-out inputs, reconstructions, and the Gaussians over the inputs",
        "",
        "![tokenizer](report-tokenizer.png)",
        "",
        "## Generated samples, one row per class",
        "",
        "![samples](sample/grid.png)",
        "",
        "## Numbers",
        "",
        "| measure | value |",
        "|---|---|",
        f"| tokenizer PSNR (held-out, the tokens) | {q['psnr']:.2f} dB |",
        f"| tokenizer SSIM | {q['ssim']:.3f} |",
        f"| tokenizer LPIPS-VGG | {q['lpips']:.3f} |",
    ]
    if cont:
        lines.append(f"| tokenizer PSNR with continuous geometry | {cont['psnr']:.2f} dB |")
    lines += [
        f"| tokenizer codebook usage | {100 * q['codebook_usage']:.0f}% |",
        f"| FID generated vs held-out real ({len(generated[0])} vs {len(heldout[0])}) "
        f"| {result['metrics']['fid']:.2f} |",
        f"| FID floor: training real vs held-out real (same sizes) | {floor:.2f} |",
        f"| class accuracy of generated samples | {100 * acc['generated']:.1f}% |",
        f"| the classifier's accuracy on held-out real images | "
        f"{100 * acc['heldout_real']:.1f}% |",
        f"| ... on the tokenizer's reconstructions of them (the generator's ceiling) | "
        f"{100 * acc['reconstructed']:.1f}% |",
        "",
        f"FID weights: {result['weights']['source']} (sha1 {result['weights']['sha1'][:12]}), "
        f"resize {result['resize']}. The classifier is an RBF SVM on 8x8 average-pooled grey "
        "images, trained on the training split. FID with a few hundred images is dominated "
        "by its small-sample bias: compare it with the floor, not with ImageNet numbers.",
    ]
    if timings:
        lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    summary = {"psnr": q["psnr"], "lpips": q["lpips"], "fid": result["metrics"]["fid"],
               "fid_floor": floor, **{f"accuracy_{k}": v for k, v in acc.items()}}
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    return path
