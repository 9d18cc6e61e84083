"""The custom ops the CUDA kernel is reached through, exercised on the CPU (where they
run the reference's forward and backward): registration checked by torch.library's
opcheck, wiring against the reference autograd path, and torch.compile without graph
breaks."""

import pytest
import torch

from kernels import DEFAULT_CUTOFF, splat
from kernels.splat import splat_forward
from tests.splat_oracle import random_gaussians

H, W = 6, 7


def _inputs(dtype=torch.float32, seed=0):
    means, scales, rot, feat, opac = random_gaussians(2, 5, 3, generator=torch.Generator()
                                                      .manual_seed(seed), dtype=dtype)
    return [t.contiguous() for t in (means, scales, rot, feat, opac)]


def test_opcheck_schema_fake_and_autograd_registration():
    args = [t.requires_grad_() for t in _inputs()] + [H, W, DEFAULT_CUTOFF]
    torch.library.opcheck(splat_forward, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_forward_and_gradients_equal_the_reference_path(dtype):
    """Same arithmetic underneath, so equal to the last bit: any swapped argument, lost
    gradient or dtype slip in the op's wiring shows."""
    inputs = _inputs(dtype, seed=3)
    grad_out = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(4), dtype=dtype)
    results = []
    for path in ("op", "reference"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        if path == "op":
            out = splat_forward(*leaves, H, W, DEFAULT_CUTOFF)
        else:
            out = splat(*leaves, height=H, width=W, backend="reference")
        results.append((out, torch.autograd.grad(out, leaves, grad_out)))
    (out_a, grads_a), (out_b, grads_b) = results
    assert out_a.dtype == dtype and torch.equal(out_a, out_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)


def test_only_the_inputs_that_need_it_get_a_gradient():
    means, scales, rot, feat, opac = _inputs()
    feat.requires_grad_()
    out = splat_forward(means, scales, rot, feat, opac, H, W, DEFAULT_CUTOFF)
    out.sum().backward()
    assert feat.grad is not None and means.grad is None and opac.grad is None


def test_compiles_in_one_graph():
    """A model step that splats compiles with fullgraph=True (an opaque autograd.Function
    calling an extension would break the graph) and matches eager, gradients included."""
    torch._dynamo.reset()
    inputs = _inputs(seed=5)

    def f(means, scales, rot, feat, opac):
        return (splat_forward(means, scales.exp(), rot, feat * 2, opac, H, W,
                              DEFAULT_CUTOFF) ** 2).sum()

    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_() for t in inputs]
        leaves[1] = leaves[1].detach().log().requires_grad_()
        loss = fn(*leaves)
        results.append((loss, torch.autograd.grad(loss, leaves)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
