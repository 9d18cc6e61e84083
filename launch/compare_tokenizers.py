"""A controlled tokenizer comparison: several variants x several seeds, one table.

    python -m launch.compare_tokenizers --config launch/configs/compare-mnist.toml
    python -m launch.compare_tokenizers --config ... --only vq,full --seeds 0   # a subset first
    python -m launch.compare_tokenizers --config ... --report-only   # table of what exists

Every variant is a tokenizer run config (``launch.train_tokenizer``) laid over the shared
``base`` table, so budget, batch, learning rate and data are the same by construction;
each (variant, seed) trains into ``OUT/runs/<variant>/seed-<s>`` and is evaluated on
every held-out image (``tokenizer.evaluate``: PSNR, SSIM, LPIPS, rFID against the
held-out images, codebook usage, bits per image, geometry statistics). Interrupted or
partial comparisons resume: finished runs and evaluations are skipped. The report
(``OUT/report.md``, ``OUT/results.json``) gives mean ± std over the seeds that finished,
with the number of seeds on every row, and ``OUT/layouts.png`` shows each Gaussian
variant's Gaussians (2-sigma ellipses, colour = Gaussian index) over one held-out image
per class.
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data import config as configlib
from data.build_shards import BuildSettings, build_shards
from data.builtin import DEFAULT_SIZE, SPLITS
from data.files import atomic_write_json, load_checkpoint
from data.loader import make_image_loader
from eval.evaluator import extract
from eval.inception import InceptionFeatures
from eval.lpips import LPIPS
from eval.weights import resolve_inception, resolve_vgg16
from launch.run_config import resolve_tokenizer_table
from launch.train_tokenizer import Trainer
from tokenizer.blocks import count_parameters
from tokenizer.build import load_tokenizer
from tokenizer.evaluate import evaluate
from tokenizer.visualize import draw_gaussians, grid, to_uint8


@dataclass
class CompareConfig:
    out: str = "runs/compare"
    builtin: str = "mnist"  # shards built under OUT/shards when train/heldout are not given
    size: int = 0  # the built-in shards' image side (whole crops resized); 0 = its default
    train: str = ""  # image shard folders (data.build_shards)
    heldout: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    rfid: bool = True
    lpips: bool = True  # LPIPS in the evaluation (training losses are set per run config)
    eval_batch: int = 100
    base: dict = field(default_factory=dict)  # run-config table shared by every variant
    variants: dict = field(default_factory=dict)  # name -> run-config table over base
    notes: dict = field(default_factory=dict)  # name -> one line for the report

    def __post_init__(self):
        if not self.variants:
            raise ValueError("variants: name at least one ([variants.<name>] tables)")
        configlib.require_at_least(self, 0, "size")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if bool(self.train) != bool(self.heldout):
            raise ValueError("set both train and heldout, or neither (builtin)")


def _shards(cfg: CompareConfig) -> tuple[str, str]:
    if cfg.train:
        return cfg.train, cfg.heldout

    folders = []
    for split in SPLITS:
        out = Path(cfg.out) / "shards" / f"{cfg.builtin}-{split}"
        settings = BuildSettings(f"builtin:{cfg.builtin}/{split}",
                                 cfg.size or DEFAULT_SIZE[cfg.builtin], "center", "png", 1000)
        if not (out / "manifest.json").exists():
            build_shards(out, settings, builtin_name=cfg.builtin, split=split, progress=False)
        folders.append(str(out))
    return folders[0], folders[1]


def run_config(cfg: CompareConfig, name: str, seed: int, train: str):
    table = configlib.merge_tables(cfg.base, cfg.variants[name])
    table = configlib.merge_tables(table, {"seed": seed, "out": str(run_dir(cfg, name, seed)),
                                 "data": {"shards": train}})
    return resolve_tokenizer_table(table)


def run_dir(cfg: CompareConfig, name: str, seed: int) -> Path:
    return Path(cfg.out) / "runs" / name / f"seed-{seed}"


def train_one(cfg: CompareConfig, name: str, seed: int, train: str, lpips) -> None:
    rc = run_config(cfg, name, seed, train)
    folder = run_dir(cfg, name, seed)
    timing_path = folder / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else \
        {"seconds": 0.0, "steps": 0}
    ckpt = folder / "checkpoints" / "last.pt"
    done = load_checkpoint(ckpt)["step"] if ckpt.exists() else 0
    if done >= rc.steps:
        return
    trainer = Trainer(rc, lpips=lpips if rc.loss.lpips > 0 else None)
    t0 = time.perf_counter()
    trainer.run()  # resumes from ``done``
    timing["seconds"] += time.perf_counter() - t0
    timing["steps"] += trainer.step_num - done
    timing["batch_size"] = rc.data.batch_size
    atomic_write_json(timing_path, timing)


def evaluate_one(cfg: CompareConfig, name: str, seed: int, heldout: str, tools) -> dict:

    path = run_dir(cfg, name, seed) / "eval.json"
    if path.exists():
        return json.loads(path.read_text())
    model, info = load_tokenizer(run_dir(cfg, name, seed) / "checkpoints" / "last.pt")
    lpips, extractor, real = tools
    report = evaluate(model, heldout, batch_size=cfg.eval_batch, lpips=lpips,
                      extractor=extractor, real_features=real, progress=False)
    timing = json.loads((run_dir(cfg, name, seed) / "timing.json").read_text())
    report["train_images_per_s"] = timing["steps"] * timing["batch_size"] / timing["seconds"]
    report["parameters"] = count_parameters(model)
    report["tokenizer"] = {k: info[k] for k in ("path", "sha1")}
    atomic_write_json(path, report)
    return report


def _image_size(cfg: CompareConfig) -> int:
    return run_config(cfg, next(iter(cfg.variants)), 0, "unused").tokenizer.image_size


def _real_features(cfg: CompareConfig, heldout: str, extractor) -> np.ndarray:
    """Inception pool features of every held-out image, in loader order, cached."""

    cache = Path(cfg.out) / "heldout-inception-pool.npy"
    if cache.exists():
        return np.load(cache)
    loader = make_image_loader(heldout, batch_size=cfg.eval_batch, image_size=_image_size(cfg),
                               train=False)

    feats = [extract(extractor, to_uint8(images), progress=False)["pool"] for images, _ in loader]
    feats = np.concatenate(feats)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, feats)
    return feats


# ---- the report ------------------------------------------------------------------------
COLUMNS = [  # (header, how to read it from an eval report, format)
    ("PSNR dB", lambda r: r["results"]["tokens"]["metrics"]["psnr"], "{:.2f}"),
    ("SSIM", lambda r: r["results"]["tokens"]["metrics"]["ssim"], "{:.3f}"),
    ("LPIPS", lambda r: r["results"]["tokens"]["metrics"].get("lpips"), "{:.3f}"),
    ("rFID", lambda r: r["results"]["tokens"]["metrics"].get("rfid"), "{:.2f}"),
    ("code usage", lambda r: r["results"]["tokens"]["metrics"]["codebook_usage"], "{:.2f}"),
    ("continuous PSNR", lambda r: _mode(r, "continuous geometry"), "{:.2f}"),
    ("positions-only PSNR", lambda r: _mode(r, "positions snapped only"), "{:.2f}"),
    ("shapes-only PSNR", lambda r: _mode(r, "shapes snapped only"), "{:.2f}"),
    ("xy std px", lambda r: r.get("geometry", {}).get("position_std_px"), "{:.2f}"),
    ("distinct pos/G", lambda r: r.get("geometry", {}).get("distinct_positions_per_gaussian"),
     "{:.1f}"),
    ("coverage", lambda r: r.get("geometry", {}).get("coverage"), "{:.2f}"),
    ("train img/s", lambda r: r["train_images_per_s"], "{:.0f}"),
]


def _mode(report: dict, mode: str):
    row = report["results"].get(mode)
    return None if row is None else row["metrics"]["psnr"]


def _stats(values: list) -> dict | None:
    """Mean and spread of the values that exist (None: that seed lacks the measure)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    return {"mean": statistics.mean(kept), "values": kept,
            "std": statistics.stdev(kept) if len(kept) > 1 else None}


def _cell(stats: dict | None, fmt: str) -> str:
    if stats is None:
        return "–"
    if stats["std"] is None:
        return fmt.format(stats["mean"])
    return f"{fmt.format(stats['mean'])} ± {fmt.format(stats['std'])}"


def summarise(cfg: CompareConfig, reports: dict) -> tuple[str, dict]:
    """Markdown table + JSON of mean/std per variant over the seeds that finished."""
    head = ["variant", "seeds", "tokens", "bits/image", "parameters"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary = {}
    for name in cfg.variants:
        runs = reports.get(name, {})
        if not runs:
            continue
        first = next(iter(runs.values()))
        cells = [name, ",".join(str(s) for s in sorted(runs)), str(first["num_tokens"]),
                 f"{first['bits_per_image']:.0f}", f"{first['parameters']:,}"]
        summary[name] = {"seeds": sorted(runs), "bits_per_image": first["bits_per_image"],
                         "parameters": first["parameters"], "num_tokens": first["num_tokens"]}
        for header, get, fmt in COLUMNS:
            stats = _stats([get(r) for r in runs.values()])
            cells.append(_cell(stats, fmt))
            if stats is not None:
                summary[name][header] = stats
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{n}**: {cfg.notes[n]}" for n in cfg.variants if n in cfg.notes and n in summary]
    return "\n".join([*lines, "", *notes]), summary


def _label(text: str, height: int, width: int = 120):
    from PIL import Image, ImageDraw

    label = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(label).text((4, height // 2 - 6), text, fill=(0, 0, 0))
    return label


@torch.no_grad()
def layout_sheet(cfg: CompareConfig, heldout: str, names: list[str]):
    """Rows: each Gaussian variant (seed 0, or its first seed); columns: one held-out image
    per class with that model's Gaussians (index-coloured 2-sigma ellipses)."""

    loader = make_image_loader(heldout, batch_size=10_000, image_size=_image_size(cfg),
                               train=False)
    images, labels = next(iter(loader))
    pick = [int((labels == c).nonzero()[0]) for c in sorted(set(labels.tolist()))][:10]
    images = images[pick]
    rows = []
    for name in names:
        seeds = sorted(p.name for p in (Path(cfg.out) / "runs" / name).glob("seed-*")
                       if (p / "eval.json").exists())
        if not seeds:
            continue
        model, _ = load_tokenizer(Path(cfg.out) / "runs" / name / seeds[0] / "checkpoints" /
                                  "last.pt")
        if model.cfg.kind != "gaussian":
            continue
        geo, _ = model.gaussians(images)
        _, _, geo = model.quantize_geometry(geo)  # what the tokens say
        pictures = to_uint8(images)
        row = [draw_gaussians(pictures[b], geo.xy[b], geo.log_scale[b], geo.rotation[b],
                              model.cfg.gaussian.splat_size, zoom=4) for b in range(len(pick))]
        rows.append([_label(name, row[0].height), *row])
    return grid(rows) if rows else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.compare_tokenizers", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True,
                        help="comparison TOML (see launch/configs/compare-mnist.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value, e.g. --set base.steps=50 (repeatable)")
    parser.add_argument("--only", help="comma-separated variants to train/evaluate now "
                        "(the report still lists every finished run)")
    parser.add_argument("--seeds", help="comma-separated seeds to train/evaluate now")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing; write the report of the finished runs")
    args = parser.parse_args(argv)
    try:
        cfg = configlib.load(CompareConfig, args.config, args.set)
        names = args.only.split(",") if args.only else list(cfg.variants)
        unknown = set(names) - set(cfg.variants)
        if unknown:
            raise configlib.ConfigError(f"--only names unknown variants {sorted(unknown)}; "
                                        f"known: {list(cfg.variants)}")
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.seeds
        for name in cfg.variants:  # every variant must resolve before anything trains
            run_config(cfg, name, seeds[0], "unused")
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(configlib.dumps(cfg))
        train, heldout = _shards(cfg)
        tools = (None, None, None)
        if not args.report_only:
            extractor = real = None
            needs_lpips = cfg.lpips or any(run_config(cfg, n, 0, train).loss.lpips > 0
                                           for n in names)
            lpips = LPIPS(resolve_vgg16()) if needs_lpips else None
            if cfg.rfid:
                extractor = InceptionFeatures(resolve_inception())
                real = _real_features(cfg, heldout, extractor)
            tools = (lpips if cfg.lpips else None, extractor, real)
            for seed in seeds:
                for name in names:
                    print(f"compare: {name} seed {seed}", file=sys.stderr)
                    train_one(cfg, name, seed, train, lpips)
                    evaluate_one(cfg, name, seed, heldout, tools)
        reports = {}
        for name in cfg.variants:
            for path in sorted((out / "runs" / name).glob("seed-*/eval.json")):
                reports.setdefault(name, {})[int(path.parent.name[5:])] = \
                    json.loads(path.read_text())
        table, summary = summarise(cfg, reports)
        sheet = layout_sheet(cfg, heldout, list(cfg.variants))
        if sheet is not None:
            sheet.save(out / "layouts.png")
    except (configlib.ConfigError, ValueError, FileNotFoundError) as err:
        print(f"launch.compare_tokenizers: {err}", file=sys.stderr)
        return 2
    held = next(iter(next(iter(reports.values())).values()))["num_images"] if reports else 0
    text = (f"# Tokenizer comparison ({cfg.out})\n\n{held} held-out images of {heldout}; "
            "mean ± std over the seeds listed (one value: one seed). rFID against the same "
            "held-out images (resize tf1-bilinear); SSIM in the wang convention (see "
            "eval/recon.py). Positions-only / shapes-only: PSNR with only that part of the "
            "geometry snapped to its bins. xy std: per-Gaussian position std across images "
            "(splat pixels); distinct pos/G: distinct position tokens per Gaussian; "
            "coverage: share of content mass within 2 sigma of a Gaussian.\n\n" + table
            + ("\n\n![layouts](layouts.png)\n" if sheet is not None else "\n"))
    (out / "report.md").write_text(text)
    atomic_write_json(out / "results.json", summary)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
