"""Choosing a pipeline's GPT and sampling settings on the validation split, the same way
for every pipeline, before its reported runs.

A demo config's ``tune`` table names settings and the values to try, e.g.::

    [tune]
    "gpt.model.dropout" = [0.0, 0.1, 0.2]
    "sample.cfg" = [1.0, 1.5, 2.0]

For each pipeline, keys are chosen one after the other in the order given (each with
the values chosen before it): one candidate run per value under
``<out>/<pipeline>/tune/<key>=<value>``, trained with the first GPT seed and sampled with
the first sampling seed, scored by FID against ``data/val`` (the validation split, never
the held-out images the report is measured on); the lowest FID wins (the first value on
a tie). Candidates reuse the pipeline's data, tokenizer and codes, and a sampling
candidate the GPT chosen before it; a candidate that would repeat an earlier one (the
same GPT, sample and eval settings, e.g. the cfg the chosen GPT was sampled with) is
not run again: it has that run's FID. The choices are recorded in
``<out>/<pipeline>/tune/tune.json`` and laid over the pipeline before its runs (and its
ablations); where a gpt.* key was tuned, the runs of the first GPT seed sample the chosen
candidate's GPT (the same config: checked) instead of training it again. Only ``gpt.*``
and ``sample.*`` keys can be tuned (a tokenizer setting would change the codes every
candidate shares), and every ``gpt.*`` key comes before the ``sample.*`` keys.
"""

from dataclasses import replace
from pathlib import Path

from data import config as configlib
from data.files import atomic_write_json, read_json
from generator.sampling import resolve_order
from launch.pipeline import EvalStage, SampleStage

STAGES_SHARED = ("data", "tokenizer", "codes")  # every candidate of a pipeline reuses these
CRITERION = "FID against data/val"


def check_tune(tune: dict) -> None:
    """Refuse a tune table that cannot be chosen in order (ValueError, naming the key)."""
    seen_sample = False
    for key, values in tune.items():
        section = key.split(".", 1)[0]
        if section not in ("gpt", "sample") or "." not in key:
            raise ValueError(f"tune key {key!r}: only gpt.* and sample.* settings can be "
                             "tuned (e.g. \"gpt.model.dropout\", quoted in TOML)")
        if section == "gpt" and seen_sample:
            raise ValueError(f"tune key {key!r}: gpt.* keys come before the sample.* keys "
                             "(a new GPT would undo the sampling choices made before it)")
        seen_sample |= section == "sample"
        if not isinstance(values, list) or len(values) < 2 or \
                len({repr(v) for v in values}) != len(values):
            raise ValueError(f"tune key {key!r}: needs a list of at least 2 distinct values, "
                             f"got {values!r}")


def nested(key: str, value) -> dict:
    """"a.b.c", v -> {"a": {"b": {"c": v}}}"""
    table = value
    for part in reversed(key.split(".")):
        table = {part: table}
    return table


def with_choices(table: dict, chosen: dict) -> dict:
    """``table`` with every chosen key = value laid over it."""
    for key, value in chosen.items():
        table = configlib.merge_tables(table, nested(key, value))
    return table


def candidate_table(table: dict, key: str, value, chosen: dict, gpt_seed: int | None,
                    gpt_dir: str | None) -> dict:
    """The run that tries ``key = value`` on top of the choices so far: the pipeline's
    ``table`` (its first sampling seed), the first GPT seed, evaluated against data/val.
    ``gpt_dir``: the GPT to sample for a sample.* key (None for a gpt.* key: trained)."""
    run = with_choices(table, {**chosen, key: value})
    if gpt_seed is not None:
        run = configlib.merge_tables(run, {"gpt": {"seed": gpt_seed}})
    out = Path(table["out"])
    data = Path(table["reuse"]["data"])
    run = configlib.merge_tables(run, {"eval": {"ref": str(data / "val")}})
    run["reuse"] = {stage: table["reuse"].get(stage, str(out / stage))
                    for stage in STAGES_SHARED}
    if key.startswith("sample."):
        run["reuse"]["gpt"] = gpt_dir
    run["out"] = str(out / "tune" / f"{key}={value}")
    return run


def sampled_as(candidate: dict) -> tuple:
    """What a candidate's FID depends on besides the stages every candidate shares: the
    GPT it samples (its own when it trains one) and its sample and eval settings, with
    their defaults (so "order" = "auto" given equals "order" left out), and the order
    constraint as the sampler resolves it for a GPT that is already trained ("auto": on
    for tuples with a position token, else off)."""
    gpt = candidate["reuse"].get("gpt") or str(Path(candidate["out"]) / "gpt")
    sample = configlib.from_dict(SampleStage, candidate.get("sample", {}))
    record = Path(gpt) / "gpt.json"
    if record.exists():
        if sample.order == "auto":
            pc = read_json(record, "the GPT's record", ("gpt",))["gpt"].get(
                "position_component", -1)
            sample = replace(sample, order="on" if resolve_order(None, pc) else "off")
    return (gpt, sample, configlib.from_dict(EvalStage, candidate.get("eval", {})))


def validation_fid(eval_dir: Path) -> float:
    """A finished candidate's FID against data/val, from its eval stage folder."""
    result = read_json(Path(eval_dir) / "result.json", "a tuning run's result", ("metrics",))
    if "fid" not in result["metrics"]:
        raise ValueError(f"{eval_dir}/result.json has no FID: tuning needs 'fid' in "
                         "eval.metrics")
    return float(result["metrics"]["fid"])


def tune_pipeline(tune: dict, table: dict, gpt_seed: int | None, run) -> dict:
    """Choose every key of ``tune`` for the pipeline ``table``; ``run(label, table) ->
    {stage: folder}`` runs (or skips, when finished) one candidate. Every stage the
    candidates share must be finished. -> the record written to tune/tune.json:
    {"criterion", "keys": {key: {"values", "fid", "chosen"}}, "chosen": {key: value}}, and
    "gpt": the chosen GPT's folder where a gpt.* key was tuned."""
    out = Path(table["out"])
    gpt_dir = str(out / "gpt")  # no gpt.* key tuned: the pipeline's own GPT
    chosen, keys = {}, {}
    finished = []  # (what a candidate's result depends on, its FID, its folders)
    for key, values in tune.items():
        fids, gpts = [], []
        for value in values:
            candidate = candidate_table(table, key, value, chosen, gpt_seed, gpt_dir)
            same = sampled_as(candidate)
            earlier = [(fid, dirs) for s, fid, dirs in finished if s == same]
            if earlier:  # e.g. cfg = the value the chosen GPT was sampled with: that run
                fid, dirs = earlier[0]
            else:
                dirs = run(f"tune {key}={value}", candidate)
                fid = validation_fid(Path(dirs["eval"]))
                same = sampled_as(candidate)  # its GPT now trained: "auto" resolved
            finished.append((same, fid, dirs))
            fids.append(fid)
            gpts.append(str(dirs["gpt"]))
        best = min(range(len(values)), key=lambda i: fids[i])  # the first on a tie
        chosen[key] = values[best]
        keys[key] = {"values": values, "fid": fids, "chosen": values[best]}
        if key.startswith("gpt."):
            gpt_dir = gpts[best]
    record = {"criterion": CRITERION, "keys": keys, "chosen": chosen}
    if gpt_dir != str(out / "gpt"):  # a gpt.* key was tuned: the chosen GPT's folder
        record["gpt"] = gpt_dir
    atomic_write_json(out / "tune" / "tune.json", record, sort_keys=False)
    return record


def tuning_lines(records: dict) -> list[str]:
    """The report's section: per pipeline and key, every value's validation FID and the
    choice (bold)."""
    if not records:
        return []
    lines = ["", f"## Settings chosen on the validation split ({CRITERION}, first GPT and "
             "sampling seed; the tables above use the choices)", "",
             "| pipeline | setting | validation FID per value (chosen in bold) |",
             "|---|---|---|"]
    for name, record in records.items():
        for key, k in record["keys"].items():
            cells = [f"**{v}: {f:.2f}**" if v == k["chosen"] else f"{v}: {f:.2f}"
                     for v, f in zip(k["values"], k["fid"], strict=True)]
            lines.append(f"| {name} | `{key}` | " + ", ".join(cells) + " |")
    return lines
