"""The run configs of the two trainers, as dataclasses that check themselves (the one
config mechanism, data.config): what every run shares (``RunSettings``, ``OptimConfig``,
``LoaderConfig``), then the tokenizer's run and the GPT's run.

A run writes its resolved config to ``OUT/config.toml`` and into every checkpoint; a
resumed run may change only the fields its ``*_RESUMABLE`` set names.
"""

from dataclasses import dataclass, field

from data import config as configlib
from generator.config import SIZES
from generator.model import ATTENTION
from tokenizer.config import TokenizerConfig
from tokenizer.registry import REGISTRY, registry_config

SCHEDULES = ("cosine", "constant")


def _unit_interval(config, prefix: str, *names: str, closed: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        if not (0 <= value <= 1 if closed else 0 <= value < 1):
            raise ValueError(f"{prefix}{name} must be in [0, 1{']' if closed else ')'}, "
                             f"got {value}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up to lr over these steps
    schedule: str = "cosine"  # then cosine down to min_lr_ratio x lr, or constant
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max gradient norm; 0: no clipping

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        configlib.require_at_least(self, 0, "warmup_steps", "weight_decay", prefix="optim.")
        _unit_interval(self, "optim.", "min_lr_ratio", closed=True)
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        configlib.require_at_least(self, 0, "grad_clip", prefix="optim.")


@dataclass
class LoaderConfig:
    batch_size: int = 8  # per rank (the GPT's: a micro-batch)
    num_workers: int = 0
    # the run stops when an epoch loses more than this fraction of its samples to damaged
    # shards (skipped samples are counted per epoch either way: bar, TensorBoard, run.json)
    max_lost: float = 0.01

    def __post_init__(self):
        configlib.require_at_least(self, 1, "batch_size", prefix="data.")
        configlib.require_at_least(self, 0, "num_workers", prefix="data.")
        _unit_interval(self, "data.", "max_lost", closed=True)


@dataclass
class RunSettings:
    """What every run has: folder, length, cadence, EMA, seed, non-finite patience."""

    out: str = "runs/run"
    steps: int = 1000  # optimizer steps
    log_every: int = 10
    ckpt_every: int = 500
    ema_decay: float = 0.999  # 0: no EMA copy (the raw weights are exported)
    seed: int = 0
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    compile: bool = False  # torch.compile the training step's model

    def __post_init__(self):
        configlib.require_at_least(self, 1, "steps", "log_every", "ckpt_every",
                                   "max_bad_steps")
        _unit_interval(self, "", "ema_decay")


# ---- the tokenizer's run ------------------------------------------------------------------
@dataclass
class ImageData(LoaderConfig):
    shards: str = ""  # image shard folder (data.build_shards)
    flip: bool = True  # random horizontal flips; off for data that is not mirror-symmetric


@dataclass
class TokenizerOptim(OptimConfig):
    """The tokenizer's defaults (a nested table's missing keys take its class's defaults,
    so each run kind has its own class)."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = 100


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

    def __post_init__(self):
        configlib.require_at_least(self, 0, "l1", "lpips", "gan", "gan_start", "lecam",
                                   prefix="loss.")
        configlib.require_at_least(self, 1, "disc_ndf", "disc_layers", prefix="loss.")
        _unit_interval(self, "loss.", "lecam_decay")


@dataclass
class TokenizerRunConfig(RunSettings):
    size: str = "gaussian-debug"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: ImageData = field(default_factory=ImageData)
    optim: TokenizerOptim = field(default_factory=TokenizerOptim)
    loss: LossConfig = field(default_factory=LossConfig)
    out: str = "runs/tokenizer"
    image_every: int = 200
    ckpt_every: int = 200
    bf16: bool = True  # autocast on CUDA
    # GaussianToken: train the decoder on continuous geometry for this many steps, then on
    # the quantised geometry (the tokens). 0: quantised from the start; = steps: the
    # continuous-geometry ceiling (not a discrete tokenizer).
    continuous_steps: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.size not in REGISTRY:
            raise ValueError(f"size must be one of {sorted(REGISTRY)}, got {self.size!r}")
        configlib.require_at_least(self, 1, "image_every")
        configlib.require_at_least(self, 0, "continuous_steps")


# what a resumed tokenizer run may change (data.shards may move); anything else: another run
TOKENIZER_RESUMABLE = frozenset({"steps", "log_every", "image_every", "ckpt_every", "out",
                                 "max_bad_steps", "data.shards", "data.max_lost", "compile"})


def resolve_tokenizer_config(path=None, overrides=None, size=None) -> TokenizerRunConfig:
    """File + overrides, with the tokenizer table laid over the registry size."""
    data = configlib.read_toml(path) if path is not None else {}
    data = configlib.apply_overrides(data, list(overrides or []))
    if size:
        data["size"] = size
    return resolve_tokenizer_table(data)


def resolve_tokenizer_table(data: dict) -> TokenizerRunConfig:
    """A run config from a nested dict, its tokenizer table laid over the registry size."""
    data = dict(data)
    name = data.get("size", TokenizerRunConfig.size)
    if name not in REGISTRY:
        raise configlib.ConfigError(f"size must be one of {sorted(REGISTRY)}, got {name!r}")
    base = configlib.to_dict(registry_config(name))
    data["tokenizer"] = configlib.merge_tables(base, data.get("tokenizer", {}))
    return configlib.from_dict(TokenizerRunConfig, data)


# ---- the GPT's run --------------------------------------------------------------------------
@dataclass
class TokenData(LoaderConfig):
    tokens: str = ""  # token shard folder (the pipeline's codes stage)
    # token shards of held-out images (the pipeline's codes/heldout): the exported weights'
    # held-out loss every ``eval_every`` steps, and the best of them exported as gpt-best
    heldout: str = ""
    batch_size: int = 32  # micro-batch per rank


@dataclass
class GPTOptim(OptimConfig):
    weight_decay: float = 0.05
    schedule: str = "constant"  # LlamaGen trains at a constant LR


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

    def __post_init__(self):
        _unit_interval(self, "model.", "dropout", "attn_dropout", "class_dropout")


@dataclass
class GPTRunConfig(RunSettings):
    size: str = "debug"
    model: ModelOptions = field(default_factory=ModelOptions)
    data: TokenData = field(default_factory=TokenData)
    optim: GPTOptim = field(default_factory=GPTOptim)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    out: str = "runs/gpt"
    ema_decay: float = 0.9999
    # seed: model init; data order; rank r's dropout / label-drop draws use their own seed
    # "auto": xformers' memory-efficient attention where it runs on CUDA, else PyTorch's
    # scaled_dot_product_attention; "sdpa" or "xformers" to choose
    attention: str = "auto"
    eval_every: int = 0  # held-out evaluation cadence in steps (data.heldout); 0 = ckpt_every

    def __post_init__(self):
        super().__post_init__()
        configlib.require_at_least(self, 0, "eval_every")
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


# what a resumed GPT run may change; anything else would silently make another run
# (data.tokens may move: the tokenizer fingerprint and the GPT config are checked apart)
# data.heldout and eval_every may change too: they choose what is measured, not what is
# trained (an evaluation already made stays in the record)
GPT_RESUMABLE = frozenset({"steps", "log_every", "ckpt_every", "out", "max_bad_steps",
                           "data.tokens", "data.max_lost", "compile", "attention",
                           "data.heldout", "eval_every"})


def resolve_gpt_config(path=None, overrides=None) -> GPTRunConfig:
    return configlib.load(GPTRunConfig, path, overrides)


def resolve_gpt_table(data: dict) -> GPTRunConfig:
    return configlib.from_dict(GPTRunConfig, data)
