"""The one registry of tokenizer sizes, used by train, evaluate, sample and the benches
(CLI ``choices`` come from it): a name -> a TokenizerConfig. Every kind has a "debug" size
that runs the whole stack on a laptop CPU in minutes."""

from tokenizer.config import (
    ConvConfig,
    GaussianConfig,
    QuantizerConfig,
    TokenizerConfig,
    VQConfig,
)


def _debug(kind: str) -> TokenizerConfig:
    return TokenizerConfig(
        kind=kind, image_size=32,
        encoder=ConvConfig(channels=32, ch_mult=(1, 2, 2) if kind == "gaussian" else (1, 2, 2, 2),
                           res_blocks=1, groups=8),
        quantizer=QuantizerConfig(codebook_size=128, dim=8, kmeans_iters=5),
        gaussian=GaussianConfig(num_gaussians=16, hidden=64, heads=4, rounds=2, splat_size=8,
                                position_bins=32, scale_bins=4, rotation_bins=4,
                                scale_min=0.4, scale_max=3.0),
        vq=VQConfig(hidden=64, heads=4),  # as wide as the Gaussian debug's refinement
    )


def _debug64() -> TokenizerConfig:
    cfg = _debug("gaussian")
    cfg.gaussian.num_gaussians, cfg.gaussian.splat_size, cfg.gaussian.position_bins = 64, 16, 64
    cfg.__post_init__()
    return cfg


def llamagen_vq(image_size: int = 256, ch_mult=(1, 1, 2, 2, 4), codebook_size: int = 16384,
                dim: int = 8, channels: int = 128, z_channels: int = 256,
                res_blocks: int = 2, l2_norm: bool = True) -> TokenizerConfig:
    """LlamaGen's VQ tokenizer (defaults: VQ-16, 72M parameters; ch_mult (1, 2, 2, 4) is
    its VQ-8). Resolution-free: the same weights at 256 px (16x16) and 384 px (24x24)."""
    return TokenizerConfig(
        kind="vq", image_size=image_size,
        encoder=ConvConfig(channels=channels, ch_mult=tuple(ch_mult), res_blocks=res_blocks,
                           style="taming", z_channels=z_channels),
        quantizer=QuantizerConfig(codebook_size=codebook_size, dim=dim, l2_norm=l2_norm))


REGISTRY = {
    # runs on a laptop CPU in minutes: 32 px, 16 Gaussians / a 4x4 grid (16 tokens)
    "gaussian-debug": lambda: _debug("gaussian"),
    "vq-debug": lambda: _debug("vq"),
    # the debug trunk at the ImageNet setting's density: 64 Gaussians onto a 16x16 splat
    # (4 splat pixels per Gaussian, as 256 onto 32x32), 4 position bins per splat pixel;
    # the spacing in splat pixels is the debug size's, so max_move and the scale range
    # (splat pixels) and the anchors (half the spacing) keep their relation to it
    "gaussian-debug64": lambda: _debug64(),
    # the published CIFAR setting: 32 px, 64 Gaussians onto 16x16x3 (here x8 codes)
    "gaussian-cifar": lambda: TokenizerConfig(
        kind="gaussian", image_size=32,
        encoder=ConvConfig(channels=128, ch_mult=(1, 2, 2), res_blocks=2),
        quantizer=QuantizerConfig(codebook_size=1024, dim=8),
        gaussian=GaussianConfig(num_gaussians=64, splat_size=16, position_bins=64)),
    # the published ImageNet setting: 256 Gaussians, codebook 1024 x 8, 32x32x8 target
    "gaussian-imagenet": lambda: TokenizerConfig(
        kind="gaussian", image_size=256,
        encoder=ConvConfig(channels=128, ch_mult=(1, 2, 2, 4), res_blocks=4),
        quantizer=QuantizerConfig(codebook_size=1024, dim=8),
        gaussian=GaussianConfig(num_gaussians=256, splat_size=32, position_bins=128)),
    # LlamaGen's VQ-16 exactly (its vq_ds16_c2i.pt loads into it through
    # launch.import_llamagen): 16x16 grid at 256 px, 16384 l2-normalised codes of 8
    "vq-imagenet": lambda: llamagen_vq(256),
}


def registry_config(name: str) -> TokenizerConfig:
    if name not in REGISTRY:
        raise ValueError(f"unknown tokenizer size {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name]()
