"""The plain VQ baseline: a grid of codes, with our conv family or LlamaGen's VQGAN trunk.

image [B, 3, S, S] -> Encoder -> [B, dim, f, f] -> (average-pooled to the token grid
g x g when ``vq.grid`` is set) -> vector quantiser -> (codes repeated back to f x f,
or to ``vq.decoder_map``) -> Decoder. Tokens: [B, g*g, 1] in raster order, the tuple being (code,).
With ``encoder.style = "taming"`` (LlamaGen's VQ-16 / VQ-8) the encoder gives
[B, z_channels, f, f] and 1x1 convs map to the code dimension (``quant_conv``) and
back (``post_quant_conv``); with ``quantizer.l2_norm`` codes and encoder outputs are
compared on the unit sphere.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.base import Tokenizer, TokenLayout
from tokenizer.blocks import Attention, Decoder, Encoder, mlp
from tokenizer.config import TokenizerConfig
from tokenizer.quantize import VectorQuantizer
from tokenizer.taming import TamingDecoder, TamingEncoder


class MixRound(nn.Module):
    """Self-attention among the grid's tokens, then an MLP (pre-norm residual)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_self, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_mlp, self.mlp = nn.LayerNorm(dim), mlp(dim, dim, 4 * dim)

    def forward(self, tokens):  # [B, L, D]
        tokens = tokens + self.self_attn(self.norm_self(tokens))
        return tokens + self.mlp(self.norm_mlp(tokens))


class VQTokenizer(Tokenizer):
    tuple_names = ("code",)

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        v = cfg.vq
        if cfg.encoder.style == "taming":
            z, dim = cfg.encoder.z_channels, cfg.quantizer.dim
            self.encoder, self.quant_conv = TamingEncoder(cfg.encoder), nn.Conv2d(z, dim, 1)
            self.quantizer = VectorQuantizer(cfg.quantizer)
            self.post_quant_conv, self.decoder = nn.Conv2d(dim, z, 1), TamingDecoder(cfg.encoder)
            return
        if v.rounds:  # GaussianToken's refinement widths (vq.hidden, vq.heads), no geometry
            self.encoder = Encoder(cfg.encoder, v.hidden)
            self.token_pos = nn.Parameter(torch.randn(cfg.grid**2, v.hidden) * 0.02)
            self.rounds = nn.ModuleList(MixRound(v.hidden, v.heads) for _ in range(v.rounds))
            self.feature_head = nn.Sequential(nn.LayerNorm(v.hidden),
                                              mlp(v.hidden, cfg.quantizer.dim, v.hidden))
        else:
            self.encoder = Encoder(cfg.encoder, cfg.quantizer.dim)
        self.quantizer = VectorQuantizer(cfg.quantizer)
        self.decoder = Decoder(cfg.encoder, cfg.quantizer.dim,
                               cfg.image_size // cfg.decoder_map)

    @property
    def vocab_sizes(self) -> list[int]:
        return [self.cfg.quantizer.codebook_size]

    @property
    def token_layout(self) -> TokenLayout:
        """One code per cell of a grid x grid raster, in raster order."""
        return TokenLayout(self.tuple_names, code_component=0, token_grid=self.cfg.grid)

    @property
    def num_tokens(self) -> int:
        return self.cfg.grid**2

    def forward(self, images: torch.Tensor, quantize_geometry: bool = True):
        g = self.cfg.grid
        z = self.encoder(images)
        if self.cfg.encoder.style == "taming":
            z = self.quant_conv(z)
        z = F.adaptive_avg_pool2d(z, g).permute(0, 2, 3, 1)  # [B, g, g, C]
        if self.cfg.vq.rounds:
            tokens = z.flatten(1, 2) + self.token_pos  # [B, g*g, hidden]
            for block in self.rounds:
                tokens = block(tokens)
            z = self.feature_head(tokens).view(-1, g, g, self.cfg.quantizer.dim)
        q, indices, losses = self.quantizer(z)
        recon = self._decode_codes(q.permute(0, 3, 1, 2))
        return recon, {**losses, "tokens": indices.flatten(1)[..., None]}

    def _decode_codes(self, q: torch.Tensor) -> torch.Tensor:
        """codes [B, dim, g, g] -> images, repeated (nearest) to the decoder's map first
        (the encoder's grid unless ``vq.decoder_map`` is set)."""
        f = self.cfg.decoder_map
        q = q if q.shape[-1] == f else F.interpolate(q, size=f, mode="nearest")
        if self.cfg.encoder.style == "taming":
            q = self.post_quant_conv(q)
        return self.decoder(q)

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
        return self._decode_codes(q.permute(0, 3, 1, 2))
