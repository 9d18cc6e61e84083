"""Held-out loss of a GPT: the rate the generator pays for a tokenizer's tokens.

Every token of every held-out image is scored with its true class (no label dropout,
no model dropout): the per-component negative log-likelihood in nats per token (the
training loss's definition, so train and held-out curves share a scale), top-1
accuracy, and **bits per image**, the whole sequence's NLL in bits: what an ideal
entropy coder driven by this GPT would spend on one image's tokens. A tokenizer whose
tokens are cheap for the GPT to predict has a low rate; nominal bits (log2 of the
vocabularies) are only its upper bound.
"""

import contextlib
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from generator.model import GPT


@contextlib.contextmanager
def _scoring(gpt: GPT):
    """The GPT in eval mode (no dropout, no label dropout) for the block, then back."""
    was_training = gpt.training
    gpt.eval()
    try:
        yield
    finally:
        gpt.train(was_training)


def sequence_nll(logits: list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """logits (K tensors [B, N, V_k]) and tokens [B, N, K] -> [B, K]: each image's NLL of
    each component, summed over its sequence (nats, float32)."""
    return torch.stack([F.cross_entropy(lg.float().flatten(0, 1), tokens[..., k].flatten(),
                                        reduction="none").view(tokens.shape[0], -1).sum(1)
                        for k, lg in enumerate(logits)], -1)


@torch.no_grad()
def heldout_nll(gpt: GPT, batches: Iterable, device=None, unconditional: bool = False) -> dict:
    """batches of (tokens [B, N, K] int64, labels [B] int64) -> the record.

    Keys: ``images``, ``loss`` (sum over components of the mean NLL per token, nats),
    ``loss_<c>``, ``accuracy_<c>``, ``bits_per_image`` and ``bits_per_image_<c>`` per
    component ``c`` of ``gpt.cfg.names``. Sums over images are accumulated in float64.
    unconditional: every image scored with the null class (what guidance contrasts
    with); its bits minus the conditional ones are the class information the GPT uses.
    """
    device = device or next(gpt.parameters()).device
    names = gpt.cfg.names
    nll = torch.zeros(len(names), dtype=torch.float64)
    correct = torch.zeros(len(names), dtype=torch.float64)
    images = tokens_per_image = 0
    with _scoring(gpt):
        for tokens, labels in batches:
            tokens, labels = tokens.to(device), labels.to(device)
            if unconditional:
                labels = torch.full_like(labels, gpt.null_class)
            logits = gpt(labels, tokens)  # K tensors [B, N, V_k]
            nll += sequence_nll(logits, tokens).double().sum(0).cpu()
            correct += torch.stack([(lg.argmax(-1) == tokens[..., k]).sum()
                                    for k, lg in enumerate(logits)]).double().cpu()
            images += tokens.shape[0]
            tokens_per_image = tokens.shape[1]
    if images == 0:
        raise ValueError("the held-out set has no images")
    count = images * tokens_per_image
    per_token = (nll / count).tolist()
    bits = (nll / (images * math.log(2))).tolist()
    return {"images": images, "loss": sum(per_token), "bits_per_image": sum(bits),
            **{f"loss_{n}": per_token[k] for k, n in enumerate(names)},
            **{f"accuracy_{n}": float(correct[k] / count) for k, n in enumerate(names)},
            **{f"bits_per_image_{n}": bits[k] for k, n in enumerate(names)}}


@torch.no_grad()
def generative_accuracy(gpt: GPT, batches: Iterable, device=None) -> dict:
    """The GPT as a classifier of held-out images: each image's class is taken to be
    argmax_c log p(tokens | c) over the real classes, from the whole tuple and from each
    component alone. -> {"images", "accuracy", "accuracy_<c>"}. Costs one forward pass
    per class and batch: for small class counts (a diagnostic of how class-specific the
    conditional model is: the signal classifier-free guidance amplifies)."""
    device = device or next(gpt.parameters()).device
    names = gpt.cfg.names
    correct = torch.zeros(len(names) + 1, dtype=torch.float64)
    images = 0
    with _scoring(gpt):
        for tokens, labels in batches:
            tokens, labels = tokens.to(device), labels.to(device)
            scores = -torch.stack([sequence_nll(gpt(torch.full_like(labels, c), tokens), tokens)
                                   for c in range(gpt.cfg.num_classes)])  # [C, B, K]
            whole = torch.cat([scores.sum(-1, keepdim=True), scores], -1)  # [C, B, 1 + K]
            correct += (whole.argmax(0) == labels[:, None]).sum(0).double().cpu()
            images += tokens.shape[0]
    if images == 0:
        raise ValueError("the held-out set has no images")
    accuracy = (correct / images).tolist()
    return {"images": images, "accuracy": accuracy[0],
            **{f"accuracy_{n}": accuracy[k + 1] for k, n in enumerate(names)}}
