"""The plain VQ baseline (LlamaGen-style): a grid of codes, same encoder/decoder family.

image [B, 3, S, S] -> Encoder -> [B, dim, g, g] -> vector quantiser -> Decoder.
Tokens: [B, g*g, 1] in raster order, the tuple being (code,).
"""

import torch
from torch import nn

from tokenizer.blocks import Decoder, Encoder
from tokenizer.config import TokenizerConfig
from tokenizer.quantize import VectorQuantizer


class VQTokenizer(nn.Module):
    tuple_names = ("code",)

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder, cfg.quantizer.dim)
        self.quantizer = VectorQuantizer(cfg.quantizer)
        self.decoder = Decoder(cfg.encoder, cfg.quantizer.dim, cfg.encoder.factor)

    @property
    def vocab_sizes(self) -> list[int]:
        return [self.cfg.quantizer.codebook_size]

    @property
    def num_tokens(self) -> int:
        return self.cfg.grid**2

    def forward(self, images: torch.Tensor, quantize_geometry: bool = True):
        z = self.encoder(images).permute(0, 2, 3, 1)  # [B, g, g, dim]
        q, indices, losses = self.quantizer(z)
        recon = self.decoder(q.permute(0, 3, 1, 2))
        return recon, {**losses, "tokens": indices.flatten(1)[..., None]}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] -> tokens [B, g*g, 1]."""
        return self.forward(images)[1]["tokens"]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        g = self.cfg.grid
        if tokens.dim() != 3 or tokens.shape[1:] != (g * g, 1):
            raise ValueError(f"tokens must be [B, {g * g}, 1], got {list(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.vocab_sizes[0]:
            raise ValueError(f"code tokens must lie in [0, {self.vocab_sizes[0]})")
        q = self.quantizer.codes(tokens[..., 0]).view(-1, g, g, self.cfg.quantizer.dim)
        return self.decoder(q.permute(0, 3, 1, 2))
