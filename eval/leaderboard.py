"""Our results beside the published numbers, as a markdown table.

    python -m eval.leaderboard runs/gpt-b/result.json [more.json ...] [--out table.md]

Each RESULT.json is what ``eval.fid --json`` writes; an optional top-level "model"
(and "params", "tokens") names the row, else the file name does; "reproduces" (set by
``launch.reproduce_llamagen``) names the published row it reproduces, and the table
gives the gFID difference to it. Published rows come
from the LlamaGen paper, the GaussianToken paper and the discrete-token leaderboard;
their reference is the one those papers used. Every row names its reference batch
and feature weights, because mixing references is how FID tables stop agreeing.
"""

import json
import sys
from pathlib import Path

from data.cli import one_line_parser, require_output_file
from eval.inception import ADM_RESIZE
from eval.metrics import METRICS
from eval.weights import is_known_inception

ADM_REF = "ADM VIRTUAL_imagenet256_labeled.npz"
ADM_WEIGHTS = "TF inception-2015-12-05 (ADM evaluator)"
# (model, gFID, IS, precision, recall, params, tokens, note) — ImageNet 256, class-conditional
PUBLISHED = [
    ("LlamaGen-B-256", 5.46, 193.6, None, None, "111M", "256", "cfg 2.0"),
    ("LlamaGen-L-256", 3.80, 248.3, None, None, "343M", "256", "cfg 2.0"),
    ("LlamaGen-XXL-256", 3.09, None, None, None, "1.4B", "256", "cfg 1.75"),
    ("LlamaGen-B-384", 6.09, None, None, None, "111M", "576 (384 px)", "cfg 2.0"),
    ("LlamaGen-L-384", 3.07, None, None, None, "343M", "576 (384 px)", "cfg 2.0"),
    ("LlamaGen-XL-384", 2.62, None, None, None, "775M", "576 (384 px)", "cfg 1.75"),
    ("LlamaGen-XXL-384", 2.34, None, None, None, "1.4B", "576 (384 px)", "cfg 1.75"),
    ("LlamaGen-3B-384", 2.18, 263.3, 0.81, 0.58, "3.1B", "576 (384 px)", "cfg 1.65"),
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


def comparability_problems(result: dict) -> list[str]:
    """Why a result cannot sit beside the published ADM-evaluator rows (empty: it can).

    Only results against an ADM reference batch (stored statistics) are candidates;
    they must use the TF1 resize and the inception-2015-12-05 weights."""
    if "ADM reference batch" not in result.get("reference", ""):
        return ["reference is not an ADM batch"]
    problems = []
    if result.get("resize") != ADM_RESIZE:
        problems.append(f"resize {result.get('resize')} (ADM: {ADM_RESIZE})")
    if not is_known_inception(result.get("weights", {})):
        problems.append("weights not known to be inception-2015-12-05")
    return problems


class NotAResult(ValueError):
    """A JSON file that is not what eval.fid writes."""


def _number(value, where: str):
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise NotAResult(f"{where} is {type(value).__name__} {value!r}, expected a number")


def check_result(result) -> dict:
    """The fields the table reads, type-checked; NotAResult names the first bad one."""
    if not isinstance(result, dict):
        raise NotAResult(f"top level is a JSON {type(result).__name__}, expected an object")
    for key in ("metrics", "reference"):
        if key not in result:
            raise NotAResult(f"no {key!r} field")
    if not isinstance(result["metrics"], dict):
        raise NotAResult(f"'metrics' is a {type(result['metrics']).__name__}, expected an object")
    for key, value in result["metrics"].items():
        _number(value, f"metrics.{key}")
    if not isinstance(result["reference"], str):
        raise NotAResult("'reference' is not a string")
    weights = result.get("weights", {})
    if not isinstance(weights, dict):
        raise NotAResult(f"'weights' is a {type(weights).__name__}, expected an object")
    for key in ("sha1", "source", "path"):
        if key in weights and not isinstance(weights[key], str):
            raise NotAResult(f"weights.{key} is {weights[key]!r}, expected a string")
    if "reproduces" in result and not isinstance(result["reproduces"], str):
        raise NotAResult(f"reproduces is {result['reproduces']!r}, expected a row name")
    if "num_samples" in result and (not isinstance(result["num_samples"], int)
                                    or isinstance(result["num_samples"], bool)):
        raise NotAResult(f"num_samples is {result['num_samples']!r}, expected an integer")
    return result


def _versus(result: dict, published: dict) -> str:
    """gFID difference to the published row the result reproduces ("-": none)."""
    row, fid = result.get("reproduces"), result["metrics"].get("fid")
    if row is None:
        return "-"
    if row not in published:
        return f"unknown row {row!r}"
    return "-" if fid is None else f"{fid - published[row]:+.2f} vs {row} {published[row]:.2f}"


def render(results: list[tuple[str, dict]]) -> str:
    published = {row[0]: row[1] for row in PUBLISHED}
    columns = " | ".join(m.column for m in METRICS.values())
    lines = [f"| model | {columns} | samples | params | tokens | reference "
             "| weights | comparable | vs published |",
             "|---|" + "---|" * len(METRICS) + "---|---|---|---|---|---|---|"]
    for name, r in results:
        m = r["metrics"]
        w = r.get("weights", {})
        problems = comparability_problems(r)
        comparable = "yes" if not problems else "no: " + "; ".join(problems)
        if r.get("warnings"):
            comparable += " (warning: " + "; ".join(r["warnings"]) + ")"
        values = " | ".join(_fmt(m.get(k), metric.digits) for k, metric in METRICS.items())
        lines.append(
            f"| **{r.get('model', name)}** (ours) | {values} "
            f"| {r.get('num_samples', '?')} | {r.get('params', '-')} | {r.get('tokens', '-')} "
            f"| {r['reference']} | {w.get('source', '?')} sha1 {str(w.get('sha1', '?'))[:12]}, "
            f"{r.get('resize', '?')} | {comparable} | {_versus(r, published)} |")
    for model, fid, is_, p, rec, params, tokens, note in PUBLISHED:
        label = f"{model} ({note})" if note else model
        published_values = {"fid": fid, "is": is_, "prec": p, "recall": rec}
        values = " | ".join(_fmt(published_values.get(k), metric.digits)
                            for k, metric in METRICS.items())
        lines.append(f"| {label} | {values} | 50000 | {params} | {tokens} | {ADM_REF} "
                     f"| {ADM_WEIGHTS} | published | - |")
    lines += ["", "| tokenizer | rFID | tokens | reference |", "|---|---|---|---|"]
    lines += [f"| {n} | {_fmt(v)} | {t} | {ref} |" for n, v, t, ref in PUBLISHED_RFID]
    lines += ["", "IS as the ADM evaluator computes it (classifier weight without bias, splits "
              "of 5,000); SSIM, where shown, names its convention."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = one_line_parser(prog="python -m eval.leaderboard", description=__doc__)
    parser.add_argument("results", nargs="*", type=Path, help="result JSON files of eval.fid")
    parser.add_argument("--out", type=Path, help="write the table here as well")
    args = parser.parse_args(argv)
    try:
        require_output_file(args.out, "--out")
    except ValueError as err:
        print(f"eval.leaderboard: {err}", file=sys.stderr)
        return 2
    results = []
    for path in args.results:
        try:
            result = check_result(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
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
