"""The offline demo: GaussianToken + GPT against VQ + GPT on the built-in mnist, every
stage of both pipelines at the same token count, GPT size and budget, then
runs/demo/report.md with both side by side.

    bash launch/demo.sh                                    # set-up + this; re-run to resume
    python -m launch.demo --config launch/configs/demo.toml [--set base.gpt.steps=500]
    python -m launch.demo --ablations                      # + one-change ablation rows
    python -m launch.demo --config C --only vq-16 --only gaussian-16   # some pipelines

Layout under ``out``: data/ (one data stage shared by every run), one pipeline folder
per name in ``pipelines`` (data -> tokenizer -> codes -> gpt -> sample -> eval, see
launch/pipeline.py), and, with --ablations, one folder per ablation, which reuses
every stage of its pipeline up to the first one its change touches. Every run samples
once per seed in ``seeds`` (seed-S/ folders beside the first seed's sample/ and eval/,
reusing the run's GPT) and the report gives mean ± std over them. With ``gpt_seeds``
every run trains one GPT per seed (gpt-seed-G/ folders reusing its tokenizer and codes),
each sampled with every seed of ``seeds``. With ``tune`` (e.g. ``"sample.cfg" = [1.0,
1.5, 2.0]``) every pipeline first chooses those settings by FID on its validation split
(candidate runs under <pipeline>/tune/, launch/tuning.py) and its runs use the choice.
Re-running skips finished stages and resumes unfinished ones.
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data import config as configlib
from data.files import atomic_write_json, read_json
from launch.pipeline import (
    STAGES,
    Pipeline,
    PipelineConfig,
    StageError,
    record_config,
)
from launch.report import write_demo_report
from launch.tuning import (
    STAGES_SHARED,
    candidate_table,
    check_tune,
    tune_pipeline,
    with_choices,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.toml"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    base: dict = field(default_factory=dict)  # a pipeline table shared by every run
    pipelines: dict = field(default_factory=dict)  # name -> table laid over base
    ablations: dict = field(default_factory=dict)  # name -> {of = pipeline, note, changes}
    seeds: list[int] = field(default_factory=lambda: [0])  # sampling seeds of every run
    # GPT training seeds: [] = one GPT (its gpt.seed); else one GPT per seed, each sampled
    # with every seed of ``seeds`` (the report's mean ± std is over all of them)
    gpt_seeds: list[int] = field(default_factory=list)
    # settings chosen per pipeline on the validation split before its runs
    # (launch/tuning.py): "section.key" -> the values to try, in the order chosen
    tune: dict = field(default_factory=dict)

    def __post_init__(self):
        check_tune(self.tune)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if len(set(self.gpt_seeds)) != len(self.gpt_seeds):
            raise ValueError(f"gpt_seeds must be distinct, got {self.gpt_seeds}")
        if not self.pipelines:
            raise ValueError("the demo config names no pipelines")
        for name, a in self.ablations.items():
            if "of" not in a and a and all(isinstance(v, dict) for v in a.values()):
                raise ValueError(f"ablation {name!r} holds only tables ({sorted(a)}): a name "
                                 "with a dot is split by TOML; quote it or drop the dot")
            if a.get("of") not in self.pipelines:
                raise ValueError(f"ablation {name!r}: 'of' must name one of the pipelines "
                                 f"{sorted(self.pipelines)}, got {a.get('of')!r}")
        clash = set(self.ablations) & set(self.pipelines) | \
            {"data"} & (set(self.ablations) | set(self.pipelines))
        if clash:
            raise ValueError(f"run names must be unique and not 'data': {sorted(clash)}")


def pipeline_table(cfg: DemoConfig, name: str) -> dict:
    table = configlib.merge_tables(cfg.base, cfg.pipelines[name])
    return configlib.merge_tables(table, {"out": str(Path(cfg.out) / name),
                                          "reuse": {"data": str(Path(cfg.out) / "data")},
                                          "sample": {"seed": cfg.seeds[0]}})


def seed_tables(cfg: DemoConfig, table: dict) -> list[tuple[int, dict]]:
    """The run itself (first seed) and one sampling run per further seed, which reuses
    every stage up to the GPT and writes sample/ and eval/ under out/seed-S."""
    runs = [(cfg.seeds[0], table)]
    up_to_gpt = {stage: table["reuse"].get(stage, str(Path(table["out"]) / stage))
                 for stage in ("data", "tokenizer", "codes", "gpt")}
    for seed in cfg.seeds[1:]:
        other = configlib.merge_tables(table, {"sample": {"seed": seed}})
        other["out"], other["reuse"] = str(Path(table["out"]) / f"seed-{seed}"), up_to_gpt
        runs.append((seed, other))
    return runs


def gpt_seed_tables(cfg: DemoConfig, table: dict) -> list[tuple[int | None, dict]]:
    """The run itself (GPT seed gpt_seeds[0]) and one run per further GPT seed G under
    out/gpt-seed-G, which reuses every stage before the GPT (a reused GPT, an
    ablation's, becomes its parent's GPT of that seed). Without gpt_seeds: the run."""
    if not cfg.gpt_seeds:
        return [(None, table)]
    before = {stage: table["reuse"].get(stage, str(Path(table["out"]) / stage))
              for stage in ("data", "tokenizer", "codes")}
    runs = []
    for seed in cfg.gpt_seeds:
        run = configlib.merge_tables(table, {"gpt": {"seed": seed}})
        if seed != cfg.gpt_seeds[0]:
            run["out"], run["reuse"] = str(Path(table["out"]) / f"gpt-seed-{seed}"), dict(before)
            if "gpt" in table["reuse"]:
                parent_gpt = Path(table["reuse"]["gpt"])
                run["reuse"]["gpt"] = str(parent_gpt.parent / f"gpt-seed-{seed}" / "gpt")
        runs.append((seed, run))
    return runs


def run_tables(cfg: DemoConfig, table: dict) -> list[tuple[str, dict]]:
    """Every run of a pipeline or ablation: GPT seeds x sampling seeds, labelled ("" for
    the run itself, "gpt seed 1", "seed 2", "gpt seed 1 seed 2")."""
    runs = []
    for g, gtable in gpt_seed_tables(cfg, table):
        gpt_label = "" if g is None or g == cfg.gpt_seeds[0] else f"gpt seed {g}"
        for s, stable in seed_tables(cfg, gtable):
            seed_label = "" if s == cfg.seeds[0] else f"seed {s}"
            runs.append((" ".join(x for x in (gpt_label, seed_label) if x), stable))
    return runs


def ablation_table(cfg: DemoConfig, name: str) -> dict:
    """The parent pipeline's table with the ablation's changes; every stage before the
    first changed section is reused from the parent's folders."""
    spec = dict(cfg.ablations[name])
    parent_name = spec.pop("of")
    spec.pop("note", None)
    parent = pipeline_table(cfg, parent_name)
    table = configlib.merge_tables(parent, spec)
    reuse = {"data": parent["reuse"]["data"]}
    for stage in STAGES[1:]:  # each stage reads the pipeline table of its own name
        if table.get(stage) != parent.get(stage):
            break
        reuse[stage] = str(Path(parent["out"]) / stage)
    table["out"], table["reuse"] = str(Path(cfg.out) / name), reuse
    return table


def resolve(table: dict):
    """A PipelineConfig from a table, every stage's config checked (ConfigError)."""
    pcfg = configlib.from_dict(PipelineConfig, table)
    Pipeline(pcfg, progress=False).check_configs()
    return pcfg


def run_one(name: str, pcfg, progress: bool, stages=STAGES) -> tuple[dict, dict]:
    """The stages of one run (all by default), timed; the first full measurement of a
    stage is kept."""
    out = Path(pcfg.out)
    out.mkdir(parents=True, exist_ok=True)  # its data stage may be another run's
    pipeline = Pipeline(pcfg, progress=progress)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for stage in stages:
        if stage in pcfg.reuse and stage != "data":
            continue  # another run's stage: timed there
        start = time.perf_counter()
        pipeline.log(f"[{name}]")
        pipeline.run([stage])
        if stage not in timings:
            timings[stage] = time.perf_counter() - start
            atomic_write_json(timings_path, timings, sort_keys=False)
    return {stage: pipeline.dir(stage) for stage in STAGES}, timings


def first_gpt_seed(cfg: DemoConfig) -> int | None:
    return cfg.gpt_seeds[0] if cfg.gpt_seeds else None


def check_candidates(cfg: DemoConfig) -> None:
    """Before any stage: every tuning candidate of every pipeline resolves, and each
    pipeline has the validation split and the FID they are chosen by."""
    for name in cfg.pipelines:
        table = pipeline_table(cfg, name)
        pcfg = resolve(table)
        if not pcfg.data.validation:
            raise ValueError(f"tune: pipeline {name!r} has no validation split to choose on "
                             "(set data.validation = true)")
        if "fid" not in pcfg.eval.metrics.split(","):
            raise ValueError(f"tune: pipeline {name!r} does not compute the FID its "
                             f"settings are chosen by (eval.metrics = {pcfg.eval.metrics!r})")
        for key, values in cfg.tune.items():
            for value in values:
                resolve(candidate_table(table, key, value, {}, first_gpt_seed(cfg),
                                        str(Path(table["out"]) / "gpt")))


def tune_pipelines(cfg: DemoConfig, progress: bool, timings: dict) -> dict:
    """Every pipeline's tune choices (launch/tuning.py), laid over ``cfg.pipelines``;
    the stages its candidates share run first. -> name -> tune.json's record."""
    records = {}
    trains_gpts = any(key.startswith("gpt.") for key in cfg.tune)
    for name in cfg.pipelines:
        table = pipeline_table(cfg, name)
        seed = first_gpt_seed(cfg)
        first = table if seed is None else configlib.merge_tables(table, {"gpt": {"seed": seed}})
        shared = STAGES_SHARED if trains_gpts else (*STAGES_SHARED, "gpt")
        _, timings[name] = run_one(name, resolve(first), progress, shared)

        def run(label, candidate, name=name):
            dirs, timings[f"{name} {label}"] = run_one(f"{name} {label}", resolve(candidate),
                                                       progress)
            return dirs

        records[name] = tune_pipeline(cfg.tune, table, seed, run)
        cfg.pipelines[name] = with_choices(cfg.pipelines[name], records[name]["chosen"])
    return records


def keep_only(cfg: DemoConfig, names: list[str]) -> None:
    """Drop every pipeline not in ``names`` (all kept when empty), and its ablations."""
    if not names:
        return
    unknown = [n for n in names if n not in cfg.pipelines]
    if unknown:
        raise ValueError(f"--only {unknown[0]}: the config's pipelines are "
                         f"{sorted(cfg.pipelines)}")
    cfg.pipelines = {n: t for n, t in cfg.pipelines.items() if n in names}
    cfg.ablations = {n: a for n, a in cfg.ablations.items() if a["of"] in names}


def reuse_tuned_gpt(pcfg, tuned: dict) -> None:
    """A run of its pipeline's first GPT (the pipeline itself, a further sampling seed, an
    ablation that keeps the GPT) samples the GPT tuning chose instead of training the
    same one again, when that GPT's recorded config is the one this run would train.
    tuned: the pipeline's own GPT folder -> the chosen candidate's (tune.json "gpt")."""
    pipeline = Pipeline(pcfg, progress=False)
    own = str(pipeline.dir("gpt"))
    if own not in tuned or not (Path(tuned[own]) / "stage.json").exists():
        return
    found = read_json(Path(tuned[own]) / "stage.json", "the tuned GPT's record")["config"]
    mine = configlib.to_dict(pipeline.gpt_config())
    if {**found, "out": None} == {**mine, "out": None}:
        pcfg.reuse["gpt"] = tuned[own]


def main(argv=None) -> int:

    parser = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="demo config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set base.gpt.steps=500 "
                             "(repeatable)")
    parser.add_argument("--ablations", action="store_true",
                        help="also run the config's ablations (each reuses its pipeline's "
                             "finished stages) and add their rows to the report")
    parser.add_argument("--only", action="append", default=[], metavar="PIPELINE",
                        help="run (tune, train, sample) and report only this pipeline of the "
                             "config, and the ablations of it (repeatable): a long config in "
                             "parts; its folders are the full run's, so a later run without "
                             "--only reuses them and reports every pipeline")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    try:
        cfg = configlib.load(DemoConfig, args.config, args.set)
        full = configlib.dumps(cfg)  # the config as given, --only or not
        keep_only(cfg, args.only)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "demo.toml").write_text(full)
        dirs, abl_dirs, timings, notes = {}, {}, {}, {}

        def plan():
            runs = [(name, pipeline_table(cfg, name), dirs) for name in cfg.pipelines]
            runs += [(name, ablation_table(cfg, name), abl_dirs)
                     for name in (cfg.ablations if args.ablations else [])]
            resolved = {(name, key): resolve(seeded) for name, table, _ in runs  # all first
                        for key, seeded in run_tables(cfg, table)}
            return runs, resolved

        runs, resolved = plan()
        tuning = {}
        if cfg.tune:
            check_candidates(cfg)
            tuning = tune_pipelines(cfg, not args.quiet, timings)
            runs, resolved = plan()  # the pipelines (and their ablations) with the choices
            tuned = {str(Path(cfg.out) / name / "gpt"): record["gpt"]
                     for name, record in tuning.items() if "gpt" in record}
            for pcfg in resolved.values():
                reuse_tuned_gpt(pcfg, tuned)
        for name, table, into in runs:
            into[name] = []
            for key, _ in run_tables(cfg, table):
                label = f"{name} {key}" if key else name
                pcfg = resolved[name, key]
                stage_dirs, timings[label] = run_one(label, pcfg, not args.quiet)
                record_config(pcfg)
                into[name].append(stage_dirs)
            notes[name] = cfg.ablations.get(name, {}).get("note", "")
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] report: tokenizer metrics, FID floor, "
                  "classifier", flush=True)
        start = time.perf_counter()
        report = write_demo_report(out, dirs, abl_dirs, out / "data", timings, notes,
                                   gpt_seeds=len(cfg.gpt_seeds) or 1, tuning=tuning)
    except (StageError, configlib.ConfigError, ValueError, FileNotFoundError) as err:
        print(f"launch.demo: {err}", file=sys.stderr)
        return 2
    summary = json.loads((out / "report.json").read_text())
    print(f"\nreport: {report} (written in {time.perf_counter() - start:.0f} s)")
    print(f"  FID floor: {summary['fid_floor']:.2f}")
    for name in [*dirs, *abl_dirs]:
        s = summary[name]
        print(f"  {name}: FID {s.get('fid', float('nan')):.2f}, class accuracy "
              f"{100 * s['accuracy_generated']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
