"""Conv ResNet encoder and decoder (the family both tokenizers use)."""

import math

import torch.nn.functional as F
from torch import nn

from tokenizer.config import ConvConfig


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """[B, 3, S, S] -> [B, out_channels, S / f, S / f], f = 2^(levels - 1)."""

    def __init__(self, cfg: ConvConfig, out_channels: int):
        super().__init__()
        chans = [cfg.channels * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(3, chans[0], 3, padding=1)
        layers, cin = [], chans[0]
        for level, cout in enumerate(chans):
            for _ in range(cfg.res_blocks):
                layers.append(ResBlock(cin, cout, cfg.groups))
                cin = cout
            if level < len(chans) - 1:
                layers.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
        self.body = nn.Sequential(*layers, ResBlock(cin, cin, cfg.groups))
        self.norm_out, self.conv_out = norm(cin, cfg.groups), nn.Conv2d(cin, out_channels, 1)

    def forward(self, x):
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x)))))


class Decoder(nn.Module):
    """[B, in_channels, s, s] -> [B, 3, s * factor, s * factor]; mirrors the encoder
    (``cfg.decoder_blocks`` ResBlocks per level). With ``cfg.decoder_down`` = d its input
    conv and d - 1 more 3x3 convs stride 2 down to s / 2^d, and it decodes from there
    through d more levels: the decoder of a map 2^d times coarser, fed the finer map."""

    def __init__(self, cfg: ConvConfig, in_channels: int, factor: int):
        super().__init__()
        levels = int(math.log2(factor)) + 1
        if 2 ** (levels - 1) != factor:
            raise ValueError(f"decoder factor must be a power of two, got {factor}")
        levels += cfg.decoder_down
        mult = list(cfg.ch_mult[:levels]) + [cfg.ch_mult[-1]] * (levels - len(cfg.ch_mult))
        chans = [cfg.channels * m for m in reversed(mult)]
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, stride=2 if cfg.decoder_down else 1,
                                 padding=1)
        self.down = nn.Sequential(*(nn.Conv2d(chans[0], chans[0], 3, stride=2, padding=1)
                                    for _ in range(cfg.decoder_down - 1)))
        layers, cin = [ResBlock(chans[0], chans[0], cfg.groups)], chans[0]
        for level, cout in enumerate(chans):
            for _ in range(cfg.decoder_blocks):
                layers.append(ResBlock(cin, cout, cfg.groups))
                cin = cout
            if level < len(chans) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(cin, cin, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.norm_out, self.conv_out = norm(cin, cfg.groups), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
        return self.conv_out(F.silu(self.norm_out(self.body(self.down(self.conv_in(z))))))


class Attention(nn.Module):
    """Multi-head attention through scaled_dot_product_attention (bf16-safe)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        B, N, D = x.shape  # [B, N, D]
        context = x if context is None else context  # [B, M, kv_dim]
        q = self.q(x).view(B, N, self.heads, D // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(B, context.shape[1], 2, self.heads, D // self.heads) \
            .permute(2, 0, 3, 1, 4)  # each [B, H, M, D/H]
        y = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, D/H]
        return self.out(y.transpose(1, 2).reshape(B, N, D))


def mlp(din: int, dout: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(din, hidden), nn.GELU(), nn.Linear(hidden, dout))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


