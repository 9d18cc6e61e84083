"""The frontier figure: generation FID against what the generator pays, one line per
tokenizer family (GaussianToken tuples, VQ grids), one point per pipeline (its token
count beside it), error bars one standard deviation over the report's runs.

    python -m launch.frontier runs/frontier-mnist/report.json [more report.json ...] \\
        --cost train --out frontier.png

Reads demo reports (``python -m launch.demo``, e.g. the frontier config run in parts with
``--only``): every pipeline row of every report given (ablation rows are skipped; a
pipeline named in two reports is taken from the later one). The x axis is logarithmic.
"""

import argparse
import math
import sys
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from data.files import atomic_write_bytes, read_json

COSTS = {  # --cost -> (report.json field, axis label)
    "train": ("gpt_train_flops_per_image", "GPT training FLOPs per image"),
    "sample": ("gpt_sample_flops_per_image", "GPT sampling FLOPs per image (KV cache)"),
    "bits": ("heldout_bits_per_image", "GPT validation bits per image"),
}
COLOURS = {"GaussianToken": (230, 110, 20), "VQ": (40, 90, 200)}
SIZE, MARGIN = (720, 440), (80, 30, 30, 60)  # left, top, right, bottom


def family(row: dict) -> str:
    """Tuples of several components (position, shape, code) or one code per token."""
    return "GaussianToken" if len(row["tokenizer"]["vocab_sizes"]) > 1 else "VQ"


def points(reports: list[dict], cost: str) -> dict[str, list[tuple]]:
    """family -> [(cost, fid, fid_std, num_tokens, pipeline)] sorted by cost, from the
    pipeline rows (those with tokenizer numbers) of ``reports``, later reports winning."""
    field, _ = COSTS[cost]
    rows = {}
    for report in reports:
        rows.update({name: row for name, row in report.items()
                     if isinstance(row, dict) and "tokenizer" in row})
    if not rows:
        raise ValueError("no pipeline rows in the reports given (are they demo report.json?)")
    out = {}
    for name, row in rows.items():
        if row.get(field) is None or row.get("fid") is None:
            raise ValueError(f"pipeline {name!r} has no {field!r} or 'fid' in its report "
                             "(written by an older launch.demo? re-run it to refresh)")
        out.setdefault(family(row), []).append(
            (float(row[field]), float(row["fid"]), float(row.get("fid_std", 0.0)),
             int(row["tokenizer"]["num_tokens"]), name))
    return {f: sorted(p) for f, p in sorted(out.items())}


def log_axis(lo: float, hi: float, a: float, b: float):
    """value -> pixel on [a, b] for values on [lo, hi], logarithmically."""
    span = math.log(hi / lo) or 1.0
    return lambda v: a + (b - a) * math.log(v / lo) / span


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 times powers of ten inside [lo, hi]."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0 ** e for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    return ticks


def _engineering(v: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def figure(series: dict[str, list[tuple]], cost: str, floor: float | None = None,
           title: str = "") -> Image.Image:
    """The plot of ``points()``: x = cost (log), y = FID (from 0), the FID floor dashed."""
    font = ImageFont.load_default(size=13)
    img = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]
    xs = [p[0] for s in series.values() for p in s]
    lo, hi = min(xs) / 1.5, max(xs) * 1.5
    x = log_axis(lo, hi, left, right)
    y_max = 1.15 * max([p[1] + p[2] for s in series.values() for p in s] + [floor or 0.0])
    y = lambda v: bottom - (bottom - top) * v / y_max  # noqa: E731
    draw.rectangle([left, top, right, bottom], outline="black")
    for t in log_ticks(lo, hi):
        draw.line([x(t), bottom, x(t), bottom + 5], fill="black")
        draw.text((x(t), bottom + 8), _engineering(t), fill="black", font=font, anchor="mt")
    step = 10 ** math.floor(math.log10(y_max / 2))
    step *= 5 if y_max / step > 25 else 2 if y_max / step > 10 else 1
    for k in range(int(y_max / step) + 1):
        draw.line([left - 5, y(k * step), left, y(k * step)], fill="black")
        draw.text((left - 8, y(k * step)), f"{k * step:g}", fill="black", font=font,
                  anchor="rm")
    draw.text(((left + right) / 2, SIZE[1] - 18), COSTS[cost][1] + " (log scale)",
              fill="black", font=font, anchor="mm")
    draw.text((14, (top + bottom) / 2), "FID", fill="black", font=font, anchor="lm")
    if title:
        draw.text(((left + right) / 2, top / 2), title, fill="black", font=font, anchor="mm")
    if floor is not None:
        for a in range(left, right, 12):
            draw.line([a, y(floor), min(a + 6, right), y(floor)], fill=(120, 120, 120))
        draw.text((right - 4, y(floor) - 4), f"floor {floor:.1f}", fill=(120, 120, 120),
                  font=font, anchor="rb")
    for k, (name, pts) in enumerate(series.items()):
        colour = COLOURS.get(name, (0, 0, 0))
        draw.line([(x(p[0]), y(p[1])) for p in pts], fill=colour, width=2)
        for c, fid, std, tokens, _ in pts:
            draw.line([x(c), y(fid - std), x(c), y(fid + std)], fill=colour, width=2)
            draw.ellipse([x(c) - 5, y(fid) - 5, x(c) + 5, y(fid) + 5], fill=colour)
            draw.text((x(c) + 9, y(fid)), f"{tokens} tokens", fill=colour, font=font,
                      anchor="lm")
        draw.line([right - 150, top + 18 + 20 * k, right - 125, top + 18 + 20 * k],
                  fill=colour, width=3)
        draw.text((right - 118, top + 18 + 20 * k), name, fill=colour, font=font, anchor="lm")
    return img


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.frontier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path,
                        help="report.json files written by python -m launch.demo")
    parser.add_argument("--cost", choices=sorted(COSTS), default="train",
                        help="the x axis: " + "; ".join(f"{k} = {v[1]}"
                                                        for k, v in COSTS.items()))
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="", help="a line above the plot")
    args = parser.parse_args(argv)
    try:
        reports = [read_json(p, "a demo report") for p in args.reports]
        series = points(reports, args.cost)
    except (OSError, ValueError) as err:  # read_json: WeightsError, a ValueError
        print(f"launch.frontier: {err}", file=sys.stderr)
        return 2
    floors = [r["fid_floor"] for r in reports if "fid_floor" in r]
    img = figure(series, args.cost, floors[-1] if floors else None, args.title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buffer = BytesIO()
    img.save(buffer, format="PNG")
    atomic_write_bytes(args.out, buffer.getvalue())
    for name, pts in series.items():
        print(f"{name}: " + ", ".join(f"{p[4]} ({p[3]} tokens) FID {p[1]:.2f} ± {p[2]:.2f} "
                                      f"at {_engineering(p[0])}" for p in pts))
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
