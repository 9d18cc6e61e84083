"""Tokenizer losses: L1 + LPIPS + commitment, and a PatchGAN with hinge loss and LeCAM.

PatchGAN: 3 strided 4x4 conv layers (ndf 64), GroupNorm instead of BatchNorm (no
cross-rank statistics), LeakyReLU 0.2, a 1-channel logit map. LeCAM regularisation
(Tseng et al. 2021, arXiv 2104.03310) keeps the discriminator's outputs near EMAs of
its outputs on the other class: mean(relu(D(real) - ema_fake)^2) +
mean(relu(ema_real - D(fake))^2).
"""

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, ndf: int = 64, layers: int = 3):
        super().__init__()
        mods = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = ndf
        for n in range(1, layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1), nn.GroupNorm(min(32, out), out),
                     nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x):  # [B, 3, S, S] -> [B, 1, s, s] logits
        return self.net(x)


def hinge_d_loss(real_logits, fake_logits):
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits):
    return -fake_logits.mean()


class LeCAM(nn.Module):
    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, real_logits, fake_logits):
        with torch.no_grad():
            self.ema_real.lerp_(real_logits.mean().float(), 1 - self.decay)
            self.ema_fake.lerp_(fake_logits.mean().float(), 1 - self.decay)
        return (F.relu(real_logits - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - fake_logits).pow(2).mean())
