"""Settings chosen on the validation split (launch/tuning.py): candidate runs reuse what
they share, the lowest validation FID wins in the order given, the choice reaches the
pipeline's runs, and nothing is chosen on the held-out images."""

import json
from pathlib import Path

import pytest

from launch.tuning import candidate_table, check_tune, nested, tune_pipeline, tuning_lines

TUNE = {"gpt.model.dropout": [0.0, 0.1, 0.2], "sample.cfg": [1.0, 2.0]}


def _table(root: Path) -> dict:
    return {"out": str(root / "p"), "reuse": {"data": str(root / "data")},
            "gpt": {"steps": 5, "model": {"dropout": 0.3}}, "sample": {"seed": 0, "cfg": 1.5},
            "eval": {"metrics": "fid"}}


def test_a_tune_table_is_checked_before_any_run():
    check_tune(TUNE)
    check_tune({})
    with pytest.raises(ValueError, match=r"only gpt\.\* and sample\.\* settings"):
        check_tune({"tokenizer.steps": [1, 2]})
    with pytest.raises(ValueError, match=r"only gpt\.\* and sample\.\* settings"):
        check_tune({"gpt": [1, 2]})
    with pytest.raises(ValueError, match=r"gpt\.\* keys come before the sample\.\* keys"):
        check_tune({"sample.cfg": [1.0, 2.0], "gpt.model.dropout": [0.0, 0.1]})
    for values in ([1.0], [1.0, 1.0], 1.5):
        with pytest.raises(ValueError, match="at least 2 distinct values"):
            check_tune({"sample.cfg": values})
    assert nested("a.b.c", 1) == {"a": {"b": {"c": 1}}}


def test_a_candidate_reuses_the_shared_stages_and_is_scored_on_val(tmp_path):
    table = _table(tmp_path)
    gpt = candidate_table(table, "gpt.model.dropout", 0.1, {}, 7, None)
    assert gpt["out"] == str(tmp_path / "p" / "tune" / "gpt.model.dropout=0.1")
    assert gpt["reuse"] == {"data": str(tmp_path / "data"),
                            "tokenizer": str(tmp_path / "p" / "tokenizer"),
                            "codes": str(tmp_path / "p" / "codes")}  # the GPT is trained
    assert gpt["gpt"] == {"steps": 5, "model": {"dropout": 0.1}, "seed": 7}
    assert gpt["eval"] == {"metrics": "fid", "ref": str(tmp_path / "data" / "val")}
    sample = candidate_table(table, "sample.cfg", 2.0, {"gpt.model.dropout": 0.2}, None,
                             "G")
    assert sample["reuse"]["gpt"] == "G" and sample["sample"] == {"seed": 0, "cfg": 2.0}
    assert sample["gpt"]["model"]["dropout"] == 0.2 and "seed" not in sample["gpt"]
    assert table["gpt"]["model"]["dropout"] == 0.3 and "ref" not in table["eval"]  # untouched


def test_the_lowest_validation_fid_wins_in_order_and_the_sampler_uses_the_chosen_gpt(
        tmp_path):
    fid = {("gpt.model.dropout", 0.0): 9.0, ("gpt.model.dropout", 0.1): 7.0,
           ("gpt.model.dropout", 0.2): 7.0,  # a tie: the first value wins
           ("sample.cfg", 1.0): 5.0, ("sample.cfg", 2.0): 4.0}
    calls = []

    def run(label, candidate):
        key, value = label.removeprefix("tune ").split("=")
        value = float(value)
        out = Path(candidate["out"])
        (out / "eval").mkdir(parents=True)
        (out / "eval" / "result.json").write_text(json.dumps(
            {"metrics": {"fid": fid[key, value]}}))
        calls.append((key, value, candidate))
        gpt = candidate["reuse"].get("gpt", str(out / "gpt"))
        return {"gpt": gpt, "eval": out / "eval"}

    record = tune_pipeline(TUNE, _table(tmp_path), 3, run)
    assert record["chosen"] == {"gpt.model.dropout": 0.1, "sample.cfg": 2.0}
    assert record["keys"]["gpt.model.dropout"]["fid"] == [9.0, 7.0, 7.0]
    assert [(k, v) for k, v, _ in calls] == [(k, v) for k in TUNE for v in TUNE[k]]
    winner = str(tmp_path / "p" / "tune" / "gpt.model.dropout=0.1" / "gpt")
    for key, _, candidate in calls:
        if key == "sample.cfg":  # sampled from the chosen GPT, with the chosen dropout
            assert candidate["reuse"]["gpt"] == winner
            assert candidate["gpt"]["model"]["dropout"] == 0.1
    assert record["gpt"] == winner  # the first GPT seed's runs sample it
    saved = json.loads((tmp_path / "p" / "tune" / "tune.json").read_text())
    assert saved == json.loads(json.dumps(record))
    lines = tuning_lines({"p": record})
    assert "| p | `gpt.model.dropout` | 0.0: 9.00, **0.1: 7.00**, 0.2: 7.00 |" in lines
    assert "| p | `sample.cfg` | 1.0: 5.00, **2.0: 4.00** |" in lines
    assert tuning_lines({}) == []
    # a sampling-only tune samples the pipeline's own GPT
    calls.clear()
    record = tune_pipeline({"sample.cfg": [1.0, 2.0]}, _table(tmp_path / "b"), None, run)
    assert {c["reuse"]["gpt"] for _, _, c in calls} == {str(tmp_path / "b" / "p" / "gpt")}
    assert "gpt" not in record


def test_a_candidate_that_repeats_an_earlier_run_is_not_run_again(tmp_path):
    """cfg 1.5 is what the chosen GPT was sampled with, and order "auto" given is order
    left out: both repeat a run already made, so they take its FID without running."""
    fid = {("gpt.model.dropout", 0.0): 9.0, ("gpt.model.dropout", 0.1): 7.0,
           ("sample.cfg", 2.0): 8.0, ("sample.order", "off"): 6.0}
    labels = []

    def run(label, candidate):
        key, value = label.removeprefix("tune ").split("=")
        value = value if key == "sample.order" else float(value)
        out = Path(candidate["out"])
        (out / "eval").mkdir(parents=True)
        (out / "eval" / "result.json").write_text(json.dumps(
            {"metrics": {"fid": fid[key, value]}}))
        labels.append(label)
        return {"gpt": candidate["reuse"].get("gpt", str(out / "gpt")), "eval": out / "eval"}

    tune = {"gpt.model.dropout": [0.0, 0.1], "sample.cfg": [1.5, 2.0],
            "sample.order": ["auto", "off"]}
    record = tune_pipeline(tune, _table(tmp_path), 3, run)
    assert labels == ["tune gpt.model.dropout=0.0", "tune gpt.model.dropout=0.1",  # the
                      "tune sample.cfg=2.0", "tune sample.order=off"]  # same sampling, 2 GPTs
    assert record["keys"]["sample.cfg"]["fid"] == [7.0, 8.0]  # 1.5: the dropout=0.1 run
    assert record["keys"]["sample.order"]["fid"] == [7.0, 6.0]
    assert record["chosen"] == {"gpt.model.dropout": 0.1, "sample.cfg": 1.5,
                                "sample.order": "off"}


@pytest.mark.parametrize("position_component", [-1, 0])
def test_order_off_repeats_auto_only_for_a_gpt_without_positions(tmp_path,
                                                                 position_component):
    """The sampler resolves order "auto" from the GPT's record (on with a position token,
    else off): for VQ codes "off" is the run "auto" made and takes its FID; for Gaussian
    tuples it is another run."""
    labels = []

    def run(label, candidate):
        out = Path(candidate["out"])
        gpt = Path(candidate["reuse"].get("gpt", out / "gpt"))
        if "gpt" not in candidate["reuse"]:  # a candidate that trains its GPT
            gpt.mkdir(parents=True)
            (gpt / "gpt.json").write_text(json.dumps(
                {"gpt": {"position_component": position_component}}))
        (out / "eval").mkdir(parents=True)
        (out / "eval" / "result.json").write_text(json.dumps(
            {"metrics": {"fid": 5.0 if label.endswith("off") else 7.0}}))
        labels.append(label)
        return {"gpt": gpt, "eval": out / "eval"}

    tune = {"gpt.model.dropout": [0.1], "sample.order": ["auto", "off"]}
    record = tune_pipeline(tune, _table(tmp_path), 3, run)
    if position_component < 0:
        assert labels == ["tune gpt.model.dropout=0.1"]
        assert record["keys"]["sample.order"]["fid"] == [7.0, 7.0]
        assert record["chosen"]["sample.order"] == "auto"  # the first on a tie
    else:
        assert labels == ["tune gpt.model.dropout=0.1", "tune sample.order=off"]
        assert record["keys"]["sample.order"]["fid"] == [7.0, 5.0]


def test_a_run_samples_the_tuned_gpt_only_when_it_would_train_the_same_one(tmp_path):
    from data import config as configlib
    from launch.demo import resolve, reuse_tuned_gpt
    from launch.pipeline import Pipeline

    def run(**changes):
        table = {"out": str(tmp_path / "p"), "data": {"builtin": "mnist"},
                 "gpt": {"steps": 3, **changes}}
        return resolve(table)

    tuned_dir = tmp_path / "p" / "tune" / "gpt.steps=3" / "gpt"
    tuned_dir.mkdir(parents=True)
    config = configlib.to_dict(Pipeline(run(), progress=False).gpt_config())
    (tuned_dir / "stage.json").write_text(json.dumps(
        {"config": {**config, "out": str(tuned_dir)}}))
    tuned = {str(tmp_path / "p" / "gpt"): str(tuned_dir)}
    same, other_seed = run(), run(seed=5)
    reuse_tuned_gpt(same, tuned)
    assert same.reuse == {"gpt": str(tuned_dir)}
    reuse_tuned_gpt(other_seed, tuned)  # another GPT: trained, not taken from tuning
    assert other_seed.reuse == {}
    elsewhere = run()
    elsewhere.out = str(tmp_path / "q")  # another pipeline's runs
    reuse_tuned_gpt(elsewhere, tuned)
    assert elsewhere.reuse == {}


def test_the_demo_refuses_a_tune_it_cannot_choose_on_val(tmp_path, capsys):
    from launch import demo

    config = tmp_path / "d.toml"
    config.write_text(f'out = "{tmp_path / "o"}"\n[base.data]\nbuiltin = "mnist"\n'
                      '[pipelines.p]\n[tune]\n"sample.cfg" = [1.0, 2.0]\n')
    assert demo.main(["--config", str(config), "--quiet"]) == 2
    assert "has no validation split to choose on" in capsys.readouterr().err
    assert demo.main(["--config", str(config), "--quiet", "--set", "base.data.validation=true",
                      "--set", "base.eval.metrics=prec"]) == 2
    assert "does not compute the FID" in capsys.readouterr().err
    assert not (tmp_path / "o" / "data").exists()  # refused before any stage


TINY_DEMO = """
out = "{out}"
[base.data]
builtin = "photos"
size = 32
validation = true
[base.tokenizer]
size = "gaussian-debug"
steps = 3
[base.tokenizer.loss]
lpips = 0.0
[base.tokenizer.data]
batch_size = 8
[base.codes]
views = "flip"
[base.gpt]
steps = 3
[base.gpt.data]
batch_size = 16
[base.sample]
per_class = 1
fid_num = 12
batch_size = 8
cfg = 1.5
[base.eval]
metrics = "fid"
[pipelines.p]
[tune]
"gpt.model.dropout" = [0.0, 0.1]
"sample.cfg" = [1.0, 3.0]
"""


@pytest.mark.slow
def test_the_demo_chooses_on_val_then_runs_the_pipeline_with_the_choice(tmp_path):
    from data import config as configlib
    from launch import demo
    from launch.pipeline import PipelineConfig

    config = tmp_path / "d.toml"
    out = tmp_path / "o"
    config.write_text(TINY_DEMO.format(out=out))
    assert demo.main(["--config", str(config), "--quiet"]) == 0
    record = json.loads((out / "p" / "tune" / "tune.json").read_text())
    fids = record["keys"]["sample.cfg"]["fid"]
    assert record["chosen"]["sample.cfg"] == [1.0, 3.0][fids.index(min(fids))]
    for value in (1.0, 3.0):  # candidates: the pipeline's GPT, scored against data/val
        stage = json.loads((out / "p" / "tune" / f"sample.cfg={value}" / "eval" /
                            "stage.json").read_text())
        assert stage["ref"] == str(out / "data" / "val")
        sample = json.loads((out / "p" / "tune" / f"sample.cfg={value}" / "sample" /
                             "stage.json").read_text())
        assert sample["config"]["cfg"] == value
    assert not (out / "p" / "tune" / "sample.cfg=1.0" / "gpt").exists()
    chosen_gpt = out / "p" / "tune" / f"gpt.model.dropout={record['chosen']['gpt.model.dropout']}"
    assert record["gpt"] == str(chosen_gpt / "gpt")
    ran = configlib.load(PipelineConfig, out / "p" / "pipeline.toml")
    assert ran.reuse["gpt"] == record["gpt"] and not (out / "p" / "gpt").exists()  # sampled,
    # not trained again
    main_sample = json.loads((out / "p" / "sample" / "stage.json").read_text())["config"]
    assert main_sample["cfg"] == record["chosen"]["sample.cfg"]
    main_eval = json.loads((out / "p" / "eval" / "stage.json").read_text())
    assert main_eval["ref"] == str(out / "data" / "heldout")  # reported on held-out images
    summary = json.loads((out / "report.json").read_text())
    assert summary["tuning"] == {"p": record}
    assert "## Settings chosen on the validation split" in (out / "report.md").read_text()
    # re-running trains, samples and chooses nothing new
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    assert demo.main(["--config", str(config), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == before
