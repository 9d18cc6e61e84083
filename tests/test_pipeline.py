"""Every stage end to end on a tiny configuration; resume skips; mismatches are refused."""

import json
import time

import numpy as np
import pytest

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
    assert pipeline.main(["--config", str(config), "--quiet", "--stages", "tokenizer",
                          "--set", "tokenizer.steps=4"]) == 2
    assert "was made with another config" in capsys.readouterr().err
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
