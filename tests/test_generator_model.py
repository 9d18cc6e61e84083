"""GPT: KV cache = full forward, causality, identity RoPE for the class token, tuple heads,
filtering and guidance properties, seeded sampling."""

import math

import pytest
import torch

from generator.config import gpt_config
from generator.model import GPT, apply_rope, rope_angles, use_attention, xformers_runs
from generator.sampling import filter_logits, generate, guidance_scale

VOCABS = [16, 12, 20]


def _model(vocab=VOCABS, n=9, rope=None, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = gpt_config("debug", vocab_sizes=vocab, num_tokens=n, num_classes=5, dropout=0.0,
                     rope=rope)
    model = GPT(cfg).to(dtype).eval()
    for out in model.heads.outs:  # zero-initialised heads would hide every dependency
        torch.nn.init.normal_(out.weight, std=0.5)
    return model


def _tokens(model, B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (B, model.cfg.num_tokens), generator=g)
                        for v in model.cfg.vocab_sizes], -1)


@pytest.mark.parametrize(("vocab", "n", "rope"), [(VOCABS, 9, "1d"), ([32], 16, "2d")])
def test_kv_cached_decoding_gives_the_full_forward_logits(vocab, n, rope):
    model = _model(vocab, n, rope)
    labels, tokens = torch.tensor([0, 3, 5]), _tokens(model)
    with torch.no_grad():
        full = model(labels, tokens)
        model.setup_cache(3)
        x = model.cls_embed(labels)[:, None]
        parts = [tokens[..., k] for k in range(len(vocab))]
        for i in range(n):
            h = model.step(x, i)[:, -1]
            for k in range(len(vocab)):
                step_logits = model.heads.logits(h, k, [p[:, i] for p in parts])
                torch.testing.assert_close(step_logits, full[k][:, i], rtol=1e-10, atol=1e-10)
            x = model.embed_tokens(tokens[:, i:i + 1])
        model.clear_cache()


def test_causality_later_tokens_do_not_change_earlier_logits():
    model = _model()
    labels, tokens = torch.tensor([1, 2, 4]), _tokens(model)
    changed = tokens.clone()
    j = 5
    changed[:, j:] = (changed[:, j:] + 1) % torch.tensor(VOCABS)
    with torch.no_grad():
        a, b = model(labels, tokens), model(labels, changed)
    for k in range(3):  # position i predicts token i from tokens < i: i <= j unchanged
        torch.testing.assert_close(a[k][:, :j + 1] if k == 0 else a[k][:, :j],
                                   b[k][:, :j + 1] if k == 0 else b[k][:, :j],
                                   rtol=0, atol=1e-12)
        assert not torch.allclose(a[k][:, j + 1:], b[k][:, j + 1:])


def test_class_token_rotation_is_identity():
    for rope in ("1d", "2d"):
        cfg = gpt_config("debug", vocab_sizes=[8], num_tokens=16, num_classes=3, rope=rope)
        angles = rope_angles(cfg)
        assert torch.equal(angles[0], torch.zeros_like(angles[0]))
        assert angles[1:].abs().sum() > 0
        q = torch.randn(1, 2, 1, cfg.dim // cfg.heads)
        torch.testing.assert_close(apply_rope(q, torch.cos(angles[:1]), torch.sin(angles[:1])), q)
    # 2d: tuple i sits on row i // side, column i % side (input position i + 1)
    cfg = gpt_config("debug", vocab_sizes=[8], num_tokens=16, num_classes=3, rope="2d")
    quarter = cfg.dim // cfg.heads // 4
    angles = rope_angles(cfg)
    assert angles[1 + 6, 0] == 1 and angles[1 + 6, quarter] == 2  # tuple 6: row 1, col 2


def test_tuple_heads_factorise_the_step():
    """Component k depends on components < k and not on components >= k."""
    model = _model()
    h = torch.randn(4, model.cfg.dim, dtype=torch.float64)
    t = [torch.randint(0, v, (4,)) for v in VOCABS]
    other = [(x + 1) % v for x, v in zip(t, VOCABS, strict=True)]
    with torch.no_grad():
        for k in range(3):
            base = model.heads.logits(h, k, t)
            later = model.heads.logits(h, k, t[:k] + other[k:])
            torch.testing.assert_close(base, later, rtol=0, atol=0)  # no peeking ahead
            if k > 0:
                earlier = model.heads.logits(h, k, other[:1] + t[1:])
                assert not torch.allclose(base, earlier)
    # with one component the head is exactly a linear map of h (LlamaGen)
    single = _model([32], 16)
    torch.testing.assert_close(single.heads.logits(h, 0, []), single.heads.outs[0](h).float())


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, False, False, False, True]]
    p = torch.softmax(logits, -1)[0]
    for top_p in (0.3, 0.6, 0.8, 0.95):
        kept = torch.isfinite(filter_logits(logits, top_p=top_p))[0]
        order = torch.argsort(p, descending=True)
        need = int((torch.cumsum(p[order], 0) < top_p).sum()) + 1  # smallest set reaching p
        assert set(torch.nonzero(kept).flatten().tolist()) == set(order[:need].tolist())
    assert torch.equal(filter_logits(logits), logits)
    assert torch.isfinite(filter_logits(logits, top_k=100)).all()


def test_guidance_properties():
    assert guidance_scale(0, 10, 4.0, "linear") == 1.0
    assert guidance_scale(9, 10, 4.0, "linear") == 4.0
    assert guidance_scale(3, 10, 4.0, "constant") == 4.0
    model = _model()
    labels = torch.tensor([1, 2])
    # cfg scale 1 is conditional sampling: identical to sampling without the doubled batch
    a = generate(model, labels, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    # cfg scale 0 is unconditional sampling: labels are ignored
    u1 = generate(model, labels, cfg_scale=0.0, temperature=0, generator=None)
    u2 = generate(model, torch.tensor([4, 0]), cfg_scale=0.0, temperature=0, generator=None)
    assert torch.equal(u1, u2)
    assert a.shape == (2, 9, 3)
    with pytest.raises(ValueError, match="cfg_scale must be >= 0"):
        generate(model, labels, cfg_scale=-1.0)


def test_same_seed_same_samples_and_cache_matches_no_cache():
    model = _model()
    labels = torch.tensor([0, 1, 2, 3])

    def run(seed, use_cache=True):
        return generate(model, labels, cfg_scale=2.0, top_k=10, top_p=0.9,
                        generator=torch.Generator().manual_seed(seed), use_cache=use_cache)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert torch.equal(run(0), run(0, use_cache=False))
    for k, v in enumerate(VOCABS):
        assert run(2)[..., k].max() < v


def test_llamagen_sizes():
    for size, params in (("B", 111e6), ("L", 343e6)):
        cfg = gpt_config(size, vocab_sizes=[16384], num_tokens=256, num_classes=1000)
        with torch.device("meta"):
            n = sum(p.numel() for p in GPT(cfg).parameters())
        assert n == pytest.approx(params, rel=0.01)
    assert math.isclose(gpt_config("3B", vocab_sizes=[8], num_tokens=256,
                                   num_classes=10).dim / 32, 100)


def test_attention_choice_on_the_cpu():
    model = _model()
    assert use_attention(model, "auto", "cpu") == "sdpa"
    assert not any(b.attn.use_xformers for b in model.blocks)
    with pytest.raises(ValueError, match="does not import or run on cpu"):
        use_attention(model, "xformers", "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_xformers_attention_matches_sdpa_on_cuda(dtype):
    """Teacher-forced logits and the gradients through xformers' memory-efficient
    attention against SDPA's, same weights (the test is skipped where xformers does not
    run on this GPU: the trainer then falls back to SDPA)."""
    if not xformers_runs("cuda", dtype):
        pytest.skip("xformers does not import or run on this GPU")
    model = _model(dtype=torch.float32).cuda().to(dtype)
    labels, tokens = torch.tensor([0, 3, 5]).cuda(), _tokens(model).cuda()
    results = {}
    for backend in ("sdpa", "xformers"):
        model.zero_grad()
        assert use_attention(model, backend, "cuda") == backend
        loss = model.loss(labels, tokens)
        loss.backward()
        results[backend] = (loss.detach().float(), model.blocks[0].attn.qkv.weight.grad.float())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(results["xformers"][0], results["sdpa"][0], rtol=tol, atol=tol)
    torch.testing.assert_close(results["xformers"][1], results["sdpa"][1], rtol=tol,
                               atol=tol * results["sdpa"][1].abs().max().item())


def test_flops_per_token_counts_every_matmul_of_the_tuple_model():
    """6 x the multiply-adds of every nn.Linear a tuple passes through (counted by hooks
    in a forward pass) + the attention term 12 L d N."""
    from generator.config import gpt_config
    from generator.model import flops_per_token

    cfg = gpt_config("debug", vocab_sizes=[64, 12, 20], num_tokens=16, num_classes=5,
                     component_names=["position", "shape", "code"], position_component=0,
                     position_grid=8)
    model = GPT(cfg)
    macs = []

    def count(mod, args, out):
        macs.append(args[0].numel() // args[0].shape[-1] * mod.in_features * mod.out_features)

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(count)
    B, N = 2, cfg.num_tokens
    tokens = torch.stack([torch.randint(0, v, (B, N)) for v in cfg.vocab_sizes], -1)
    model(torch.tensor([0, 1]), tokens)
    expected = 6 * sum(macs) / (B * N) + 12 * cfg.layers * cfg.dim * N
    assert flops_per_token(cfg) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_sampling_flops_per_image_counts_a_cached_generation(cfg_scale, monkeypatch):
    """Every matmul of a real cached generation (torch's FlopCounterMode) + the attention
    it does: 4 x head width x the positions each query may attend (the static cache's
    mask), counted at every attention call; CFG doubles both."""
    from torch.utils.flop_counter import FlopCounterMode

    from generator.config import gpt_config
    from generator.model import sampling_flops_per_image
    from generator.sampling import generate

    cfg = gpt_config("debug", vocab_sizes=[64, 12, 20], num_tokens=16, num_classes=5,
                     component_names=["position", "shape", "code"], position_component=0,
                     position_grid=8)
    model = GPT(cfg)
    attention = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(q, k, v, attn_mask=None, **kw):
        allowed = attn_mask.sum().item() if attn_mask is not None else q.shape[-2] * k.shape[-2]
        attention.append(4 * q.shape[0] * q.shape[1] * q.shape[-1] * allowed)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    B = 3
    with FlopCounterMode(display=False) as counter:
        generate(model, torch.arange(B), cfg_scale=cfg_scale)
    assert len(attention) == cfg.layers * cfg.num_tokens  # the cached path ran
    counted = (counter.get_total_flops() + sum(attention)) / B
    assert sampling_flops_per_image(cfg, cfg_scale != 1.0) == pytest.approx(counted, rel=1e-12)
