"""Held-out measures of a GPT against brute force: NLL with the null class, and the GPT
as a generative classifier (argmax over classes of the tuple's log-likelihood)."""

import pytest
import torch

from data.tokens import make_token_loader
from generator.config import gpt_config
from generator.heldout import generative_accuracy, heldout_nll
from generator.model import GPT
from tests.token_helpers import make_token_set


def _trained_gpt(folder):
    """A debug GPT fitted for 80 steps on the synthetic set (its tuples follow the class)."""
    torch.manual_seed(0)
    gpt = GPT(gpt_config("debug", vocab_sizes=[8, 6], num_tokens=6, num_classes=4,
                         dropout=0.0, class_dropout=0.1))
    opt = torch.optim.Adam(gpt.parameters(), lr=3e-3)
    loader = make_token_loader(folder, batch_size=16, train=True, mode="resampled")
    for _, (tokens, labels) in zip(range(80), loader, strict=False):
        loss = gpt.loss(labels, tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return gpt.eval()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    train = make_token_set(root / "train")
    return _trained_gpt(train), train, make_token_set(root / "heldout", n=40, seed=1)


def test_generative_accuracy_is_the_argmax_of_per_class_likelihoods(fitted):
    gpt, _, heldout = fitted
    result = generative_accuracy(gpt, make_token_loader(heldout, batch_size=16, train=False))
    # brute force: every image alone, scored under each class by heldout_nll
    hits = {"accuracy": 0, "accuracy_c0": 0, "accuracy_c1": 0}
    for tokens, labels in make_token_loader(heldout, batch_size=1, train=False):
        bits = [heldout_nll(gpt, [(tokens, torch.tensor([c]))]) for c in range(4)]
        for key, part in (("accuracy", ""), ("accuracy_c0", "_c0"), ("accuracy_c1", "_c1")):
            best = min(range(4), key=lambda c, part=part: bits[c][f"bits_per_image{part}"])
            hits[key] += best == int(labels)
    assert result["images"] == 40
    assert {k: result[k] for k in hits} == {k: v / 40 for k, v in hits.items()}
    assert result["accuracy"] > 0.5  # chance is 0.25: the classes were learned


def test_unconditional_nll_scores_every_image_with_the_null_class(fitted):
    gpt, train, _ = fitted
    batches = list(make_token_loader(train, batch_size=32, train=False))
    null = [(tokens, torch.full_like(labels, gpt.null_class)) for tokens, labels in batches]
    assert heldout_nll(gpt, batches, unconditional=True) == heldout_nll(gpt, null)
    assert heldout_nll(gpt, batches)["loss"] < heldout_nll(gpt, null)["loss"]
