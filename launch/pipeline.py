"""The staged pipeline: data -> tokenizer -> codes -> gpt -> sample -> eval.

    python -m launch.pipeline --config launch/configs/demo.toml              # every stage
    python -m launch.pipeline --config launch/configs/demo.toml --stages gpt,sample
    deepspeed --num_gpus 8 -m launch.pipeline --config C --stages gpt        # one stage, 8 GPUs
    torchrun --nproc_per_node 8 -m launch.pipeline --config C --stages tokenizer

Every stage reads the previous stage's folder under ``out`` and writes its own:
  data/train, data/heldout   image shards (data.build_shards)
  tokenizer/                 tokenizer run; tokenizer.safetensors + .json (launch.train_tokenizer)
  codes/                     token shards of data/train (data.tokens), tokenizer recorded;
                             codes/heldout: of data/heldout (centre view), the GPT's
                             held-out set
  gpt/                       DeepSpeed run; gpt.safetensors + gpt.json (launch.train_gpt),
                             gpt-best.* (its lowest held-out loss)
  sample/                    grid.png and samples.npz (generator.sample[_fid])
  eval/                      result.json, leaderboard.md (eval.fid, eval.leaderboard)
``reuse`` points stages at other folders (e.g. ``reuse = {data = "runs/demo/data"}``:
several pipelines share one data stage; an ablation reuses its parent's tokenizer).
Each writes ``stage.json`` (its resolved config and its inputs' fingerprints) when it
finishes; a finished stage with the same config is skipped, one with another config
or made from other inputs is refused with a message. Inside a stage every tool
resumes by itself, so re-running the command after an interruption continues.
"""

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data import builtin
from data import config as configlib
from data.build_shards import BuildSettings, build_shards
from data.builtin import mirror_refusal
from data.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from data.ranks import check_environment, env_rank_world, leave_process_group
from data.stream import read_manifest
from data.tokens import FORMAT_TAG, finalize_token_shards, write_token_shards
from eval import fid, leaderboard
from eval.sets import ImageSetError
from eval.weights import WeightsUnavailable
from generator import sample, sample_fid, samples
from generator.samples import SamplingSettings
from launch import run_config, train_gpt, train_tokenizer
from tokenizer.build import load_tokenizer

STAGES = ("data", "tokenizer", "codes", "gpt", "sample", "eval")


@dataclass
class DataStage:
    builtin: str = ""  # "mnist", "digits" or "photos" (train and heldout splits), or use src
    src: str = ""  # ImageFolder training images
    val_src: str = ""  # ImageFolder held-out images (e.g. ImageNet val)
    size: int = 32
    crop: str = "center"
    format: str = ""  # "" = png for builtins, jpg for folders
    shard_size: int = 1000
    workers: int = 2
    # builtins: data/train from the "fit" split and data/val from "val" (every 8th training
    # image of a class): the GPT's held-out loss (best export) is then measured on val,
    # and heldout stays the images results are reported on
    validation: bool = False

    def __post_init__(self):
        if bool(self.builtin) == bool(self.src):
            raise ValueError("data: set exactly one of data.builtin and data.src")
        if self.validation and not self.builtin:
            raise ValueError("data.validation carves a validation split from a built-in set; "
                             "for data.src use data.val_src as the held-out set")


@dataclass
class CodesStage:
    views: str = "tencrop"
    batch_size: int = 64
    heldout: bool = True  # also codes/heldout (centre view): the GPT's held-out loss


@dataclass
class SampleStage:
    per_class: int = 8  # grid
    grid_classes: str = ""  # "" = every class (up to 20)
    fid_num: int = 0  # 0 = as many as held-out images
    cfg: float = 2.0
    schedule: str = "constant"  # or "linear" (1 at the first tuple, cfg at the last)
    guide: str = "all"  # tuple components guidance applies to ("all", "code", ...)
    order: str = "auto"  # order constraint on position tokens: auto, on, off
    weights: str = "last"  # the GPT export sampled: "last" or "best" (lowest held-out loss)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self):
        if self.weights not in ("last", "best"):
            raise ValueError(f"sample.weights must be 'last' or 'best', got {self.weights!r}")


@dataclass
class EvalStage:
    ref: str = ""  # "" = the held-out image shards; or an ADM reference batch .npz
    metrics: str = "fid,sfid,is,prec,recall"
    name: str = ""  # row name in the leaderboard


@dataclass
class PipelineConfig:
    out: str = "runs/pipeline"
    data: DataStage = field(default_factory=lambda: DataStage(builtin="mnist"))
    tokenizer: dict = field(default_factory=dict)  # a launch.train_tokenizer config table
    codes: CodesStage = field(default_factory=CodesStage)
    gpt: dict = field(default_factory=dict)  # a launch.train_gpt config table
    sample: SampleStage = field(default_factory=SampleStage)
    eval: EvalStage = field(default_factory=EvalStage)
    reuse: dict = field(default_factory=dict)  # stage -> folder used instead of out/stage

    def __post_init__(self):
        if self.sample.weights == "best" and not self.tokenizes_heldout:
            raise ValueError("sample.weights = 'best' needs held-out codes (codes.heldout = "
                             "true and held-out images: a builtin or data.val_src)")
        unknown = set(self.reuse) - set(STAGES)
        if unknown:
            raise ValueError(f"reuse names unknown stages {sorted(unknown)}; choose from "
                             f"{STAGES}")

    @property
    def tokenizes_heldout(self) -> bool:
        """Whether the codes stage tokenizes held-out images for the GPT's held-out loss."""
        return self.codes.heldout and bool(self.data.builtin or self.data.val_src)


class StageError(RuntimeError):
    """A stage cannot run: missing or mismatched input, changed config."""


def _rank_world():
    return env_rank_world()


def _barrier():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class Pipeline:
    def __init__(self, cfg: PipelineConfig, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(cfg.out), progress
        self.rank, self.world = _rank_world()

    def log(self, text: str) -> None:
        if self.rank == 0 and self.progress:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # ---- stage bookkeeping -------------------------------------------------------------
    def dir(self, stage: str) -> Path:
        """The folder of a stage: out/stage, or the one ``reuse`` names."""
        return Path(self.cfg.reuse[stage]) if stage in self.cfg.reuse else self.out / stage

    def _marker(self, stage: str) -> Path:
        return self.dir(stage) / "stage.json"

    def done(self, stage: str, record: dict, config=None) -> bool:
        """Whether ``stage`` finished with this record; config: the stage's config object
        (fields added to its class since the stage ran count as their defaults)."""
        marker = self._marker(stage)
        if not marker.exists():
            return False
        found = read_json(marker, f"stage {stage}'s record")
        if config is not None and "config" in found:
            found["config"] = configlib.with_added_fields(
                found["config"], record["config"], configlib.field_defaults(type(config)))
        if {k: found.get(k) for k in record} != record:  # outputs (e.g. export_sha1) aside
            raise StageError(
                f"{marker.parent} was made with another config or from other inputs; delete "
                f"it (or choose another out) to redo the '{stage}' stage")
        return True

    def finish(self, stage: str, record: dict) -> None:
        if self.rank == 0:
            self._marker(stage).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self._marker(stage), record)

    def require(self, stage: str) -> dict:
        marker = self._marker(stage)
        if not marker.exists():
            raise StageError(f"stage '{stage}' has not finished in {self.dir(stage)}; run it "
                             "first (--stages " + stage + ")")
        return read_json(marker, f"stage {stage}'s record")

    # ---- 0: data -------------------------------------------------------------------
    def stage_data(self) -> None:

        d = self.cfg.data
        record = {"config": configlib.to_dict(d)}
        if self.done("data", record, d):
            return self.log("data: done")
        fmt = d.format or ("png" if d.builtin else "jpg")
        if self.rank == 0:
            # (folder, builtin split or source folder)
            if d.src:
                splits = [("train", d.src), ("heldout", d.val_src)]
            elif d.validation:
                splits = [("train", "fit"), ("heldout", "heldout"), ("val", "val")]
            else:
                splits = [(s, s) for s in builtin.SPLITS]
            for folder, part in splits:
                if not part:
                    continue
                source = f"builtin:{d.builtin}/{part}" if d.builtin else str(Path(part).resolve())
                self.log(f"data: {folder} shards from {source}")
                build_shards(self.dir("data") / folder,
                             BuildSettings(source, d.size, d.crop, fmt, d.shard_size),
                             builtin_name=d.builtin or None, split=part if d.builtin else "train",
                             src=None if d.builtin else part, workers=d.workers,
                             progress=self.progress)
            self.finish("data", record)
        _barrier()

    # ---- 1: tokenizer ----------------------------------------------------------------
    def tokenizer_config(self) -> run_config.TokenizerRunConfig:
        return run_config.resolve_tokenizer_table(configlib.apply_overrides(
            copy.deepcopy(self.cfg.tokenizer),
            [f"data.shards={self.dir('data') / 'train'}", f"out={self.dir('tokenizer')}"]))

    def stage_tokenizer(self) -> None:

        data = self.require("data")
        cfg = self.tokenizer_config()
        record = {"config": configlib.to_dict(cfg), "inputs": {"data": data}}
        if self.done("tokenizer", record, cfg):
            return self.log("tokenizer: done")
        self.log(f"tokenizer: training {cfg.size} for {cfg.steps} steps (resumable)")
        train_tokenizer.Trainer(cfg, progress=self.progress).run()
        if self.rank == 0:
            export = self.dir("tokenizer") / "tokenizer.safetensors"
            train_tokenizer.export_weights(self.dir("tokenizer") / "checkpoints" / "last.pt",
                                           export)
            record["export_sha1"] = load_tokenizer(export)[1]["sha1"]
            self.finish("tokenizer", record)
        _barrier()

    # ---- 2: codes ------------------------------------------------------------------
    def stage_codes(self) -> None:

        tok = self.require("tokenizer")
        export = self.dir("tokenizer") / "tokenizer.safetensors"
        model, info = load_tokenizer(export)
        if info["sha1"] != tok["export_sha1"]:
            raise StageError(f"{export} changed since the tokenizer stage finished "
                             f"(sha1 {info['sha1'][:12]} vs {tok['export_sha1'][:12]})")
        record = {"config": configlib.to_dict(self.cfg.codes), "tokenizer_sha1": info["sha1"]}
        if self.done("codes", record, self.cfg.codes):
            for split in self.extra_code_splits():  # finished before these codes existed
                if not (self.dir("codes") / split / "manifest.json").exists():
                    self._tokenize(model, info, split)
            return self.log("codes: done")
        refusal = mirror_refusal(self.dir("data") / "train")
        if refusal and self.cfg.codes.views != "center":
            raise StageError(f"codes.views {self.cfg.codes.views!r} mirrors images but "
                             f"{refusal}: set codes.views = \"center\"")
        for split in ("train", *self.extra_code_splits()):
            self._tokenize(model, info, split)
        if self.rank == 0:
            self.finish("codes", record)

    def extra_code_splits(self) -> list[str]:
        """The image splits tokenized besides train (centre view, codes/<split>): heldout,
        and val with data.validation."""
        if not self.cfg.tokenizes_heldout:
            return []
        return ["heldout", "val"] if self.cfg.data.validation else ["heldout"]

    def _tokenize(self, model, info: dict, split: str) -> None:
        """data/<split> -> its token shards (train: codes/, codes.views; heldout, val:
        codes/<split>, the centre view), every rank its share, then the manifest."""
        folder, views = (self.dir("codes"), self.cfg.codes.views) if split == "train" else \
            (self.dir("codes") / split, "center")
        self.log(f"codes: tokenizing data/{split} with {views} views")
        write_token_shards(model.encode, self.dir("data") / split, folder,
                           image_size=model.cfg.image_size, vocab_sizes=model.vocab_sizes,
                           tokenizer={"path": info["path"], "sha1": info["sha1"]},
                           layout=model.token_layout.to_dict(), views=views,
                           batch_size=self.cfg.codes.batch_size, rank=self.rank,
                           world_size=self.world, progress=self.progress)
        _barrier()
        if self.rank == 0:
            finalize_token_shards(self.dir("data") / split, folder)
        _barrier()

    @property
    def heldout_codes(self) -> Path:
        """The GPT's held-out token shards: codes/val with data.validation, else
        codes/heldout."""
        return self.dir("codes") / ("val" if self.cfg.data.validation else "heldout")

    # ---- 3: gpt ----------------------------------------------------------------------
    def gpt_config(self) -> run_config.GPTRunConfig:
        heldout = [f"data.heldout={self.heldout_codes}"] if self.cfg.tokenizes_heldout else []
        return run_config.resolve_gpt_table(configlib.apply_overrides(
            copy.deepcopy(self.cfg.gpt),
            [f"data.tokens={self.dir('codes')}", f"out={self.dir('gpt')}", *heldout]))

    def stage_gpt(self) -> None:

        codes = self.require("codes")
        manifest = read_manifest(self.dir("codes"), FORMAT_TAG)
        tok = self.require("tokenizer")
        if manifest["tokenizer"].get("sha1") != tok["export_sha1"]:
            raise StageError(f"the token shards in {self.dir('codes')} come from another "
                             f"tokenizer (sha1 {manifest['tokenizer'].get('sha1', '?')[:12]}) "
                             f"than {self.dir('tokenizer')} ({tok['export_sha1'][:12]})")
        cfg = self.gpt_config()
        record = {"config": configlib.to_dict(cfg), "inputs": {"codes": codes}}
        if self.done("gpt", record, cfg):
            return self.log("gpt: done")
        self.log(f"gpt: training GPT-{cfg.size} for {cfg.steps} steps with DeepSpeed")
        trainer = train_gpt.Trainer(cfg, progress=self.progress)
        trainer.run()
        if trainer.export() is not None:  # every rank: ZeRO-3 gathers the weights
            self.finish("gpt", record)
        _barrier()

    # ---- 4: sample -------------------------------------------------------------------
    def stage_sample(self) -> None:

        gpt = self.require("gpt")
        s = self.cfg.sample
        heldout = self._heldout_count()
        num = s.fid_num or heldout
        record = {"config": configlib.to_dict(s), "num": num, "inputs": {"gpt": gpt}}
        if self.done("sample", record, s):
            return self.log("sample: done")
        out = self.dir("sample")
        out.mkdir(parents=True, exist_ok=True)
        ckpt = self.dir("gpt") / ("gpt-best.safetensors" if s.weights == "best" else
                                  "gpt.safetensors")
        settings = SamplingSettings(cfg=s.cfg, schedule=s.schedule, guide=s.guide,
                                    order=s.order, temperature=s.temperature, top_k=s.top_k,
                                    top_p=s.top_p, seed=s.seed, batch_size=s.batch_size)
        try:
            if self.rank == 0:
                model, _ = samples.load_gpt(ckpt)
                classes = s.grid_classes or ",".join(str(c) for c in
                                                     range(min(20, model.cfg.num_classes)))
                self.log(f"sample: grid of classes {classes}")
                self.log("sample: " + sample.sample_grid(ckpt, classes, s.per_class,
                                                         out / "grid.png", settings, zoom=2))
            self.log(f"sample: {num} samples for FID")
            done = sample_fid.sample_for_fid(ckpt, num, out / "samples.npz", settings,
                                             progress=self.progress)
            if done:
                self.log(f"sample: {done}")
        except (ValueError, FileNotFoundError) as err:  # SampleError, WeightsError, ...
            raise StageError(f"sample: {err}") from err
        self.finish("sample", record)

    def _heldout_count(self) -> int:
        manifest = self.dir("data") / "heldout" / "manifest.json"
        return json.loads(manifest.read_text())["total"] if manifest.exists() else 10000

    # ---- 5: eval ----------------------------------------------------------------------
    def stage_eval(self) -> None:

        samples = self.require("sample")
        e = self.cfg.eval
        ref = e.ref or str(self.dir("data") / "heldout")
        # the evaluator's version: results of an older feature definition are not reused
        record = {"config": configlib.to_dict(e), "ref": ref, "inputs": {"sample": samples},
                  "evaluator": fid.FEATURES_VERSION}
        if self.done("eval", record, e):
            return self.log("eval: done")
        if self.rank != 0:
            return
        out = self.dir("eval")
        out.mkdir(parents=True, exist_ok=True)
        self.log(f"eval: {e.metrics} of samples against {ref}")
        metrics = [m.strip() for m in e.metrics.split(",") if m.strip()]
        try:
            result = fid.evaluate(self.dir("sample") / "samples.npz", ref, metrics,
                                  progress=self.progress)
        except (ImageSetError, WeightsUnavailable, ValueError) as err:
            raise StageError(f"eval: {err}") from err
        for warning in result["warnings"]:
            self.log(f"eval: warning: {warning}")
        size = samples["inputs"]["gpt"]["config"]["size"]
        result["model"] = e.name or f"GPT-{size} on {self.out.name}"
        atomic_write_json(out / "result.json", result, sort_keys=False)
        print(fid.format_table(result))
        table = leaderboard.render([("result", leaderboard.check_result(result))])
        print(table)
        atomic_write_text(out / "leaderboard.md", table + "\n")
        self.finish("eval", record)

    def check_configs(self) -> None:
        """Resolve every training stage's config (ConfigError naming the field) before
        any stage runs: a bad value in a later stage must not cost the earlier ones."""
        check_environment()
        self.tokenizer_config()
        self.gpt_config()

    def run(self, stages) -> None:
        self.check_configs()
        for stage in stages:
            getattr(self, f"stage_{stage}")()


def load_pipeline_config(path, overrides=None) -> PipelineConfig:
    return configlib.load(PipelineConfig, path, overrides)


def record_config(cfg: PipelineConfig) -> None:
    """``out/pipeline.toml``: the config of the last run into ``out`` that finished (a
    refused or failed run leaves it alone; each stage folder records its own config)."""

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(cfg.out) / "pipeline.toml", configlib.dumps(cfg).encode())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="pipeline TOML config")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset, in order, of {','.join(STAGES)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set gpt.steps=100")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"launch.pipeline: unknown stages {unknown}; choose from {STAGES}", file=sys.stderr)
        return 2
    try:
        cfg = load_pipeline_config(args.config, args.set)
        pipeline = Pipeline(cfg, progress=not args.quiet)
        pipeline.run(stages)
        if pipeline.rank == 0:
            record_config(cfg)
    except (StageError, configlib.ConfigError, ValueError, FileNotFoundError) as err:
        print(f"launch.pipeline: {err}", file=sys.stderr)
        leave_process_group(wait=False)
        return 2
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
