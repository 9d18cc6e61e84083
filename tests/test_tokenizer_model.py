"""Tokenizer models: quantiser contracts, gradients, canonical order, exact round trips."""

import math

import pytest
import torch

from tokenizer.build import build_tokenizer
from tokenizer.config import GaussianConfig, QuantizerConfig, VQConfig
from tokenizer.gaussian import Geometry
from tokenizer.quantize import VectorQuantizer, rotation_trick
from tokenizer.registry import registry_config


def _model(kind, **quantizer):
    """A registry size ("gaussian-debug64"), or a kind's debug size ("vq")."""
    torch.manual_seed(0)
    cfg = registry_config(kind if "-" in kind else f"{kind}-debug")
    for k, v in quantizer.items():
        setattr(cfg.quantizer, k, v)
    return build_tokenizer(cfg)


def _images(n=4, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("gradient", ["ste", "rotation"])
def test_vector_quantizer_contract_and_round_trip(gradient):
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=16, dim=4, gradient=gradient,
                                         kmeans_iters=3))
    # more vectors than codes, so quantising must lose something (commitment > 0)
    z = torch.randn(4, 20, 4, requires_grad=True)
    q, idx, losses = vq(z)
    assert q.shape == z.shape and idx.shape == (4, 20) and idx.dtype == torch.int64
    assert bool(vq.initialised)  # k-means ran on the first training batch
    # indices map back to the codes; the forward value is the code (rotation: to rounding)
    torch.testing.assert_close(q, vq.codes(idx), rtol=1e-5, atol=1e-5)
    # nearest by brute force
    d = ((z.detach()[..., None, :] - vq.codebook) ** 2).sum(-1)
    assert torch.equal(idx, d.argmin(-1))
    q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert losses["commitment"] > 0
    with torch.no_grad():
        q2, idx2, _ = vq.eval()(z)
    assert torch.equal(q2, vq.codes(idx2))  # exact without gradients


def test_rotation_trick_is_a_scaled_rotation_mapping_z_to_e():
    torch.manual_seed(0)
    z = torch.randn(6, dtype=torch.float64)
    e = torch.randn(6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: rotation_trick(x[None], e[None])[0], z)
    scale = e.norm() / z.norm()
    rot = jac / scale
    torch.testing.assert_close(rot @ rot.T, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.det(rot), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(rot @ (z / z.norm()), e / e.norm())
    torch.testing.assert_close(rotation_trick(z[None], e[None])[0], e)


def test_ema_update_ignores_non_finite_rows():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, dim=3, kmeans_iters=2))
    vq(torch.randn(64, 3))
    z = torch.randn(64, 3)
    z[5] = float("nan")
    vq(z)
    assert torch.isfinite(vq.codebook).all()


def test_geometry_tokens_round_trip_to_bin_centres():
    model = _model("gaussian")
    g = model.cfg.gaussian
    assert g.position_bins == 4 * g.splat_size  # sub-pixel positions by default
    gen = torch.Generator().manual_seed(1)
    geo = Geometry(torch.rand(2, 7, 2, generator=gen) * 2 - 1,
                   math.log(g.scale_min) + torch.rand(2, 7, 2, generator=gen)
                   * (math.log(g.scale_max) - math.log(g.scale_min)),
                   torch.rand(2, 7, generator=gen) * 4 * math.pi - 2 * math.pi)
    position, shape, q = model.quantize_geometry(geo)
    assert position.max() < model.vocab_sizes[0] and shape.max() < model.vocab_sizes[1]
    back = model.geometry_from_tokens(position, shape)
    for a, b in ((q.xy, back.xy), (q.log_scale, back.log_scale), (q.rotation, back.rotation)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # each centre lies within half a bin of the value it came from
    half = 1 / g.position_bins
    assert (q.xy - geo.xy).abs().max() <= half + 1e-6
    # rotations: within half a bin modulo pi (a Gaussian turned by pi is the same Gaussian)
    step = math.pi / g.rotation_bins
    wrapped = torch.remainder(q.rotation - geo.rotation + math.pi / 2, math.pi) - math.pi / 2
    assert wrapped.abs().max() <= step / 2 + 1e-5
    # re-quantising a centre gives the same tokens
    p2, s2, _ = model.quantize_geometry(back)
    assert torch.equal(p2, position) and torch.equal(s2, shape)


@pytest.mark.parametrize("bins", [1, 2, 4, 8])
def test_rotation_bin_centres_include_0_and_half_pi(bins):
    cfg = registry_config("gaussian-debug")
    cfg.gaussian.rotation_bins = bins
    model = build_tokenizer(cfg)
    shape = torch.arange(model.vocab_sizes[1])[None]
    centres = set(model.geometry_from_tokens(torch.zeros_like(shape), shape).rotation[0]
                  .unique().tolist())
    assert len(centres) == bins and 0.0 in centres
    if bins > 1:
        assert any(abs(c - math.pi / 2) < 1e-6 for c in centres)
    # an axis-aligned Gaussian (0 or pi/2) is quantised without error
    geo = Geometry(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2),
                   torch.tensor([[0.0, math.pi / 2 if bins > 1 else math.pi]]))
    _, _, q = model.quantize_geometry(geo)
    torch.testing.assert_close(torch.remainder(q.rotation - geo.rotation, math.pi),
                               torch.zeros(1, 2), rtol=0, atol=1e-6)


def test_rotation_bins_must_be_one_or_even():
    with pytest.raises(ValueError, match="rotation_bins must be 1 or even"):
        GaussianConfig(rotation_bins=3)


@pytest.mark.parametrize("position_bins", [8, 12, 32])
def test_position_bins_finer_than_the_splat_round_trip(position_bins):
    """Any bin count (equal to the splat width, or finer, or not a multiple) encodes and
    decodes to the model's own reconstruction, and the tokens stay in their vocabulary."""
    cfg = registry_config("gaussian-debug")
    cfg.gaussian.position_bins = position_bins
    torch.manual_seed(0)
    model = build_tokenizer(cfg)
    model(_images(8, 4))
    model.eval()
    x = _images(3, 5)
    with torch.no_grad():
        recon, aux = model(x)
    tokens = model.encode(x)
    assert tokens[..., 0].max() < position_bins**2
    assert torch.equal(model.decode(tokens), recon)
    # the decoded positions are the bin centres nearest the continuous positions
    back = model.geometry_from_tokens(tokens[..., 0], tokens[..., 1])
    assert (back.xy - aux["geometry"].xy).abs().max() <= 1 / position_bins + 1e-6


@pytest.mark.parametrize("kind", ["gaussian", "vq"])
@pytest.mark.parametrize("gradient", ["ste", "rotation"])
def test_gradients_reach_the_encoder(kind, gradient):
    model = _model(kind, gradient=gradient)
    recon, aux = model(_images())
    ((recon - _images()).abs().mean() + aux["commitment"]).backward()
    first_conv = model.encoder.conv_in.weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0
    if kind == "gaussian":  # geometry is quantised straight-through: its anchors learn
        assert model.anchor_scale.grad.abs().sum() > 0
        assert model.anchor_rotation.grad.abs().sum() > 0


def test_tokens_are_in_canonical_raster_order():
    model = _model("gaussian").eval()
    tokens = model.encode(_images(6, 3))
    assert tokens.shape == (6, 16, 3)
    position = tokens[..., 0]
    assert torch.all(position[:, 1:] >= position[:, :-1])
    order = model._canonical(torch.tensor([[5, 2, 5, 0, 2]]))
    assert order.tolist() == [[3, 1, 4, 0, 2]]  # ties keep anchor order


@pytest.mark.parametrize("kind", ["gaussian", "vq", "gaussian-debug64"])
def test_decode_of_encode_is_the_models_reconstruction(kind):
    model = _model(kind)
    model(_images(8, 4))  # one training-mode pass: k-means init, EMA update
    model.eval()
    x = _images(3, 5)
    with torch.no_grad():
        recon, _ = model(x)
    assert torch.equal(model.decode(model.encode(x)), recon)
    # the token order is irrelevant to decode (the splat is a sum): up to rounding
    if kind.startswith("gaussian"):
        tokens = model.encode(x)
        shuffled = tokens[:, torch.randperm(tokens.shape[1])]
        torch.testing.assert_close(model.decode(shuffled), recon, rtol=1e-5, atol=1e-5)


def test_decode_rejects_bad_tokens():
    model = _model("gaussian").eval()
    with pytest.raises(ValueError, match=r"tokens must be \[B, N, 3\]"):
        model.decode(torch.zeros(2, 16, dtype=torch.long))
    bad = torch.zeros(1, 16, 3, dtype=torch.long)
    bad[0, 0, 2] = 10_000
    with pytest.raises(ValueError, match="code tokens must lie in"):
        model.decode(bad)


def test_registry_settings():
    cifar, imagenet = registry_config("gaussian-cifar"), registry_config("gaussian-imagenet")
    assert (cifar.gaussian.num_gaussians, cifar.gaussian.splat_size) == (64, 16)
    assert (imagenet.gaussian.num_gaussians, imagenet.quantizer.codebook_size,
            imagenet.quantizer.dim, imagenet.gaussian.splat_size) == (256, 1024, 8, 32)
    assert registry_config("vq-imagenet").grid == 16
    gd, vd = build_tokenizer(registry_config("gaussian-debug")), build_tokenizer(
        registry_config("vq-debug"))
    assert gd.num_tokens == vd.num_tokens == 16  # the baseline matches the token count
    with pytest.raises(ValueError, match="unknown tokenizer size"):
        registry_config("huge")
    # the ImageNet setting's density at 32 px: 64 Gaussians, 4 splat pixels each, 4
    # position bins per splat pixel, the debug size's spacing in splat pixels
    dense, debug = registry_config("gaussian-debug64").gaussian, registry_config(
        "gaussian-debug").gaussian
    assert (dense.num_gaussians, dense.splat_size, dense.position_bins) == (64, 16, 64)
    assert dense.splat_size**2 / dense.num_gaussians == imagenet.gaussian.splat_size**2 / \
        imagenet.gaussian.num_gaussians == 4
    assert dense.splat_size / dense.num_gaussians**0.5 == debug.splat_size / \
        debug.num_gaussians**0.5
    assert build_tokenizer(registry_config("gaussian-debug64")).vocab_sizes == [4096, 64, 128]


def test_vq_decoder_map_gives_the_dense_gaussian_rows_decoder():
    """vq.decoder_map 16: an 8x8 grid of codes repeated to 16x16 and decoded by the very
    decoder of gaussian-debug64 (same tensors and shapes), fed a 16x16 map."""
    cfg = registry_config("vq-debug")
    cfg.encoder.ch_mult, cfg.vq.grid, cfg.vq.rounds, cfg.vq.decoder_map = (1, 2, 2), 8, 2, 16
    cfg.__post_init__()
    vq = build_tokenizer(cfg).eval()
    gaussian = build_tokenizer(registry_config("gaussian-debug64"))
    shapes = {k: tuple(v.shape) for k, v in vq.decoder.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in gaussian.decoder.state_dict().items()}
    seen = []
    vq.decoder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = _images(2, 3)
    with torch.no_grad():
        tokens = vq.encode(x)
        assert tokens.shape == (2, 64, 1)
        vq.decode(tokens)
    codes = vq.quantizer.codes(tokens[..., 0]).view(2, 8, 8, -1).permute(0, 3, 1, 2)
    assert seen[-1].shape == (2, 8, 16, 16)
    assert torch.equal(seen[-1], codes.repeat_interleave(2, -1).repeat_interleave(2, -2))
    for side in (12, 24):  # not a multiple of 8; 32 / 24 not a power of two
        cfg.vq.decoder_map = side
        with pytest.raises(ValueError, match="multiple of the token grid"):
            cfg.__post_init__()
    with pytest.raises(ValueError, match="decoder_map must be 0 or positive"):
        VQConfig(decoder_map=-1)


def _resblock_params(c: int) -> int:
    """ResBlock(c, c) by hand: two 3x3 convs with bias, two GroupNorms (weight, bias)."""
    return 2 * (9 * c * c + c) + 2 * (2 * c)


def test_decoder_res_blocks_deepens_only_the_decoder():
    """gaussian-debug64 with 2 decoder ResBlocks per level (the debug trunk has 1): the
    encoder is untouched and the decoder grows by one ResBlock per level, 64 channels at
    8x8 and 32 at 16x16, counted by hand; 0 or res_blocks builds the old decoder; a config
    written before the field existed loads as that same model."""
    from data import config as configlib
    from tokenizer.config import ConvConfig, TokenizerConfig

    base = registry_config("gaussian-debug64")
    assert base.encoder.res_blocks == 1 and base.encoder.decoder_blocks == 1
    deep = registry_config("gaussian-debug64")
    deep.encoder.decoder_res_blocks = 2
    shallow_model, deep_model = build_tokenizer(base), build_tokenizer(deep)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(deep_model.encoder) == count(shallow_model.encoder)
    assert count(deep_model.decoder) - count(shallow_model.decoder) == \
        _resblock_params(64) + _resblock_params(32)
    same = registry_config("gaussian-debug64")
    same.encoder.decoder_res_blocks = same.encoder.res_blocks
    shapes = {k: v.shape for k, v in shallow_model.state_dict().items()}
    assert {k: v.shape for k, v in build_tokenizer(same).state_dict().items()} == shapes
    old = configlib.to_dict(base)
    del old["encoder"]["decoder_res_blocks"]
    assert configlib.from_dict(TokenizerConfig, old) == base
    with pytest.raises(ValueError, match="decoder_res_blocks must be >= 0"):
        ConvConfig(decoder_res_blocks=-1)
    with pytest.raises(ValueError, match="decoder_res_blocks is for style 'resnet'"):
        ConvConfig(style="taming", decoder_res_blocks=3)


def test_decoder_down_decodes_the_splat_through_the_coarser_maps_decoder():
    """gaussian-debug64 (a 16x16 splat) with decoder_down 1 has, parameter for parameter,
    the decoder of VQ 8x8 on the same trunk (fed its 8x8 grid), its input conv strided:
    with VQ 8x8's weights loaded it gives what VQ 8x8's decoder gives on the splat map
    convolved by hand with stride 2. The encoder is untouched, 0 builds the old decoder,
    and a config written before the field existed loads as that same model."""
    import torch.nn.functional as F

    from data import config as configlib
    from tokenizer.config import ConvConfig, TokenizerConfig

    base = registry_config("gaussian-debug64")
    down = registry_config("gaussian-debug64")
    down.encoder.decoder_down = 1
    down.__post_init__()
    vq8 = registry_config("vq-debug")
    vq8.encoder.ch_mult, vq8.vq.grid = (1, 2, 2), 8
    vq8.__post_init__()
    torch.manual_seed(0)
    base_model, down_model, vq_model = (build_tokenizer(c) for c in (base, down, vq8))
    shapes = {k: v.shape for k, v in vq_model.decoder.state_dict().items()}
    assert {k: v.shape for k, v in down_model.decoder.state_dict().items()} == shapes
    assert {k: v.shape for k, v in down_model.encoder.state_dict().items()} == \
        {k: v.shape for k, v in base_model.encoder.state_dict().items()}
    down_model.decoder.load_state_dict(vq_model.decoder.state_dict())
    z = torch.randn(2, down.quantizer.dim, 16, 16, generator=torch.Generator().manual_seed(1))
    dec = vq_model.decoder.eval()
    with torch.no_grad():
        h = F.conv2d(z, dec.conv_in.weight, dec.conv_in.bias, stride=2, padding=1)
        assert h.shape[-1] == 8
        expected = dec.conv_out(F.silu(dec.norm_out(dec.body(h))))
        got = down_model.decoder.eval()(z)
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    zero = registry_config("gaussian-debug64")
    zero.encoder.decoder_down = 0
    assert {k: v.shape for k, v in build_tokenizer(zero).state_dict().items()} == \
        {k: v.shape for k, v in base_model.state_dict().items()}
    old = configlib.to_dict(base)
    del old["encoder"]["decoder_down"]
    assert configlib.from_dict(TokenizerConfig, old) == base
    with pytest.raises(ValueError, match="decoder_down must be >= 0"):
        ConvConfig(decoder_down=-1)
    with pytest.raises(ValueError, match="decoder_down is for style 'resnet'"):
        ConvConfig(style="taming", decoder_down=1)
    deep = registry_config("gaussian-debug64")
    deep.encoder.decoder_down = 5
    with pytest.raises(ValueError, match=r"16x16 input map .* divisible by 32"):
        deep.__post_init__()


def test_taming_vq_trains_with_its_codebook_on_the_sphere():
    """LlamaGen's VQ trunk trains through our quantiser: gradients reach the encoder and
    the EMA codebook (k-means start, updates) stays l2-normalised."""
    from tokenizer.config import TokenizerConfig
    from tokenizer.registry import llamagen_vq

    cfg = llamagen_vq(image_size=16, ch_mult=(1, 2), codebook_size=32, dim=4, channels=32,
                      z_channels=32, res_blocks=1)
    model = build_tokenizer(cfg).train()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for _ in range(2):
        model.zero_grad()
        recon, aux = model(x)
        ((recon - x).abs().mean() + aux["commitment"]).backward()
        norms = model.quantizer.codebook.norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert recon.shape == x.shape and aux["tokens"].shape == (4, 64, 1)
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="taming"):  # LlamaGen's trunk is for the VQ only
        TokenizerConfig(kind="gaussian", image_size=32, encoder=cfg.encoder)


def test_every_kind_is_a_tokenizer_with_one_layout_type():
    """The kind -> class table covers every kind of the config; each class implements the
    interface and gives the same layout keys; an unknown kind is an error."""
    import dataclasses

    from tokenizer.base import Tokenizer, TokenLayout
    from tokenizer.build import TOKENIZERS
    from tokenizer.config import KINDS

    assert tuple(TOKENIZERS) == KINDS
    keys = set()
    for kind in KINDS:
        model = build_tokenizer(registry_config(f"{kind}-debug"))
        assert isinstance(model, Tokenizer)
        layout = model.token_layout
        assert isinstance(layout, TokenLayout)
        assert len(layout.components) == len(model.vocab_sizes)
        assert layout.components[layout.code_component] == "code"
        keys.add(tuple(layout.to_dict()))
    assert len(keys) == 1
    cfg = dataclasses.replace(registry_config("vq-debug"))
    object.__setattr__(cfg, "kind", "grid")  # past the config's own check
    with pytest.raises(ValueError, match="unknown tokenizer kind 'grid'"):
        build_tokenizer(cfg)


def test_an_old_vq_config_loads_as_the_same_model():
    """Tokenizer configs written before the VQ table existed (top-level token_grid and
    vq_rounds, rounds as wide as the gaussian table) build the same model."""
    from data import config as configlib
    from tokenizer.build import upgrade_config
    from tokenizer.config import TokenizerConfig

    new = registry_config("vq-debug")
    new = dataclasses_replace_vq(new, grid=4, rounds=2)
    old = configlib.to_dict(new)
    vq = old.pop("vq")
    old.update(token_grid=vq["grid"], vq_rounds=vq["rounds"])
    assert vq["hidden"] == old["gaussian"]["hidden"] and vq["heads"] == old["gaussian"]["heads"]
    rebuilt = configlib.from_dict(TokenizerConfig, upgrade_config(old))
    assert rebuilt == new
    shapes = {k: v.shape for k, v in build_tokenizer(rebuilt).state_dict().items()}
    assert shapes == {k: v.shape for k, v in build_tokenizer(new).state_dict().items()}


def dataclasses_replace_vq(cfg, **vq):
    import dataclasses

    return dataclasses.replace(cfg, vq=dataclasses.replace(cfg.vq, **vq))
