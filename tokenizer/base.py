"""The interface every tokenizer kind implements, and the layout of its token tuples.

A tokenizer maps images [B, 3, S, S] in [-1, 1] to integer tokens [B, N, K]: N tuples of
K components (GaussianToken: (position, shape, code) per Gaussian; VQ: (code,) per grid
cell), and back. Model code: torch and kernels/ only.
"""

import abc
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """What a generator needs to know of a tuple; the same keys for every kind (stored in
    token shard manifests and exported GPT configs as ``to_dict()``).

    components:         component names, in tuple order
    code_component:     index of the feature-code token
    position_component: index of the position token, -1 where tuples have none
    position_grid:      position token = row * position_grid + column (0: none)
    token_grid:         tuples are the cells of a token_grid x token_grid raster, in raster
                        order (0: not a grid; GaussianToken sorts by position token)
    """

    components: tuple[str, ...]
    code_component: int
    position_component: int = -1
    position_grid: int = 0
    token_grid: int = 0

    def __post_init__(self):
        if not 0 <= self.code_component < len(self.components):
            raise ValueError(f"code_component {self.code_component} is not a component of "
                             f"{self.components}")
        if self.position_component >= len(self.components) or self.position_component < -1:
            raise ValueError(f"position_component {self.position_component} is not a "
                             f"component of {self.components}")
        if (self.position_component >= 0) != (self.position_grid > 0):
            raise ValueError("a position component needs a position_grid, and only it")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["components"] = list(self.components)
        return d


class Tokenizer(nn.Module, metaclass=abc.ABCMeta):
    """images <-> tokens. ``forward`` is the training path (reconstruction, aux with
    ``commitment``, ``code_counts`` and ``tokens``); ``encode`` / ``decode`` the
    inference paths the later stages use."""

    quantizer: nn.Module  # tokenizer.quantize.VectorQuantizer

    @property
    @abc.abstractmethod
    def vocab_sizes(self) -> list[int]:
        """One vocabulary size per tuple component."""

    @property
    @abc.abstractmethod
    def num_tokens(self) -> int:
        """N: tuples per image."""

    @property
    @abc.abstractmethod
    def token_layout(self) -> TokenLayout: ...

    @abc.abstractmethod
    def forward(self, images: torch.Tensor, quantize_geometry: bool | str = True
                ) -> tuple[torch.Tensor, dict]:
        """images [B, 3, S, S] -> (reconstruction [B, 3, S, S], aux)."""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] -> tokens [B, N, K] (int64)."""

    @abc.abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, K] -> images [B, 3, S, S]; out-of-range tokens are a ValueError."""

    def set_collectives(self, reduce, broadcast) -> None:
        """Data parallelism: the trainer passes in a sum over ranks and a copy of rank 0's
        tensor, so every rank's codebook statistics stay the same."""
        self.quantizer.set_collectives(reduce, broadcast)
