"""Shared pytest set-up: the `gpu` marker skips without CUDA; the user's weight caches and
environment variables are hidden, so tests see the same (packaged) weights everywhere."""

import pytest
import torch


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Image shards of the 364 held-out built-in digits (32 px): small real data."""
    from data import builtin
    from data.build_shards import BuildSettings, build_shards

    out = tmp_path_factory.mktemp("digits")
    build_shards(out, BuildSettings("builtin:digits/heldout", 32, "center", "png", 128),
                 builtin_name="digits", split="heldout", progress=False)
    assert builtin.SIZES["digits"]["heldout"] == 364
    return out


@pytest.fixture(scope="session", autouse=True)
def _packaged_weights_only(tmp_path_factory):
    hub = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GTGEN_INCEPTION_WEIGHTS", raising=False)
        mp.delenv("GTGEN_VGG16_WEIGHTS", raising=False)
        mp.setattr("eval.weights.inception_caches", lambda: [hub / "inception-2015-12-05.pt"])
        mp.setattr("eval.weights.vgg16_caches", lambda: [hub / "vgg16-397923af.pth"])
        yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
