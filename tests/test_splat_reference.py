"""The PyTorch reference splat against a brute-force float64 loop, gradcheck, and checks."""

import math

import pytest
import torch

from kernels import DEFAULT_CUTOFF, splat
from kernels.reference import _chunks, splat_reference
from tests.splat_oracle import brute_force_splat, min_cutoff_margin, random_gaussians

CASES = [
    # (B, N, C, H, W, scale range)
    (2, 5, 3, 7, 9, (0.3, 4.0)),  # odd sizes
    (1, 1, 1, 5, 4, (0.5, 2.0)),  # N = 1, C = 1
    (3, 17, 2, 8, 8, (1e-3, 0.2)),  # tiny scales: most pixels miss every Gaussian
    (2, 4, 2, 6, 5, (50.0, 1e3)),  # huge scales: every term kept, nearly flat
    (2, 9, 4, 1, 11, (0.3, 4.0)),  # a single row
]


@pytest.mark.parametrize(("B", "N", "C", "H", "W", "scale_range"), CASES)
def test_reference_matches_brute_force(B, N, C, H, W, scale_range):
    gen = torch.Generator().manual_seed(B * 1000 + N * 10 + C)
    inputs = random_gaussians(B, N, C, generator=gen, scale_range=scale_range)
    expected = brute_force_splat(*inputs, H, W)
    got = splat_reference(*inputs, height=H, width=W)
    assert got.dtype == torch.float64 and got.shape == (B, C, H, W)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_gaussians_off_the_map():
    """Partly off: only the visible part lands. Wholly off: nothing lands."""
    gen = torch.Generator().manual_seed(3)
    means, scales, rotations, features, opacity = random_gaussians(2, 6, 3, generator=gen)
    means[:, :3] = torch.tensor([[-1.05, 0.0], [0.2, 1.1], [1.02, -1.03]], dtype=torch.float64)
    means[:, 3:] = torch.tensor([[-9.0, 0.0], [0.0, 7.0], [30.0, -30.0]], dtype=torch.float64)
    scales[:, 3:] = 1.0  # 8 pixels of map width per unit: 3.33 sigma cannot reach it
    out = splat_reference(means, scales, rotations, features, opacity, height=8, width=8)
    torch.testing.assert_close(out, brute_force_splat(means, scales, rotations, features,
                                                      opacity, 8, 8), rtol=1e-12, atol=1e-12)
    only_far = splat_reference(means[:, 3:], scales[:, 3:], rotations[:, 3:], features[:, 3:],
                               opacity[:, 3:], height=8, width=8)
    assert torch.count_nonzero(only_far) == 0
    assert torch.count_nonzero(out) > 0


def test_pixel_centre_convention_and_peak():
    """A Gaussian at the centre of pixel (col 2, row 3) peaks there with value opacity * f."""
    H, W = 6, 5
    means = torch.tensor([[[(2 * 2 + 1) / W - 1, (2 * 3 + 1) / H - 1]]], dtype=torch.float64)
    scales = torch.tensor([[[0.7, 1.3]]], dtype=torch.float64)
    rot = torch.tensor([[0.4]], dtype=torch.float64)
    feat = torch.tensor([[[2.0, -1.0]]], dtype=torch.float64)
    opacity = torch.tensor([[0.5]], dtype=torch.float64)
    out = splat_reference(means, scales, rot, feat, opacity, height=H, width=W)
    assert out[0, 0].argmax().item() == 3 * W + 2
    torch.testing.assert_close(out[0, :, 3, 2], torch.tensor([1.0, -0.5], dtype=torch.float64))
    # -1 and +1 are the outer edges: a mean of -1 sits half a pixel left of column 0
    edge = splat_reference(torch.tensor([[[-1.0, means[0, 0, 1].item()]]], dtype=torch.float64),
                           torch.ones(1, 1, 2, dtype=torch.float64), rot * 0, feat[..., :1],
                           height=H, width=W)
    torch.testing.assert_close(edge[0, 0, 3, 0], torch.tensor(2.0 * math.exp(-0.5 * 0.25),
                                                              dtype=torch.float64))


def test_rotation_turns_x_axis_towards_y():
    """Elongated along x, rotated by +pi/2, it is elongated along y (a transposed map)."""
    kwargs = dict(dtype=torch.float64)
    means = torch.zeros(1, 1, 2, **kwargs)
    scales = torch.tensor([[[3.0, 0.6]]], **kwargs)
    feat = torch.ones(1, 1, 1, **kwargs)
    flat = splat_reference(means, scales, torch.zeros(1, 1, **kwargs), feat, height=9, width=9)
    turned = splat_reference(means, scales, torch.full((1, 1), math.pi / 2, **kwargs), feat,
                             height=9, width=9)
    torch.testing.assert_close(turned[0, 0], flat[0, 0].T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("cutoff", "kept"), [(4.0, True), (3.999, False), (4.001, True)])
def test_cutoff_boundary_is_inclusive(cutoff, kept):
    """A pixel exactly 2 sigma away has q = 4: kept when q <= cutoff, dropped otherwise."""
    W = 9  # pixel centres at integers; the mean on column 4, the probe on column 6
    means = torch.tensor([[[(2 * 4 + 1) / W - 1, 0.0]]], dtype=torch.float64)
    scales = torch.ones(1, 1, 2, dtype=torch.float64)
    out = splat_reference(means, scales, torch.zeros(1, 1, dtype=torch.float64),
                          torch.ones(1, 1, 1, dtype=torch.float64), height=1, width=W,
                          cutoff=cutoff)
    assert out[0, 0, 0, 6].item() == (math.exp(-2.0) if kept else 0.0)
    assert out[0, 0, 0, 7].item() == 0.0  # q = 9 > any of these cut-offs


def test_default_cutoff_drops_weights_below_one_255th():
    W = 41
    means = torch.tensor([[[(2 * 20 + 1) / W - 1, 0.0]]], dtype=torch.float64)
    scales = torch.tensor([[[3.0, 3.0]]], dtype=torch.float64)
    out = splat_reference(means, scales, torch.zeros(1, 1, dtype=torch.float64),
                          torch.ones(1, 1, 1, dtype=torch.float64), height=1, width=W)[0, 0, 0]
    d = torch.arange(W, dtype=torch.float64) - 20
    exact = torch.exp(-0.5 * (d / 3) ** 2)
    torch.testing.assert_close(out, torch.where(exact >= 1 / 255, exact, 0.0))
    assert DEFAULT_CUTOFF == pytest.approx(2 * math.log(255))
    assert out.count_nonzero() == 2 * 9 + 1  # 3.33 sigma = 9.99 pixels each side


def test_chunking_does_not_change_the_result():
    gen = torch.Generator().manual_seed(11)
    inputs = [t.requires_grad_() for t in random_gaussians(3, 13, 4, generator=gen)]
    grad_out = torch.randn(3, 4, 7, 10, generator=gen, dtype=torch.float64)
    results = []
    for chunk in (7, 64, 1 << 21):
        out = splat_reference(*inputs, height=7, width=10, chunk_elements=chunk)
        grads = torch.autograd.grad(out, inputs, grad_out)
        results.append((out, grads))
    for out, grads in results[:-1]:
        torch.testing.assert_close(out, results[-1][0], rtol=1e-12, atol=1e-12)
        for g, ref in zip(grads, results[-1][1], strict=True):
            torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("B", "N", "P", "budget"),
                         [(64, 256, 1024, 1 << 21), (2, 7, 100, 13), (5, 3, 4, 1), (1, 1, 1, 64)])
def test_chunks_tile_exactly_once_within_budget(B, N, P, budget):
    seen = torch.zeros(N, P, dtype=torch.int64)
    for gs, ps in _chunks(B, N, P, budget):
        seen[gs, ps] += 1
        assert B * (gs.stop - gs.start) * (ps.stop - ps.start) <= max(budget, B)
    assert torch.all(seen == 1)


def _well_separated_inputs(seed, B, N, C, H, W, **kwargs):
    """Random inputs where no pixel sits within 1e-3 of the cut-off (a discontinuity)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        inputs = random_gaussians(B, N, C, generator=gen, **kwargs)
        if min_cutoff_margin(*inputs[:3], H, W) > 1e-3:
            return inputs


@pytest.mark.parametrize("with_opacity", [True, False])
def test_gradcheck_every_input(with_opacity):
    H, W = 5, 6
    inputs = _well_separated_inputs(5, 2, 3, 2, H, W, opacity=with_opacity)
    inputs = [t.requires_grad_() if t is not None else None for t in inputs]

    def fn(*args):
        return splat_reference(*args, height=H, width=W)

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_no_cutoff_and_tiny_chunks():
    """With an infinite cut-off the op is smooth everywhere; chunks of 5 split everything."""
    gen = torch.Generator().manual_seed(8)
    inputs = [t.requires_grad_() for t in random_gaussians(2, 4, 3, generator=gen)]

    def fn(*args):
        return splat_reference(*args, height=4, width=3, cutoff=math.inf, chunk_elements=5)

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_float32_and_bfloat16_inputs_compute_in_float32():
    gen = torch.Generator().manual_seed(2)
    inputs64 = random_gaussians(2, 8, 3, generator=gen)
    ref = splat_reference(*inputs64, height=6, width=6)
    out32 = splat_reference(*(t.float() for t in inputs64), height=6, width=6)
    assert out32.dtype == torch.float32
    assert ((out32.double() - ref).norm() / ref.norm()).item() < 1e-6
    bf = [t.float() for t in inputs64[:3]] + [t.bfloat16() for t in inputs64[3:]]
    out_bf = splat_reference(*bf, height=6, width=6)
    assert out_bf.dtype == torch.bfloat16
    # bf16 features/opacity carry a 2^-8 relative rounding each; the output one more
    assert ((out_bf.double() - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(means=torch.zeros(2, 3, 3)), r"means must have shape \[2, 3, 2\].*got \[2, 3, 3\]"),
        (dict(scales=torch.ones(2, 3)), r"scales must have shape \[2, 3, 2\].*got \[2, 3\]"),
        (dict(rotations=torch.zeros(2, 4)), r"rotations must have shape \[2, 3\].*got \[2, 4\]"),
        (dict(opacity=torch.ones(3, 2)), r"opacity must have shape \[2, 3\].*got \[3, 2\]"),
        (dict(features=torch.zeros(2, 3)), r"features must be \[B, N, C\], got shape \[2, 3\]"),
        (dict(features=torch.zeros(2, 3, 4, dtype=torch.int64)), r"features must be floating"),
        (dict(rotations=torch.zeros(2, 3, device="meta")), r"one device.*rotations on meta"),
        (dict(height=0), r"height must be a positive int, got 0"),
        (dict(width=2.5), r"width must be a positive int, got 2.5"),
        (dict(cutoff=-1.0), r"cutoff must be a positive number"),
        (dict(backend="triton"), r"backend must be"),
        (dict(backend="cuda"), r"backend='cuda' needs CUDA tensors"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, message):
    args = dict(means=torch.zeros(2, 3, 2), scales=torch.ones(2, 3, 2),
                rotations=torch.zeros(2, 3), features=torch.zeros(2, 3, 4),
                opacity=torch.ones(2, 3), height=4, width=4)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        splat(**args)


def test_public_splat_uses_reference_on_cpu_and_is_differentiable():
    gen = torch.Generator().manual_seed(4)
    inputs = [t.float().requires_grad_() for t in random_gaussians(2, 5, 3, generator=gen)]
    out = splat(*inputs, height=6, width=7)
    ref = splat_reference(*inputs, height=6, width=7)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs)
