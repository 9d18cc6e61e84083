"""Autoregressive sampling with classifier-free guidance, top-k / top-p and a KV cache.

CFG: the batch is doubled with the null class; per guided component,
logits = uncond + s (cond - uncond), s constant or rising linearly from 1 at the
first tuple to ``cfg_scale`` at the last; components left out of ``guide`` are drawn
from the conditional logits alone. Then the order constraint, temperature, top-k,
top-p and a draw from ``generator`` (so a seed fixes the samples). A component drawn
from the guided distribution is fed to both halves before the next component or step.

Order constraint (tuples with a position token): the tokenizer emits its Gaussians
sorted by position token, so position logits below the previous tuple's position are
masked; sequences the tokenizer never produces cannot be drawn.
"""

import torch

SCHEDULES = ("constant", "linear")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf all but the top_k largest logits (0: all) and, of the rest, all
    outside the smallest set whose probability reaches top_p (the top token stays)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def guidance_scale(step: int, num_steps: int, cfg_scale: float, schedule: str) -> float:
    if schedule == "constant" or num_steps == 1:
        return cfg_scale
    return 1.0 + (cfg_scale - 1.0) * step / (num_steps - 1)


def order_mask(logits: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Position logits [B, V] with every id below previous [B] set to -inf."""
    if previous is None:
        return logits
    below = torch.arange(logits.shape[-1], device=logits.device)[None] < previous[:, None]
    return logits.masked_fill(below, float("-inf"))


def guided_components(guide, names: list[str]) -> list[int]:
    """Indices of the components to guide: None/"all" = every one, else names or ids
    ("code", "1,2", ["shape", "code"])."""
    if guide is None or guide == "all":
        return list(range(len(names)))
    items = [t.strip() for t in guide.split(",")] if isinstance(guide, str) else list(guide)
    out = []
    for item in items:
        if isinstance(item, int) or str(item).isdigit():
            k = int(item)
        elif item in names:
            k = names.index(item)
        else:
            raise ValueError(f"unknown component {item!r} to guide; components: {names}")
        if not 0 <= k < len(names):
            raise ValueError(f"component {k} is outside [0, {len(names)})")
        out.append(k)
    if not out:
        raise ValueError("guide names no component")
    return sorted(set(out))


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of probs [B, V] (non-negative, rows need not sum to 1), on
    probs' device: argmax of probs / E with E ~ Exp(1) i.i.d. (P(argmax = v) = p_v; the
    one-sample path of torch.multinomial, so the same draws for the same generator),
    without multinomial's host-side checks: no device sync, fixed shapes."""
    race = torch.empty_like(probs, dtype=torch.float32).exponential_(generator=generator)
    return (probs.float() / race).argmax(-1)


def _draw(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return logits.argmax(-1)
    return draw(torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1),
                generator)


def decode_step(model, compile: bool = False):
    """The trunk's cached step (x [B, 1, D], position: 0-dim tensor, places) -> h [B, D].

    compile: torch.compile it (CUDA: mode "reduce-overhead", i.e. CUDA graphs). Every
    step has the same shapes (full-length cache with a mask, position as a tensor), so
    it compiles once per batch size. Compiled and eager steps may differ in the last
    bits, so the samples of a seed are fixed per code path and dtype.
    """
    def step(x, position, places):
        return model.step(x, position, places)[:, -1]

    if not compile:
        return step
    if not next(model.parameters()).is_cuda:
        return torch.compile(step, fullgraph=True, dynamic=False)
    graphed = torch.compile(step, fullgraph=True, dynamic=False, mode="reduce-overhead")

    def graphed_step(x, position, places):
        # each call is a new step: the previous h (read before this call) may be reused
        torch.compiler.cudagraph_mark_step_begin()
        return graphed(x, position, places)

    return graphed_step


def resolve_order(order: bool | None, position_component: int) -> bool:
    """The order constraint a sampler applies: None (auto) = on when the tuples have a
    position token; on without one is a ValueError."""
    if order is None:
        return position_component >= 0
    if order and position_component < 0:
        raise ValueError("the order constraint needs tuples with a position token; this "
                         "model has none")
    return order


@torch.no_grad()
def generate(model, labels: torch.Tensor, *, cfg_scale: float = 1.0, schedule: str = "constant",
             guide=None, order: bool | None = None, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, generator: torch.Generator | None = None,
             use_cache: bool = True, compile: bool = False) -> torch.Tensor:
    """Sample tuples [B, N, K] for class labels [B] (int64).

    guide: the components CFG applies to (see :func:`guided_components`; None = all).
    order: the order constraint on the position component; None = on when the model's
    tuples have one. generator: on labels' device (draws happen there). compile: see
    :func:`decode_step` (with the cache only).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if compile and not use_cache:
        raise ValueError("compile needs the KV cache (use_cache=True)")
    if generator is not None and generator.device.type != labels.device.type:
        raise ValueError(f"the generator is on {generator.device} but sampling runs on "
                         f"{labels.device}; create it there: "
                         f"torch.Generator({labels.device.type!r})")
    cfg = model.cfg
    B, N, K = labels.shape[0], cfg.num_tokens, len(cfg.vocab_sizes)
    pc = cfg.position_component
    order = resolve_order(order, pc)
    guide_set = set(guided_components(guide, cfg.names))
    guided = cfg_scale != 1.0
    cls = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels

    def both(t):  # the same tokens for the conditional and the unconditional half
        return torch.cat([t, t]) if guided else t

    was_training = model.training
    model.eval()
    tokens = torch.zeros(B, N, K, dtype=torch.long, device=labels.device)
    positions = torch.arange(N, device=labels.device)  # views of it: no host-to-device copy
    if use_cache:
        model.setup_cache(cls.shape[0])
        step = decode_step(model, compile)
    try:
        x = model.cls_embed(cls)[:, None]  # the class token at position 0
        places = model.places(tokens.new_zeros(cls.shape[0], 0, K), class_token=True)
        for i in range(N):
            if use_cache:
                h = step(x, positions[i], places)  # [B or 2B, D]
            else:
                seq = torch.cat([model.cls_embed(cls)[:, None],
                                 model.embed_tokens(both(tokens[:, :i]))], 1)
                h = model.hidden(seq, 0, model.places(both(tokens[:, :i]), class_token=True))
                h = h[:, -1]
            scale = guidance_scale(i, N, cfg_scale, schedule)
            parts = []
            for k in range(K):
                logits = model.heads.logits(h, k, [both(p) for p in parts])
                if guided:
                    cond, uncond = logits.chunk(2)
                    logits = uncond + scale * (cond - uncond) if k in guide_set else cond
                if order and k == pc and i > 0:
                    logits = order_mask(logits, tokens[:, i - 1, pc])
                parts.append(_draw(logits, temperature, top_k, top_p, generator))
            tokens[:, i] = torch.stack(parts, -1)
            new = tokens[:, i:i + 1]  # [B, 1, K]
            x, places = model.embed_tokens(both(new)), model.places(both(new))
    finally:
        if use_cache:
            model.clear_cache()
        model.train(was_training)
    return tokens
