"""The metrics as the ADM evaluator defines them, each against a small independent
re-implementation of ADM's (or TensorFlow's, or skimage's) definition."""

import json

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from data.files import file_sha1
from eval import fid
from eval.evaluator import extract
from eval.frechet import frechet_distance, statistics
from eval.inception import ADM_RESIZE, InceptionFeatures, head_logits, tf1_resize_bilinear
from eval.metrics import inception_score
from eval.prdc import precision_recall
from eval.recon import ssim
from eval.sets import ImageSetError, open_set
from eval.weights import ResolvedWeights, resolve_inception
from tests.test_eval_features import _images

# ---------------------------------------------------------------- TF1 resize


def _tf1_resize_by_pixel(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow 1 ResizeBilinear (align_corners=False, no half-pixel centres), pixel
    by pixel as its CPU kernel computes it: float32 source coordinates out * (in / out),
    lerp along x on the top and bottom rows, then along y."""
    in_h, in_w = img.shape
    sy, sx = np.float32(in_h / out_h), np.float32(in_w / out_w)
    out = np.zeros((out_h, out_w), np.float32)
    for y in range(out_h):
        fy = np.float32(y) * sy
        y0, y1 = int(np.floor(fy)), min(int(np.ceil(fy)), in_h - 1)
        ly = np.float32(fy - np.floor(fy))
        for x in range(out_w):
            fx = np.float32(x) * sx
            x0, x1 = int(np.floor(fx)), min(int(np.ceil(fx)), in_w - 1)
            lx = np.float32(fx - np.floor(fx))
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * lx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * lx
            out[y, x] = top + (bottom - top) * ly
    return out


@pytest.mark.parametrize(("shape", "size"), [((5, 7), 11), ((13, 6), 5), ((28, 28), 299),
                                             ((256, 64), 299)])
def test_tf1_resize_matches_the_per_pixel_formula(shape, size):
    rng = np.random.default_rng(0)
    img = (rng.random(shape) * 255).astype(np.float32)
    ours = tf1_resize_bilinear(torch.from_numpy(img)[None, None], size)[0, 0].numpy()
    expected = _tf1_resize_by_pixel(img, size, size)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-3)  # float32 on 0..255


def test_tf1_resize_known_values_and_differs_from_half_pixel():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # 4 -> 2: output pixel d reads source 2d exactly (half-pixel centres would average)
    assert torch.equal(tf1_resize_bilinear(x, 2), torch.tensor([[[[0.0, 2.0], [8.0, 10.0]]]]))
    half = torch.nn.functional.interpolate(x, size=(2, 2), mode="bilinear", align_corners=False)
    assert torch.equal(half, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert ADM_RESIZE == "tf1-bilinear"

# ---------------------------------------------------------------- sFID order


def _adm_spatial_numpy(conv_nchw: np.ndarray) -> np.ndarray:
    """ADM: NHWC mixed_6/conv, spatial[..., :7], reshape([N, -1])."""
    nhwc = np.transpose(conv_nchw, (0, 2, 3, 1))
    return nhwc[..., :7].reshape(len(nhwc), -1)


def test_sfid_against_stored_adm_order_statistics_is_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "CACHE", tmp_path / "cache")
    extractor = InceptionFeatures(resolve_inception(download=False))
    imgs = _images(12, 4)
    # mixed_6/conv by running the trunk ourselves, flattened in ADM's order with numpy
    x = extractor.preprocess(imgs)
    with torch.no_grad():
        for name, layer in extractor.layers:
            if name == "mixed_6":
                conv = layer.conv(x).double().numpy()
                break
            x = layer(x)
    adm = _adm_spatial_numpy(conv)
    pool = extract(extractor, imgs, progress=False)["pool"]
    mu, sigma = statistics(pool)
    mu_s, sigma_s = statistics(adm)
    ref = tmp_path / "adm_ref.npz"
    np.savez(ref, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    samples = tmp_path / "s.npz"
    np.savez(samples, arr_0=imgs)
    out = tmp_path / "r.json"
    assert fid.main([str(samples), str(ref), "--metrics", "fid,sfid", "--json", str(out),
                     "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert abs(result["metrics"]["fid"]) < 1e-4 and abs(result["metrics"]["sfid"]) < 1e-4
    # the PyTorch (channel, row, column) order against the same stored statistics: far off
    torch_order = conv[:, :7].reshape(len(conv), -1)
    assert frechet_distance(*statistics(torch_order), mu_s, sigma_s) > 1.0
    assert result["resize"] == "tf1-bilinear" and result["adm_comparable"] is True

# ---------------------------------------------------------------- Inception Score


def _adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """ADM's compute_inception_score on softmax(logits)."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    preds = e / e.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def _ten_equal_splits(logits: np.ndarray) -> float:
    """The torch-fidelity / old convention: 10 equal splits whatever N is."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    return float(np.mean([np.exp(np.mean(np.sum(q * (np.log(q) - np.log(q.mean(0))), 1)))
                          for q in np.array_split(p, 10)]))


@pytest.mark.parametrize("n", [10_000, 7_300, 50])
def test_inception_score_is_adms(n):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 1008, n)
    logits = rng.normal(0, 1, (n, 1008))
    logits[np.arange(n), labels] += 9  # confident, diverse: a large IS
    ours, _ = inception_score(logits)
    assert ours == pytest.approx(_adm_inception_score(logits), rel=1e-9)
    if n == 10_000:  # 2 splits of 5000, not 10 of 1000: the two conventions differ
        assert abs(ours - _ten_equal_splits(logits)) > 0.05 * ours


def test_is_logits_use_the_classifier_weight_without_bias(tmp_path):
    from safetensors.torch import save_file

    from eval.inception_net import ConvBN, InceptionV3

    torch.manual_seed(0)
    net = InceptionV3(head=True)  # random weights, a classifier with a large bias
    for m in net.modules():
        if isinstance(m, ConvBN):
            torch.nn.init.normal_(m.weight, 0, (2 / m.weight[0].numel()) ** 0.5)
    torch.nn.init.normal_(net.output.bias, 0, 3.0)
    path = tmp_path / "with-head.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    ex = InceptionFeatures(ResolvedWeights("inception", str(path), "explicit", file_sha1(path)))
    taps = []
    ex.net.layers.mixed_6.conv.register_forward_hook(lambda m, i, o: taps.append(o))
    out = ex(_images(2, 7))
    w = ex.net.output.weight.detach().double()
    assert out["logits"].shape == (2, 1008)
    torch.testing.assert_close(out["logits"], out["pool"] @ w.t(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out["logits"], ex.net.output(out["pool"].float()).double())
    # spatial: (row, column, channel) with channel fastest
    np.testing.assert_allclose(out["spatial"].numpy(),
                               _adm_spatial_numpy(taps[0].detach().double().numpy()),
                               rtol=1e-6, atol=1e-6)
    x = torch.randn(4, 9)
    w9 = torch.randn(5, 9)
    torch.testing.assert_close(head_logits(x, w9), x @ w9.t())

# ---------------------------------------------------------------- SSIM conventions


def test_llamagen_ssim_matches_skimage_defaults_with_data_range_2():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 20, 18, generator=g, dtype=torch.float64)
    b = (a + 0.15 * torch.randn(2, 3, 20, 18, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = ssim(a, b, "llamagen")
    for i in range(2):
        x, y = a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy()
        expected = structural_similarity(x, y, channel_axis=-1, data_range=2.0)
        assert got[i].item() == pytest.approx(expected, rel=1e-9)
    # on smooth images (reconstruction-like), the 4x constants read clearly higher
    c = torch.from_numpy(_images(2, 9, size=32)).permute(0, 3, 1, 2).double() / 255
    d = (c + 0.05 * torch.randn(c.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert (ssim(c, d, "llamagen") > ssim(c, d, "wang") + 0.02).all()
    with pytest.raises(ValueError, match="SSIM convention"):
        ssim(a, b, "skimage")

# ---------------------------------------------------------------- precision / recall


def test_matrix_product_distances_give_the_exact_route_answers():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (300, 64))
    fake = np.concatenate([rng.normal(0, 1, (150, 64)), rng.normal(3, 1, (120, 64))])
    fast = precision_recall(real, fake, device="cpu")
    exact = precision_recall(real, fake, exact=True)
    assert fast == exact and 0 < fast[0] < 1 and 0 < fast[1] <= 1

# ---------------------------------------------------------------- streamed sets


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_is_streamed_in_batches_equal_to_the_whole_array(tmp_path, compressed):
    imgs = _images(23, 5, size=16)
    path = tmp_path / "s.npz"
    (np.savez_compressed if compressed else np.savez)(path, arr_0=imgs)
    s = open_set(path)
    assert (s.kind, s.count) == ("npz", 23)
    batches = list(s.batches(5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert np.array_equal(np.concatenate(batches), imgs)


def test_truncated_npz_is_a_clear_error(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, arr_0=_images(8, 5, size=16))
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageSetError, match=r"cut\.npz: not a \.npz file, or a truncated one"):
        list(open_set(cut).batches(4))


def test_stored_statistics_are_not_recomputed_from_the_batch_images(tmp_path, monkeypatch):
    """An ADM batch holds images and statistics: FID/sFID alone never embed the images."""
    monkeypatch.setattr(fid, "CACHE", tmp_path / "cache")
    imgs = _images(6, 8)
    ref = tmp_path / "ref.npz"
    d = 2048
    np.savez(ref, arr_0=imgs, mu=np.zeros(d), sigma=np.eye(d), mu_s=np.zeros(2023),
             sigma_s=np.eye(2023))
    calls = []
    real_extract = fid.extract
    monkeypatch.setattr(fid, "extract", lambda *a, **k: calls.append(a[3]) or real_extract(*a, **k))
    extractor = InceptionFeatures(resolve_inception(download=False))
    fid.load_reference(ref, extractor, 8, progress=False, metrics=("fid", "sfid"))
    assert calls == []
    fid.load_reference(ref, extractor, 8, progress=False, metrics=("fid", "prec"))
    assert calls == ["reference"]


def test_damaged_image_shards_are_skipped_and_counted_in_evaluation(tmp_path):
    from eval.sets import load_shard_images
    from tests.data_helpers import damage_index_shards, image_index, make_index_shards

    folder = make_index_shards(tmp_path, 12, shard_size=4)
    survivors = damage_index_shards(folder)
    s = open_set(folder)
    images = np.concatenate(list(s.batches(3)))
    got = [image_index(torch.from_numpy(im).permute(2, 0, 1).double() / 127.5 - 1)
           for im in images]
    assert got == survivors and s.skipped == 4
    assert len(load_shard_images(folder)[0]) == len(survivors)
