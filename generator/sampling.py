"""Autoregressive sampling with classifier-free guidance, top-k / top-p and a KV cache.

CFG: the batch is doubled with the null class; per component,
logits = uncond + s (cond - uncond), s constant or rising linearly from 1 at the
first tuple to ``cfg_scale`` at the last. Then temperature, top-k, top-p and a draw
from ``generator`` (so a seed fixes the samples). A component drawn from the guided
distribution is fed to both halves before the next component or step.
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


def _draw(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs.float().cpu(), 1, generator=generator).squeeze(-1) \
        .to(logits.device)


@torch.no_grad()
def generate(model, labels: torch.Tensor, *, cfg_scale: float = 1.0, schedule: str = "constant",
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """Sample tuples [B, N, K] for class labels [B] (int64)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    cfg = model.cfg
    B, N, K = labels.shape[0], cfg.num_tokens, len(cfg.vocab_sizes)
    guided = cfg_scale != 1.0
    cls = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels
    was_training = model.training
    model.eval()
    tokens = torch.zeros(B, 0, K, dtype=torch.long, device=labels.device)
    if use_cache:
        model.setup_cache(cls.shape[0])
    try:
        x = model.cls_embed(cls)[:, None]  # the class token at position 0
        for i in range(N):
            if use_cache:
                h = model.step(x, i)[:, -1]  # [B or 2B, D]
            else:
                both = torch.cat([tokens, tokens]) if guided else tokens
                seq = torch.cat([model.cls_embed(cls)[:, None], model.embed_tokens(both)], 1)
                h = model.hidden(seq)[:, -1]
            scale = guidance_scale(i, N, cfg_scale, schedule)
            parts = []
            for k in range(K):
                previous = [torch.cat([p, p]) if guided else p for p in parts]
                logits = model.heads.logits(h, k, previous)
                if guided:
                    cond, uncond = logits.chunk(2)
                    logits = uncond + scale * (cond - uncond)
                parts.append(_draw(logits, temperature, top_k, top_p, generator))
            new = torch.stack(parts, -1)[:, None]  # [B, 1, K]
            tokens = torch.cat([tokens, new], 1)
            x = model.embed_tokens(torch.cat([new, new]) if guided else new)
    finally:
        if use_cache:
            model.clear_cache()
        model.train(was_training)
    return tokens
