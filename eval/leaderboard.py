"""Our results beside the published numbers, as a markdown table.

    python -m eval.leaderboard runs/gpt-b/result.json [more.json ...] [--out table.md]

Each RESULT.json is what ``eval.fid --json`` writes; an optional top-level "model"
(and "params", "tokens") names the row, else the file name does. Published rows come
from the LlamaGen paper, the GaussianToken paper and the discrete-token leaderboard;
their reference is the one those papers used. Every row names its reference batch
and feature weights, because mixing references is how FID tables stop agreeing.
"""

import argparse
import json
import sys
from pathlib import Path

ADM_REF = "ADM VIRTUAL_imagenet256_labeled.npz"
ADM_WEIGHTS = "TF inception-2015-12-05 (ADM evaluator)"
# (model, gFID, IS, precision, recall, params, tokens, note) — ImageNet 256, class-conditional
PUBLISHED = [
    ("LlamaGen-B", 5.46, 193.6, None, None, "111M", "256", "cfg 2.0"),
    ("LlamaGen-L", 3.80, 248.3, None, None, "343M", "256", "cfg 2.0"),
    ("LlamaGen-XXL", 3.09, None, None, None, "1.4B", "256", "cfg 1.75"),
    ("LlamaGen-3B", 2.18, 263.3, 0.81, 0.58, "3.1B", "576 (384 px)", "cfg 1.65"),
    ("RAR-XXL", 1.48, None, None, None, "1.5B", "256", ""),
    ("RAR-B", 1.95, None, None, None, "261M", "256", ""),
    ("VAR-d30", 1.92, None, None, None, "2.0B", "680", ""),
    ("TiTok-S-128 (masked)", 1.97, None, None, None, "287M", "128", ""),
    ("IBQ-XXL", 2.05, None, None, None, "2.1B", "256", ""),
    ("Open-MAGVIT2-XL", 2.33, None, None, None, "1.5B", "256", ""),
    ("MaskGIT", 6.18, None, None, None, "227M", "256", ""),
]
# tokenizers: (name, rFID, tokens, reference)
PUBLISHED_RFID = [
    ("GaussianToken (ImageNet 256)", 1.61, "256", "ImageNet-1K val"),
    ("GaussianToken (CIFAR-100 32)", 12.94, "64", "CIFAR-100 test"),
    ("LlamaGen VQ (16x16)", 2.19, "256", "ImageNet-1K val"),
]


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def render(results: list[tuple[str, dict]]) -> str:
    lines = ["| model | gFID | sFID | IS | Prec | Rec | params | tokens | reference | weights |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results:
        m = r["metrics"]
        w = r.get("weights", {})
        lines.append(
            f"| **{r.get('model', name)}** (ours) | {_fmt(m.get('fid'))} | {_fmt(m.get('sfid'))} "
            f"| {_fmt(m.get('is'), 1)} | {_fmt(m.get('prec'))} | {_fmt(m.get('recall'))} "
            f"| {r.get('params', '-')} | {r.get('tokens', '-')} | {r['reference']} "
            f"| {w.get('source', '?')} sha1 {w.get('sha1', '?')[:12]}, {r.get('resize', '?')} |")
    for model, fid, is_, p, rec, params, tokens, note in PUBLISHED:
        label = f"{model} ({note})" if note else model
        lines.append(f"| {label} | {_fmt(fid)} | - | {_fmt(is_, 1)} | {_fmt(p)} | {_fmt(rec)} "
                     f"| {params} | {tokens} | {ADM_REF} | {ADM_WEIGHTS} |")
    lines += ["", "| tokenizer | rFID | tokens | reference |", "|---|---|---|---|"]
    lines += [f"| {n} | {_fmt(v)} | {t} | {ref} |" for n, v, t, ref in PUBLISHED_RFID]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.leaderboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", type=Path, help="result JSON files of eval.fid")
    parser.add_argument("--out", type=Path, help="write the table here as well")
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        try:
            result = json.loads(path.read_text())
            result["metrics"], result["reference"]
        except (OSError, ValueError, KeyError) as err:
            print(f"eval.leaderboard: {path}: not an eval.fid result ({err})", file=sys.stderr)
            return 2
        results.append((path.stem, result))
    table = render(results)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
