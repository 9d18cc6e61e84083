"""The one skeleton of a training run, used by both trainers (launch.train_tokenizer,
launch.train_gpt): the resolved config written once, the resume guard, the data
position, the progress bar, the log / checkpoint cadence, one EMA, one non-finite policy
agreed across ranks, and one command line.

A trainer subclasses ``TrainingRun`` and supplies its model, its state and its step:

    batches()            endless batches on the device, resumable (``resumable_batches``)
    train_step(batch)    one micro-batch: a dict of 0-dim device tensors to average in
                         the logs, or None where every rank skipped it (non-finite loss)
    step_num             optimizer steps taken (a step that did not advance it was a
                         gradient-accumulation micro-batch)
    save() / resume()    its checkpoint, with ``run_state()`` / ``load_run_state()`` inside
    ema_source()         the module whose weights the EMA follows
    lr()                 the current learning rate, for the logs

Non-finite losses: ``NonFiniteGuard.finite`` agrees across ranks (all-reduce MIN of the
finiteness flag), so every rank skips the same batch and none waits in a gradient
all-reduce the others never join; a skipped batch is not a step; ``max_bad_steps`` in a
row stop every rank with ``NonFiniteLoss``.
"""

import argparse
import copy
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from data import config as configlib
from data.cli import OneLineParser, one_line_parser
from data.files import atomic_write_json, atomic_write_text
from data.ranks import Dist
from data.stream import damaged_shards


class NonFiniteLoss(RuntimeError):
    """Too many consecutive non-finite losses: the run stops without exporting."""


class NonFiniteGuard:
    """Skip together, stop together: counts consecutive and total skipped batches."""

    def __init__(self, max_bad_steps: int, world_size: int):
        self.max_bad_steps, self.world_size = max_bad_steps, world_size
        self.bad, self.skipped = 0, 0

    def finite(self, loss: torch.Tensor, step: int) -> bool:
        """Whether ``loss`` is finite on every rank (collective when world_size > 1; the
        step's one host sync). NonFiniteLoss after max_bad_steps skips in a row."""
        flag = torch.isfinite(loss.detach()).all().float()
        if self.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if bool(flag):
            self.bad = 0
            return True
        self.bad += 1
        self.skipped += 1
        if self.bad >= self.max_bad_steps:
            raise NonFiniteLoss(f"{self.bad} consecutive non-finite losses at step {step}; "
                                "lower optim.lr or check the data (nothing exported)")
        return False


class EMA:
    """Exponential moving average of a module's state in fp32: parameters are averaged
    (``ema += (1 - decay) * (p - ema)``), buffers (codebooks, counters) copied as they
    are. Keys are the module's ``state_dict`` keys, so ``state_dict()`` loads into the
    model and exports as its weights."""

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._params = {n for n, _ in module.named_parameters()}
        self.shadow = {k: (v.detach().float() if k in self._params else v.detach()).clone()
                       for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if k in self._params:
                self.shadow[k].lerp_(v.detach().float(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], device=None) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("the checkpoint's EMA does not hold this model's tensors")
        self.shadow = {k: v.to(device if device is not None else self.shadow[k].device)
                       for k, v in state.items()}

    def module(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` holding the EMA weights, in eval mode (for pictures)."""
        copy_ = copy.deepcopy(model).eval().requires_grad_(False)
        copy_.load_state_dict(self.shadow)
        return copy_

    # a mapping of name -> tensor, like the state dict it is
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.shadow[name]

    def __iter__(self):
        return iter(self.shadow)

    def items(self):
        return self.shadow.items()


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to min_ratio at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_multiplier(optim, total_steps: int):
    """step -> LR multiplier of an ``OptimConfig``: linear warm-up over warmup_steps, then
    constant, or cosine down to min_lr_ratio at ``total_steps``."""
    def multiplier(step: int) -> float:
        if optim.schedule == "constant":
            return min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
        return warmup_cosine(step, optim.warmup_steps, total_steps, optim.min_lr_ratio)
    return multiplier


def rng_state() -> dict:
    """Every RNG a step may draw from, as tensors and ints (loadable with weights_only)."""
    np_state = np.random.get_state()  # noqa: NPY002 - we save the legacy global RNG too
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "gauss": [int(np_state[3]),
                                                          float(np_state[4])]}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"])
    np.random.set_state(legacy)  # noqa: NPY002 - restoring the legacy global RNG
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


class DataLost(ValueError):
    """An epoch lost more of its samples to damaged shards than ``data.max_lost`` allows."""


def resumable_batches(loader, position, folder, max_lost: float = 1.0):
    """Endless batches of an epoch-mode shard loader, epoch after epoch.

    ``position`` carries ``epoch`` and ``batch_in_epoch`` (checkpointed by the trainer):
    resuming inside an epoch re-creates that epoch's order and starts at the next batch
    without reading the consumed ones (``ShardStream.start_at_batch``); in an epoch's
    last rounds, where that is not possible, the consumed batches are read and dropped.
    A loader of ``folder`` that gives no batch at all raises ValueError.

    Loss accounting: samples the loader skipped (corrupt or missing, counted by the shard
    stream) go into ``position.lost_in_epoch`` while an epoch runs and into
    ``position.data_lost[str(epoch)]`` when it ends (this rank's counts); an epoch that
    lost more than ``max_lost`` of its samples raises DataLost.
    """
    while True:
        loader.dataset.set_epoch(position.epoch)
        first = position.batch_in_epoch
        if not (first and loader.dataset.start_at_batch(first, loader.batch_size,
                                                         loader.num_workers)):
            first = 0
        counted, base = loader.dataset.skipped, position.lost_in_epoch
        for index, batch in enumerate(loader, start=first):
            position.lost_in_epoch = base + loader.dataset.skipped - counted
            if index < position.batch_in_epoch:
                continue  # the replay fallback: the same batches, dropped
            position.batch_in_epoch = index + 1
            yield batch
        position.lost_in_epoch = base + loader.dataset.skipped - counted
        if position.batch_in_epoch == 0:
            raise ValueError(f"{folder} gives no full batch of {loader.batch_size} per rank"
                             + (f" ({position.lost_in_epoch} samples were unreadable)"
                                if position.lost_in_epoch else ""))
        lost, read = position.lost_in_epoch, position.batch_in_epoch * loader.batch_size
        position.data_lost[str(position.epoch)] = lost
        if lost > max_lost * (lost + read):
            damaged = damaged_shards(folder, loader.dataset.manifest)
            which = (f"damaged: {', '.join(damaged[:3])}" + (f" (+{len(damaged) - 3} more)"
                                                              if len(damaged) > 3 else "")
                     if damaged else "the warnings above name the unreadable samples")
            raise DataLost(f"epoch {position.epoch} lost {lost} of {lost + read} samples "
                           f"({100 * lost / (lost + read):.1f}%) of rank {position.ranks.rank} "
                           f"in {folder}, more than data.max_lost = {max_lost:g}; {which}: "
                           "rebuild them")
        position.epoch, position.batch_in_epoch, position.lost_in_epoch = \
            position.epoch + 1, 0, 0


class TrainingRun:
    """The loop and the state every run shares; subclasses supply the step (see the
    module docstring). ``RESUMABLE_CHANGES``: the config fields a resumed run may change."""

    name = "train"
    RESUMABLE_CHANGES: frozenset[str] = frozenset()

    def __init__(self, cfg, ranks: Dist, progress: bool = True):
        self.cfg, self.ranks, self.out = cfg, ranks, Path(cfg.out)
        self.guard = NonFiniteGuard(cfg.max_bad_steps, ranks.world_size)
        self.epoch, self.batch_in_epoch = 0, 0  # the data position (resumable_batches)
        self.lost_in_epoch, self.data_lost = 0, {}  # samples lost to damaged shards
        self.ema: EMA | None = None  # rank 0 only: it alone saves and exports
        self.progress = progress and ranks.main
        self.last_log: dict = {}  # the last logged interval's means
        self.resumed_from: Path | None = None

    @property
    def skipped_steps(self) -> int:
        return self.guard.skipped

    def start_ema(self, module: torch.nn.Module, decay: float) -> None:
        """An EMA of ``module`` on rank 0 when ``decay`` > 0 (0: none; export raw)."""
        self.ema = EMA(module, decay) if decay > 0 and self.ranks.main else None

    # ---- what both checkpoints hold -------------------------------------------------
    def run_state(self) -> dict:
        return {"config": configlib.to_dict(self.cfg), "world_size": self.ranks.world_size,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "lost_in_epoch": self.lost_in_epoch, "data_lost": dict(self.data_lost),
                "skipped_steps": self.guard.skipped, "rng": rng_state(),
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def check_resume(self, state: dict, where) -> None:
        """ConfigError when the checkpoint ``state`` (from ``where``) was written by a run
        with other settings or another world size."""
        configlib.refuse_resume_conflicts(state["config"], self.cfg, self.RESUMABLE_CHANGES,
                                          where)
        written = state.get("world_size", self.ranks.world_size)
        if written != self.ranks.world_size:
            raise configlib.ConfigError(
                f"{where} was written by {written} ranks, this run has "
                f"{self.ranks.world_size}: resume with the same world size, or start a new "
                "--out")

    def load_run_state(self, state: dict, device) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.lost_in_epoch = state.get("lost_in_epoch", 0)
        self.data_lost = dict(state.get("data_lost", {}))
        self.guard.skipped = state.get("skipped_steps", 0)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"], device)
        set_rng_state(state["rng"])

    # ---- what each trainer supplies -----------------------------------------------------
    step_num: int

    def batches(self):
        raise NotImplementedError

    def train_step(self, batch) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError

    def save(self) -> None:
        raise NotImplementedError

    def resume(self) -> bool:
        raise NotImplementedError

    def ema_source(self) -> torch.nn.Module:
        raise NotImplementedError

    def lr(self) -> float:
        raise NotImplementedError

    def postfix(self, means: dict) -> dict:
        """What the progress bar shows of an interval's means."""
        return {}

    def on_log(self, means: dict, batch) -> None:
        """Called on rank 0 after each logged interval (pictures, say)."""

    def after_step(self, writer) -> None:
        """Called on every rank after each optimizer step, before a checkpoint at that
        step is written (a held-out evaluation, say); ``writer`` is rank 0's TensorBoard
        writer (None elsewhere)."""

    def resume_message(self) -> str:
        return f"resumed from {self.resumed_from} at step {self.step_num}"

    # ---- the loop ---------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict:
        """Train to cfg.steps (or stop after ``stop_after`` steps, checkpointing there)."""
        cfg, main = self.cfg, self.ranks.main
        resumed = self.resume()  # checked first: a refused resume changes no file
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.toml", configlib.dumps(cfg))
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step_num, desc=self.name, unit="step",
                   disable=not self.progress)
        if resumed and main:  # said even without a bar: state was read from files
            bar.write(self.resume_message(), file=sys.stderr)
        writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter  # slow import: runs only
            writer = SummaryWriter(str(self.out / "tensorboard"))
        batches, sums, count = self.batches(), {}, 0
        while self.step_num < end:
            before = self.step_num
            batch = next(batches)
            logs = self.train_step(batch)
            if logs is None:
                continue  # skipped on every rank: no backward, no step
            sums = {k: sums.get(k, 0) + v for k, v in logs.items()}  # on the device
            count += 1
            if self.step_num == before:
                continue  # accumulating gradients: not an optimizer step yet
            if self.ema is not None:
                self.ema.update(self.ema_source())
            bar.update(1)
            if self.step_num % cfg.log_every == 0 or self.step_num == end:
                values = (torch.stack([v.float() for v in sums.values()]) / count).tolist()
                means = dict(zip(sums, values, strict=True))  # the one sync per interval
                sums, count = {}, 0
                self.last_log = {"step": self.step_num, **means}
                lost = self.samples_lost()
                bar.set_postfix({**self.postfix(means), **({"lost": lost} if lost else {})})
                if writer is not None:
                    for k, v in means.items():
                        writer.add_scalar(k, v, self.step_num)
                    writer.add_scalar("lr", self.lr(), self.step_num)
                    writer.add_scalar("skipped_steps", self.guard.skipped, self.step_num)
                    writer.add_scalar("data/lost_samples", lost, self.step_num)
                    self.on_log(means, batch)
            self.after_step(writer)
            if self.step_num % cfg.ckpt_every == 0 or self.step_num == end:
                self.save()
        bar.close()
        if writer is not None:
            writer.close()
        return {**self.last_log, **self.accounting()}

    def samples_lost(self) -> int:
        """This rank's samples lost to damaged shards so far (ended epochs + this one)."""
        return sum(self.data_lost.values()) + self.lost_in_epoch

    def accounting(self) -> dict:
        """What the run skipped and lost, over every rank (collective when world > 1):
        non-finite batches, and samples lost to damaged shards, per epoch. Written to
        ``OUT/run.json`` by rank 0."""
        epochs = sorted({*map(int, self.data_lost), self.epoch})
        # ended epochs from their record, the running one (not recorded yet) as counted so far
        counts = torch.tensor([self.data_lost.get(str(e), self.lost_in_epoch) for e in epochs],
                              dtype=torch.float64)
        if self.ranks.world_size > 1:
            dist.all_reduce(counts)
        per_epoch = {str(e): int(c) for e, c in zip(epochs, counts.tolist(), strict=True) if c}
        record = {"steps": self.step_num, "skipped_steps": self.guard.skipped,
                  "data_lost": sum(per_epoch.values()), "data_lost_per_epoch": per_epoch}
        if self.ranks.main:
            atomic_write_json(self.out / "run.json", record, sort_keys=False)
        return record

    def loss_line(self, record: dict) -> str:
        """The final line's account of what the run did not learn from."""
        skipped = f"{record['skipped_steps']} batches skipped (non-finite loss)"
        if not record["data_lost"]:
            return f"{skipped}, 0 samples lost"
        epochs = ", ".join(f"epoch {e}: {n}" for e, n in record["data_lost_per_epoch"].items())
        return f"{skipped}, {record['data_lost']} samples lost to damaged shards ({epochs})"


# ---- the command line both trainers share -----------------------------------------------
def training_parser(prog: str, doc: str) -> OneLineParser:
    """--config, --set, --out, --compile, --quiet; a trainer adds its own flags."""
    parser = one_line_parser(prog=prog, description=doc)
    parser.add_argument("--config", type=Path,
                        help="TOML run config (launch/configs/ holds examples)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--out", help="output folder (overrides the config's 'out')")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training step's model (= --set compile=true; "
                             "the first steps pay the compilation)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` list with --out and --compile folded in."""
    return args.set + ([f"out={args.out}"] if args.out else []) + \
        (["compile=true"] if args.compile else [])
