"""Graph-friendly decoding: the draw, a full-length cache with a mask, tensor positions,
the compiled step, bf16 sampling, each against an independent path."""

import pytest
import torch

from generator.sampling import decode_step, draw, generate
from tests.test_generator_model import VOCABS, _model, _tokens


def test_draw_is_multinomials_one_sample_path_and_has_its_distribution():
    probs = torch.softmax(torch.randn(64, 50, generator=torch.Generator().manual_seed(0)), -1)
    ours = draw(probs, torch.Generator().manual_seed(7))
    theirs = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7)).squeeze(-1)
    assert torch.equal(ours, theirs)
    # frequencies of 40,000 draws from one row against its probabilities (chi-square-ish)
    p = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0])
    got = draw(p.expand(40_000, 5), torch.Generator().manual_seed(1))
    freq = torch.bincount(got, minlength=5).double() / 40_000
    assert freq[4] == 0  # a filtered token is never drawn
    assert (freq - p.double()).abs().max() < 0.01  # ~4 standard errors


def test_cached_step_with_tensor_positions_gives_the_full_forward_hidden_states():
    """Positions given as 0-dim tensors (no host sync) through the masked full-length
    cache: the hidden states of the uncached full forward, every step the same shapes."""
    model = _model(rope="1d")
    labels, tokens = torch.tensor([0, 3, 5]), _tokens(model)
    shapes = set()
    with torch.no_grad():
        x = torch.cat([model.cls_embed(labels)[:, None], model.embed_tokens(tokens[:, :-1])], 1)
        full = model.hidden(x)  # no cache: [B, N, D]
        hook = model.blocks[0].attn.register_forward_hook(
            lambda mod, args, out: shapes.add((tuple(args[0].shape), tuple(mod.cache_k.shape))))
        model.setup_cache(3)
        step = decode_step(model)
        positions = torch.arange(model.cfg.num_tokens)
        for i in range(model.cfg.num_tokens):
            h = step(x[:, i:i + 1], positions[i], None)
            torch.testing.assert_close(h, full[:, i], rtol=1e-10, atol=1e-10)
        model.clear_cache()
    hook.remove()
    assert shapes == {((3, 1, model.cfg.dim), (3, model.cfg.heads, model.cfg.num_tokens,
                                               model.cfg.dim // model.cfg.heads))}


def test_the_cache_masks_what_later_steps_wrote():
    """Garbage in the cache past the current position must not change the step."""
    model = _model(rope="1d")
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        x = model.cls_embed(labels)[:, None]
        model.setup_cache(2)
        clean = model.step(x, torch.tensor(0))
        for block in model.blocks:
            block.attn.cache_k[:, :, 1:] = 1e3
            block.attn.cache_v[:, :, 1:] = -1e3
        dirty = model.step(x, torch.tensor(0))
        model.clear_cache()
    torch.testing.assert_close(dirty, clean, rtol=0, atol=0)


def test_generator_on_another_device_is_refused():
    model = _model()
    labels = torch.tensor([0], device="meta")  # any device but the generator's
    with pytest.raises(ValueError, match="generator is on cpu but sampling runs on meta"):
        generate(model, labels, generator=torch.Generator())
    with pytest.raises(ValueError, match="compile needs the KV cache"):
        generate(model, torch.tensor([0]), use_cache=False, compile=True)


def test_bf16_sampling_is_seeded_and_close_to_fp32():
    """bf16 weights and cache: same seed, same samples; the step's hidden states stay
    within bf16 rounding of the fp32 model's."""
    model = _model(dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 3])

    def run(m):
        return generate(m, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(4))

    half = _model(dtype=torch.float32).to(torch.bfloat16)
    assert torch.equal(run(half), run(half))
    tokens = _tokens(model, B=4)
    with torch.no_grad():
        x = torch.cat([model.cls_embed(labels)[:, None], model.embed_tokens(tokens[:, :-1])], 1)
        ref = model.hidden(x)
        got = half.hidden(x.to(torch.bfloat16)).float()
    assert ((got - ref).norm() / ref.norm()).item() < 3e-2


def test_compiled_step_matches_eager_and_compiles_once():
    """torch.compile (inductor, CPU) of the decoding step: one compilation for all N
    steps (static shapes), hidden states within fp32 rounding of the eager step, and the
    same samples for the same seed."""
    torch._dynamo.reset()
    model = _model(VOCABS, n=6, rope="1d", dtype=torch.float32)
    labels = torch.tensor([0, 1, 2])
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        model.setup_cache(3)
        eager = decode_step(model)
        x = model.cls_embed(labels)[:, None]
        want = [eager(x, torch.tensor(i), None) for i in range(6)]
        model.setup_cache(3)
        compiled = decode_step(model, compile=True)
        got = [compiled(x, torch.tensor(i), None) for i in range(6)]
        model.clear_cache()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1

    def run():
        return generate(model, labels, cfg_scale=2.0, compile=True,
                        generator=torch.Generator().manual_seed(2))

    first = run()
    assert torch.equal(first, run())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # batch 3 -> 6 (CFG)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decoding_matches_eager_and_is_seeded(dtype):
    """On CUDA: the compiled step (CUDA graphs) gives the eager step's hidden states
    within the dtype's rounding, and a seed fixes the samples on each path."""
    torch._dynamo.reset()
    model = _model(VOCABS, n=6, rope="1d", dtype=torch.float32).cuda().to(dtype)
    labels = torch.tensor([0, 1, 2], device="cuda")
    with torch.no_grad():
        x = model.cls_embed(labels)[:, None]
        hs = {}
        for compiled in (False, True):
            model.setup_cache(3)
            step = decode_step(model, compile=compiled)
            hs[compiled] = [step(x, torch.tensor(i, device="cuda"), None).float().clone()
                            for i in range(6)]
        model.clear_cache()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(hs[True], hs[False], strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for compiled in (False, True):
        runs = [generate(model, labels, cfg_scale=2.0, compile=compiled,
                         generator=torch.Generator("cuda").manual_seed(5)) for _ in range(2)]
        assert runs[0].is_cuda and torch.equal(runs[0], runs[1])


@pytest.mark.gpu
@pytest.mark.parametrize("rope", ["spatial", "1d"])
def test_cuda_sampling_never_waits_for_the_device(rope):
    """Eager cached sampling with guidance, filters and the order constraint makes no
    host-device synchronisation (CUDA's sync debug mode turns one into an error)."""
    from tests.test_generator_tuples import _model as tuple_model

    model = (tuple_model(rope) if rope == "spatial" else _model(rope="1d")).cuda()
    labels = torch.tensor([0, 1, 2], device="cuda")
    gen = torch.Generator("cuda").manual_seed(0)
    generate(model, labels, cfg_scale=2.0, top_k=5, top_p=0.9, generator=gen)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        generate(model, labels, cfg_scale=2.0, top_k=5, top_p=0.9, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
