"""Every stage end to end on a tiny configuration; resume skips; mismatches are refused."""

import json
import time

import numpy as np
import pytest
import torch

from launch import pipeline
from tests.test_eval_features import _images

pytestmark = pytest.mark.slow  # end-to-end: tens of seconds; -m 'not slow' skips


TINY = """
out = "{out}"
[data]
builtin = "photos"  # mirror-symmetric enough for "flip" views (digits refuse them)
size = 32
[tokenizer]
size = "gaussian-debug"
steps = 3
[tokenizer.loss]
lpips = 0.0
[tokenizer.data]
batch_size = 8
[codes]
views = "flip"
[gpt]
steps = 3
[gpt.data]
batch_size = 16
[sample]
per_class = 1
fid_num = 12
batch_size = 8
[eval]
ref = "{ref}"
metrics = "fid,prec,recall"
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    ref = root / "ref.npz"
    np.savez(ref, arr_0=_images(12, 9))  # a tiny reference keeps the Inception pass short
    config = root / "tiny.toml"
    config.write_text(TINY.format(out=root / "out", ref=ref))
    start = time.perf_counter()
    assert pipeline.main(["--config", str(config), "--quiet"]) == 0
    return root, config, time.perf_counter() - start


def test_every_stage_runs_and_writes_its_outputs(run):
    root, _, seconds = run
    out = root / "out"
    for stage in pipeline.STAGES:
        assert (out / stage / "stage.json").exists(), stage
    assert (out / "tokenizer" / "tokenizer.safetensors").exists()
    assert json.loads((out / "codes" / "manifest.json").read_text())["total"] == 640
    assert (out / "gpt" / "gpt.safetensors").exists()
    # the held-out images' codes (one view each) give the GPT's held-out loss at its end
    heldout = json.loads((out / "codes" / "heldout" / "manifest.json").read_text())
    images = json.loads((out / "data" / "heldout" / "manifest.json").read_text())["total"]
    assert heldout["total"] == images and heldout["num_views"] == 1
    record = json.loads((out / "gpt" / "gpt.json").read_text())["heldout"]
    assert record["step"] == 3 and record["images"] == images and record["bits_per_image"] > 0
    best = json.loads((out / "gpt" / "gpt-best.json").read_text())
    assert best["heldout"]["loss"] == record["loss"]  # the only evaluation: at step 3
    assert (out / "sample" / "grid.png").exists()
    result = json.loads((out / "eval" / "result.json").read_text())
    assert set(result["metrics"]) == {"fid", "prec", "recall"}
    assert "ref.npz" in result["reference"]
    assert "(ours)" in (out / "eval" / "leaderboard.md").read_text()
    assert (out / "pipeline.toml").exists() and (out / "gpt" / "config.toml").exists()
    assert seconds < 180


def test_rerun_skips_finished_stages(run):
    _, config, _ = run
    start = time.perf_counter()
    assert pipeline.main(["--config", str(config), "--quiet"]) == 0
    assert time.perf_counter() - start < 30


def test_changed_config_and_foreign_tokens_are_refused(run, capsys):
    root, config, _ = run
    recorded = (root / "out" / "pipeline.toml").read_text()
    assert pipeline.main(["--config", str(config), "--quiet", "--stages", "tokenizer",
                          "--set", "tokenizer.steps=4"]) == 2
    assert "was made with another config" in capsys.readouterr().err
    # the refused config is not recorded as the folder's config
    assert (root / "out" / "pipeline.toml").read_text() == recorded
    manifest_path = root / "out" / "codes" / "manifest.json"
    saved = manifest_path.read_text()
    manifest = json.loads(saved)
    manifest["tokenizer"]["sha1"] = "0" * 40
    manifest_path.write_text(json.dumps(manifest))
    try:
        assert pipeline.main(["--config", str(config), "--quiet", "--stages", "gpt"]) == 2
        assert "come from another tokenizer" in capsys.readouterr().err
    finally:
        manifest_path.write_text(saved)
    assert pipeline.main(["--config", str(config), "--stages", "bogus"]) == 2


def test_reused_stages_are_read_not_redone(run):
    """A second run reusing data..gpt of the first samples with another seed: it trains
    nothing, writes only its own sample and eval folders, and a changed reused stage is
    refused rather than redone in the other run's folder."""
    root, config, _ = run
    first = root / "out"
    reuse = [f"reuse.{s}={first / s}" for s in ("data", "tokenizer", "codes", "gpt")]
    other = root / "other"
    args = ["--config", str(config), "--quiet", "--set", f"out={other}",
            "--set", "sample.seed=7", *(x for r in reuse for x in ("--set", r))]
    assert pipeline.main(args) == 0
    assert sorted(p.name for p in other.iterdir() if p.is_dir()) == ["eval", "sample"]
    a = np.load(first / "sample" / "samples.npz")["arr_0"]
    b = np.load(other / "sample" / "samples.npz")["arr_0"]
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert pipeline.main([*args, "--set", "gpt.steps=4"]) == 2  # would retrain the shared GPT


def test_demo_ablations_reuse_every_stage_before_their_change(tmp_path):
    from launch.demo import DemoConfig, ablation_table, pipeline_table, seed_tables

    cfg = DemoConfig(out=str(tmp_path), base={"data": {"builtin": "mnist"}, "gpt": {"steps": 5}},
                     pipelines={"g": {"tokenizer": {"size": "gaussian-debug"}}},
                     ablations={"s": {"of": "g", "sample": {"cfg": 3.0}},
                                "r": {"of": "g", "gpt": {"model": {"rope": "1d"}}}})
    g = pipeline_table(cfg, "g")
    assert g["reuse"] == {"data": str(tmp_path / "data")} and g["out"] == str(tmp_path / "g")
    s, r = ablation_table(cfg, "s"), ablation_table(cfg, "r")
    assert set(s["reuse"]) == {"data", "tokenizer", "codes", "gpt"}
    assert s["reuse"]["gpt"] == str(tmp_path / "g" / "gpt")
    assert s["sample"] == {"cfg": 3.0, "seed": 0}
    assert set(r["reuse"]) == {"data", "tokenizer", "codes"}
    assert r["gpt"] == {"steps": 5, "model": {"rope": "1d"}}
    # further sampling seeds reuse everything up to the run's GPT, wherever it lives
    seeds = seed_tables(DemoConfig(**{**cfg.__dict__, "seeds": [4, 5]}), s)
    assert [seed for seed, _ in seeds] == [4, 5] and seeds[0][1] is s
    five = seeds[1][1]
    assert five["out"] == str(tmp_path / "s" / "seed-5") and five["sample"]["seed"] == 5
    assert five["reuse"]["gpt"] == str(tmp_path / "g" / "gpt") and "sample" not in five["reuse"]
    assert seed_tables(cfg, r)[0][1]["reuse"].get("gpt") is None
    with pytest.raises(ValueError, match="seeds must be distinct"):
        DemoConfig(pipelines={"g": {}}, seeds=[1, 1])
    with pytest.raises(ValueError, match="a name with a dot is split by TOML"):
        DemoConfig(pipelines={"g": {}}, ablations={"t-0": {"8": {"of": "g"}}})
    with pytest.raises(ValueError, match="'of' must name one of the pipelines"):
        DemoConfig(pipelines={"g": {}}, ablations={"x": {"of": "vq"}})


def test_demo_only_keeps_the_named_pipelines_their_ablations_and_their_folders(tmp_path):
    from launch.demo import DemoConfig, keep_only, pipeline_table

    def config():
        return DemoConfig(out=str(tmp_path), pipelines={"a": {}, "b": {"gpt": {"steps": 2}}},
                          ablations={"a1": {"of": "a"}, "b1": {"of": "b"}})
    full, part = config(), config()
    keep_only(part, ["b"])
    assert list(part.pipelines) == ["b"] and list(part.ablations) == ["b1"]
    assert pipeline_table(part, "b") == pipeline_table(full, "b")  # the full run's folders
    keep_only(full, [])
    assert list(full.pipelines) == ["a", "b"] and len(full.ablations) == 2
    with pytest.raises(ValueError, match=r"--only c: the config's pipelines are \['a', 'b'\]"):
        keep_only(config(), ["b", "c"])


def test_demo_gpt_seeds_train_one_gpt_each_and_count_once_in_gpt_measures(tmp_path):
    from launch.demo import DemoConfig, ablation_table, pipeline_table, run_tables
    from launch.report import over_seeds

    cfg = DemoConfig(out=str(tmp_path), base={"data": {"builtin": "mnist"}},
                     pipelines={"g": {}}, seeds=[0, 1], gpt_seeds=[3, 4],
                     ablations={"s": {"of": "g", "sample": {"cfg": 3.0}}})
    runs = dict(run_tables(cfg, pipeline_table(cfg, "g")))
    assert list(runs) == ["", "seed 1", "gpt seed 4", "gpt seed 4 seed 1"]
    assert [t["gpt"]["seed"] for t in runs.values()] == [3, 3, 4, 4]
    four = runs["gpt seed 4"]
    assert four["out"] == str(tmp_path / "g" / "gpt-seed-4")
    assert four["reuse"] == {"data": str(tmp_path / "data"),
                             "tokenizer": str(tmp_path / "g" / "tokenizer"),
                             "codes": str(tmp_path / "g" / "codes")}
    assert runs["gpt seed 4 seed 1"]["reuse"]["gpt"] == str(tmp_path / "g" / "gpt-seed-4" /
                                                            "gpt")
    # an ablation after the GPT samples its parent's GPT of each seed
    ablation = dict(run_tables(cfg, ablation_table(cfg, "s")))
    assert ablation["gpt seed 4"]["reuse"]["gpt"] == str(tmp_path / "g" / "gpt-seed-4" / "gpt")
    assert ablation["gpt seed 4"]["out"] == str(tmp_path / "s" / "gpt-seed-4")
    assert list(dict(run_tables(DemoConfig(pipelines={"g": {}}),
                                pipeline_table(cfg, "g")))) == [""]
    # 2 GPTs x 2 sampling seeds: FID over the 4 runs, held-out bits over the 2 GPTs
    per_run = [{"gpt_dir": f"gpt{g}", "fid": f, "heldout_bits_per_image": b}
               for g, f, b in ((0, 10.0, 100.0), (0, 12.0, 100.0), (1, 14.0, 110.0),
                               (1, 16.0, 110.0))]
    merged = over_seeds(per_run)
    assert merged["seeds"] == 4 and merged["fid"] == 13.0
    assert merged["fid_std"] == pytest.approx(np.std([10, 12, 14, 16], ddof=1))
    assert merged["heldout_bits_per_image"] == 105.0
    assert merged["heldout_bits_per_image_std"] == pytest.approx(np.std([100, 110], ddof=1))
    assert "heldout_bits_per_image_std" not in over_seeds(per_run[:2])  # one GPT: no spread


def test_validation_split_trains_on_fit_and_scores_the_gpt_on_val(run, tmp_path):
    root, config, _ = run
    text = config.read_text().replace(f'out = "{root / "out"}"', f'out = "{tmp_path / "v"}"')
    text = text.replace('size = 32\n', 'size = 32\nvalidation = true\n', 1)
    text += f'\n[reuse]\ntokenizer = "{root / "out" / "tokenizer"}"\n'
    path = tmp_path / "v.toml"
    path.write_text(text)
    assert pipeline.main(["--config", str(path), "--quiet", "--stages", "data,codes,gpt"]) == 0
    out = tmp_path / "v"
    counts = {split: json.loads((out / "data" / split / "manifest.json").read_text())["total"]
              for split in ("train", "val", "heldout")}
    assert counts == {"train": 560, "val": 80, "heldout": 160}  # photos: fit, val, heldout
    sources = {split: json.loads((out / "data" / split / "build.json").read_text())["source"]
               for split in counts}
    assert sources == {s: f"builtin:photos/{p}" for s, p in
                       (("train", "fit"), ("val", "val"), ("heldout", "heldout"))}
    assert json.loads((out / "codes" / "val" / "manifest.json").read_text())["total"] == 80
    gpt = json.loads((out / "gpt" / "stage.json").read_text())["config"]
    assert gpt["data"]["heldout"] == str(out / "codes" / "val")
    assert json.loads((out / "gpt" / "gpt.json").read_text())["heldout"]["images"] == 80
    with pytest.raises(ValueError, match=r"data\.validation carves a validation split"):
        pipeline.DataStage(src="images", validation=True)


def test_the_frontier_config_resolves_4_pipelines_x_2_gpts_x_3_samplings():
    from pathlib import Path

    from data import config as configlib
    from launch.demo import DemoConfig, check_candidates, pipeline_table, resolve, run_tables

    path = Path(pipeline.__file__).parent / "configs" / "frontier-mnist.toml"
    cfg = configlib.load(DemoConfig, path, [])
    runs = {(name, key): resolve(table) for name in cfg.pipelines
            for key, table in run_tables(cfg, pipeline_table(cfg, name))}
    assert len(runs) == 4 * 2 * 3
    # the same GPT table everywhere but the training seed; selection on val, never heldout
    gpts = {(n, k): {**configlib.to_dict(p)["gpt"], "seed": None} for (n, k), p in runs.items()}
    assert len({json.dumps(g, sort_keys=True) for g in gpts.values()}) == 1
    assert {runs[n, k].gpt["seed"] for n, k in runs} == {0, 1}
    assert all(p.data.validation and p.sample.weights == "best" for p in runs.values())
    # dropout, then cfg, chosen for every pipeline on val; every candidate resolves
    assert list(cfg.tune) == ["gpt.model.dropout", "sample.cfg", "sample.order"]
    check_candidates(cfg)


def test_sampling_the_best_weights_needs_held_out_codes():
    from data import config as configlib

    table = {"data": {"src": "images/train"}, "sample": {"weights": "best"}}
    with pytest.raises(ValueError, match="needs held-out codes"):
        configlib.from_dict(pipeline.PipelineConfig, table)
    table["data"]["val_src"] = "images/val"
    assert configlib.from_dict(pipeline.PipelineConfig, table).tokenizes_heldout
    with pytest.raises(ValueError, match=r"sample\.weights must be 'last' or 'best'"):
        configlib.from_dict(pipeline.PipelineConfig, {"sample": {"weights": "first"}})


def test_stages_finished_before_a_field_was_added_stay_done(run, capsys):
    """stage.json written before model.class_rope / encoder.style existed: still done."""
    root, config, _ = run
    edits = {"gpt": ("model", "class_rope"), "tokenizer": ("tokenizer", "encoder")}
    saved = {}
    for stage, (table, key) in edits.items():
        marker = root / "out" / stage / "stage.json"
        saved[marker] = marker.read_text()
        record = json.loads(saved[marker])
        target = record["config"][table]
        if key == "encoder":
            del target[key]["style"], target[key]["z_channels"]
        else:
            del target[key]
        marker.write_text(json.dumps(record))
    try:
        assert pipeline.main(["--config", str(config), "--quiet", "--stages",
                              "tokenizer,gpt"]) == 0, capsys.readouterr().err
    finally:
        for marker, text in saved.items():
            marker.write_text(text)


def test_a_codes_stage_finished_before_heldout_codes_existed_writes_them(run, tmp_path):
    root, config, _ = run
    heldout = root / "out" / "codes" / "heldout"
    manifest = json.loads((heldout / "manifest.json").read_text())
    moved = tmp_path / "heldout"
    heldout.rename(moved)  # as a codes stage of an older version left it
    marker = root / "out" / "codes" / "stage.json"
    saved = marker.read_text()
    record = json.loads(saved)
    del record["config"]["heldout"]
    marker.write_text(json.dumps(record))
    try:
        assert pipeline.main(["--config", str(config), "--quiet", "--stages", "codes"]) == 0
        assert json.loads((heldout / "manifest.json").read_text()) == manifest
        assert marker.read_text() == json.dumps(record)  # the stage itself stays done
    finally:
        marker.write_text(saved)


def test_a_bad_value_in_a_later_stage_is_refused_before_the_first(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(TINY.format(out=tmp_path / "out", ref=tmp_path / "ref.npz")
                      .replace("[gpt]\nsteps = 3", "[gpt]\nsteps = \"abc\""))
    assert pipeline.main(["--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "steps: expected an integer" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "data").exists()  # no stage ran


def test_the_demo_report_shows_what_the_generator_pays(run):
    from generator.config import GPTConfig
    from generator.model import flops_per_token, sampling_flops_per_image
    from launch.report import write_demo_report

    root, _, _ = run
    out, report = root / "out", root / "report"
    (report / "p").mkdir(parents=True)
    dirs = {stage: out / stage for stage in pipeline.STAGES}
    text = write_demo_report(report, {"p": [dirs]}, {}, out / "data", {"p": {}}).read_text()
    meta = json.loads((out / "gpt" / "gpt.json").read_text())
    bits = meta["heldout"]["bits_per_image"]
    assert f"| **GPT held-out bits per image** (the rate the generator models) | {bits:.1f} |" \
        in text
    assert "| GPT sampled (the export) and the set it is scored on | gpt, heldout |" in text
    summary = json.loads((report / "report.json").read_text())["p"]
    assert summary["heldout"] == meta["heldout"]
    # the GPT as a classifier of the held-out images' tokens: recomputed here
    from data.tokens import make_token_loader
    from generator.heldout import generative_accuracy
    from generator.samples import load_gpt

    gpt, _ = load_gpt(out / "gpt" / "gpt.safetensors")
    expected = generative_accuracy(gpt, make_token_loader(out / "codes" / "heldout",
                                                          batch_size=7, train=False))
    assert summary["gpt_classifier"] == pytest.approx(expected)
    assert f"{100 * expected['accuracy']:.1f}% (position " in text
    cfg = GPTConfig(**meta["gpt"])
    assert summary["gpt_train_flops_per_image"] == flops_per_token(cfg) * cfg.num_tokens
    guided = json.loads((out / "sample" / "stage.json").read_text())["config"]["cfg"] != 1.0
    sampling = sampling_flops_per_image(cfg, guided)
    assert summary["gpt_sample_flops_per_image"] == sampling
    row = "| GPT sampling FLOPs per image (KV cache; x2 with guidance) |"
    assert f"{row} {sampling / 1e6:.1f} M |" in text
    # the frontier figure reads this report.json: a Gaussian-tuple pipeline at its cost
    from launch.frontier import points

    tokens = summary["tokenizer"]["num_tokens"]
    assert points([json.loads((report / "report.json").read_text())], "sample") == {
        "GaussianToken": [(sampling, summary["fid"], 0.0, tokens, "p")]}


def test_the_report_scores_the_weights_that_were_sampled(run, tmp_path):
    """With sample.weights = "best" the report reads gpt-best: its held-out record and
    its classifier. Here gpt-best is replaced by all-zero weights (every class equally
    likely, so argmax picks class 0: its accuracy is the share of class 0, a known
    value) and a record of its own, so reading gpt instead cannot pass."""
    import shutil

    from data.files import load_weights, save_weights
    from data.tokens import make_token_loader
    from launch.report import write_demo_report

    root, _, _ = run
    out = root / "out"
    gpt, sample = tmp_path / "gpt", tmp_path / "sample"
    shutil.copytree(out / "gpt", gpt)
    shutil.copytree(out / "sample", sample)
    state = load_weights(gpt / "gpt-best.safetensors")
    save_weights(gpt / "gpt-best.safetensors", {k: torch.zeros_like(v) for k, v in state.items()})
    record = json.loads((gpt / "gpt-best.json").read_text())
    record["heldout"] = {**record["heldout"], "bits_per_image": 12345.0}
    (gpt / "gpt-best.json").write_text(json.dumps(record))
    stage = json.loads((sample / "stage.json").read_text())
    stage["config"]["weights"] = "best"
    (sample / "stage.json").write_text(json.dumps(stage))

    report = tmp_path / "report"
    (report / "p").mkdir(parents=True)
    dirs = {**{s: out / s for s in pipeline.STAGES}, "gpt": gpt, "sample": sample}
    text = write_demo_report(report, {"p": [dirs]}, {}, out / "data", {"p": {}}).read_text()
    summary = json.loads((report / "report.json").read_text())["p"]
    assert summary["gpt_weights"] == "gpt-best" and summary["heldout"] == record["heldout"]
    assert "| GPT sampled (the export) and the set it is scored on | gpt-best, heldout |" in text
    labels = torch.cat([y for _, y in make_token_loader(out / "codes" / "heldout",
                                                        batch_size=7, train=False)])
    share = (labels == 0).double().mean().item()
    classifier = summary["gpt_classifier"]
    assert classifier["images"] == len(labels)
    assert all(classifier[k] == pytest.approx(share) for k in classifier if k != "images")
