"""The frontier figure (launch/frontier.py): pipeline rows grouped by tokenizer family and
sorted by cost, the log axis against known values, each point drawn where the axes put
it, and bad reports refused in one line."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from launch import frontier


def _row(gaussian: bool, tokens: int, flops: float, fid: float, std: float) -> dict:
    vocab = [1024, 64, 128] if gaussian else [128]  # as the demo's report.json has them
    return {"fid": fid, "fid_std": std, "gpt_train_flops_per_image": flops,
            "tokenizer": {"num_tokens": tokens, "vocab_sizes": vocab}}


REPORT = {"fid_floor": 15.0, "accuracy_heldout_real": 0.95, "tuning": {"g16": {}},
          "g16": _row(True, 16, 2e6, 30.0, 1.0), "v64": _row(False, 64, 5e6, 25.0, 2.0),
          "v16": _row(False, 16, 1e6, 36.0, 0.5), "g64": _row(True, 64, 9e6, 20.0, 1.5),
          "g16-ablation": {"fid": 99.0}}  # no tokenizer numbers: an ablation


def test_points_group_families_sort_by_cost_and_later_reports_win():
    series = frontier.points([REPORT], "train")
    assert list(series) == ["GaussianToken", "VQ"]
    assert series["GaussianToken"] == [(2e6, 30.0, 1.0, 16, "g16"), (9e6, 20.0, 1.5, 64, "g64")]
    assert [p[4] for p in series["VQ"]] == ["v16", "v64"]
    later = {"g64": _row(True, 64, 9e6, 18.0, 0.0)}
    assert frontier.points([REPORT, later], "train")["GaussianToken"][1][1] == 18.0
    with pytest.raises(ValueError, match="'g16' has no 'heldout_bits_per_image'"):
        frontier.points([REPORT], "bits")
    with pytest.raises(ValueError, match="no pipeline rows"):
        frontier.points([{"fid_floor": 1.0}], "train")


def test_the_log_axis_and_its_ticks_against_known_values():
    x = frontier.log_axis(1e3, 1e5, 100, 300)
    assert x(1e3) == 100 and x(1e5) == 300 and math.isclose(x(1e4), 200)
    assert frontier.log_ticks(1.5e3, 1.2e4) == [2e3, 5e3, 1e4]


def test_every_point_is_drawn_in_its_family_colour_where_the_axes_put_it(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT))
    out = tmp_path / "f.png"
    assert frontier.main([str(report), "--out", str(out)]) == 0
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (frontier.SIZE[1], frontier.SIZE[0], 3)
    left, top = frontier.MARGIN[:2]
    right, bottom = frontier.SIZE[0] - frontier.MARGIN[2], frontier.SIZE[1] - frontier.MARGIN[3]
    x = frontier.log_axis(1e6 / 1.5, 9e6 * 1.5, left, right)  # the figure's own padding
    y_max = 1.15 * (36.0 + 0.5)
    for name, colour in (("g16", frontier.COLOURS["GaussianToken"]),
                         ("g64", frontier.COLOURS["GaussianToken"]),
                         ("v16", frontier.COLOURS["VQ"]), ("v64", frontier.COLOURS["VQ"])):
        row = REPORT[name]
        cx = round(x(row["gpt_train_flops_per_image"]))
        cy = round(bottom - (bottom - top) * row["fid"] / y_max)
        assert (img[cy - 2:cy + 3, cx - 2:cx + 3] == colour).all(), name  # the marker
    floor_y = round(bottom - (bottom - top) * REPORT["fid_floor"] / y_max)  # dashed, grey
    assert (img[floor_y - 1:floor_y + 2, left + 2] == (120, 120, 120)).all(-1).any()
    assert not (img[floor_y - 1:floor_y + 2, left + 9] == (120, 120, 120)).all(-1).any()


def test_a_report_that_is_not_json_is_one_line(tmp_path, capsys):
    bad = tmp_path / "report.json"
    bad.write_text("{")
    assert frontier.main([str(bad), "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("launch.frontier: ") and err.count("\n") == 1
    assert not (tmp_path / "f.png").exists()
