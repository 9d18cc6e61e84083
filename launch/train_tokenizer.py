"""Train a tokenizer (GaussianToken or the VQ baseline).

    python -m launch.train_tokenizer --config launch/configs/tokenizer-debug.toml
    python -m launch.train_tokenizer --size gaussian-debug --set data.shards=shards/digits \\
        --set steps=500 --out runs/tok
    torchrun --nproc_per_node 8 -m launch.train_tokenizer \\
        --config launch/configs/tokenizer-imagenet.toml

One process on the CPU, or one per GPU under torchrun (several nodes: torchrun's
--nnodes/--rdzv flags, or deepspeed's launcher with a hostfile). Re-running the same
command resumes from ``OUT/checkpoints/last.pt`` exactly where it stopped (model,
EMA, discriminator, optimisers, schedule, data position and RNG states). The resolved
config is written to ``OUT/config.toml`` and into every checkpoint.
"""

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data import config as configlib
from data.files import load_checkpoint, save_checkpoint, save_weights
from data.ranks import Dist, device_for, init_distributed
from launch.runtime import ema_update, resumable_batches, rng_state, set_rng_state, warmup_cosine
from tokenizer.config import REGISTRY, TokenizerConfig, registry_config
from tokenizer.gaussian import code_usage_tensors
from tokenizer.losses import LeCAM, PatchDiscriminator, hinge_d_loss, hinge_g_loss
from tokenizer.registry import build_tokenizer


@dataclass
class DataConfig:
    shards: str = ""  # image shard folder (data.build_shards)
    batch_size: int = 8  # per rank
    num_workers: int = 0
    flip: bool = True  # random horizontal flips; off for data that is not mirror-symmetric

    def __post_init__(self):
        configlib.require_at_least(self, 1, "batch_size", prefix="data.")
        configlib.require_at_least(self, 0, "num_workers", prefix="data.")


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class LossConfig:
    l1: float = 1.0
    lpips: float = 1.0
    gan: float = 0.1
    gan_start: int = 1_000_000  # step at which the discriminator switches on
    lecam: float = 0.05
    lecam_decay: float = 0.999
    disc_ndf: int = 64
    disc_layers: int = 3


@dataclass
class RunConfig:
    size: str = "gaussian-debug"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    out: str = "runs/tokenizer"
    steps: int = 1000
    log_every: int = 10
    image_every: int = 200
    ckpt_every: int = 200
    ema_decay: float = 0.999
    bf16: bool = True  # autocast on CUDA
    seed: int = 0
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    # GaussianToken: train the decoder on continuous geometry for this many steps, then on
    # the quantised geometry (the tokens). 0: quantised from the start; = steps: the
    # continuous-geometry ceiling (not a discrete tokenizer).
    continuous_steps: int = 0
    compile: bool = False  # torch.compile the tokenizer and the discriminator for training

    def __post_init__(self):
        if self.size not in REGISTRY:
            raise ValueError(f"size must be one of {sorted(REGISTRY)}, got {self.size!r}")
        configlib.require_at_least(self, 1, "steps", "log_every", "image_every", "ckpt_every",
                                   "max_bad_steps")
        if self.continuous_steps < 0:
            raise ValueError("continuous_steps must be 0 or positive")


def resolve_config(path=None, overrides=None, size=None) -> RunConfig:
    """File + overrides, with the tokenizer table laid over the registry size."""
    data = configlib.read_toml(path) if path is not None else {}
    data = configlib.apply_overrides(data, list(overrides or []))
    if size:
        data["size"] = size
    return resolve_table(data)


def resolve_table(data: dict) -> RunConfig:
    """A run config from a nested dict, its tokenizer table laid over the registry size."""
    data = dict(data)
    name = data.get("size", RunConfig.size)
    if name not in REGISTRY:
        raise configlib.ConfigError(f"size must be one of {sorted(REGISTRY)}, got {name!r}")
    base = configlib.to_dict(registry_config(name))
    data["tokenizer"] = configlib.merge_tables(base, data.get("tokenizer", {}))
    return configlib.from_dict(RunConfig, data)


class NonFiniteLoss(RuntimeError):
    pass


# what a resumed run may change (data.shards may move); anything else makes another run
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "image_every", "ckpt_every", "out",
                               "max_bad_steps", "data.shards", "compile"})


def check_data(cfg: RunConfig) -> None:
    """The training shards exist, are image shards, and may be mirrored if flips are on."""
    from data.build_shards import FORMAT_TAG
    from data.builtin import mirror_refusal
    from data.stream import read_manifest

    if not cfg.data.shards:
        raise configlib.ConfigError("data.shards is not set (an image shard folder)")
    read_manifest(cfg.data.shards, FORMAT_TAG)  # ShardSetError (a ValueError) if not
    refusal = mirror_refusal(cfg.data.shards) if cfg.data.flip else None
    if refusal:
        raise configlib.ConfigError(f"data.flip is on but {refusal}: set data.flip=false")


class Trainer:
    """Holds the run's state; ``step()`` is one optimisation step, ``run()`` the loop."""

    def __init__(self, cfg: RunConfig, info: Dist | None = None, lpips=None, progress=True):
        self.cfg, self.info = cfg, info or init_distributed()
        self.device = device_for(self.info)
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.model = build_tokenizer(cfg.tokenizer).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.disc = PatchDiscriminator(cfg.loss.disc_ndf, cfg.loss.disc_layers).to(self.device)
        self.lecam = LeCAM(cfg.loss.lecam_decay).to(self.device)
        if lpips is None and cfg.loss.lpips > 0:
            from eval.lpips import LPIPS
            from eval.weights import resolve_vgg16
            lpips = LPIPS(resolve_vgg16())
        self.lpips = lpips.to(self.device) if lpips is not None else None
        o = cfg.optim
        self.opt_g = torch.optim.Adam(self.model.parameters(), o.lr, o.betas,
                                      weight_decay=o.weight_decay)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), o.lr, o.betas,
                                      weight_decay=o.weight_decay)
        self.step_num, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.bad_steps, self.skipped_steps = 0, 0
        self.progress = progress and self.info.main
        self.writer = None
        if self.info.world_size > 1:
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

        self.model.quantizer.reduce, self.model.quantizer.broadcast = all_reduce, broadcast
        ids = [self.info.local_rank] if self.device.type == "cuda" else None
        self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.train_disc = DistributedDataParallel(self.disc, device_ids=ids)

    # ---- checkpoints ------------------------------------------------------------
    @property
    def last_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def state(self) -> dict:
        return {"config": configlib.to_dict(self.cfg), "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "disc": self.disc.state_dict(),
                "lecam": self.lecam.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "step": self.step_num, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "skipped_steps": self.skipped_steps,
                "rng": rng_state()}

    def save(self) -> None:
        if self.info.main:
            save_checkpoint(self.last_checkpoint, self.state())

    def resume(self) -> bool:
        if not self.last_checkpoint.exists():
            return False
        s = load_checkpoint(self.last_checkpoint, self.device)
        configlib.refuse_resume_conflicts(s["config"], self.cfg, RESUMABLE_CHANGES,
                                          self.last_checkpoint)
        for name in ("model", "ema", "disc", "lecam", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(s[name])
        self.step_num, self.epoch = s["step"], s["epoch"]
        self.batch_in_epoch, self.skipped_steps = s["batch_in_epoch"], s["skipped_steps"]
        set_rng_state(s["rng"])
        return True

    # ---- data -------------------------------------------------------------------
    def batches(self):
        """Endless (images, labels) on the device, epoch after epoch; resumable."""
        from data.loader import make_image_loader

        check_data(self.cfg)
        loader = make_image_loader(
            self.cfg.data.shards, batch_size=self.cfg.data.batch_size,
            image_size=self.cfg.tokenizer.image_size, train=True, flip=self.cfg.data.flip,
            mode="epoch",
            num_workers=self.cfg.data.num_workers, rank=self.info.rank,
            world_size=self.info.world_size, seed=self.cfg.seed)
        empty = (f"{self.cfg.data.shards} gives no full batch of {self.cfg.data.batch_size} "
                 "per rank")
        for images, labels in resumable_batches(loader, self, empty):
            yield images.to(self.device), labels

    # ---- one step -----------------------------------------------------------------
    def _autocast(self):
        enabled = self.cfg.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def step(self, images: torch.Tensor) -> dict:
        """One generator (and discriminator) update on images [B, 3, S, S]; returns its
        logs, losses as detached 0-dim tensors on the device (float() them to read), or
        {"skipped": 1.0} for a non-finite loss."""
        cfg, lc = self.cfg, self.cfg.loss
        lr_scale = warmup_cosine(self.step_num, cfg.optim.warmup_steps, cfg.steps,
                                 cfg.optim.min_lr_ratio)
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
        if not torch.isfinite(loss):
            self.opt_g.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.skipped_steps += 1
            if self.bad_steps >= cfg.max_bad_steps:
                raise NonFiniteLoss(f"{self.bad_steps} consecutive non-finite losses at step "
                                    f"{self.step_num}; lower optim.lr or check the data")
            self.step_num += 1
            return {"skipped": 1.0}
        self.bad_steps = 0
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        logs["grad_norm/g"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                             cfg.optim.grad_clip)
        self.opt_g.step()
        if gan_on:
            with self._autocast():
                real, fake = self.train_disc(images), self.train_disc(recon.detach())
                d_loss = hinge_d_loss(real, fake) + lc.lecam * self.lecam(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), cfg.optim.grad_clip)
            self.opt_d.step()
            logs["loss/d"] = d_loss
        ema_update(self.ema, self.model, cfg.ema_decay)
        usage, perplexity = code_usage_tensors(aux["code_counts"])
        logs.update({"loss/total": loss, "codebook/usage": usage,
                     "codebook/perplexity": perplexity})
        self.step_num += 1
        # on the device: the finiteness test above is the step's only host sync
        return {**{k: v.detach().float() for k, v in logs.items()},
                "lr": cfg.optim.lr * lr_scale}

    # ---- the loop ---------------------------------------------------------------------
    def _log(self, logs: dict, images: torch.Tensor) -> None:
        if not self.info.main:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        for k, v in logs.items():
            self.writer.add_scalar(k, v, self.step_num)
        if self.step_num % self.cfg.image_every == 0 or self.step_num == self.cfg.steps:
            from tokenizer.visualize import reconstruction_sheet
            sheet = reconstruction_sheet(self.ema, images[:8])
            (self.out / "images").mkdir(parents=True, exist_ok=True)
            sheet.save(self.out / "images" / f"step-{self.step_num:07d}.png")

    def run(self, stop_after: int | None = None) -> dict:
        """Train to cfg.steps (or stop after ``stop_after`` steps, checkpointing there)."""
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.toml").write_text(configlib.dumps(self.cfg))
        resumed = self.resume()
        bar = tqdm(total=self.cfg.steps, initial=self.step_num, desc="tokenizer",
                   disable=not self.progress, unit="step")
        if resumed and self.progress:
            bar.write(f"resumed from {self.last_checkpoint} at step {self.step_num}")
        logs, sums, count = {}, {}, 0
        batches = self.batches()
        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, stop_after)
        while self.step_num < end:
            images, _ = next(batches)
            step_logs = self.step(images)
            bar.update(1)
            if "skipped" not in step_logs:  # summed on the device, read once per interval
                lr = step_logs.pop("lr")
                sums = {k: sums.get(k, 0) + v for k, v in step_logs.items()}
                count += 1
            if count and (self.step_num % self.cfg.log_every == 0
                          or self.step_num == self.cfg.steps):
                means = (torch.stack(list(sums.values())) / count).tolist()  # one sync
                logs = {**dict(zip(sums, means, strict=True)), "lr": lr}
                sums, count = {}, 0
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in logs.items()
                                 if k in ("loss/l1", "loss/lpips", "codebook/usage")})
                self._log(logs, images)
            if self.step_num % self.cfg.ckpt_every == 0 or self.step_num == end:
                self.save()
        bar.close()
        if self.writer is not None:
            self.writer.close()
        return {**logs, "skipped_steps": self.skipped_steps}


def export_weights(ckpt: Path, out: Path) -> None:
    """EMA weights as safetensors with the tokenizer config beside them (for sampling)."""
    import json

    state = load_checkpoint(ckpt)
    save_weights(out, state["ema"])
    out.with_suffix(".json").write_text(json.dumps(state["config"]["tokenizer"], indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.train_tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="TOML run config (see launch/configs/)")
    parser.add_argument("--size", choices=sorted(REGISTRY),
                        help="tokenizer size from the registry (overrides the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--out", help="output folder (overrides the config's 'out')")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the tokenizer and discriminator (= --set "
                             "compile=true; the first steps pay the compilation)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    overrides = args.set + ([f"out={args.out}"] if args.out else []) + \
        (["compile=true"] if args.compile else [])
    try:
        cfg = resolve_config(args.config, overrides, args.size)
        check_data(cfg)  # before any model is built or file written
        result = Trainer(cfg, progress=not args.quiet).run()
    except (configlib.ConfigError, ValueError, NonFiniteLoss) as err:
        print(f"launch.train_tokenizer: {err}", file=sys.stderr)
        return 2
    if init_distributed().main:
        export_weights(Path(cfg.out) / "checkpoints" / "last.pt",
                       Path(cfg.out) / "tokenizer.safetensors")
        print(f"done: {cfg.steps} steps, {result.get('skipped_steps', 0)} skipped; weights in "
              f"{Path(cfg.out) / 'tokenizer.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
