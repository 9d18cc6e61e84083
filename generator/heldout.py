"""Held-out loss of a GPT: the rate the generator pays for a tokenizer's tokens.

Every token of every held-out image is scored with its true class (no label dropout,
no model dropout): the per-component negative log-likelihood in nats per token (the
training loss's definition, so train and held-out curves share a scale), top-1
accuracy, and **bits per image**, the whole sequence's NLL in bits: what an ideal
entropy coder driven by this GPT would spend on one image's tokens. A tokenizer whose
tokens are cheap for the GPT to predict has a low rate; nominal bits (log2 of the
vocabularies) are only its upper bound.
"""

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from generator.model import GPT


@torch.no_grad()
def heldout_nll(gpt: GPT, batches: Iterable, device=None) -> dict:
    """batches of (tokens [B, N, K] int64, labels [B] int64) -> the record.

    Keys: ``images``, ``loss`` (sum over components of the mean NLL per token, nats),
    ``loss_<c>``, ``accuracy_<c>``, ``bits_per_image`` and ``bits_per_image_<c>`` per
    component ``c`` of ``gpt.cfg.names``. Sums are accumulated in float64.
    """
    was_training = gpt.training
    gpt.eval()
    device = device or next(gpt.parameters()).device
    names = gpt.cfg.names
    nll = torch.zeros(len(names), dtype=torch.float64)
    correct = torch.zeros(len(names), dtype=torch.float64)
    images = tokens_per_image = 0
    for tokens, labels in batches:
        tokens, labels = tokens.to(device), labels.to(device)
        logits = gpt(labels, tokens)  # K tensors [B, N, V_k]
        for k, lg in enumerate(logits):
            target = tokens[..., k]
            nll[k] += F.cross_entropy(lg.float().flatten(0, 1), target.flatten(),
                                      reduction="sum").double().cpu()
            correct[k] += (lg.argmax(-1) == target).sum().double().cpu()
        images += tokens.shape[0]
        tokens_per_image = tokens.shape[1]
    gpt.train(was_training)
    if images == 0:
        raise ValueError("the held-out set has no images")
    count = images * tokens_per_image
    per_token = (nll / count).tolist()
    bits = (nll / (images * math.log(2))).tolist()
    return {"images": images, "loss": sum(per_token), "bits_per_image": sum(bits),
            **{f"loss_{n}": per_token[k] for k, n in enumerate(names)},
            **{f"accuracy_{n}": float(correct[k] / count) for k, n in enumerate(names)},
            **{f"bits_per_image_{n}": bits[k] for k, n in enumerate(names)}}
