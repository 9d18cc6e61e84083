"""The taming-style VQGAN encoder and decoder of LlamaGen's VQ tokenizers (VQ-16, VQ-8).

Encoder [B, 3, S, S] -> [B, z_channels, S / f, S / f], f = 2^(levels - 1):
  conv_in 3x3 -> per level: ``res_blocks`` ResBlocks (each followed by single-head
  spatial self-attention at the lowest level only), then a stride-2 3x3 conv on the
  input zero-padded by one row and one column at the bottom and right (all levels but
  the last) -> middle: ResBlock, attention, ResBlock -> GroupNorm, SiLU, conv_out 3x3.
Decoder, the mirror: conv_in 3x3 from z_channels -> middle: ResBlock, attention,
  ResBlock -> per level from the lowest: ``res_blocks + 1`` ResBlocks (attention after
  each at the lowest level), then nearest x2 and a 3x3 conv (all but the last) ->
  GroupNorm, SiLU, conv_out 3x3 to RGB.
GroupNorm: 32 groups, eps 1e-6. ResBlocks are :class:`tokenizer.blocks.ResBlock`
(norm, SiLU, conv, norm, SiLU, conv; a 1x1 skip conv when the width changes).
The 1x1 convs to and from the code dimension live in the VQ tokenizer.
"""

import torch.nn.functional as F
from torch import nn

from tokenizer.blocks import ResBlock, norm
from tokenizer.config import ConvConfig


class SpatialAttention(nn.Module):
    """One-head self-attention over the H x W positions of [B, C, H, W], residual; q, k, v
    and the output are 1x1 convs, scores scaled by C^-1/2."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = norm(channels, groups)
        self.q, self.k, self.v, self.proj = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2)[:, None] for conv in (self.q, self.k,
                                                                           self.v))
        y = F.scaled_dot_product_attention(q, k, v)[:, 0]  # [B, HW, C]
        return x + self.proj(y.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row / column at the bottom / right."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """ResBlocks, attention after each (at the lowest level), and an optional resampler."""

    def __init__(self, cin: int, cout: int, blocks: int, attention: bool, groups: int,
                 resample: nn.Module | None):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(cin if i == 0 else cout, cout, groups)
                                 for i in range(blocks))
        self.attn = nn.ModuleList(SpatialAttention(cout, groups) for _ in range(blocks)) \
            if attention else nn.ModuleList()
        self.resample = resample

    def forward(self, x):
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x if self.resample is None else self.resample(x)


def middle(channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(ResBlock(channels, channels, groups), SpatialAttention(channels, groups),
                         ResBlock(channels, channels, groups))


class TamingEncoder(nn.Module):
    """[B, 3, S, S] -> [B, z_channels, S / f, S / f]."""

    def __init__(self, cfg: ConvConfig):
        super().__init__()
        chans = [cfg.channels * m for m in cfg.ch_mult]
        last = len(chans) - 1
        self.conv_in = nn.Conv2d(3, cfg.channels, 3, padding=1)
        cin, levels = cfg.channels, []
        for i, cout in enumerate(chans):
            levels.append(Level(cin, cout, cfg.res_blocks, i == last, cfg.groups,
                                Downsample(cout) if i < last else None))
            cin = cout
        self.levels = nn.ModuleList(levels)
        self.mid = middle(cin, cfg.groups)
        self.norm_out = norm(cin, cfg.groups)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class TamingDecoder(nn.Module):
    """[B, z_channels, s, s] -> [B, 3, s * f, s * f]."""

    def __init__(self, cfg: ConvConfig):
        super().__init__()
        chans = [cfg.channels * m for m in reversed(cfg.ch_mult)]  # lowest level first
        last = len(chans) - 1
        cin = chans[0]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = middle(cin, cfg.groups)
        levels = []
        for i, cout in enumerate(chans):
            levels.append(Level(cin, cout, cfg.res_blocks + 1, i == 0, cfg.groups,
                                Upsample(cout) if i < last else None))
            cin = cout
        self.levels = nn.ModuleList(levels)
        self.norm_out = norm(cin, cfg.groups)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in self.levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))

