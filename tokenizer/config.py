"""Tokenizer configs (the registry of named sizes is tokenizer.registry).

GaussianToken's token tuple per Gaussian is (position, shape, code):
  position = y_bin * position_bins + x_bin, x and y uniform over [-1, 1] with
             ``position_bins`` bins each: by default 4 bins per splat pixel (with one bin
             per pixel, learned moves of under a pixel flip tokens instead of moving
             Gaussians: measured in ../shared/reference/gaussiantoken.md); any count works;
  shape    = (sx_bin * scale_bins + sy_bin) * rotation_bins + r_bin, scales uniform in
             log space over [scale_min, scale_max] pixels; rotation bins *centred* at
             k pi / rotation_bins (a Gaussian rotated by pi is the same Gaussian), so 0 and,
             for an even count, pi/2 (the axis-aligned shapes) are bin centres;
  code     = index into the feature codebook.
Vocabularies: position_bins^2, scale_bins^2 * rotation_bins, codebook_size.
The VQ baseline's tuple is (code,) per grid cell.

Conv styles (``encoder.style``): "resnet", our conv ResNet family (tokenizer/blocks.py);
"taming", LlamaGen's VQGAN trunk (tokenizer/taming.py: attention at the lowest level and
in the middle, ``z_channels`` wide, 1x1 convs to and from the code dimension), VQ only.
"""

import math
from dataclasses import dataclass, field

KINDS = ("gaussian", "vq")
STYLES = ("resnet", "taming")
LAYOUTS = ("grid", "content")  # where Gaussians start: a fixed grid, or derived from the image
MOVES = ("learned", "frozen")  # whether the network moves them from there


@dataclass
class ConvConfig:
    """Encoder/decoder family: conv ResNet, one level per entry of ch_mult."""

    channels: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    res_blocks: int = 2
    groups: int = 32
    style: str = "resnet"  # "resnet" (ours) or "taming" (LlamaGen's VQGAN trunk)
    z_channels: int = 256  # taming: width of the encoder's output / the decoder's input
    # resnet: ResBlocks per decoder level (0: res_blocks, as the encoder); a deeper decoder
    # only, e.g. to match a baseline's parameter count at the same encoder
    decoder_res_blocks: int = 0
    # resnet: stride-2 steps at the decoder's input, so that it starts this many levels
    # below the map it is fed and has as many levels more (1: a 16x16 splat decoded from
    # 8x8 up, through the decoder of a model fed an 8x8 grid). 0: decoded at the map's side
    decoder_down: int = 0

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"encoder.style must be one of {STYLES}, got {self.style!r}")
        if self.channels % self.groups:
            raise ValueError(f"channels ({self.channels}) must be divisible by groups "
                             f"({self.groups})")
        if not self.ch_mult:
            raise ValueError("ch_mult must not be empty")
        if self.decoder_res_blocks < 0:
            raise ValueError(f"encoder.decoder_res_blocks must be >= 0 (0: res_blocks), got "
                             f"{self.decoder_res_blocks}")
        if self.decoder_res_blocks and self.style != "resnet":
            raise ValueError("encoder.decoder_res_blocks is for style 'resnet' (taming's "
                             "decoder has res_blocks + 1 per level, as LlamaGen's)")
        if self.decoder_down < 0:
            raise ValueError(f"encoder.decoder_down must be >= 0, got {self.decoder_down}")
        if self.decoder_down and self.style != "resnet":
            raise ValueError("encoder.decoder_down is for style 'resnet' (the taming trunk's "
                             "decoder is fixed)")

    @property
    def decoder_blocks(self) -> int:
        """ResBlocks per level of the resnet decoder."""
        return self.decoder_res_blocks or self.res_blocks

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass
class QuantizerConfig:
    codebook_size: int = 1024
    dim: int = 8
    commitment: float = 0.25
    ema_decay: float = 0.8
    kmeans_iters: int = 10
    dead_fraction: float = 0.03  # restart codes used less than this x a uniform share
    gradient: str = "rotation"  # "rotation" (rotation trick) or "ste" (straight-through)
    l2_norm: bool = False  # codes and encoder outputs on the unit sphere (LlamaGen's VQ)

    def __post_init__(self):
        if self.gradient not in ("rotation", "ste"):
            raise ValueError(f"quantizer.gradient must be 'rotation' or 'ste', "
                             f"got {self.gradient!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"quantizer.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class GaussianConfig:
    num_gaussians: int = 256
    hidden: int = 256
    heads: int = 4
    rounds: int = 3
    splat_size: int = 32  # the splat map is splat_size x splat_size x quantizer.dim
    position_bins: int = 128  # per axis; 4 per splat pixel
    scale_bins: int = 8
    rotation_bins: int = 8  # 1, or even (so that pi/2 is a bin centre)
    scale_min: float = 0.3
    scale_max: float = 4.0
    points: int = 4  # local feature reading: sampling points per Gaussian and round
    layout: str = "content"  # "grid" or "content" (k-means of the image's content mass)
    moves: str = "learned"  # "learned" (bounded moves from the layout) or "frozen"
    max_move: float = 1.0  # splat pixels, per axis

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"gaussian.hidden ({self.hidden}) must be divisible by heads "
                             f"({self.heads})")
        if not 0 < self.scale_min < self.scale_max:
            raise ValueError("gaussian.scale_min must be positive and below scale_max")
        for name in ("num_gaussians", "position_bins", "scale_bins", "rotation_bins",
                     "splat_size", "rounds", "points"):
            if getattr(self, name) < 1:
                raise ValueError(f"gaussian.{name} must be positive")
        if self.rotation_bins > 1 and self.rotation_bins % 2:
            raise ValueError(f"gaussian.rotation_bins must be 1 or even (so that 0 and pi/2 "
                             f"are bin centres), got {self.rotation_bins}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"gaussian.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.moves not in MOVES:
            raise ValueError(f"gaussian.moves must be one of {MOVES}, got {self.moves!r}")
        if self.max_move <= 0:
            raise ValueError("gaussian.max_move must be positive")
        if self.layout == "grid" and math.isqrt(self.num_gaussians) ** 2 != self.num_gaussians:
            raise ValueError(f"gaussian.layout 'grid' needs a square num_gaussians, got "
                             f"{self.num_gaussians}")


@dataclass
class VQConfig:
    """The VQ baseline's own fields (kind "vq")."""

    # side of its token grid; 0 = the encoder's grid. A smaller side averages the
    # encoder's features down to it and repeats each code back up (nearest), so the
    # decoder sees a map of the encoder's resolution: the same trunk and decoder as a
    # GaussianToken whose splat map has that resolution, at another token count.
    grid: int = 0
    # rounds of [self-attention, MLP] among its grid tokens before quantising; with
    # hidden / heads as GaussianToken's refinement, a control with the same trunk and
    # about as many parameters. 0: none (the LlamaGen baseline).
    rounds: int = 0
    hidden: int = 256
    heads: int = 4
    # side of the map the decoder is fed; 0 = the encoder's grid. Larger: the codes are
    # repeated (nearest) up to it and the decoder has one level fewer per doubling, the
    # decoder of a GaussianToken whose splat map has that side (a same-decoder control).
    decoder_map: int = 0

    def __post_init__(self):
        for name in ("grid", "rounds", "decoder_map"):
            if getattr(self, name) < 0:
                raise ValueError(f"vq.{name} must be 0 or positive")
        if self.hidden < 1 or self.heads < 1 or self.hidden % self.heads:
            raise ValueError(f"vq.hidden ({self.hidden}) must be a positive multiple of "
                             f"vq.heads ({self.heads})")


@dataclass
class TokenizerConfig:
    kind: str = "gaussian"
    image_size: int = 256
    encoder: ConvConfig = field(default_factory=ConvConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    vq: VQConfig = field(default_factory=VQConfig)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.image_size % self.encoder.factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by the encoder's "
                             f"downsampling factor {self.encoder.factor}")
        if self.kind == "gaussian" and self.image_size % self.gaussian.splat_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of "
                             f"gaussian.splat_size {self.gaussian.splat_size}")
        if self.encoder.style == "taming" and (self.kind != "vq" or self.vq.rounds):
            raise ValueError("encoder.style 'taming' (LlamaGen's VQGAN trunk) is for the plain "
                             "VQ tokenizer only (kind 'vq', vq.rounds 0)")
        if self.vq.grid and self.feature_grid % self.vq.grid:
            raise ValueError(f"vq.grid {self.vq.grid} must divide the encoder's grid "
                             f"{self.feature_grid} (or be 0)")
        side = self.vq.decoder_map
        if side and (side % self.grid or self.image_size % side
                     or (self.image_size // side) & (self.image_size // side - 1)):
            raise ValueError(f"vq.decoder_map {side} must be a multiple of the token grid "
                             f"{self.grid} and image_size / decoder_map a power of two "
                             f"(or be 0)")
        if side and self.encoder.style == "taming":
            raise ValueError("vq.decoder_map is for the resnet style (the taming trunk's "
                             "decoder is fixed)")
        fed = self.gaussian.splat_size if self.kind == "gaussian" else self.decoder_map
        if fed % 2 ** self.encoder.decoder_down:
            raise ValueError(f"encoder.decoder_down {self.encoder.decoder_down} halves the "
                             f"decoder's {fed}x{fed} input map that many times: its side must "
                             f"be divisible by {2 ** self.encoder.decoder_down}")

    @property
    def feature_grid(self) -> int:
        """Side of the encoder's feature grid."""
        return self.image_size // self.encoder.factor

    @property
    def grid(self) -> int:
        """Side of the VQ baseline's token grid."""
        return self.vq.grid or self.feature_grid

    @property
    def decoder_map(self) -> int:
        """Side of the map the VQ baseline's decoder is fed."""
        return self.vq.decoder_map or self.feature_grid
