"""Train a tokenizer (GaussianToken or the VQ baseline).

    python -m launch.train_tokenizer --config launch/configs/tokenizer-digits-gaussian.toml
    python -m launch.train_tokenizer --size gaussian-debug --set data.shards=shards/digits \\
        --set steps=500 --out runs/tok
    torchrun --nproc_per_node 8 -m launch.train_tokenizer \\
        --config launch/configs/tokenizer-imagenet.toml

One process on the CPU, or one per GPU under torchrun (several nodes: torchrun's
--nnodes/--rdzv flags, or deepspeed's launcher with a hostfile). Re-running the same
command resumes from ``OUT/checkpoints/last.pt`` exactly where it stopped (model,
EMA, discriminator, optimisers, schedule, data position and RNG states). The resolved
config is written to ``OUT/config.toml`` and into every checkpoint. A batch whose loss is
not finite on any rank is skipped by every rank (it is not a step); ``max_bad_steps`` in a
row stop the run.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from data import config as configlib
from data.build_shards import FORMAT_TAG
from data.builtin import mirror_refusal
from data.cli import require_output_dir
from data.files import load_checkpoint, save_checkpoint, save_weights
from data.loader import make_image_loader
from data.ranks import Dist, check_environment, device_for, init_distributed, leave_process_group
from data.stream import read_manifest
from eval.lpips import LPIPS
from eval.weights import resolve_vgg16
from launch.run_config import (
    TOKENIZER_RESUMABLE,
    TokenizerRunConfig,
    resolve_tokenizer_config,
)
from launch.trainer import (
    NonFiniteLoss,
    TrainingRun,
    lr_multiplier,
    overrides,
    resumable_batches,
    training_parser,
)
from tokenizer.build import build_tokenizer
from tokenizer.gaussian import code_usage_tensors
from tokenizer.losses import LeCAM, PatchDiscriminator, hinge_d_loss, hinge_g_loss
from tokenizer.registry import REGISTRY
from tokenizer.visualize import reconstruction_sheet


def check_data(cfg: TokenizerRunConfig) -> None:
    """The training shards exist, are image shards, and may be mirrored if flips are on."""
    if not cfg.data.shards:
        raise configlib.ConfigError("data.shards is not set (an image shard folder)")
    read_manifest(cfg.data.shards, FORMAT_TAG)  # ShardSetError (a ValueError) if not
    refusal = mirror_refusal(cfg.data.shards) if cfg.data.flip else None
    if refusal:
        raise configlib.ConfigError(f"data.flip is on but {refusal}: set data.flip=false")


class Trainer(TrainingRun):
    """The tokenizer run's state; ``step(images)`` is one optimisation step, ``run()``
    the shared loop (launch.trainer)."""

    name = "tokenizer"
    RESUMABLE_CHANGES = TOKENIZER_RESUMABLE

    def __init__(self, cfg: TokenizerRunConfig, info: Dist | None = None, lpips=None,
                 progress=True):
        super().__init__(cfg, info or init_distributed(), progress)
        self.device = device_for(self.ranks)
        torch.manual_seed(cfg.seed)
        self.model = build_tokenizer(cfg.tokenizer).to(self.device)
        self.start_ema(self.model, cfg.ema_decay)
        self.disc = PatchDiscriminator(cfg.loss.disc_ndf, cfg.loss.disc_layers).to(self.device)
        self.lecam = LeCAM(cfg.loss.lecam_decay).to(self.device)
        if lpips is None and cfg.loss.lpips > 0:
            lpips = LPIPS(resolve_vgg16())
        self.lpips = lpips.to(self.device) if lpips is not None else None
        o = cfg.optim
        self.opt_g = torch.optim.Adam(self.model.parameters(), o.lr, o.betas,
                                      weight_decay=o.weight_decay)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), o.lr, o.betas,
                                      weight_decay=o.weight_decay)
        self.step_num = 0
        if self.ranks.world_size > 1:
            self._wrap_distributed()
        else:
            self.train_model, self.train_disc = self.model, self.disc
        if cfg.compile:  # wrappers only: self.model and self.disc keep their state keys
            self.train_model = torch.compile(self.train_model)
            self.train_disc = torch.compile(self.train_disc)
        self.model.train()

    def _wrap_distributed(self):
        def all_reduce(t):
            dist.all_reduce(t)
            return t

        def broadcast(t):
            dist.broadcast(t, 0)
            return t

        self.model.set_collectives(all_reduce, broadcast)  # the codebook's statistics
        ids = [self.ranks.local_rank] if self.device.type == "cuda" else None
        self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.train_disc = DistributedDataParallel(self.disc, device_ids=ids)

    # ---- checkpoints ------------------------------------------------------------
    @property
    def last_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def state(self) -> dict:
        return {**self.run_state(), "model": self.model.state_dict(),
                "disc": self.disc.state_dict(), "lecam": self.lecam.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "step": self.step_num}

    def save(self) -> None:
        if self.ranks.main:
            save_checkpoint(self.last_checkpoint, self.state())

    def resume(self) -> bool:
        if not self.last_checkpoint.exists():
            return False
        s = load_checkpoint(self.last_checkpoint, self.device)
        self.check_resume(s, self.last_checkpoint)
        for name in ("model", "disc", "lecam", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(s[name])
        self.step_num = s["step"]
        self.load_run_state(s, self.device)
        self.resumed_from = self.last_checkpoint
        return True

    # ---- data -------------------------------------------------------------------
    def batches(self):
        """Endless (images, labels) on the device, epoch after epoch; resumable."""
        check_data(self.cfg)
        loader = make_image_loader(
            self.cfg.data.shards, batch_size=self.cfg.data.batch_size,
            image_size=self.cfg.tokenizer.image_size, train=True, flip=self.cfg.data.flip,
            mode="epoch", num_workers=self.cfg.data.num_workers, rank=self.ranks.rank,
            world_size=self.ranks.world_size, seed=self.cfg.seed)
        for images, labels in resumable_batches(loader, self, self.cfg.data.shards,
                                                    self.cfg.data.max_lost):
            yield images.to(self.device), labels

    # ---- one step -----------------------------------------------------------------
    def _autocast(self):
        enabled = self.cfg.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, batch) -> dict | None:
        return self.step(batch[0])

    def step(self, images: torch.Tensor) -> dict | None:
        """One generator (and discriminator) update on images [B, 3, S, S]; returns its
        logs, detached 0-dim tensors on the device (float() them to read), or None where
        the loss was not finite on some rank (every rank skips it: no step taken)."""
        cfg, lc = self.cfg, self.cfg.loss
        lr_scale = lr_multiplier(cfg.optim, cfg.steps)(self.step_num)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = cfg.optim.lr * lr_scale
        gan_on = self.step_num >= lc.gan_start
        with self._autocast():
            quantized = self.step_num >= cfg.continuous_steps
            recon, aux = self.train_model(images, quantize_geometry=quantized)
            l1 = (recon.float() - images).abs().mean()
            loss = lc.l1 * l1 + aux["commitment"]
            logs = {"loss/l1": l1, "loss/commitment": aux["commitment"]}
            if self.lpips is not None:
                perceptual = self.lpips(recon.float(), images).mean()
                loss = loss + lc.lpips * perceptual
                logs["loss/lpips"] = perceptual
            if gan_on:
                g_adv = hinge_g_loss(self.train_disc(recon))
                loss = loss + lc.gan * g_adv
                logs["loss/g_adv"] = g_adv
        self.opt_g.zero_grad(set_to_none=True)
        if not self.guard.finite(loss, self.step_num):  # agreed by every rank
            return None
        loss.backward()
        clip = cfg.optim.grad_clip or float("inf")  # 0: no clipping (the norm is still logged)
        logs["grad_norm/g"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                             clip)
        self.opt_g.step()
        if gan_on:
            with self._autocast():
                real, fake = self.train_disc(images), self.train_disc(recon.detach())
                d_loss = hinge_d_loss(real, fake) + lc.lecam * self.lecam(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), clip)
            self.opt_d.step()
            logs["loss/d"] = d_loss
        usage, perplexity = code_usage_tensors(aux["code_counts"])
        logs.update({"loss/total": loss, "codebook/usage": usage,
                     "codebook/perplexity": perplexity})
        self.step_num += 1
        return {k: v.detach().float() for k, v in logs.items()}

    # ---- what the shared loop asks ---------------------------------------------------
    def ema_source(self) -> torch.nn.Module:
        return self.model

    def lr(self) -> float:
        return self.opt_g.param_groups[0]["lr"]

    def postfix(self, means: dict) -> dict:
        return {k.split("/")[-1]: f"{v:.3g}" for k, v in means.items()
                if k in ("loss/l1", "loss/lpips", "codebook/usage")}

    def on_log(self, means: dict, batch) -> None:
        if self.step_num % self.cfg.image_every and self.step_num != self.cfg.steps:
            return
        model = self.ema.module(self.model) if self.ema is not None else \
            copy.deepcopy(self.model).eval()
        sheet = reconstruction_sheet(model, batch[0][:8])
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        sheet.save(self.out / "images" / f"step-{self.step_num:07d}.png")


def export_weights(ckpt: Path, out: Path) -> None:
    """EMA weights as safetensors with the tokenizer config beside them (for sampling)."""
    state = load_checkpoint(ckpt)
    save_weights(out, state["ema"] if state["ema"] is not None else state["model"])
    out.with_suffix(".json").write_text(json.dumps(state["config"]["tokenizer"], indent=1))


def main(argv=None) -> int:
    parser = training_parser("python -m launch.train_tokenizer", __doc__)
    parser.add_argument("--size", choices=sorted(REGISTRY),
                        help="tokenizer size from the registry (overrides the config's)")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_tokenizer_config(args.config, overrides(args), args.size)
        check_environment()  # before any model is built or file written
        require_output_dir(cfg.out, "out")
        check_data(cfg)
        trainer = Trainer(cfg, progress=not args.quiet)
        result = trainer.run()
    except (configlib.ConfigError, ValueError, NonFiniteLoss) as err:
        print(f"launch.train_tokenizer: {err}", file=sys.stderr)
        leave_process_group(wait=False)
        return 2
    if trainer.ranks.main:
        export_weights(trainer.last_checkpoint, Path(cfg.out) / "tokenizer.safetensors")
        print(f"done: {trainer.step_num} steps, {trainer.loss_line(result)}; weights in "
              f"{Path(cfg.out) / 'tokenizer.safetensors'}")
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
