"""What the GPT knows of Gaussian tuples: spatial RoPE from position tokens (with the KV
cache), the order constraint, guidance per component, attention dropout apart from
residual dropout, per-component losses."""

import pytest
import torch
import torch.nn.functional as F

from generator.config import gpt_config
from generator.model import GPT, apply_rope, spatial_angles, spatial_freqs
from generator.sampling import generate, guided_components, order_mask

VOCABS = [16, 12, 20]  # position on a 4 x 4 raster, shape, code
LAYOUT = {"components": ["position", "shape", "code"], "position_component": 0,
          "position_grid": 4}


def _model(rope=None, n=9, seed=0, dropout=0.0, **kw):
    torch.manual_seed(seed)
    cfg = gpt_config("debug", vocab_sizes=VOCABS, num_tokens=n, num_classes=5, dropout=dropout,
                     rope=rope, layout=LAYOUT, **kw)
    model = GPT(cfg).double().eval()
    for out in model.heads.outs:  # zero-initialised heads would hide every dependency
        torch.nn.init.normal_(out.weight, std=0.5)
    return model


def _tokens(B=3, n=9, seed=1, sort=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.stack([torch.randint(0, v, (B, n), generator=g) for v in VOCABS], -1)
    if sort:  # the tokenizer's canonical order: ascending position token
        t = torch.gather(t, 1, t[..., :1].argsort(dim=1, stable=True).expand_as(t))
    return t


def test_tuples_default_to_spatial_rope_and_refuse_the_grid_rope():
    assert _model().cfg.rope == "spatial"
    assert gpt_config("debug", vocab_sizes=[32], num_tokens=16, num_classes=3).rope == "2d"
    assert gpt_config("debug", vocab_sizes=VOCABS, num_tokens=9, num_classes=3).rope == "1d"
    with pytest.raises(ValueError, match="nothing for tuples"):
        gpt_config("debug", vocab_sizes=VOCABS, num_tokens=16, num_classes=3, rope="2d")
    with pytest.raises(ValueError, match="needs tuples with a position token"):
        gpt_config("debug", vocab_sizes=VOCABS, num_tokens=9, num_classes=3, rope="spatial")
    with pytest.raises(ValueError, match="position_grid 5 squared"):
        gpt_config("debug", vocab_sizes=VOCABS, num_tokens=9, num_classes=3,
                   layout={**LAYOUT, "position_grid": 5})


def test_spatial_angles_are_row_and_column_of_the_position_token():
    cfg = _model().cfg
    freqs = spatial_freqs(cfg)
    places = torch.tensor([[-1, 0, 6, 15]])  # class token; (0,0); (1,2); (3,3)
    angles = spatial_angles(places, 4, freqs)[0]
    quarter = len(freqs)
    assert torch.equal(angles[0], torch.zeros_like(angles[0]))
    for i, (r, c) in zip((1, 2, 3), ((0, 0), (1, 2), (3, 3)), strict=True):
        torch.testing.assert_close(angles[i, :quarter], r * freqs)
        torch.testing.assert_close(angles[i, quarter:], c * freqs)


def test_spatial_rope_scores_depend_on_the_displacement_only():
    """q at place a and k at place b score as q at a + d and k at b + d (relative)."""
    cfg = _model().cfg
    freqs, dh = spatial_freqs(cfg), cfg.dim // cfg.heads
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, dh, generator=g, dtype=torch.float64), \
        torch.randn(1, 1, 1, dh, generator=g, dtype=torch.float64)

    def score(a, b):
        ang = spatial_angles(torch.tensor([[a, b]]), 4, freqs)
        cos, sin = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
        qr = apply_rope(q, cos[:, :, :1], sin[:, :, :1])
        kr = apply_rope(k, cos[:, :, 1:], sin[:, :, 1:])
        return float((qr * kr).sum())

    # (0,1) vs (2,0) and, shifted by one row and one column, (1,2) vs (3,1)
    assert score(1, 8) == pytest.approx(score(6, 13), abs=1e-12)
    assert score(1, 8) != pytest.approx(score(1, 9), abs=1e-6)


@pytest.mark.parametrize("rope", ["spatial", "1d"])
def test_kv_cached_decoding_gives_the_full_forward_logits(rope):
    model = _model(rope)
    labels, tokens = torch.tensor([0, 3, 5]), _tokens()
    with torch.no_grad():
        full = model(labels, tokens)
        model.setup_cache(3)
        x = model.cls_embed(labels)[:, None]
        places = model.places(tokens[:, :0], class_token=True)
        parts = [tokens[..., k] for k in range(3)]
        for i in range(tokens.shape[1]):
            h = model.step(x, i, places)[:, -1]
            for k in range(3):
                step_logits = model.heads.logits(h, k, [p[:, i] for p in parts])
                torch.testing.assert_close(step_logits, full[k][:, i], rtol=1e-10, atol=1e-10)
            x, places = model.embed_tokens(tokens[:, i:i + 1]), model.places(tokens[:, i:i + 1])
        model.clear_cache()
    # sampling: cache and no cache agree under guidance with the spatial rotation
    gen = dict(cfg_scale=2.0, top_k=8)
    a = generate(model, labels, generator=torch.Generator().manual_seed(3), **gen)
    b = generate(model, labels, generator=torch.Generator().manual_seed(3), use_cache=False,
                 **gen)
    assert torch.equal(a, b)


def test_spatial_rope_reads_the_previous_tuples_place_not_the_index():
    """Moving tuple j's position token changes the logits at step j + 1 (its place rotates
    input j + 1) even with the position embedding removed."""
    model = _model()
    with torch.no_grad():  # no position embedding: only the rotation
        for table in (model.tok_embed[0], model.pos_rows, model.pos_cols):
            table.weight.zero_()
    labels, tokens = torch.tensor([1, 2, 3]), _tokens()
    moved = tokens.clone()
    moved[:, 4, 0] = (moved[:, 4, 0] + 5) % VOCABS[0]
    with torch.no_grad():
        a, b = model(labels, tokens)[2], model(labels, moved)[2]
    # steps < 4 cannot see tuple 4; step 4's code head sees its own position (the tuple
    # heads), so the first step whose hidden state can change is 5
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, 5], b[:, 5])
    one_d = _model("1d")
    with torch.no_grad():
        for table in (one_d.tok_embed[0], one_d.pos_rows, one_d.pos_cols):
            table.weight.zero_()
        torch.testing.assert_close(one_d(labels, tokens)[2][:, 5:],
                                   one_d(labels, moved)[2][:, 5:], rtol=0, atol=1e-12)


def test_order_constraint_keeps_samples_in_canonical_order():
    model = _model(n=12)
    labels = torch.arange(5).repeat(4)
    free = generate(model, labels, cfg_scale=1.5, order=False,
                    generator=torch.Generator().manual_seed(0))
    assert (free[:, 1:, 0] < free[:, :-1, 0]).any()  # the untrained model breaks the order
    for cfg_scale, temperature in ((1.0, 1.0), (2.0, 1.0), (1.5, 0.0)):
        ordered = generate(model, labels, cfg_scale=cfg_scale, temperature=temperature,
                           generator=torch.Generator().manual_seed(0))  # on by default
        assert (ordered[:, 1:, 0] >= ordered[:, :-1, 0]).all()
    logits = torch.zeros(2, 6)
    masked = order_mask(logits, torch.tensor([0, 4]))
    assert torch.isfinite(masked).tolist() == [[True] * 6, [False] * 4 + [True] * 2]
    with pytest.raises(ValueError, match="needs tuples with a position token"):
        single = GPT(gpt_config("debug", vocab_sizes=[8], num_tokens=4, num_classes=2))
        generate(single, torch.tensor([0]), order=True)


def test_order_constraint_changes_nothing_when_the_model_obeys_it():
    """A model whose position logits at step i allow only ids in [i, i + 1] * 16 / N
    already keeps the order: the same seed gives the same samples with and without."""
    model = _model(n=8)
    heads_logits = model.heads.logits
    calls = {"step": 0}

    def obeying(h, k, previous):
        out = heads_logits(h, k, previous)
        if k == 0:
            i = calls["step"]
            calls["step"] += 1
            allowed = torch.zeros(out.shape[-1], dtype=torch.bool)
            allowed[2 * i:2 * i + 2] = True  # a window that only moves forward
            out = out.masked_fill(~allowed, -1e4)  # probability 0, finite under CFG
        return out

    model.heads.logits = obeying
    labels = torch.tensor([0, 1, 2, 3])
    results = []
    for order in (True, False):
        calls["step"] = 0
        results.append(generate(model, labels, cfg_scale=2.0, order=order,
                                generator=torch.Generator().manual_seed(5)))
    assert torch.equal(results[0], results[1])
    assert (results[0][:, 1:, 0] >= results[0][:, :-1, 0]).all()


def test_guiding_some_components_leaves_the_others_conditional():
    model = _model()
    labels = torch.tensor([0, 1, 2, 3])
    assert guided_components("all", LAYOUT["components"]) == [0, 1, 2]
    assert guided_components("code", LAYOUT["components"]) == [2]
    assert guided_components("shape,0", LAYOUT["components"]) == [0, 1]
    with pytest.raises(ValueError, match="unknown component 'colour'"):
        guided_components("colour", LAYOUT["components"])

    def run(scale, guide):
        return generate(model, labels, cfg_scale=scale, guide=guide, temperature=0)

    # guiding no component that varies = the conditional draw; guiding all differs
    cond = run(1.0, "all")
    assert torch.equal(run(3.0, "position,shape,code"), run(3.0, "all"))
    assert not torch.equal(run(3.0, "all"), cond)
    code_only = run(3.0, "code")
    assert not torch.equal(code_only, run(3.0, "all"))


def test_attention_dropout_is_its_own_rate_and_off_by_default():
    assert gpt_config("debug", vocab_sizes=[8], num_tokens=4, num_classes=2).attn_dropout == 0
    model = _model(dropout=0.0, attn_dropout=0.0).train()
    assert all(b.attn.attn_p == 0 for b in model.blocks)
    labels, tokens = torch.tensor([1, 2, 3]), _tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(labels, tokens), model(labels, tokens))
        noisy = _model(dropout=0.0, attn_dropout=0.5).train()
        assert not torch.allclose(noisy(labels, tokens)[0], noisy(labels, tokens)[0])
        residual = _model(dropout=0.3)
        assert all(b.attn.attn_p == 0 and b.attn.drop.p == 0.3 for b in residual.blocks)
    with pytest.raises(ValueError, match="attn_dropout must be in"):
        _model(attn_dropout=1.0)


def test_per_component_losses_match_a_by_hand_cross_entropy():
    model = _model()
    labels, tokens = torch.tensor([1, 2, 3]), _tokens()
    with torch.no_grad():
        ce, acc = model.losses(labels, tokens)
        logits = model(labels, tokens)
    for k, lg in enumerate(logits):
        logp = lg - torch.logsumexp(lg, -1, keepdim=True)
        nll = -logp.gather(-1, tokens[..., k:k + 1]).mean()
        assert float(ce[k]) == pytest.approx(float(nll), rel=1e-6)
        assert float(acc[k]) == pytest.approx(float((lg.argmax(-1) == tokens[..., k])
                                                    .double().mean()))
    with torch.no_grad():
        assert float(model.loss(labels, tokens)) == pytest.approx(float(ce.sum()), rel=1e-6)
    assert float(F.cross_entropy(logits[0].flatten(0, 1), tokens[..., 0].flatten())) == \
        pytest.approx(float(ce[0]), rel=1e-6)


def test_factorised_position_terms_add_a_row_and_a_column_score():
    model = _model()
    assert model.cfg.position_embed == "factorised"
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer in (model.heads.row_out, model.heads.col_out):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float64))
    h = torch.randn(2, 5, model.cfg.dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = model.heads.logits(h, 0, [])
        free, rows, cols = (m(h).float() for m in (model.heads.outs[0], model.heads.row_out,
                                                   model.heads.col_out))
    for p in range(16):  # token p = row * 4 + column; the same two additions: exact
        torch.testing.assert_close(got[..., p], free[..., p] + rows[..., p // 4]
                                   + cols[..., p % 4], rtol=0, atol=0)
    with torch.no_grad():  # one step's hidden state [B, D], as the sampler scores it
        torch.testing.assert_close(model.heads.logits(h[:, 0], 0, []), got[:, 0], rtol=0,
                                   atol=0)
    tokens = _tokens()
    with torch.no_grad():
        x = model.embed_tokens(tokens)
        p = tokens[..., 0]
        by_hand = sum(model.tok_embed[k](tokens[..., k]) for k in range(3)) \
            + model.pos_rows(p // 4) + model.pos_cols(p % 4)
    torch.testing.assert_close(x, by_hand)
    plain = _model(position_embed="plain")
    assert not hasattr(plain, "pos_rows") and not hasattr(plain.heads, "row_out")
    with torch.no_grad():
        torch.testing.assert_close(plain.heads.logits(h, 0, []), plain.heads.outs[0](h).float())
