"""The demo's report: both pipelines (and any ablations) side by side, as markdown.

Numbers per pipeline: tokenizer PSNR / SSIM / LPIPS on the held-out images, tokens
and bits per image; FID (and sFID, precision, recall) of generated vs held-out real
images beside the floor (a same-size subset of the training images vs the held-out
ones: what a perfect generator would score with this few images); the class accuracy
of generated samples by a classifier trained on real training images, beside that
classifier's accuracy on held-out real images and on the tokenizer's reconstructions
of them (the generator's ceiling); the GPT's last per-component training losses and
what the generator pays: its held-out loss per component and bits per image (the rate
it models, ``generator.heldout``), sequence length, vocabularies, parameters and
training FLOPs per image.
"""

import json
from pathlib import Path

import numpy as np
import torch

from data import config as configlib
from data.files import load_weights
from data.tokens import make_token_loader
from eval.evaluator import extract
from eval.fid import FEATURES_VERSION, load_reference
from eval.frechet import frechet_distance, statistics
from eval.inception import InceptionFeatures
from eval.lpips import LPIPS
from eval.metrics import METRICS
from eval.sets import load_shard_images
from eval.weights import resolve_inception, resolve_vgg16
from generator.config import GPTConfig
from generator.heldout import generative_accuracy
from generator.model import flops_per_token, sampling_flops_per_image
from generator.samples import load_gpt
from launch.tuning import tuning_lines
from tokenizer.build import load_tokenizer
from tokenizer.evaluate import evaluate
from tokenizer.visualize import reconstruction_sheet, to_uint8

CLASSIFIER_SIDE = 8  # images are average-pooled to 8x8 grey (sklearn digits' native size)


def _classifier_features(images: np.ndarray) -> np.ndarray:
    grey = images.astype(np.float64).mean(-1) / 255  # [N, S, S]
    n, s = grey.shape[0], grey.shape[1]
    k = s // CLASSIFIER_SIDE
    return grey[:, : k * CLASSIFIER_SIDE, : k * CLASSIFIER_SIDE].reshape(
        n, CLASSIFIER_SIDE, k, CLASSIFIER_SIDE, k).mean((2, 4)).reshape(n, -1)


class Classifier:
    """RBF SVM on 8x8 average-pooled grey real training images."""

    def __init__(self, train: tuple[np.ndarray, np.ndarray]):
        from sklearn.svm import SVC

        self.svm = SVC(gamma="scale", C=10.0).fit(_classifier_features(train[0]), train[1])

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float((self.svm.predict(_classifier_features(images)) == labels).mean())


def fid_floor(train_images: np.ndarray, heldout_dir: Path, n: int, seed: int = 0) -> float:
    """FID of n training images (a fixed random subset) against the held-out reference."""

    extractor = InceptionFeatures(resolve_inception())
    reference = load_reference(heldout_dir, extractor, 50, progress=False)
    pick = np.random.default_rng(seed).choice(len(train_images), n, replace=False)
    feats = extract(extractor, train_images[np.sort(pick)], 50, "floor", progress=False)
    return frechet_distance(*statistics(feats["pool"]), reference.stats["mu"],
                            reference.stats["sigma"])


def _cached(path: Path, key: str, compute):
    """compute() once per key, kept in a JSON file beside the run."""
    if path.exists():
        found = json.loads(path.read_text())
        if found.get("key") == key:
            return found["value"]
    value = compute()
    path.write_text(json.dumps({"key": key, "value": value}, indent=1) + "\n")
    return value


def tokenizer_numbers(run: Path, tok_dir: Path, data_dir: Path, heldout,
                      classifier: Classifier) -> dict:
    """Held-out reconstruction metrics, the picture, and the classifier on reconstructions."""

    model, info = load_tokenizer(tok_dir / "tokenizer.safetensors")

    def compute():
        pick = [int(np.flatnonzero(heldout[1] == c)[0]) for c in np.unique(heldout[1])][:10]
        images = torch.from_numpy(heldout[0][pick]).permute(0, 3, 1, 2).float() / 127.5 - 1
        reconstruction_sheet(model, images, zoom=3).save(run / "report-tokenizer.png")
        report = evaluate(model, data_dir / "heldout", lpips=LPIPS(resolve_vgg16()),
                          progress=False)
        recon = []
        with torch.no_grad():
            for i in range(0, len(heldout[0]), 128):
                x = torch.from_numpy(heldout[0][i:i + 128]).permute(0, 3, 1, 2).float() \
                    / 127.5 - 1
                recon.append(to_uint8(model(x)[0]))
        q = report["results"]["tokens"]["metrics"]
        cont = report["results"].get("continuous geometry", {}).get("metrics", {})
        return {"psnr": q["psnr"], "ssim": q["ssim"], "lpips": q["lpips"],
                "codebook_usage": q["codebook_usage"], "psnr_continuous": cont.get("psnr"),
                "num_tokens": model.num_tokens, "vocab_sizes": model.vocab_sizes,
                "bits_per_image": report["bits_per_image"],
                "accuracy_reconstructed": classifier.accuracy(np.concatenate(recon), heldout[1])}

    return _cached(run / "report-tokenizer.json", info["sha1"], compute)


def gpt_as_classifier(gpt_dir: Path, export: str, heldout_codes: Path) -> dict | None:
    """The generative classification of the held-out images' tokens by the GPT export
    ``export`` ("gpt" or "gpt-best": the one sampled) of ``gpt_dir``
    (``generator.heldout.generative_accuracy``); None without held-out codes."""
    if not (heldout_codes / "manifest.json").exists():
        return None
    gpt, _ = load_gpt(gpt_dir / f"{export}.safetensors")
    return generative_accuracy(gpt, make_token_loader(heldout_codes, batch_size=250,
                                                      train=False))


def generation_numbers(run: Path, gpt_dir: Path, sample_dir: Path, eval_dir: Path,
                       classifier: Classifier) -> dict:
    with np.load(sample_dir / "samples.npz") as f:
        images, labels = f["arr_0"], f["arr_1"]
    metrics = json.loads((eval_dir / "result.json").read_text())
    sample_cfg = json.loads((sample_dir / "stage.json").read_text())["config"]
    sampled = "gpt-best" if sample_cfg.get("weights") == "best" else "gpt"  # what was sampled
    gpt_meta = json.loads((gpt_dir / f"{sampled}.json").read_text())
    scored_on = Path(json.loads((gpt_dir / "stage.json").read_text())["config"]["data"]
                     .get("heldout") or "none").name  # codes/heldout or codes/val
    gpt_cfg = configlib.from_dict(GPTConfig, gpt_meta["gpt"])
    parameters = sum(t.numel() for t in load_weights(gpt_dir / "gpt.safetensors").values())
    return {**metrics["metrics"], "num_generated": len(images),
            "heldout": gpt_meta.get("heldout"), "gpt_parameters": parameters,
            "heldout_set": scored_on, "gpt_weights": sampled,
            "gpt_dir": str(gpt_dir), "heldout_bits_per_image":
                (gpt_meta.get("heldout") or {}).get("bits_per_image"),
            "gpt_train_flops_per_image": flops_per_token(gpt_cfg) * gpt_cfg.num_tokens,
            "gpt_sample_flops_per_image": sampling_flops_per_image(
                gpt_cfg, guided=sample_cfg.get("cfg", 1.0) != 1.0),
            "accuracy_generated": classifier.accuracy(images, labels),
            "train_log": gpt_meta.get("train_log", {}), "rope": gpt_meta["gpt"]["rope"],
            "positions": gpt_meta["gpt"].get("position_component", -1) >= 0,
            "sample": sample_cfg, "weights": metrics["weights"], "resize": metrics["resize"]}


REPORTED = ("fid", "sfid", "prec", "recall")  # of eval.metrics.METRICS (IS: no classifier
# for digits); plus the project classifier's accuracy on the samples
MEASURES = (*REPORTED, "accuracy_generated")
GPT_MEASURES = ("heldout_bits_per_image",)  # one value per trained GPT
# also in report.json
COSTS = ("seeds", "heldout", "gpt_classifier", "gpt_parameters", "gpt_train_flops_per_image",
         "gpt_sample_flops_per_image",
         "gpt_weights", "heldout_set")  # the last two: which export, scored on which codes


def over_seeds(per_seed: list[dict]) -> dict:
    """The first seed's record with each measure replaced by its mean over the seeds, and
    ``<measure>_std`` (sample standard deviation; 0 with one seed) and ``seeds`` added;
    a GPT's own measures (``GPT_MEASURES``) count once per trained GPT."""
    out = dict(per_seed[0], seeds=len(per_seed))
    per_gpt = list({g["gpt_dir"]: g for g in per_seed}.values())
    for m in (*MEASURES, *GPT_MEASURES):
        values = [g[m] for g in (per_gpt if m in GPT_MEASURES else per_seed)
                  if g.get(m) is not None]
        if values:
            out[m] = float(np.mean(values))
            if len(values) > 1 or m in MEASURES:  # one GPT: its value, no spread
                out[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out


def _f(value, fmt=".2f", scale=1.0, suffix=""):
    return "–" if value is None else f"{scale * value:{fmt}}{suffix}"


def _m(g: dict, key: str, fmt=".2f", scale=1.0, suffix="") -> str:
    """mean ± std over the seeds (the bare value with one seed)."""
    if g.get(key) is None:
        return "–"
    if g.get("seeds", 1) > 1 and key + "_std" in g:
        return f"{scale * g[key]:{fmt}} ± {scale * g[key + '_std']:{fmt}}{suffix}"
    return _f(g[key], fmt, scale, suffix)


def _gen_cells(g: dict, floor: float) -> list[str]:
    return [_m(g, "fid"), f"{g['fid'] / floor:.2f}x" if g.get("fid") else "–",
            _m(g, "sfid"), _m(g, "prec", ".3f"), _m(g, "recall", ".3f"),
            _m(g, "accuracy_generated", ".1f", 100, "%")]


def _gpt_classifier_cell(record: dict | None) -> str:
    if record is None:
        return "–"
    parts = [f"{k.removeprefix('accuracy_')} {100 * v:.1f}%" for k, v in record.items()
             if k.startswith("accuracy_")]
    whole = f"{100 * record['accuracy']:.1f}%"
    return whole if len(parts) == 1 else f"{whole} ({', '.join(parts)})"


def _sampling(s: dict, has_positions: bool) -> str:
    on = s["order"] == "on" or (s["order"] == "auto" and has_positions)
    order = ("order on" if on else "order off") if has_positions else "no positions"
    sched = "" if s["schedule"] == "constant" else f" {s['schedule']}"
    return f"cfg {s['cfg']:g}{sched} on {s['guide']}, {order}"


def write_demo_report(out: Path, pipelines: dict, ablations: dict, data_dir: Path,
                      timings: dict, notes: dict | None = None, gpt_seeds: int = 1,
                      tuning: dict | None = None) -> Path:
    """runs/demo/report.md from finished pipeline folders.

    pipelines / ablations: name -> one {stage: folder} per run (GPT seed x sampling seed,
    the first run first; ablations may be empty); timings: run label -> {stage: seconds};
    gpt_seeds: how many GPT training seeds the runs span; tuning: pipeline name -> its
    tune.json record (launch/tuning.py), where settings were chosen on the validation split.
    """
    out, notes = Path(out), notes or {}
    train = load_shard_images(data_dir / "train")
    heldout = load_shard_images(data_dir / "heldout")
    classifier = Classifier(train)
    rows = {}
    for name, seeds in {**pipelines, **ablations}.items():
        rows[name] = over_seeds([generation_numbers(out / name, d["gpt"], d["sample"],
                                                    d["eval"], classifier) for d in seeds])
        rows[name]["gpt_classifier"] = gpt_as_classifier(
            seeds[0]["gpt"], rows[name]["gpt_weights"], seeds[0]["codes"] / "heldout")
    n = next(iter(rows.values()))["num_generated"]

    floor = _cached(out / "floor.json", f"{n}-{FEATURES_VERSION}",
                    lambda: fid_floor(train[0], data_dir / "heldout", n))
    toks = {name: tokenizer_numbers(out / name, seeds[0]["tokenizer"], data_dir, heldout,
                                  classifier)
            for name, seeds in pipelines.items()}
    names = list(pipelines)
    source = json.loads((data_dir / "train" / "build.json").read_text())["source"]
    first = json.loads((pipelines[names[0]][0]["gpt"] / "stage.json").read_text())["config"]
    tok_steps = {k: json.loads((d[0]["tokenizer"] / "stage.json").read_text())["config"]
                 ["steps"] for k, d in pipelines.items()}
    n_runs = len(pipelines[names[0]])
    spread = (f"{n_runs} sampling seeds of one trained GPT (GPT training seeds are not "
              "varied: a confound this table cannot remove)" if gpt_seeds == 1 else
              f"{n_runs} runs: {gpt_seeds} GPT training seeds x {n_runs // gpt_seeds} "
              "sampling seeds")
    lines = [
        f"# Demo report: {out}",
        "",
        f"Data `{source.removesuffix('/train')}`: {len(train[0])} training and "
        f"{len(heldout[0])} held-out images ({train[0].shape[1]} px). Every pipeline has "
        f"the same token count, the same GPT-{first['size']} ({first['steps']} steps, batch "
        f"{first['data']['batch_size']}, DeepSpeed in one CPU process) and the same "
        "sampling budget; tokenizers trained "
        + ", ".join(f"{k} {v}" for k, v in tok_steps.items()) + " steps. Generation "
        f"measures are mean ± std over {spread}; the GPT rows are of the first run.",
        "",
        "## Pipelines side by side",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label, cells):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("tokens per image (components)", [
        f"{toks[k]['num_tokens']} ({' x '.join(str(v) for v in toks[k]['vocab_sizes'])})"
        for k in names])
    row("bits per image", [f"{toks[k]['bits_per_image']:.0f}" for k in names])
    row("tokenizer PSNR (held-out, the tokens)", [_f(toks[k]["psnr"], suffix=" dB")
                                                  for k in names])
    row("tokenizer SSIM (wang convention)", [_f(toks[k]["ssim"], ".3f") for k in names])
    row("tokenizer LPIPS-VGG", [_f(toks[k]["lpips"], ".3f") for k in names])
    row("codebook usage", [_f(toks[k]["codebook_usage"], ".0f", 100, "%") for k in names])
    row("classifier on reconstructions (the generator's ceiling)",
        [_f(toks[k]["accuracy_reconstructed"], ".1f", 100, "%") for k in names])
    row("GPT rotary embedding", [rows[k]["rope"] for k in names])
    row("GPT last training loss per component (nats)", [
        ", ".join(f"{c.removeprefix('loss_')} {v:.2f}" for c, v in rows[k]["train_log"].items()
                  if c.startswith("loss_")) or "–" for k in names])
    row("GPT sampled (the export) and the set it is scored on", [
        f"{rows[k]['gpt_weights']}, {rows[k]['heldout_set']}" for k in names])
    row("GPT held-out loss per component (nats per token)", [
        ", ".join(f"{c.removeprefix('loss_')} {v:.2f}" for c, v in rows[k]["heldout"].items()
                  if c.startswith("loss_")) if rows[k]["heldout"] else "–" for k in names])
    row("**GPT held-out bits per image** (the rate the generator models)",
        [_m(rows[k], "heldout_bits_per_image", ".1f") for k in names])
    row("GPT as a classifier of held-out images (argmax over classes of p(tokens | c); "
        "per component)", [_gpt_classifier_cell(rows[k]["gpt_classifier"]) for k in names])
    row("GPT parameters", [f"{rows[k]['gpt_parameters']:,}" for k in names])
    row("GPT training FLOPs per image (one pass)",
        [f"{rows[k]['gpt_train_flops_per_image'] / 1e6:.1f} M" for k in names])
    row("GPT sampling FLOPs per image (KV cache; x2 with guidance)",
        [f"{rows[k]['gpt_sample_flops_per_image'] / 1e6:.1f} M" for k in names])
    row("sampling", [_sampling(rows[k]["sample"], rows[k]["positions"]) for k in names])
    row(f"FID generated ({n}) vs held-out ({len(heldout[0])})", [_m(rows[k], "fid")
                                                                 for k in names])
    row("FID / floor", [_gen_cells(rows[k], floor)[1] for k in names])
    for key, fmt in (("sfid", ".2f"), ("prec", ".3f"), ("recall", ".3f")):
        row(METRICS[key].label, [_m(rows[k], key, fmt) for k in names])
    row("class accuracy of generated samples",
        [_m(rows[k], "accuracy_generated", ".1f", 100, "%") for k in names])
    row("time, all stages (first seed)", [f"{sum(timings.get(k, {}).values()) / 60:.1f} min"
                                          for k in names])
    lines += [
        "",
        f"FID floor (training real vs held-out real, {n} vs {len(heldout[0])}): "
        f"**{floor:.2f}**. The classifier (an RBF SVM on 8x8 average-pooled grey images, "
        f"trained on the training split) reads {100 * classifier.accuracy(*heldout):.1f}% "
        "of the held-out real images. FID with a few hundred images is dominated by its "
        "small-sample bias: compare it with the floor, not with ImageNet numbers. FID "
        f"weights: {rows[names[0]]['weights']['source']}, resize {rows[names[0]]['resize']}.",
    ]
    lines += tuning_lines(tuning or {})
    if ablations:
        lines += ["", "## Ablations (each changes one thing of its pipeline; the rest is "
                  "reused)", "",
                  "| run | change | FID | / floor | sFID | precision | recall | class acc. |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in [*names, *ablations]:
            change = notes.get(name, "as configured") if name in ablations else "(the pipeline)"
            lines.append(f"| {name} | {change}; {rows[name]['rope']} RoPE, "
                         f"{_sampling(rows[name]['sample'], rows[name]['positions'])} | "
                         + " | ".join(_gen_cells(rows[name], floor)) + " |")
    lines += ["", "## Generated samples, one row per class", "",
              "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
              "| " + " | ".join(f"![{k}]({k}/sample/grid.png)" for k in names) + " |",
              "", "## Tokenizers: held-out inputs, reconstructions (and the Gaussians)", ""]
    for k in names:
        lines += [f"**{k}**", "", f"![{k}]({k}/report-tokenizer.png)", ""]
    lines += ["## Time per stage (seconds; first full run of each stage)", "",
              "| run | " + " | ".join(["data", "tokenizer", "codes", "gpt", "sample", "eval"])
              + " | total |", "|---|" + "---|" * 7]
    for k, t in timings.items():
        cells = [f"{t[s]:.0f}" if s in t else "–" for s in
                 ("data", "tokenizer", "codes", "gpt", "sample", "eval")]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {sum(t.values()):.0f} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    summary = {"fid_floor": floor, "accuracy_heldout_real": classifier.accuracy(*heldout),
               **({"tuning": tuning} if tuning else {}),
               **{k: {**{m: v for m, v in rows[k].items()
                         if m.removesuffix("_std") in (*MEASURES, *GPT_MEASURES) or m in COSTS},
                      **({"tokenizer": toks[k]} if k in toks else {})} for k in rows}}
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    return path
