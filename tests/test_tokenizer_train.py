"""Tokenizer training: the loss falls, resume is exact, bad losses are skipped, clear errors."""

import pytest
import torch

from data import config as configlib
from launch.run_config import resolve_tokenizer_config as resolve_config
from launch.train_tokenizer import NonFiniteLoss, Trainer, main


def _cfg(tmp_path, digits, name="run", size="gaussian-debug", **sets):
    overrides = [f"data.shards={digits}", "data.batch_size=8", "loss.lpips=0", "data.flip=false",
                 "log_every=1000", "image_every=1000", f"out={tmp_path / name}"]
    overrides += [f"{k.replace('__', '.')}={v}" for k, v in sets.items()]
    return resolve_config(None, overrides, size)


def test_flipping_digits_is_refused(tmp_path, digits):
    trainer = Trainer(_cfg(tmp_path, digits, data__flip="true"), progress=False)
    with pytest.raises(configlib.ConfigError, match="digits are not mirror-symmetric"):
        trainer.run()


def test_a_few_cpu_steps_lower_the_loss(tmp_path, digits):
    trainer = Trainer(_cfg(tmp_path, digits, steps=40, optim__warmup_steps=5, optim__lr=1e-3),
                      progress=False)
    batches = trainer.batches()
    l1 = [trainer.step(next(batches)[0])["loss/l1"] for _ in range(40)]
    assert sum(l1[-5:]) / 5 < 0.7 * sum(l1[:5]) / 5


@pytest.mark.parametrize("size", ["gaussian-debug", "vq-debug"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, digits, size):
    sets = dict(steps=6, ckpt_every=2, loss__gan_start=2, size=size)
    straight = Trainer(_cfg(tmp_path, digits, "a", **sets), progress=False)
    assert straight.cfg.tokenizer.kind == size.split("-")[0]
    straight.run()
    first = Trainer(_cfg(tmp_path, digits, "b", **sets), progress=False)
    first.run(stop_after=3)  # "killed" after step 3 (its checkpoint is the last thing kept)
    assert first.step_num == 3
    del first
    resumed = Trainer(_cfg(tmp_path, digits, "b", **sets), progress=False)
    resumed.run()
    for name in ("model", "ema", "disc", "lecam"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs after resume"
    assert straight.opt_g.state_dict()["state"].keys() == resumed.opt_g.state_dict()["state"].keys()


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, digits):
    trainer = Trainer(_cfg(tmp_path, digits, max_bad_steps=3), progress=False)
    images = next(trainer.batches())[0]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert trainer.step(bad) is None and trainer.step_num == 0  # skipped: not a step
    assert trainer.skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items()
               if "quantizer" not in k)
    trainer.step(images)  # a good step resets the consecutive count
    trainer.step(bad)
    trainer.step(bad)
    with pytest.raises(NonFiniteLoss, match="3 consecutive non-finite losses"):
        trainer.step(bad)


def test_config_errors_and_resolved_config(tmp_path, digits, capsys):
    with pytest.raises(configlib.ConfigError, match=r"unknown keys \['learning_rate'\]"):
        resolve_config(None, ["optim.learning_rate=1"], "gaussian-debug")
    cfg = _cfg(tmp_path, digits, tokenizer__gaussian__num_gaussians=8)
    assert cfg.tokenizer.gaussian.num_gaussians == 8 and cfg.tokenizer.image_size == 32
    text = configlib.dumps(cfg)
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert resolve_config(path) == cfg  # the resolved config round-trips
    assert main(["--size", "gaussian-debug", "--set", "data.shards=", "--out",
                 str(tmp_path / "x"), "--quiet"]) == 2
    assert "data.shards is not set" in capsys.readouterr().err


def test_export_load_and_evaluate(tmp_path, digits):
    from data.loader import make_image_loader
    from eval.recon import psnr, to_unit
    from launch.train_tokenizer import export_weights
    from tokenizer.build import load_tokenizer
    from tokenizer.evaluate import evaluate

    trainer = Trainer(_cfg(tmp_path, digits, steps=3), progress=False)
    trainer.run()
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    export_weights(ckpt, tmp_path / "tok.safetensors")
    from_ckpt, info_a = load_tokenizer(ckpt)
    from_st, info_b = load_tokenizer(tmp_path / "tok.safetensors")
    assert info_a["sha1"] == info_b["sha1"]
    x = next(trainer.batches())[0]
    with torch.no_grad():
        assert torch.equal(from_ckpt(x)[0], from_st(x)[0])
    report = evaluate(from_st, digits, batch_size=64, limit=64, progress=False)
    assert report["num_images"] == 64
    assert set(report["results"]) == {"tokens", "continuous geometry", "positions snapped only",
                                      "shapes snapped only"}
    assert report["bits_per_image"] == pytest.approx(16 * (10 + 6 + 7))  # 1024, 64, 128
    geometry = report["geometry"]
    assert 0 < geometry["coverage"] <= 1 and geometry["distinct_positions_per_gaussian"] >= 1
    images = next(iter(make_image_loader(digits, batch_size=64, image_size=32, train=False)))[0]
    with torch.no_grad():  # the snapped-positions-only row is that reconstruction
        only = from_st(images, quantize_geometry="position")[0]
    assert report["results"]["positions snapped only"]["metrics"]["psnr"] == pytest.approx(
        psnr(to_unit(images), to_unit(only.clamp(-1, 1))).mean().item(), rel=1e-9)
    with torch.no_grad():
        expected = psnr(to_unit(images), to_unit(from_st(images)[0].clamp(-1, 1))).mean()
    got = report["results"]["tokens"]["metrics"]["psnr"]
    assert got == pytest.approx(expected.item(), rel=1e-9)
    assert 0 < report["results"]["tokens"]["metrics"]["codebook_usage"] <= 1
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_tokenizer(tmp_path / "missing.pt")


def test_resume_refuses_other_settings_but_takes_more_steps(tmp_path, digits):
    Trainer(_cfg(tmp_path, digits, "r", steps=2), progress=False).run()
    with pytest.raises(configlib.ConfigError, match=r"other settings: loss\.l1: 1\.0 -> 2\.0"):
        Trainer(_cfg(tmp_path, digits, "r", steps=2, loss__l1=2.0), progress=False).resume()
    with pytest.raises(configlib.ConfigError, match=r"tokenizer\.gaussian\.num_gaussians"):
        Trainer(_cfg(tmp_path, digits, "r", steps=2, tokenizer__gaussian__num_gaussians=8),
                progress=False).resume()
    longer = Trainer(_cfg(tmp_path, digits, "r", steps=3), progress=False)
    assert longer.resume() and longer.step_num == 2


def test_compiled_training_steps_like_eager(tmp_path, digits):
    """compile = true: the compiled tokenizer (inductor, CPU) takes the same steps as the
    eager one and checkpoints keep their keys; the logs stay on the device until read.

    Bounds measured on eager itself with the input batch scaled by 1 +- 2^-23 and
    1 + 2^-22 (rounding-level changes, as compiling makes): the first two steps' L1 moved
    by at most 2.5e-7 relative, the third by 1.8e-5 to 2.4e-4 (two optimizer steps
    amplify rounding chaotically; compiled vs eager was seen at 4.8e-5 and 1.35e-4, which
    failed the former rel=1e-4). So: steps 1-2 within 1e-5 (40x the measured), step 3
    within 1e-3 (4x the largest chaotic spread measured)."""
    runs = {}
    for compiled in (False, True):
        trainer = Trainer(_cfg(tmp_path, digits, f"c{compiled}", steps=3, compile=compiled),
                          progress=False)
        batches = trainer.batches()
        logs = [trainer.step(next(batches)[0]) for _ in range(3)]
        assert all(torch.is_tensor(v) for v in logs[0].values() if not isinstance(v, float))
        runs[compiled] = ([float(x["loss/l1"]) for x in logs], list(trainer.state()["model"]))
    assert runs[True][0][:2] == pytest.approx(runs[False][0][:2], rel=1e-5)
    assert runs[True][0][2] == pytest.approx(runs[False][0][2], rel=1e-3)
    assert runs[True][1] == runs[False][1]


def test_resume_at_another_world_size_is_refused(tmp_path, digits):
    """A checkpoint written by 2 ranks is not continued by 1 (its data position and
    per-rank state belong to 2): one line, as the GPT trainer says it."""
    from data.files import load_checkpoint, save_checkpoint

    first = Trainer(_cfg(tmp_path, digits, "w", steps=2, ckpt_every=2), progress=False)
    first.run()
    state = load_checkpoint(first.last_checkpoint)
    state["world_size"] = 2
    save_checkpoint(first.last_checkpoint, state)
    written = (tmp_path / "w" / "config.toml").read_bytes()
    again = Trainer(_cfg(tmp_path, digits, "w", steps=3, ckpt_every=2, log_every=7),
                    progress=False)
    with pytest.raises(configlib.ConfigError, match="written by 2 ranks, this run has 1"):
        again.run()
    assert (tmp_path / "w" / "config.toml").read_bytes() == written  # a refusal changes nothing


def test_evaluate_limit_counts_images_not_batches(digits):
    """--limit 10 with --batch-size 64 evaluates 10 images (it took the whole first
    batch of 64 and said so)."""
    from tokenizer.build import build_tokenizer
    from tokenizer.evaluate import evaluate
    from tokenizer.registry import registry_config

    model = build_tokenizer(registry_config("gaussian-debug")).eval()
    report = evaluate(model, digits, batch_size=64, limit=10, progress=False)
    assert report["num_images"] == 10


def test_samples_lost_to_a_damaged_shard_are_counted_and_can_stop_the_run(tmp_path, digits):
    """A truncated shard: its unreadable samples are counted per epoch (result, run.json,
    final line) instead of "0 skipped"; past data.max_lost the run stops in one line."""
    import json
    import shutil

    from launch.trainer import DataLost

    shards = tmp_path / "shards"
    shutil.copytree(digits, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    first = shards / manifest["shards"][0]["name"]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    per_epoch = (manifest["total"] - manifest["shards"][0]["count"] // 2 - 16) // 8 + 1
    sets = dict(data__shards=shards, steps=per_epoch + 2, ckpt_every=1000)
    trainer = Trainer(_cfg(tmp_path, digits, "lost", data__max_lost=1.0, **sets),
                      progress=False)
    result = trainer.run()
    lost = result["data_lost_per_epoch"]["0"]
    assert 0 < lost <= manifest["shards"][0]["count"]
    total = sum(result["data_lost_per_epoch"].values())  # epoch 1 had begun: its count so far
    assert result["data_lost"] == total and set(result["data_lost_per_epoch"]) <= {"0", "1"}
    assert json.loads((tmp_path / "lost" / "run.json").read_text())["data_lost"] == total
    assert f"{total} samples lost to damaged shards (epoch 0: {lost}" in trainer.loss_line(result)
    strict = Trainer(_cfg(tmp_path, digits, "strict", **sets), progress=False)
    with pytest.raises(DataLost, match=rf"epoch 0 lost {lost} of \d+ samples .* more than "
                                       rf"data\.max_lost = 0\.01; damaged: {first.name}:"):
        strict.run()
