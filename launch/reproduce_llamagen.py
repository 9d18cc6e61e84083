"""Reproduce a published LlamaGen FID row from its released files, in one command.

    python -m launch.reproduce_llamagen --config launch/configs/llamagen/b-256.toml \\
        --weights ~/llamagen --ref VIRTUAL_imagenet256_labeled.npz --gpus 8

Stages (each printed before it runs; a re-run skips the finished ones):
  1. import   ``launch.import_llamagen`` of WEIGHTS/<vq> and WEIGHTS/<gpt> into OUT/model;
  2. sample   ``generator.sample_fid`` with LlamaGen's settings: random labels, CFG on the
              whole logit vector, temperature 1, top-k 0, top-p 1, bf16, its uint8
              conversion, 384 px models bicubic-resized to 256 (``torchrun`` with --gpus);
  3. eval     ``eval.fid`` against the ADM reference batch (TF1 resize), OUT/result.json;
  4. table    ``eval.leaderboard``: our row beside the published one, with the difference,
              into OUT/leaderboard.md.
Configs (``launch/configs/llamagen/*.toml``, one per published row) name the files to
download from LlamaGen's release, the guidance scale and the published numbers.
"""

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from data import config as configlib
from data.cli import one_line_parser, positive_int


@dataclass
class ReproConfig:
    published: str = "LlamaGen-B-256"  # the row in eval.leaderboard's PUBLISHED table
    vq: str = "vq_ds16_c2i.pt"  # file names in LlamaGen's release (under --weights)
    gpt: str = "c2i_B_256.pt"
    image_size: int = 256  # sampling resolution: 256 (16x16 tokens) or 384 (24x24)
    eval_size: int = 256  # images are resized to this before evaluation
    cfg: float = 2.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    precision: str = "bf16"
    labels: str = "random"  # "random" (LlamaGen's) or "balanced"
    num: int = 50000
    batch_size: int = 32  # per process, as LlamaGen's script
    seed: int = 0
    metrics: str = ""  # eval.fid's --metrics ("" = all it computes)
    heads: int = 0  # attention heads; 0 = from LlamaGen's size table (any released model)

    def __post_init__(self):
        configlib.require_at_least(self, 1, "image_size", "eval_size", "num", "batch_size")
        if self.labels not in ("random", "balanced"):
            raise ValueError(f"labels must be 'random' or 'balanced', got {self.labels!r}")


def stage_commands(cfg: ReproConfig, weights: Path, ref: Path, out: Path, gpus: int,
                   python: str = sys.executable) -> list[tuple[str, list[str], Path]]:
    """[(stage, argv, the file it leaves when done)] for a config."""
    model, samples = out / "model", out / "samples.npz"
    result, table = out / "result.json", out / "leaderboard.md"
    launcher = [python, "-m"] if gpus == 1 else \
        [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
         "-m"]
    sample = [*launcher, "generator.sample_fid", "--ckpt", str(model / "gpt.safetensors"),
              "--num", str(cfg.num), "--batch-size", str(cfg.batch_size),
              "--cfg", str(cfg.cfg), "--guide", "all", "--schedule", "constant",
              "--temperature", str(cfg.temperature), "--top-k", str(cfg.top_k),
              "--top-p", str(cfg.top_p), "--seed", str(cfg.seed),
              "--precision", cfg.precision, "--uint8", "llamagen",
              "--eval-size", str(cfg.eval_size), "--out", str(samples), "--quiet"]
    if cfg.labels == "random":
        sample.append("--random-labels")
    return [
        ("import", [python, "-m", "launch.import_llamagen", "--vq", str(weights / cfg.vq),
                    "--gpt", str(weights / cfg.gpt), "--image-size", str(cfg.image_size),
                    "--out", str(model), *(["--heads", str(cfg.heads)] if cfg.heads else [])],
         model / "gpt.safetensors"),
        ("sample", sample, samples),
        ("eval", [python, "-m", "eval.fid", str(samples), str(ref), "--json", str(result),
                  "--quiet", *(["--metrics", cfg.metrics] if cfg.metrics else [])], result),
        ("table", [python, "-m", "eval.leaderboard", str(result), "--out", str(table)], table),
    ]


def tag_result(path: Path, cfg: ReproConfig, config_path: Path) -> None:
    """Name the row and the published row it reproduces, in eval.fid's result."""
    result = json.loads(path.read_text())
    result.update(model=f"{cfg.published} (imported)", reproduces=cfg.published,
                  config=str(config_path))
    path.write_text(json.dumps(result, indent=1) + "\n")


def main(argv=None) -> int:
    parser = one_line_parser(prog="python -m launch.reproduce_llamagen",
                                       description=__doc__)
    parser.add_argument("--config", type=Path, required=True,
                        help="a launch/configs/llamagen/*.toml (one per published row)")
    parser.add_argument("--weights", type=Path, required=True,
                        help="folder holding the config's vq and gpt files from LlamaGen's release")
    parser.add_argument("--ref", type=Path, required=True,
                        help="the ADM reference batch VIRTUAL_imagenet256_labeled.npz")
    parser.add_argument("--out", type=Path, help="output folder (default runs/llamagen/<config>)")
    parser.add_argument("--gpus", type=positive_int, default=1,
                        help="sampling processes (torchrun) on this machine")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set num=1000 (a smoke run)")
    parser.add_argument("--dry-run", action="store_true", help="print the stages, run nothing")
    args = parser.parse_args(argv)
    try:
        cfg = configlib.load(ReproConfig, args.config, args.set)
        out = args.out or Path("runs/llamagen") / args.config.stem
        for path, what in ((args.weights / cfg.vq, "VQ"), (args.weights / cfg.gpt, "GPT"),
                           (args.ref, "reference batch")):
            if not args.dry_run and not path.exists():
                raise ValueError(f"{what} {path} does not exist (see README: LlamaGen "
                                 "reproduction, for the files to download)")
    except (ValueError, OSError) as err:
        print(f"launch.reproduce_llamagen: {err}", file=sys.stderr)
        return 2
    stages = stage_commands(cfg, args.weights, args.ref, out, args.gpus)
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
    for stage, argv_, done in stages:
        line = shlex.join(argv_)
        if args.dry_run:
            print(f"[{stage}] {line}")
            continue
        if done.exists() and stage != "table":
            print(f"[{stage}] done ({done})")
            continue
        print(f"[{stage}] {line}", flush=True)
        if subprocess.run(argv_).returncode != 0:
            print(f"launch.reproduce_llamagen: stage {stage} failed", file=sys.stderr)
            return 1
        if stage == "eval":
            tag_result(done, cfg, args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
