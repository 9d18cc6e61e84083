"""Train the class-conditional GPT on token shards with DeepSpeed.

    python -m launch.train_gpt --config launch/configs/gpt-digits.toml        # 1 CPU process
    deepspeed --num_gpus 8 -m launch.train_gpt --config launch/configs/gpt-b-imagenet.toml
    deepspeed --hostfile hosts -m launch.train_gpt --config ...                # several nodes

The GPT's vocabularies, tuple length and class count come from the token shards'
manifest, and the tokenizer that made them is recorded in every checkpoint and
export. Re-running the same command resumes exactly from the last checkpoint
(DeepSpeed's model/optimizer/schedule state plus our own file with the data
position, EMA weights and every RNG). DeepSpeed reads its own files with pickle:
resume only from runs you made; share the exported ``gpt.safetensors`` +
``gpt.json``, which load without executing anything.
"""

import argparse
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from data import config as configlib
from data.files import load_checkpoint, save_checkpoint, save_weights
from generator.config import SIZES, GPTConfig, gpt_config
from generator.model import ATTENTION, GPT, use_attention
from launch.runtime import resumable_batches, rng_state, set_rng_state, warmup_cosine

SCHEDULES = ("cosine", "constant")
# what a resumed run may change; anything else would silently make another run (data.tokens
# may move: the tokenizer fingerprint and the GPT config are checked separately)
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "ckpt_every", "out", "max_bad_steps",
                               "data.tokens", "compile", "attention"})


@dataclass
class DataConfig:
    tokens: str = ""  # token shard folder (data.tokens)
    batch_size: int = 32  # micro-batch per rank
    num_workers: int = 0

    def __post_init__(self):
        configlib.require_at_least(self, 1, "batch_size", prefix="data.")
        configlib.require_at_least(self, 0, "num_workers", prefix="data.")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 0
    schedule: str = "constant"  # LlamaGen trains at a constant LR
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0
    bf16: bool = True  # on CUDA; CPU runs in fp32
    grad_accum: int = 1
    # ZeRO-3: parameters with fewer elements stay whole on every rank (DeepSpeed's
    # stage3_param_persistence_threshold; its default)
    persistence_threshold: int = 100_000

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0-3, got {self.zero_stage}")
        configlib.require_at_least(self, 1, "grad_accum", prefix="deepspeed.")
        configlib.require_at_least(self, 0, "persistence_threshold", prefix="deepspeed.")


@dataclass
class ModelOptions:
    dropout: float = 0.1  # embeddings, residual branches, FFN
    attn_dropout: float = 0.0  # attention probabilities (LlamaGen: 0)
    class_dropout: float = 0.1
    qk_norm: bool = False
    rope: str = ""  # "" = automatic: spatial for Gaussian tuples, 2d for VQ grids, else 1d
    position_embed: str = "factorised"  # Gaussian position tokens: + row/column terms
    class_rope: str = "identity"  # class token's rotary row: "identity", or LlamaGen's "zero"


@dataclass
class RunConfig:
    size: str = "debug"
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    out: str = "runs/gpt"
    steps: int = 1000  # optimizer steps
    log_every: int = 10
    ckpt_every: int = 500
    ema_decay: float = 0.9999  # 0 disables the EMA copy
    seed: int = 0  # model init; data order; rank r's dropout/label-drop draws use seed + r
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    compile: bool = False  # torch.compile the GPT's loss (first steps pay the compilation)
    # "auto": xformers' memory-efficient attention where it runs on CUDA, else PyTorch's
    # scaled_dot_product_attention; "sdpa" or "xformers" to choose
    attention: str = "auto"

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {list(SIZES)}, got {self.size!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {list(ATTENTION)}, got "
                             f"{self.attention!r}")
        if self.compile and self.deepspeed.zero_stage == 3:  # seen on the CPU: dynamo hits
            # its recompile limit in ZeRO-3's gather hooks and runs eager after all
            raise ValueError("compile = true does not work with deepspeed.zero_stage = 3 "
                             "(ZeRO-3's parameter hooks make torch.compile recompile every "
                             "module until it gives up); use zero_stage <= 2 or compile = "
                             "false")
        configlib.require_at_least(self, 1, "steps", "log_every", "ckpt_every",
                                   "max_bad_steps")


class NonFiniteLoss(RuntimeError):
    """Too many consecutive non-finite losses: the run stops without exporting."""


class LossModule(torch.nn.Module):
    """What DeepSpeed wraps: (labels, tokens) -> loss. Keeps the GPT itself pure; the
    last step's per-component losses and accuracies stay in ``last`` ([2, K], detached,
    on the device) for logging without a device sync."""

    def __init__(self, gpt: GPT, compile: bool = False):
        super().__init__()
        self.gpt = gpt
        self.last = None
        # compiling the bound method keeps the parameter names (no "_orig_mod." prefix)
        self._losses = torch.compile(gpt.losses) if compile else gpt.losses

    def forward(self, labels, tokens):
        ce, acc = self._losses(labels, tokens)
        self.last = torch.stack([ce.detach(), acc])
        return ce.sum()


SCHEDULER_TASKS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # srun, mpirun


def _ensure_single_process_env() -> None:
    """deepspeed.initialize in a plain process needs the launcher's variables. Started
    as one of several tasks by srun/mpirun without them, every task would be a rank-0
    run writing into the same folder: refuse."""
    if "RANK" in os.environ:
        return
    for var in SCHEDULER_TASKS:
        if int(os.environ.get(var, "1") or 1) > 1:
            raise configlib.ConfigError(
                f"{var}={os.environ[var]} but no RANK/WORLD_SIZE: start the tasks with "
                "deepspeed or torchrun (or export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
                "MASTER_PORT per task) so that they form one run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def build_gpt_config(cfg: RunConfig, manifest: dict) -> GPTConfig:
    m = cfg.model
    return gpt_config(cfg.size, vocab_sizes=manifest["vocab_sizes"],
                      num_tokens=manifest["num_tokens"], num_classes=manifest["num_classes"],
                      rope=m.rope or None, dropout=m.dropout, attn_dropout=m.attn_dropout,
                      class_dropout=m.class_dropout, qk_norm=m.qk_norm,
                      position_embed=m.position_embed, class_rope=m.class_rope,
                      layout=manifest.get("token_layout"))


class Trainer:
    def __init__(self, cfg: RunConfig, progress: bool = True):
        from data.stream import read_manifest
        from data.tokens import FORMAT_TAG

        if not cfg.data.tokens:
            raise configlib.ConfigError("data.tokens is not set (a token shard folder)")
        self.cfg, self.out = cfg, Path(cfg.out)
        self.manifest = read_manifest(cfg.data.tokens, FORMAT_TAG)
        self.gpt_cfg = build_gpt_config(cfg, self.manifest)
        _ensure_single_process_env()
        import deepspeed

        cuda = torch.cuda.is_available()
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.manual_seed(cfg.seed)
        self.gpt = GPT(self.gpt_cfg)
        o, d = cfg.optim, cfg.deepspeed
        decay = [p for n, p in self.gpt.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.gpt.named_parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=o.lr, betas=o.betas)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.data.batch_size,
            "gradient_accumulation_steps": d.grad_accum,
            "gradient_clipping": o.grad_clip,
            "zero_optimization": {"stage": d.zero_stage, **(
                {"stage3_param_persistence_threshold": d.persistence_threshold}
                if d.zero_stage == 3 else {})},
            "bf16": {"enabled": bool(d.bf16 and cuda)},
            "communication_data_type": "fp32",  # DeepSpeed reduces in bf16 otherwise
            "steps_per_print": 10**12,
            "wall_clock_breakdown": False,
        }
        self.attention = use_attention(self.gpt, cfg.attention,
                                       f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
        self.loss_module = LossModule(self.gpt, compile=cfg.compile)
        self.engine, _, _, self.schedule = deepspeed.initialize(
            model=self.loss_module, optimizer=optimizer, lr_scheduler=schedule,
            config=ds_config)
        self.device = self.engine.device
        # the same initial weights everywhere (above); different dropout and label-drop
        # draws on every rank (restored per rank on resume)
        torch.manual_seed(cfg.seed + 7919 * self.rank)
        self.ema = None
        if cfg.ema_decay > 0 and d.zero_stage == 3:
            raise configlib.ConfigError("EMA weights need zero_stage <= 2 (stage 3 "
                                        "partitions parameters); set ema_decay = 0")
        if cfg.ema_decay > 0 and self.rank == 0:  # only rank 0 exports: only it keeps one
            self.ema = {n: p.detach().float().clone() for n, p in self.gpt.named_parameters()}
        self.bad_steps = self.skipped_steps = 0
        self.epoch, self.batch_in_epoch = 0, 0
        self.progress = progress and self.rank == 0
        self.last_log: dict = {}  # the last logged interval's means (loss, per component)
        self.resumed_from: Path | None = None

    def _lr_lambda(self, step: int) -> float:
        o = self.cfg.optim
        if o.schedule == "constant":
            return min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        return warmup_cosine(step, max(o.warmup_steps, 1), self.cfg.steps, o.min_lr_ratio)

    @property
    def step_num(self) -> int:
        return self.engine.global_steps

    # ---- data ---------------------------------------------------------------------------
    def batches(self):
        from data.tokens import make_token_loader

        loader = make_token_loader(self.cfg.data.tokens, batch_size=self.cfg.data.batch_size,
                                   train=True, num_workers=self.cfg.data.num_workers,
                                   rank=self.rank, world_size=self.world, seed=self.cfg.seed)
        empty = (f"{self.cfg.data.tokens} gives no full batch of {self.cfg.data.batch_size} "
                 "per rank")
        for tokens, labels in resumable_batches(loader, self, empty):
            yield labels.to(self.device), tokens.to(self.device)

    # ---- checkpoints ----------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def _state_file(self, tag: str) -> Path:
        return self.ckpt_dir / tag / f"trainer_state_rank{self.rank}.pt"

    def save(self) -> None:
        tag = f"step-{self.step_num:08d}"
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, save_latest=False)
        save_checkpoint(self._state_file(tag), {
            "config": configlib.to_dict(self.cfg), "gpt": configlib.to_dict(self.gpt_cfg),
            "tokenizer": self.manifest.get("tokenizer", {}), "world_size": self.world,
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": rng_state(),
            "skipped_steps": self.skipped_steps, "ema": self.ema})
        if self.world > 1:
            torch.distributed.barrier()
        if self.rank == 0:  # the pointer moves only once every rank has written
            pointer = self.ckpt_dir / "last.json"
            tmp = pointer.with_name("last.json.tmp")
            tmp.write_text(json.dumps({"tag": tag, "step": self.step_num}))
            os.replace(tmp, pointer)
            for old in self.ckpt_dir.glob("step-*"):
                if old.name != tag and old.is_dir():
                    import shutil
                    shutil.rmtree(old, ignore_errors=True)

    def _refuse_foreign_checkpoints(self) -> None:
        """Without our pointer, the folder may hold only our own unfinished first save
        (``step-*``): anything else was not written by this trainer, and saving there
        would prune it."""
        if not self.ckpt_dir.is_dir():
            return
        foreign = sorted(p.name for p in self.ckpt_dir.iterdir()
                         if not (p.name.startswith("step-") and p.is_dir())
                         and p.name != "last.json.tmp")
        if foreign:
            raise configlib.ConfigError(
                f"{self.ckpt_dir} holds files this trainer did not write "
                f"({', '.join(foreign[:3])}): choose a new --out (DeepSpeed checkpoints are "
                "read with pickle; only runs of this trainer are resumed)")

    def resume(self) -> bool:
        pointer = self.ckpt_dir / "last.json"
        if not pointer.exists():
            self._refuse_foreign_checkpoints()
            return False
        try:
            tag = json.loads(pointer.read_text())["tag"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise configlib.ConfigError(f"{pointer} is not a checkpoint pointer of this "
                                        f"trainer ({err!r}); choose a new --out") from err
        state_file = self._state_file(tag)
        if not state_file.exists():
            found = sorted(p.name for p in (self.ckpt_dir / tag).glob("trainer_state_rank*.pt"))
            raise configlib.ConfigError(
                f"{self.ckpt_dir / tag} has no state for rank {self.rank} of {self.world} "
                f"(it holds {len(found)} rank files): resume with the world size it was "
                "written with, or start a new --out")
        state = load_checkpoint(state_file)  # weights_only: checked before DeepSpeed's pickles
        configlib.refuse_resume_conflicts(state["config"], self.cfg, RESUMABLE_CHANGES,
                                          self.ckpt_dir)
        if state["gpt"] != configlib.to_dict(self.gpt_cfg):
            raise configlib.ConfigError(f"{self.ckpt_dir} holds a run with another GPT config "
                                        "(size or token shards differ); use a new --out")
        if state.get("world_size", self.world) != self.world:
            raise configlib.ConfigError(
                f"{self.ckpt_dir} was written by {state['world_size']} ranks, this run has "
                f"{self.world}: resume with the same world size, or start a new --out")
        ours, theirs = self.manifest.get("tokenizer", {}), state.get("tokenizer")
        if theirs is not None and theirs.get("sha1") != ours.get("sha1"):
            raise configlib.ConfigError(
                f"{self.cfg.data.tokens} comes from tokenizer sha1 "
                f"{str(ours.get('sha1'))[:12]}, but the run in {self.out} was trained on "
                f"tokens of sha1 {str(theirs.get('sha1'))[:12]}; use a new --out")
        self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.skipped_steps = state.get("skipped_steps", 0)
        if self.rank == 0 and state["ema"] is not None:  # on the parameters' device
            self.ema = {n: v.to(self.device) for n, v in state["ema"].items()}
        set_rng_state(state["rng"])
        self.resumed_from = self.ckpt_dir / tag
        return True

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """Whole fp32 weights on rank 0 (the EMA when kept), None on the other ranks.
        Collective: under ZeRO-3 each rank holds a slice of every large parameter, so all
        ranks gather them, one parameter at a time (never the whole model twice)."""
        if self.ema is not None:
            return self.ema
        stage3 = self.cfg.deepspeed.zero_stage == 3
        weights = {}
        for name, param in self.gpt.named_parameters():
            if stage3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    if self.rank == 0:
                        weights[name] = param.detach().float().cpu().clone()
            elif self.rank == 0:
                weights[name] = param.detach().float()
        return weights if self.rank == 0 else None

    def export(self) -> Path | None:
        """EMA (or raw) weights as safetensors + config JSON beside them, for sampling.
        Called on every rank (ZeRO-3 gathers); rank 0 writes and returns the path."""
        weights = self.full_weights()
        if weights is None:
            return None
        path = self.out / "gpt.safetensors"
        save_weights(path, weights)
        meta = {"gpt": configlib.to_dict(self.gpt_cfg),
                "tokenizer": self.manifest.get("tokenizer", {}),
                "tokens": str(Path(self.cfg.data.tokens).resolve()),
                "image_dir": self.manifest.get("image_dir"), "weights": "ema" if self.ema else
                "raw", "steps": self.step_num, "train_log": self.last_log}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        return path

    # ---- the loop -------------------------------------------------------------------
    def _finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (all skip together, or none)."""
        flag = torch.isfinite(loss.detach()).float()
        if self.world > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        for n, p in self.gpt.named_parameters():
            self.ema[n].lerp_(p.detach().float(), 1 - self.cfg.ema_decay)

    def micro_step(self, labels: torch.Tensor, tokens: torch.Tensor) -> bool:
        """One micro-batch (labels [B], tokens [B, N, K] on the device): forward,
        backward, and DeepSpeed's step (an optimizer step every grad_accum calls).
        False (nothing done) for a non-finite loss; NonFiniteLoss after max_bad_steps
        in a row. The finiteness test is its one host sync."""
        loss = self.engine(labels, tokens)
        if not self._finite(loss):
            self.bad_steps += 1
            self.skipped_steps += 1
            if self.bad_steps >= self.cfg.max_bad_steps:
                raise NonFiniteLoss(f"{self.bad_steps} consecutive non-finite losses at "
                                    f"step {self.step_num}; lower optim.lr or check the "
                                    "data (nothing exported)")
            return False
        self.bad_steps = 0
        self.engine.backward(loss)
        self.engine.step()
        return True

    def run(self, stop_after: int | None = None) -> dict:
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.toml").write_text(configlib.dumps(self.cfg))
        resumed = self.resume()
        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, stop_after)
        bar = tqdm(total=self.cfg.steps, initial=self.step_num, desc="gpt", unit="step",
                   disable=not self.progress)
        if resumed and self.rank == 0:  # said even with --quiet: a pickle was read
            bar.write(f"resumed at step {self.step_num} from {self.resumed_from} (written by "
                      "this trainer, checked before loading; DeepSpeed reads its files there "
                      "with pickle, so resume only runs you made; share gpt.safetensors)",
                      file=sys.stderr)
        writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(self.out / "tensorboard"))
        batches, sums, count = self.batches(), None, 0
        names = self.gpt_cfg.names
        self.engine.train()
        while self.step_num < end:
            before = self.step_num
            if not self.micro_step(*next(batches)):
                continue  # no backward, no step: this micro-batch is dropped
            last = self.loss_module.last  # [2, K]: losses and accuracies, on the device
            sums, count = (last if sums is None else sums + last), count + 1
            if self.step_num == before:
                continue  # accumulating: not an optimizer step yet
            self._update_ema()
            bar.update(1)
            if self.step_num % self.cfg.log_every == 0 or self.step_num == end:
                mean = (sums / count).tolist()  # the one device sync per log interval
                total = sum(mean[0])
                parts = {n: f"{v:.3f}" for n, v in zip(names, mean[0], strict=True)}
                bar.set_postfix(loss=f"{total:.4f}", **parts if len(names) > 1 else {})
                if writer is not None:
                    writer.add_scalar("loss/train", total, self.step_num)
                    for n, ce, acc in zip(names, mean[0], mean[1], strict=True):
                        writer.add_scalar(f"loss/train_{n}", ce, self.step_num)
                        writer.add_scalar(f"accuracy/train_{n}", acc, self.step_num)
                    writer.add_scalar("lr", self.schedule.get_last_lr()[0], self.step_num)
                    writer.add_scalar("skipped_steps", self.skipped_steps, self.step_num)
                self.last_log = {"step": self.step_num, "loss": total,
                                 **{f"loss_{n}": v for n, v in zip(names, mean[0], strict=True)},
                                 **{f"accuracy_{n}": v for n, v in zip(names, mean[1],
                                                                       strict=True)}}
                sums, count = None, 0
            if self.step_num % self.cfg.ckpt_every == 0 or self.step_num == end:
                self.save()
        bar.close()
        if writer is not None:
            writer.close()
        return {"step": self.step_num}


def resolve_config(path=None, overrides=None) -> RunConfig:
    return configlib.load(RunConfig, path, overrides)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.train_gpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="TOML run config (see launch/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=2e-4 (repeatable)")
    parser.add_argument("--out", help="output folder (overrides the config's 'out')")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the GPT's loss (= --set compile=true; the first "
                             "steps pay the compilation)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    overrides = args.set + ([f"out={args.out}"] if args.out else []) + \
        (["compile=true"] if args.compile else [])
    try:
        trainer = Trainer(resolve_config(args.config, overrides), progress=not args.quiet)
        trainer.run()
        path = trainer.export()  # every rank: ZeRO-3 gathers the weights
        if path is not None:
            print(f"done: {trainer.step_num} steps; sampling weights in {path}")
    except (configlib.ConfigError, ValueError, NonFiniteLoss) as err:
        print(f"launch.train_gpt: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
