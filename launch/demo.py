"""The offline demo: every stage on the built-in mnist, then runs/demo/report.md.

    bash launch/demo.sh                 # set-up + this; re-run it to resume
    python -m launch.demo --config launch/configs/demo.toml [--set gpt.steps=500]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from launch import config as configlib
from launch.pipeline import STAGES, Pipeline, StageError, load_pipeline_config
from launch.report import write_report

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.toml"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_pipeline_config(args.config, args.set)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pipeline.toml").write_text(configlib.dumps(cfg))
        pipeline = Pipeline(cfg, progress=not args.quiet)
        timings_path = out / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        for stage in STAGES:
            start = time.perf_counter()
            pipeline.run([stage])
            if stage not in timings:  # a resumed run keeps the first full measurement
                timings[stage] = time.perf_counter() - start
                timings_path.write_text(json.dumps(timings, indent=1))
        pipeline.log("report: reconstructions, FID floor, classifier")
        start = time.perf_counter()
        report = write_report(out, timings)
        timings["report"] = time.perf_counter() - start
    except (StageError, configlib.ConfigError, ValueError, FileNotFoundError) as err:
        print(f"launch.demo: {err}", file=sys.stderr)
        return 2
    summary = json.loads((out / "report.json").read_text())
    print(f"\nreport: {report}\n" + "\n".join(f"  {k}: {v:.3f}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
