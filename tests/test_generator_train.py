"""DeepSpeed training in one CPU process: the loss falls; killed + resumed = uninterrupted."""

import json
import math

import pytest
import torch

from launch.run_config import resolve_gpt_config as resolve_config
from launch.train_gpt import Trainer, main
from tests.token_helpers import make_token_set

pytestmark = pytest.mark.slow  # end-to-end: tens of seconds; -m 'not slow' skips


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return make_token_set(tmp_path_factory.mktemp("tokens"))


def _cfg(tmp_path, tokens, name, **sets):
    overrides = [f"data.tokens={tokens}", "data.batch_size=8", "model.dropout=0.0",
                 f"out={tmp_path / name}", "log_every=1000"]
    overrides += [f"{k.replace('__', '.')}={v}" for k, v in sets.items()]
    return resolve_config(None, overrides)


def test_a_few_deepspeed_steps_lower_the_loss(tmp_path, tokens):
    trainer = Trainer(_cfg(tmp_path, tokens, "fit", steps=60, optim__lr=3e-3), progress=False)
    # gradients are reduced in fp32 even when training in bf16 (DeepSpeed's default: bf16)
    assert trainer.engine._config.communication_data_type == torch.float32
    batches = trainer.batches()
    losses = []
    for _ in range(60):
        labels, toks = next(batches)
        loss = trainer.engine(labels, toks)
        trainer.engine.backward(loss)
        trainer.engine.step()
        losses.append(float(loss))
        per_component = trainer.loss_module.last  # [2, K]: cross-entropies, accuracies
        assert float(per_component[0].sum()) == pytest.approx(losses[-1], rel=1e-6)
        assert ((per_component[1] >= 0) & (per_component[1] <= 1)).all()
        if len(losses) == 1:  # zero-initialised heads: each component uniform, log V_k
            assert per_component[0].tolist() == pytest.approx([math.log(8), math.log(6)],
                                                              rel=1e-5)
    uniform = math.log(8) + math.log(6)
    assert losses[0] == pytest.approx(uniform, rel=0.02)  # zero-initialised heads
    assert sum(losses[-5:]) / 5 < 0.6 * uniform


def test_killed_and_resumed_equals_uninterrupted(tmp_path, tokens):
    sets = dict(steps=6, ckpt_every=2, deepspeed__grad_accum=2, ema_decay=0.9,
                optim__schedule="cosine", optim__warmup_steps=2, model__dropout=0.1,
                data__heldout=tokens, eval_every=2)
    straight = Trainer(_cfg(tmp_path, tokens, "a", **sets), progress=False)
    straight.run()
    first = Trainer(_cfg(tmp_path, tokens, "b", **sets), progress=False)
    first.run(stop_after=3)
    assert json.loads((tmp_path / "b" / "checkpoints" / "last.json").read_text())["step"] == 3
    del first
    resumed = Trainer(_cfg(tmp_path, tokens, "b", **sets), progress=False)
    resumed.run()
    assert resumed.step_num == straight.step_num == 6
    for (name, a), b in zip(straight.gpt.named_parameters(), resumed.gpt.parameters(),
                            strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"
    for name in straight.ema:
        assert torch.equal(straight.ema[name], resumed.ema[name])
    # the held-out record too: evaluations before the kill come from the checkpoint
    assert [r["step"] for r in resumed.heldout_log] == [2, 4, 6]
    assert resumed.heldout_log == straight.heldout_log
    # the export loads into a GPT with the recorded config
    path = resumed.export()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["tokenizer"] == {"name": "synthetic"} and meta["weights"] == "ema"
    log = meta["train_log"]  # the last interval's means, per component (no layout: c0, c1)
    assert log["step"] == 6 and set(log) >= {"loss_c0", "loss_c1", "accuracy_c0", "accuracy_c1"}
    assert log["loss"] == pytest.approx(log["loss_c0"] + log["loss_c1"], rel=1e-6)


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["--set", "data.tokens=", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "data.tokens is not set" in capsys.readouterr().err
    assert main(["--set", "size=huge", "--quiet"]) == 2
    assert "size must be one of" in capsys.readouterr().err


def test_non_finite_losses_stop_the_run_without_an_export(tmp_path, tokens, capsys):
    args = ["--set", f"data.tokens={tokens}", "--set", "data.batch_size=8", "--set",
            "optim.lr=1e30", "--set", "steps=50", "--set", "max_bad_steps=3", "--set",
            "optim.grad_clip=0", "--out", str(tmp_path / "nan"), "--quiet"]
    assert main(args) == 2
    assert "3 consecutive non-finite losses" in capsys.readouterr().err
    assert not (tmp_path / "nan" / "gpt.safetensors").exists()


def test_resume_checks_tokenizer_world_size_and_keeps_the_ema_with_the_parameters(
        tmp_path, tokens):
    import shutil

    first = Trainer(_cfg(tmp_path, tokens, "r", steps=2, ckpt_every=2, ema_decay=0.9),
                    progress=False)
    first.run()
    resumed = Trainer(_cfg(tmp_path, tokens, "r", steps=3, ckpt_every=2, ema_decay=0.9),
                      progress=False)
    assert resumed.resume()
    params = dict(resumed.gpt.named_parameters())
    assert all(v.device == params[n].device and v.dtype == torch.float32
               for n, v in resumed.ema.items())
    # token shards of another tokenizer with the same shapes: refused
    other = tmp_path / "other-tokens"
    shutil.copytree(tokens, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"] = {"name": "synthetic", "sha1": "f" * 40}
    (other / "manifest.json").write_text(json.dumps(manifest))
    foreign = Trainer(_cfg(tmp_path, other, "r", steps=3, ckpt_every=2, ema_decay=0.9),
                      progress=False)
    with pytest.raises(ValueError, match="comes from tokenizer sha1 ffffffffffff"):
        foreign.resume()
    # a checkpoint written by another world size: a message, not a traceback
    tag = json.loads((tmp_path / "r" / "checkpoints" / "last.json").read_text())["tag"]
    state = tmp_path / "r" / "checkpoints" / tag / "trainer_state_rank0.pt"
    state.rename(state.with_name("trainer_state_rank1.pt"))
    with pytest.raises(ValueError, match="resume with the world size it was written with"):
        resumed.resume()


def test_several_scheduler_tasks_without_ranks_are_refused(monkeypatch):
    from data.ranks import launcher_env

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    with pytest.raises(ValueError, match="SLURM_STEP_NUM_TASKS=4 but no RANK"):
        launcher_env()


@pytest.mark.gpu
def test_gpu_resume_with_ema_keeps_training(tmp_path, tokens):
    """Preempted GPU runs with an EMA resume and step on (the EMA moves to the device)."""
    sets = dict(steps=2, ckpt_every=2, ema_decay=0.9)
    Trainer(_cfg(tmp_path, tokens, "g", **sets), progress=False).run()
    resumed = Trainer(_cfg(tmp_path, tokens, "g", **{**sets, "steps": 4}), progress=False)
    resumed.run()
    assert resumed.step_num == 4
    params = dict(resumed.gpt.named_parameters())
    assert all(v.device == params[n].device for n, v in resumed.ema.items())
    assert params["norm.weight"].is_cuda


def test_resume_refuses_other_settings_and_foreign_folders_and_says_what_it_read(
        tmp_path, tokens, capsys):
    sets = dict(steps=2, ckpt_every=2, ema_decay=0.9)
    Trainer(_cfg(tmp_path, tokens, "s", **sets), progress=False).run()
    # a changed learning rate would silently make another run: refused, named
    changed = Trainer(_cfg(tmp_path, tokens, "s", **{**sets, "optim__lr": 2e-4}),
                      progress=False)
    with pytest.raises(ValueError, match=r"other settings: optim\.lr: 0\.0001 -> 0\.0002\. "
                                         r"Only attention, ckpt_every, compile, data\.heldout, "
                                         r"data\.max_lost, data\.tokens, eval_every"):
        changed.resume()
    # a checkpoint written before a field existed counts it as its default
    tag = json.loads((tmp_path / "s" / "checkpoints" / "last.json").read_text())["tag"]
    state_file = tmp_path / "s" / "checkpoints" / tag / "trainer_state_rank0.pt"
    state = torch.load(state_file, weights_only=True)
    del state["config"]["deepspeed"]["persistence_threshold"]
    torch.save(state, state_file)
    longer = Trainer(_cfg(tmp_path, tokens, "s", **{**sets, "steps": 3}), progress=False)
    capsys.readouterr()
    longer.run()  # steps may change
    assert longer.step_num == 3
    err = capsys.readouterr().err
    assert f"resumed at step 2 from {tmp_path / 's' / 'checkpoints' / tag}" in err
    assert "every file loaded weights-only" in err
    # a folder holding another tool's checkpoints: refused, and nothing in it is pruned
    foreign = tmp_path / "f" / "checkpoints"
    (foreign / "global_step10").mkdir(parents=True)
    (foreign / "latest").write_text("global_step10")
    other = Trainer(_cfg(tmp_path, tokens, "f", **sets), progress=False)
    with pytest.raises(ValueError, match=r"holds files this trainer did not write "
                                         r"\(global_step10, latest\)"):
        other.run()
    assert sorted(p.name for p in foreign.iterdir()) == ["global_step10", "latest"]


def test_compiled_loss_trains_like_eager(tmp_path, tokens):
    """compile = true (torch.compile of the loss, inductor on the CPU): the same losses
    as eager step after step (no random draws: dropout and label drop off), parameter
    names unchanged (checkpoints stay interchangeable), SDPA chosen on the CPU.

    The bound, from the arithmetic: the loss sums n = B * N * K = 8 * 6 * 2 = 96 terms in
    fp32, so either path's rounding is at most n u (u = 2^-24) relative, and the two differ
    by at most 2 n u = 1.1e-5; rel 1.2e-5. Measured here: compiled vs eager 5.5e-7 at the
    first step, <= 1.3e-7 after; an eager run whose weights were scaled by 1 + 2^-20
    moved the losses of 6 steps by <= 2.4e-7, so steps do not amplify rounding here (the
    guessed rel=1e-4 was 180x the measured difference)."""
    sets = dict(steps=4, optim__lr=3e-3, model__class_dropout=0.0)
    runs = {}
    for compiled in (False, True):
        trainer = Trainer(_cfg(tmp_path, tokens, f"c{compiled}", compile=compiled, **sets),
                          progress=False)
        assert trainer.attention == "sdpa"
        batches, losses = trainer.batches(), []
        for _ in range(4):
            assert trainer.micro_step(*next(batches))  # the trainer's own step
            losses.append(float(trainer.loss_module.last[0].sum()))
        runs[compiled] = (losses, sorted(n for n, _ in trainer.engine.module.named_parameters()))
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1.2e-5)
    assert runs[True][1] == runs[False][1]
    with pytest.raises(ValueError, match="attention must be one of"):
        _cfg(tmp_path, tokens, "bad", attention="flash")
    with pytest.raises(ValueError, match=r"does not work with deepspeed\.zero_stage = 3"):
        _cfg(tmp_path, tokens, "bad", compile="true", deepspeed__zero_stage=3)


def test_a_shard_set_smaller_than_a_batch_is_one_line(tmp_path, capsys):
    small = make_token_set(tmp_path / "small", n=4)
    assert main(["--set", f"data.tokens={small}", "--set", "data.batch_size=8",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"{small} gives no full batch of 8 per rank" in capsys.readouterr().err


def test_a_payload_in_deepspeeds_checkpoint_is_refused_and_never_runs(tmp_path, tokens):
    """DeepSpeed unpickles its files with weights_only=False; ours go through a
    weights-only loader: a pickle that would create a folder when loaded is refused in one
    line naming the file and the callable, and the folder never appears."""
    import os

    sets = dict(steps=2, ckpt_every=2, ema_decay=0.9)
    Trainer(_cfg(tmp_path, tokens, "p", **sets), progress=False).run()
    tag = json.loads((tmp_path / "p" / "checkpoints" / "last.json").read_text())["tag"]
    target = tmp_path / "p" / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    state = torch.load(target, weights_only=False)  # our own file: safe to read here
    state["payload"] = Payload()
    torch.save(state, target)
    resumed = Trainer(_cfg(tmp_path, tokens, "p", **{**sets, "steps": 3}), progress=False)
    with pytest.raises(ValueError, match=r"mp_rank_00_model_states\.pt holds '(posix|os)\."
                                         r"makedirs'.*refused, loading it would run code"):
        resumed.resume()
    assert not marker.exists()
    torch.load(target, weights_only=False)  # the payload is live: plain unpickling runs it
    assert marker.is_dir()


def _by_hand_nll(weights_path, heldout, batch_size):
    """Summed NLL per component of every held-out token under an exported GPT: logits
    of the same batches, log-softmax and the targets' entries taken in float64."""
    from data.tokens import make_token_loader
    from generator.samples import load_gpt

    gpt, _ = load_gpt(weights_path)
    total, images = None, 0
    with torch.no_grad():
        for toks, labels in make_token_loader(heldout, batch_size=batch_size, train=False):
            logits = gpt(labels, toks)
            nll = torch.stack([-torch.log_softmax(lg.double(), -1).gather(
                -1, toks[..., k, None]).sum() for k, lg in enumerate(logits)])
            total = nll if total is None else total + nll
            images += toks.shape[0]
    return total, images, toks.shape[1]


def test_heldout_loss_is_the_by_hand_nll_and_the_best_weights_are_exported(tmp_path, tokens):
    # held-out sequences run backwards: learning the training set's makes the held-out
    # loss rise, so the best step is not the last one
    misleading = make_token_set(tmp_path / "heldout", n=40, seed=1, direction=-1)
    cfg = _cfg(tmp_path, tokens, "run", steps=8, eval_every=2, ema_decay=0.0,
               optim__lr=3e-3, data__heldout=misleading)
    trainer = Trainer(cfg, progress=False)
    trainer.run()
    trainer.export()
    last = json.loads((tmp_path / "run" / "gpt.json").read_text())
    best = json.loads((tmp_path / "run" / "gpt-best.json").read_text())
    log = last["heldout_log"]
    assert [r["step"] for r in log] == [2, 4, 6, 8] and last["heldout"] == log[-1]
    losses = [r["loss"] for r in log]
    assert best["steps"] == log[losses.index(min(losses))]["step"] != 8
    assert best["heldout"] == best["heldout_best"] == last["heldout_best"]
    # fp32 cross-entropy summed over an image's n = 6 tokens (images are summed in
    # float64): relative error at most n u (u = 2^-24) from the sum plus n u from each
    # term's log-softmax rounding (measured: under 1 u)
    rel = 2 * 6 * 2.0**-24
    for path, record in (("gpt.safetensors", last["heldout"]),
                         ("gpt-best.safetensors", best["heldout"])):
        nll, images, n = _by_hand_nll(tmp_path / "run" / path, misleading, 8)
        assert record["images"] == images == 40
        for k, name in enumerate(("c0", "c1")):
            assert record[f"loss_{name}"] == pytest.approx(float(nll[k]) / (images * n),
                                                           rel=rel)
            assert record[f"bits_per_image_{name}"] == pytest.approx(
                float(nll[k]) / (images * math.log(2)), rel=rel)
        assert record["bits_per_image"] == pytest.approx(
            float(nll.sum()) / (images * math.log(2)), rel=rel)
    assert best["heldout"]["loss"] < last["heldout"]["loss"]


def test_heldout_tokens_of_another_tokenizer_are_one_line(tmp_path, tokens, capsys):
    other = make_token_set(tmp_path / "other", n=16, vocab=(8, 5))
    assert main(["--set", f"data.tokens={tokens}", "--set", f"data.heldout={other}",
                 "--set", f"out={tmp_path / 'run'}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.heldout" in err and "vocab_sizes [8, 5]" in err and "\n" not in err
