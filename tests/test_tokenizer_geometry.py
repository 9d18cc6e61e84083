"""Local feature reading and start layouts of GaussianToken, against independent references."""

import math

import pytest
import torch

from tokenizer.build import build_tokenizer
from tokenizer.config import GaussianConfig
from tokenizer.layout import content_layout, grid_layout, snap_to_bins
from tokenizer.local_read import LocalRead, bilinear_read, place_points
from tokenizer.registry import registry_config


def brute_bilinear(fmap, x, y):
    """One point, float64 loops: pixel centres at (2k + 1) / W - 1, border clamping."""
    C, H, W = fmap.shape
    u = min(max((x + 1) * W / 2 - 0.5, 0.0), W - 1.0)
    v = min(max((y + 1) * H / 2 - 0.5, 0.0), H - 1.0)
    u0, v0 = math.floor(u), math.floor(v)
    out = torch.zeros(C, dtype=torch.float64)
    for dv in (0, 1):
        for du in (0, 1):
            uu, vv = min(u0 + du, W - 1), min(v0 + dv, H - 1)
            w = (1 - abs(u - (u0 + du))) * (1 - abs(v - (v0 + dv)))
            out += w * fmap[:, vv, uu].double()
    return out


def test_bilinear_read_equals_brute_force_lookup():
    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)  # non-square
    points = torch.rand(2, 4, 3, 2, generator=gen, dtype=torch.float64) * 2.6 - 1.3  # off-map too
    points[0, 0, 0] = torch.tensor([-1.0, 1.0])  # the map's outer corner
    points[1, 0, 0] = torch.tensor([(2 * 3 + 1) / 7 - 1, (2 * 1 + 1) / 5 - 1],
                                   dtype=torch.float64)  # a pixel centre
    got = bilinear_read(fmap, points)
    assert got.shape == (2, 4, 3, 3) and got.dtype == torch.float64
    for b in range(2):
        for n in range(4):
            for k in range(3):
                want = brute_bilinear(fmap[b], float(points[b, n, k, 0]), float(points[b, n, k, 1]))
                torch.testing.assert_close(got[b, n, k], want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1, 0, 0], fmap[1, :, 1, 3], rtol=0, atol=1e-12)


def test_points_follow_position_scale_and_rotation():
    xy = torch.tensor([[[0.25, -0.5]]], dtype=torch.float64)
    scale = torch.tensor([[[2.0, 0.5]]], dtype=torch.float64)  # splat pixels
    offsets = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    px = 2 / 8  # one splat pixel of an 8-wide map, normalised
    turned = place_points(xy, scale, torch.full((1, 1), math.pi / 2, dtype=torch.float64),
                          offsets, 8)
    # R(pi/2) turns x towards y: the x' axis points along +y, the y' axis along -x
    want = torch.tensor([[0.25, -0.5 + 2 * px], [0.25 - 0.5 * px, -0.5]], dtype=torch.float64)
    torch.testing.assert_close(turned[0, 0], want, rtol=0, atol=1e-12)


def test_gradients_reach_position_and_scale_through_the_sampling():
    torch.manual_seed(0)
    read = LocalRead(dim=6, points=3, splat_size=8).double()
    with torch.no_grad():
        read.offsets.weight.normal_(0, 0.3)
        read.weights.weight.normal_(0, 0.3)
    tokens = torch.randn(2, 4, 6, dtype=torch.float64)
    fmap = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    xy = (torch.rand(2, 4, 2, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    scale = (torch.rand(2, 4, 2, dtype=torch.float64) + 0.5).requires_grad_()
    rotation = (torch.rand(2, 4, dtype=torch.float64) * math.pi).requires_grad_()
    out = read(tokens, fmap, xy, scale, rotation)
    out.sum().backward()
    for t in (xy, scale, rotation):
        assert t.grad is not None and t.grad.abs().min() > 0
    # and they are the true derivatives (bilinear is piecewise linear: check in float64)
    assert torch.autograd.gradcheck(lambda a, s: read(tokens, fmap, a, s, rotation.detach()),
                                    (xy.detach().requires_grad_(), scale.detach().requires_grad_()))


def test_grid_layout_sits_on_bin_centres_and_is_symmetric():
    for n, bins in ((16, 32), (16, 8), (64, 64), (16, 12)):
        xy = grid_layout(n, bins)
        torch.testing.assert_close(snap_to_bins(xy, bins), xy)  # on a bin centre
        assert len({tuple(p) for p in xy.tolist()}) == n
        torch.testing.assert_close(xy.sum(0), torch.zeros(2), rtol=0, atol=1e-6)  # symmetric
        u = (xy + 1) * bins / 2  # bin units: a centre is at k + 1/2, never on an edge
        assert ((u - u.floor()) - 0.5).abs().max() < 1e-5
    with pytest.raises(ValueError, match="square number"):
        grid_layout(15, 32)


def _stroke_images():
    images = -torch.ones(3, 3, 32, 32)
    images[0, :, 10:12, 4:28] = 1.0  # horizontal bar
    images[1, :, 4:28, 20] = 1.0  # vertical line
    for t in range(6, 27):  # a diagonal
        images[2, :, t, t] = 1.0
    return images


def test_content_layout_lands_on_the_stroke_and_is_deterministic():
    images = _stroke_images()
    bins = 32
    xy = content_layout(images, 16, bins)
    assert xy.shape == (3, 16, 2)
    assert torch.equal(xy, content_layout(images, 16, bins))  # deterministic
    assert torch.equal(xy[1:2], content_layout(images[1:2], 16, bins))  # batch-independent
    torch.testing.assert_close(snap_to_bins(xy, bins), xy)  # on bin centres
    px = (xy + 1) * 16 - 0.5  # image pixel coordinates (32 px image)
    ink = images[:, 0] > 0
    for b in range(3):
        ys, xs = ink[b].nonzero(as_tuple=True)
        d = ((px[b, :, None, 0] - xs) ** 2 + (px[b, :, None, 1] - ys) ** 2).sqrt().min(1).values
        assert d.max() <= 1.0, f"image {b}: a Gaussian starts {d.max():.2f} px off the stroke"
    # raster order of position tokens
    index = ((xy + 1) * bins / 2).floor()
    key = index[..., 1] * bins + index[..., 0]
    assert torch.all(key[:, 1:] >= key[:, :-1])
    # a blank image still gets a layout
    assert torch.isfinite(content_layout(-torch.ones(1, 3, 32, 32), 16, bins)).all()


@pytest.mark.parametrize("layout", ["grid", "content"])
def test_frozen_positions_are_the_layout_and_cost_nothing_to_quantise(layout):
    cfg = registry_config("gaussian-debug")
    cfg.gaussian.layout, cfg.gaussian.moves = layout, "frozen"
    torch.manual_seed(0)
    model = build_tokenizer(cfg)
    images = _stroke_images()
    geo, _ = model.gaussians(images)
    start = model.start_positions(images)
    assert torch.equal(geo.xy, start.float())
    _, _, q = model.quantize_geometry(geo)
    torch.testing.assert_close(q.xy, geo.xy, rtol=0, atol=1e-6)


def test_learned_moves_are_bounded():
    cfg = registry_config("gaussian-debug")
    torch.manual_seed(0)
    model = build_tokenizer(cfg)
    with torch.no_grad():
        for block in model.rounds:
            block.geometry.bias.fill_(50.0)  # push every move to its limit
    images = _stroke_images()
    geo, _ = model.gaussians(images)
    g = cfg.gaussian
    move = (geo.xy - model.start_positions(images)).abs() * g.splat_size / 2
    assert move.max() <= g.max_move + 1e-5 and move.max() > 0.9 * g.max_move


def test_gaussian_config_validation():
    with pytest.raises(ValueError, match="layout must be one of"):
        GaussianConfig(layout="random")
    with pytest.raises(ValueError, match="moves must be one of"):
        GaussianConfig(moves="free")
    with pytest.raises(ValueError, match="needs a square num_gaussians"):
        GaussianConfig(num_gaussians=10, layout="grid")
