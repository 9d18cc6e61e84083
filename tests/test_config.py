"""The one config mechanism checks every value's type and range and names the field."""

from dataclasses import dataclass, field

import pytest

from data import config as configlib
from launch.run_config import resolve_tokenizer_config


@dataclass
class Inner:
    flag: bool = True
    ratio: float = 0.5
    sizes: list[int] = field(default_factory=lambda: [1])
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Outer:
    steps: int = 10
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    table: dict = field(default_factory=dict)
    maybe: int | None = None


def test_values_are_converted_or_refused_by_field_type():
    cfg = configlib.from_dict(Outer, configlib.apply_overrides({}, [
        "inner.flag=False", "inner.ratio=1", "inner.sizes=[2, 3]", "steps=20",
        "inner.betas=[0.5, 0.9]", "maybe=4"]))
    assert cfg.inner.flag is False and cfg.inner.ratio == 1.0 and isinstance(cfg.inner.ratio,
                                                                              float)
    assert cfg.inner.sizes == [2, 3] and cfg.inner.betas == (0.5, 0.9) and cfg.maybe == 4
    assert configlib.from_dict(Outer, {"inner": {"flag": "TRUE"}}).inner.flag is True
    for override, message in [
        ("inner.flag=maybe", "inner.flag: expected true or false, got 'maybe'"),
        ("inner.ratio=abc", "inner.ratio: expected a number, got 'abc'"),
        ("steps=abc", "steps: expected an integer, got 'abc'"),
        ("steps=1.5", "steps: expected an integer, got 1.5"),
        ("steps=true", "steps: expected an integer, got True"),
        ("name=3", "name: expected a string, got 3"),
        ("inner.sizes=[1, 'a']", "inner.sizes[1]: expected an integer"),
        ("inner.betas=[0.5]", "inner.betas: expected 2 values"),
        ("table=3", "table: expected a table"),
        ("inner=3", "inner: expected a table"),
        ("maybe=abc", "maybe: expected"),
    ]:
        with pytest.raises(configlib.ConfigError, match=message.replace("[", r"\[")
                           .replace("]", r"\]")):
            configlib.from_dict(Outer, configlib.apply_overrides({}, [override]))


@pytest.mark.parametrize(("override", "message"), [
    ("ckpt_every=0", "ckpt_every must be >= 1, got 0"),
    ("log_every=abc", "log_every: expected an integer"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("optim.lr=abc", "optim.lr: expected a number"),
    ("bf16=False", None),
])
def test_trainer_configs_refuse_bad_values_with_one_line(override, message):
    if message is None:
        assert resolve_tokenizer_config(None, [override]).bf16 is False
        return
    with pytest.raises(ValueError, match=message):
        resolve_tokenizer_config(None, [override])


def test_gpt_trainer_refuses_bad_values_before_any_work(capsys):
    from launch.train_gpt import main

    for override, message in [("optim.lr=abc", "optim.lr: expected a number"),
                              ("deepspeed.grad_accum=0", "grad_accum must be >= 1"),
                              ("steps=0", "steps must be >= 1")]:
        assert main(["--set", override, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_fields_added_since_a_run_count_as_their_defaults():
    """A stage finished before a config field existed is still done (the field's default
    is what it ran with); setting the new field away from its default is a change."""
    from data.config import field_defaults, to_dict, with_added_fields
    from launch.run_config import GPTRunConfig as RunConfig

    defaults = field_defaults(RunConfig)
    assert defaults == to_dict(RunConfig())
    new = to_dict(RunConfig())
    old = to_dict(RunConfig())
    del old["model"]["class_rope"]  # as written before the field was added
    assert with_added_fields(old, new, defaults) == new
    changed = to_dict(RunConfig())
    changed["model"]["class_rope"] = "zero"
    assert with_added_fields(old, changed, defaults) != changed
    old["model"]["dropout"] = 0.3  # an existing field that differs still differs
    assert with_added_fields(old, new, defaults) != new


def test_a_partial_table_keeps_each_trainers_defaults():
    """A nested table's missing keys take its class's defaults: each trainer's optim
    table has its own class, so setting one key keeps the other defaults of that trainer
    (LlamaGen's constant LR and weight decay for the GPT; the tokenizer's betas)."""
    from launch.run_config import resolve_gpt_config

    tok = resolve_tokenizer_config(None, ["optim.lr=1e-3"])
    assert (tok.optim.lr, tok.optim.betas, tok.optim.warmup_steps) == (1e-3, (0.5, 0.9), 100)
    gpt = resolve_gpt_config(None, ["optim.lr=1e-3"])
    assert (gpt.optim.lr, gpt.optim.weight_decay, gpt.optim.schedule) == (1e-3, 0.05, "constant")
