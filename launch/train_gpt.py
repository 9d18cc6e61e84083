"""Train the class-conditional GPT on token shards with DeepSpeed.

    python -m launch.train_gpt --set data.tokens=TOKENS --out runs/gpt      # 1 CPU process
    deepspeed --num_gpus 8 -m launch.train_gpt --config launch/configs/gpt-b-imagenet.toml
    deepspeed --hostfile hosts -m launch.train_gpt --config ...       # several nodes

TOKENS is a token shard folder: the codes stage of ``python -m launch.pipeline`` (or of
the demo) writes one, ``OUT/codes``.

The GPT's vocabularies, tuple length and class count come from the token shards'
manifest, and the tokenizer that made them is recorded in every checkpoint and export.
With ``data.heldout`` (token shards of held-out images: the pipeline's
``OUT/codes/heldout``) the weights that would be exported are scored on them every
``eval_every`` steps (``generator.heldout``: NLL per component, bits per image; in
TensorBoard under heldout/ and in gpt.json), and the lowest held-out loss is exported as
``gpt-best.safetensors`` + ``gpt-best.json`` beside the last weights. Re-running the
same command resumes exactly from the last checkpoint (DeepSpeed's
model/optimizer/schedule state plus our own file with the data position, EMA weights and
every RNG). Every checkpoint file, DeepSpeed's too, is loaded weights-only: tensors,
plain containers and the few DeepSpeed types named in ``DEEPSPEED_SAFE_GLOBALS``; a file
holding anything else is refused in one line (loading it would run code from it).
Share the exported ``gpt.safetensors`` + ``gpt.json``.
"""

import argparse
import importlib
import json
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from data import config as configlib
from data.cli import require_output_dir
from data.files import (
    atomic_write_json,
    first_line,
    load_checkpoint,
    load_state,
    save_checkpoint,
    save_weights,
)
from data.ranks import check_environment, launcher_env, leave_process_group
from data.stream import read_manifest
from data.tokens import FORMAT_TAG, make_token_loader
from generator.config import GPTConfig, gpt_config
from generator.heldout import heldout_nll
from generator.model import GPT, use_attention
from launch.run_config import GPT_RESUMABLE, GPTRunConfig, resolve_gpt_config
from launch.trainer import (
    NonFiniteLoss,
    TrainingRun,
    lr_multiplier,
    overrides,
    resumable_batches,
    training_parser,
)

# the types besides tensors and plain containers that DeepSpeed writes into its checkpoint
# files (torch.serialization.get_unsafe_globals_in_checkpoint over this trainer's ZeRO 0-3
# checkpoints, constant and cosine schedules, gradient accumulation); its files are loaded
# weights-only with exactly these allowed
DEEPSPEED_SAFE_GLOBALS = ("deepspeed.runtime.zero.config.ZeroStageEnum",
                          "deepspeed.utils.tensor_fragment.fragment_address",
                          "deepspeed.runtime.fp16.loss_scaler.LossScaler")
RANK_SEED_STRIDE = 7919  # rank r draws dropout / label drops from seed + 7919 r (a prime)


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


def build_gpt_config(cfg: GPTRunConfig, manifest: dict) -> GPTConfig:
    m = cfg.model
    return gpt_config(cfg.size, vocab_sizes=manifest["vocab_sizes"],
                      num_tokens=manifest["num_tokens"], num_classes=manifest["num_classes"],
                      rope=m.rope or None, dropout=m.dropout, attn_dropout=m.attn_dropout,
                      class_dropout=m.class_dropout, qk_norm=m.qk_norm,
                      position_embed=m.position_embed, class_rope=m.class_rope,
                      layout=manifest.get("token_layout"))


def check_heldout(heldout, tokens, manifest: dict) -> None:
    """ConfigError unless the held-out token shards fit the training tokens (same
    tokenizer, vocabularies, sequence and tuple length)."""
    theirs = read_manifest(heldout, FORMAT_TAG)
    for key in ("vocab_sizes", "num_tokens", "tuple_size", "num_classes"):
        if theirs.get(key) != manifest.get(key):
            raise configlib.ConfigError(
                f"data.heldout {heldout} has {key} {theirs.get(key)}, the training tokens "
                f"{tokens} have {manifest.get(key)}: both must come from one tokenizer")
    ours, other = manifest.get("tokenizer", {}), theirs.get("tokenizer", {})
    if ours.get("sha1") != other.get("sha1"):
        raise configlib.ConfigError(
            f"data.heldout {heldout} comes from tokenizer sha1 {str(other.get('sha1'))[:12]}, "
            f"the training tokens from {str(ours.get('sha1'))[:12]}")


def weights_only_load(path, map_location=None):
    """torch.load of a DeepSpeed checkpoint file without running code from it (DeepSpeed's
    own loader unpickles anything): ConfigError naming the file and the first type that
    is not a tensor, a plain container or one of ``DEEPSPEED_SAFE_GLOBALS``."""
    unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
              if g not in DEEPSPEED_SAFE_GLOBALS]
    refusal = (f"{path} holds {{what}}, beyond tensors, plain containers and the DeepSpeed "
               "types this trainer allows (DEEPSPEED_SAFE_GLOBALS in launch/train_gpt.py): "
               "refused, loading it would run code from the file")
    if unsafe:
        raise configlib.ConfigError(refusal.format(what=f"{unsafe[0]!r}"))
    allowed = []
    for name in DEEPSPEED_SAFE_GLOBALS:
        module, _, attr = name.rpartition(".")
        allowed.append(getattr(importlib.import_module(module), attr))
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise configlib.ConfigError(refusal.format(what=f"what the weights-only loader "
                                                   f"refuses ({first_line(err)})")) from err


def deepspeed_config(cfg: GPTRunConfig, cuda: bool) -> dict:
    """The DeepSpeed config of a run (micro-batch, accumulation, clipping, ZeRO, bf16)."""
    d = cfg.deepspeed
    zero = {"stage": d.zero_stage}
    if d.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = d.persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": d.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(d.bf16 and cuda)},
        "communication_data_type": "fp32",  # DeepSpeed reduces in bf16 otherwise
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


def build_optimizer(gpt: GPT, cfg: GPTRunConfig):
    """AdamW with weight decay on matrices only, and its LR schedule."""
    o = cfg.optim
    decay = [p for p in gpt.parameters() if p.dim() >= 2]
    no_decay = [p for p in gpt.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=o.lr, betas=o.betas)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(o, cfg.steps))


@dataclass(frozen=True)
class CheckpointFolder:
    """``OUT/checkpoints``: one ``step-NNNNNNNN/`` folder per save (DeepSpeed's files and
    our ``trainer_state_rank{r}.pt`` per rank) and ``last.json``, the pointer rank 0
    moves once every rank has written; older step folders are then pruned."""

    path: Path

    @property
    def pointer(self) -> Path:
        return self.path / "last.json"

    def state_file(self, tag: str, rank: int) -> Path:
        return self.path / tag / f"trainer_state_rank{rank}.pt"

    def last_tag(self) -> str | None:
        """The tag the pointer names; None without a pointer (refusing a folder that holds
        files this trainer did not write: saving there would prune them)."""
        if not self.pointer.exists():
            self._refuse_foreign()
            return None
        try:
            return json.loads(self.pointer.read_text())["tag"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise configlib.ConfigError(f"{self.pointer} is not a checkpoint pointer of this "
                                        f"trainer ({err!r}); choose a new --out") from err

    def _refuse_foreign(self) -> None:
        if not self.path.is_dir():
            return
        foreign = sorted(p.name for p in self.path.iterdir()
                         if not (p.name.startswith("step-") and p.is_dir())
                         and p.name != "last.json.tmp")
        if foreign:
            raise configlib.ConfigError(
                f"{self.path} holds files this trainer did not write "
                f"({', '.join(foreign[:3])}): choose a new --out (only runs of this trainer "
                "are resumed, and saving there would prune them)")

    def commit(self, tag: str, step: int) -> None:
        """Point at ``tag`` (atomically) and prune the other step folders (rank 0)."""
        atomic_write_json(self.pointer, {"tag": tag, "step": step}, sort_keys=False)
        for old in self.path.glob("step-*"):
            if old.name != tag and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)


class Trainer(TrainingRun):
    name = "gpt"
    RESUMABLE_CHANGES = GPT_RESUMABLE

    def __init__(self, cfg: GPTRunConfig, progress: bool = True):
        if not cfg.data.tokens:
            raise configlib.ConfigError("data.tokens is not set (a token shard folder)")
        manifest = read_manifest(cfg.data.tokens, FORMAT_TAG)
        gpt_cfg = build_gpt_config(cfg, manifest)
        if cfg.data.heldout:
            check_heldout(cfg.data.heldout, cfg.data.tokens, manifest)
        super().__init__(cfg, launcher_env(), progress)  # DeepSpeed needs the variables
        self.manifest, self.gpt_cfg = manifest, gpt_cfg
        import deepspeed  # heavy (seconds) and noisy on the CPU: imported when a run starts

        cuda = torch.cuda.is_available()
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(self.ranks.local_rank)
        torch.manual_seed(cfg.seed)
        self.gpt = GPT(self.gpt_cfg)
        optimizer, schedule = build_optimizer(self.gpt, cfg)
        self.attention = use_attention(self.gpt, cfg.attention,
                                       f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
        self.loss_module = LossModule(self.gpt, compile=cfg.compile)
        self.engine, _, _, self.schedule = deepspeed.initialize(
            model=self.loss_module, optimizer=optimizer, lr_scheduler=schedule,
            config=deepspeed_config(cfg, cuda))
        self.engine.checkpoint_engine.load = weights_only_load  # DeepSpeed's reads too
        self.device = self.engine.device
        # the same initial weights everywhere (above); different dropout and label-drop
        # draws on every rank (restored per rank on resume)
        torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * self.ranks.rank)
        if cfg.ema_decay > 0 and cfg.deepspeed.zero_stage == 3:
            raise configlib.ConfigError("EMA weights need zero_stage <= 2 (stage 3 "
                                        "partitions parameters); set ema_decay = 0")
        self.start_ema(self.gpt, cfg.ema_decay)
        self.checkpoints = CheckpointFolder(self.out / "checkpoints")
        self.result: dict = {}  # run()'s accounting, recorded in the export
        # held-out evaluations so far (rank 0) and the one with the lowest loss
        self.heldout_log: list[dict] = []
        self.heldout_best: dict | None = None
        self._eval_gpt: GPT | None = None

    @property
    def step_num(self) -> int:
        return self.engine.global_steps

    @property
    def ckpt_dir(self) -> Path:
        return self.checkpoints.path

    # ---- data ---------------------------------------------------------------------------
    def batches(self):
        loader = make_token_loader(self.cfg.data.tokens, batch_size=self.cfg.data.batch_size,
                                   train=True, num_workers=self.cfg.data.num_workers,
                                   rank=self.ranks.rank, world_size=self.ranks.world_size,
                                   seed=self.cfg.seed)
        for tokens, labels in resumable_batches(loader, self, self.cfg.data.tokens,
                                                    self.cfg.data.max_lost):
            yield labels.to(self.device), tokens.to(self.device)

    # ---- checkpoints ----------------------------------------------------------------
    def save(self) -> None:
        tag = f"step-{self.step_num:08d}"
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, save_latest=False)
        save_checkpoint(self.checkpoints.state_file(tag, self.ranks.rank), {
            **self.run_state(), "gpt": configlib.to_dict(self.gpt_cfg),
            "tokenizer": self.manifest.get("tokenizer", {}),
            "heldout": {"log": self.heldout_log, "best": self.heldout_best}})
        if self.ranks.world_size > 1:
            torch.distributed.barrier()
        if self.ranks.rank == 0:  # the pointer moves only once every rank has written
            self.checkpoints.commit(tag, self.step_num)

    def resume(self) -> bool:
        tag = self.checkpoints.last_tag()
        if tag is None:
            return False
        state_file = self.checkpoints.state_file(tag, self.ranks.rank)
        if not state_file.exists():
            found = sorted(p.name for p in (self.ckpt_dir / tag).glob("trainer_state_rank*.pt"))
            raise configlib.ConfigError(
                f"{self.ckpt_dir / tag} has no state for rank {self.ranks.rank} of "
                f"{self.ranks.world_size} "
                f"(it holds {len(found)} rank files): resume with the world size it was "
                "written with, or start a new --out")
        state = load_checkpoint(state_file)  # weights_only: checked before DeepSpeed's pickles
        self.check_resume(state, self.ckpt_dir)
        if state["gpt"] != configlib.to_dict(self.gpt_cfg):
            raise configlib.ConfigError(f"{self.ckpt_dir} holds a run with another GPT config "
                                        "(size or token shards differ); use a new --out")
        ours, theirs = self.manifest.get("tokenizer", {}), state.get("tokenizer")
        if theirs is not None and theirs.get("sha1") != ours.get("sha1"):
            raise configlib.ConfigError(
                f"{self.cfg.data.tokens} comes from tokenizer sha1 "
                f"{str(ours.get('sha1'))[:12]}, but the run in {self.out} was trained on "
                f"tokens of sha1 {str(theirs.get('sha1'))[:12]}; use a new --out")
        self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        self.load_run_state(state, self.device)  # the EMA on the parameters' device
        heldout = state.get("heldout") or {}
        self.heldout_log, self.heldout_best = list(heldout.get("log", [])), heldout.get("best")
        self.resumed_from = self.ckpt_dir / tag
        return True

    def resume_message(self) -> str:
        return (f"resumed at step {self.step_num} from {self.resumed_from} (written by this "
                "trainer, checked before loading; every file loaded weights-only)")

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """Whole fp32 weights on rank 0 (the EMA when kept), None on the other ranks.
        Collective: under ZeRO-3 each rank holds a slice of every large parameter, so all
        ranks gather them, one parameter at a time (never the whole model twice)."""
        if self.ema is not None:
            return self.ema.state_dict()
        stage3 = self.cfg.deepspeed.zero_stage == 3
        weights = {}
        for name, param in self.gpt.named_parameters():
            if stage3:
                import deepspeed  # imported by __init__ already

                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    if self.ranks.rank == 0:
                        weights[name] = param.detach().float().cpu().clone()
            elif self.ranks.rank == 0:
                weights[name] = param.detach().float()
        return weights if self.ranks.rank == 0 else None

    def export(self) -> Path | None:
        """EMA (or raw) weights as safetensors + config JSON beside them, for sampling.
        Called on every rank (ZeRO-3 gathers); rank 0 writes and returns the path."""
        weights = self.full_weights()
        if weights is None:
            return None
        return self.write_export(self.out / "gpt.safetensors", weights)

    def write_export(self, path: Path, weights: dict) -> Path:
        """``path`` (safetensors) + its JSON record (rank 0): config, tokenizer, the
        weights' step (this one), the training log and the held-out evaluations so far
        (``heldout``: the latest, of these weights when this step was evaluated)."""
        save_weights(path, weights)
        meta = {"gpt": configlib.to_dict(self.gpt_cfg),
                "tokenizer": self.manifest.get("tokenizer", {}),
                "tokens": str(Path(self.cfg.data.tokens).resolve()),
                "image_dir": self.manifest.get("image_dir"), "weights": "ema" if self.ema else
                "raw", "steps": self.step_num, "train_log": self.train_log(),
                "data_lost": self.result.get("data_lost_per_epoch", {})}
        if self.heldout_log:
            meta["heldout"] = self.heldout_log[-1]
            meta["heldout_best"] = self.heldout_best
            meta["heldout_log"] = self.heldout_log
        atomic_write_json(path.with_suffix(".json"), meta, sort_keys=False)
        return path

    # ---- held-out loss ------------------------------------------------------------------
    def after_step(self, writer) -> None:
        """Held-out evaluation every eval_every steps and at the last (not where a run is
        stopped early: a resumed run then records what an uninterrupted one does)."""
        if not self.cfg.data.heldout:
            return
        every = self.cfg.eval_every or self.cfg.ckpt_every
        if self.step_num % every == 0 or self.step_num == self.cfg.steps:
            self.evaluate_heldout(writer)

    def evaluate_heldout(self, writer=None) -> None:
        """The exported weights' (EMA or raw) held-out loss at this step, logged on rank 0;
        a new lowest loss is exported as ``OUT/gpt-best.safetensors`` (+ .json).
        Collective: the weights are gathered, every rank waits for rank 0."""
        weights = self.full_weights()
        if weights is not None:
            if self._eval_gpt is None:  # its random init must not move the run's RNG
                with torch.random.fork_rng(devices=[]):
                    self._eval_gpt = GPT(self.gpt_cfg).to(self.device)
            load_state(self._eval_gpt, weights, "the weights being trained")
            loader = make_token_loader(self.cfg.data.heldout,
                                       batch_size=self.cfg.data.batch_size, train=False,
                                       rank=0, world_size=1, seed=self.cfg.seed)
            record = {"step": self.step_num, **heldout_nll(self._eval_gpt, loader,
                                                           self.device)}
            self.heldout_log.append(record)
            if self.heldout_best is None or record["loss"] < self.heldout_best["loss"]:
                self.heldout_best = record
                self.write_export(self.out / "gpt-best.safetensors", weights)
            if writer is not None:
                for key, value in record.items():
                    if key.startswith(("loss", "accuracy", "bits_per_image")):
                        writer.add_scalar(f"heldout/{key}", value, self.step_num)
        if self.ranks.world_size > 1:
            torch.distributed.barrier()

    def train_log(self) -> dict:
        """The last logged interval's means: loss, and per component loss and accuracy."""
        log = self.last_log
        if not log:
            return {}
        names = self.gpt_cfg.names
        return {"step": log["step"], "loss": log["loss/train"],
                **{f"loss_{n}": log[f"loss/train_{n}"] for n in names},
                **{f"accuracy_{n}": log[f"accuracy/train_{n}"] for n in names}}

    # ---- one micro-batch ----------------------------------------------------------------
    def micro_step(self, labels: torch.Tensor, tokens: torch.Tensor) -> dict | None:
        """One micro-batch (labels [B], tokens [B, N, K] on the device): forward,
        backward, and DeepSpeed's step (an optimizer step every grad_accum calls).
        Returns the micro-batch's losses and accuracies (0-dim, on the device), or None
        where the loss was not finite on some rank (every rank drops it). The
        finiteness test is its one host sync."""
        loss = self.engine(labels, tokens)
        if not self.guard.finite(loss, self.step_num):
            return None
        self.engine.backward(loss)
        self.engine.step()
        ce, acc = self.loss_module.last  # [K] each
        names = self.gpt_cfg.names
        return {"loss/train": ce.sum(), **{f"loss/train_{n}": ce[i] for i, n in
                                            enumerate(names)},
                **{f"accuracy/train_{n}": acc[i] for i, n in enumerate(names)}}

    def train_step(self, batch) -> dict | None:
        return self.micro_step(*batch)

    def ema_source(self) -> torch.nn.Module:
        return self.gpt

    def lr(self) -> float:
        return self.schedule.get_last_lr()[0]

    def postfix(self, means: dict) -> dict:
        names = self.gpt_cfg.names
        parts = {n: f"{means[f'loss/train_{n}']:.3f}" for n in names} if len(names) > 1 else {}
        return {"loss": f"{means['loss/train']:.4f}", **parts}

    def run(self, stop_after: int | None = None) -> dict:
        self.engine.train()
        self.result = super().run(stop_after)
        return {"step": self.step_num, **self.result}


def main(argv=None) -> int:
    parser = training_parser("python -m launch.train_gpt", __doc__)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parser.parse_args(argv)
    try:
        cfg = resolve_gpt_config(args.config, overrides(args))
        check_environment()  # before any model is built or file written
        require_output_dir(cfg.out, "out")
        trainer = Trainer(cfg, progress=not args.quiet)
        result = trainer.run()
        path = trainer.export()  # every rank: ZeRO-3 gathers the weights
        if path is not None:
            print(f"done: {trainer.step_num} steps, {trainer.loss_line(result)}; sampling "
                  f"weights in {path}")
    except (configlib.ConfigError, ValueError, NonFiniteLoss) as err:
        print(f"launch.train_gpt: {err}", file=sys.stderr)
        leave_process_group(wait=False)
        return 2
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
