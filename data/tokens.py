"""Token shards for stage two: per image, the token tuples of several augmented views.

Writer: :func:`write_token_shards` takes any ``encode(images [M, 3, S, S] in [-1, 1])
-> tokens [M, N, K]`` callable and an image shard set, and writes one token shard per
image shard (same index), so ranks can split the work by shard with no coordination
and a re-run resumes shard by shard. :func:`finalize_token_shards` writes the manifest
once every shard exists. Each sample stores ``tokens.npy`` = [A, N, K] (A views) in
uint16 when every vocabulary fits, else int32, and ``cls``.

Views (``VIEWS``): "center" (1), "flip" (centre + mirror, 2), "tencrop" (LlamaGen's:
resize the short side to 1.1 S, then the four corner and the centre crops and their
mirrors, 10).

Loader: :class:`TokenShards` yields (tokens int64 [N, K], class id) with one view
drawn per sample per epoch (the first view when ``train=False``).
"""

import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import functional as TF
from tqdm import tqdm

from data.build_shards import FORMAT_TAG as IMAGE_FORMAT
from data.files import atomic_write_json, read_json
from data.images import center_crop_array, decode_image
from data.loader import own_generator
from data.stream import ShardSetError, ShardStream, read_manifest
from data.tario import batched, iter_shard_tolerant, write_tar_atomic

FORMAT_TAG = "gtgen-tokens-v1"
VIEWS = {"center": 1, "flip": 2, "tencrop": 10}
TENCROP_ENLARGE = 1.1


def make_views(image, size: int, views: str) -> torch.Tensor:
    """uint8 [A, 3, size, size] views of a PIL image (see VIEWS)."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {sorted(VIEWS)}, got {views!r}")
    if views == "tencrop":
        big = round(size * TENCROP_ENLARGE)
        arr = torch.from_numpy(center_crop_array(image, big)).permute(2, 0, 1)
        return torch.stack(TF.ten_crop(arr, [size, size]))
    centre = torch.from_numpy(center_crop_array(image, size)).permute(2, 0, 1)
    return torch.stack([centre, centre.flip(-1)]) if views == "flip" else centre[None]


def token_dtype(vocab_sizes: list[int]) -> np.dtype:
    return np.dtype(np.uint16) if max(vocab_sizes) <= 65536 else np.dtype(np.int32)


def _encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _encode_views(encode, views_u8: torch.Tensor) -> np.ndarray:
    """uint8 views [b, A, 3, S, S] -> tokens [b, A, N, K] through encode on [-1, 1] floats."""
    b, a = views_u8.shape[:2]
    images = views_u8.flatten(0, 1).float().div(127.5).sub(1.0)
    with torch.no_grad():
        out = encode(images)  # [b * A, N, K]
    if out.dim() != 3 or out.shape[0] != b * a:
        raise ValueError(f"encode must return [M, N, K] for M={b * a} images, "
                         f"got shape {list(out.shape)}")
    return out.reshape(b, a, *out.shape[1:]).cpu().numpy()


def write_token_shards(
    encode: Callable[[torch.Tensor], torch.Tensor],
    image_dir: Path | str,
    out_dir: Path | str,
    *,
    image_size: int,
    vocab_sizes: list[int],
    tokenizer: dict,
    layout: dict | None = None,
    views: str = "tencrop",
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> list[str]:
    """Tokenize this rank's share of the image shards (shard k goes to rank k % world).

    ``tokenizer`` identifies the tokenizer (e.g. name and checkpoint fingerprint); it
    is stored in the manifest so that later stages can refuse mismatched tokens;
    ``layout`` (the tokenizer's ``token_layout``: component names, position component
    and grid) too, so that the generator can use what the components mean.
    Returns the names of the shards written now (finished ones are skipped).
    """
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    manifest = read_manifest(image_dir, IMAGE_FORMAT)
    fmt, dtype = manifest["settings"]["format"], token_dtype(vocab_sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"image_dir": str(image_dir.resolve()), "image_size": image_size,
                "views": views, "vocab_sizes": list(vocab_sizes), "tokenizer": tokenizer,
                "dtype": dtype.name, "token_layout": layout or {}}
    settings_path = out_dir / "settings.json"
    if settings_path.exists() and read_json(settings_path, "token extraction settings") != settings:
        raise ShardSetError(f"{out_dir} holds tokens made with other settings; use a new folder")
    atomic_write_json(settings_path, settings)

    mine = [s for k, s in enumerate(manifest["shards"]) if k % world_size == rank]
    todo = [s for s in mine if not (out_dir / (s["name"] + ".json")).exists()]
    written = []
    bar = tqdm(total=sum(s["count"] for s in mine), unit="img", desc="tokens",
               disable=not progress, initial=sum(s["count"] for s in mine if s not in todo))

    def decode(s):  # one image sample -> (key, its views, class id)
        return s["__key__"], make_views(decode_image(s[fmt]), image_size, views), int(s["cls"])

    for shard in todo:
        keys, labels, tokens, lost = [], [], [], []

        def on_loss(n, reason, lost=lost):
            lost.append(n)
            print(f"warning: skipping {n} image(s) of a damaged shard: {reason}",
                  file=sys.stderr)

        decoded = iter_shard_tolerant(image_dir / shard["name"], shard.get("count"), on_loss,
                                      decode)
        for chunk in batched(decoded, batch_size):
            views_u8 = torch.stack([c[1] for c in chunk])  # [b, A, 3, S, S]
            tokens.extend(_encode_views(encode, views_u8))
            keys.extend(c[0] for c in chunk)
            labels.extend(c[2] for c in chunk)
            bar.update(len(chunk))
        for t in tokens:
            if t.min() < 0 or np.any(t.max(axis=(0, 1)) >= np.asarray(vocab_sizes)):
                raise ValueError(f"encode returned tokens outside the vocabularies {vocab_sizes}")
        samples = ({"__key__": k, "tokens.npy": _encode_npy(t.astype(dtype)),
                    "cls": str(lab).encode()} for k, t, lab in zip(keys, tokens, labels,
                                                                   strict=True))
        count = write_tar_atomic(out_dir / shard["name"], samples)
        shape = list(tokens[0].shape) if tokens else None
        atomic_write_json(out_dir / (shard["name"] + ".json"),
                          {"name": shard["name"], "count": count, "shape": shape,
                           "skipped": sum(lost)})
        written.append(shard["name"])
    bar.close()
    return written


def finalize_token_shards(image_dir: Path | str, out_dir: Path | str) -> dict:
    """Write the token manifest once every shard of the image set has its token shard."""
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    image_manifest = read_manifest(image_dir, IMAGE_FORMAT)
    settings = read_json(out_dir / "settings.json", "token extraction settings")
    shards, shape = [], None
    for s in image_manifest["shards"]:
        sidecar = out_dir / (s["name"] + ".json")
        if not sidecar.exists():
            raise ShardSetError(f"{out_dir} lacks the token shard of {s['name']}: "
                                "run the extraction for every rank first")
        info = read_json(sidecar, "token shard record", ("name", "count"))
        shards.append({"name": info["name"], "count": info["count"],
                       "skipped": info.get("skipped", 0)})
        shape = shape or info["shape"]
    manifest = {"format": FORMAT_TAG, **settings, "num_views": shape[0] if shape else 0,
                "num_tokens": shape[1] if shape else 0, "tuple_size": shape[2] if shape else 0,
                "num_classes": image_manifest["num_classes"],
                "total": sum(s["count"] for s in shards),
                "skipped": sum(s["skipped"] for s in shards), "shards": shards}
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest


class TokenShards(ShardStream):
    """Token shards -> (tokens int64 [N, K], class id); one random view per sample."""

    FORMAT = FORMAT_TAG

    def __init__(self, folder, *, train: bool = True, **kwargs):
        super().__init__(folder, **kwargs)
        self.train = train

    def decode(self, sample, rng):
        views = np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)  # [A, N, K]
        view = int(rng.integers(views.shape[0])) if self.train else 0
        return torch.from_numpy(views[view].astype(np.int64)), int(sample["cls"])


def make_token_loader(folder, *, batch_size: int, train: bool = True, mode: str = "epoch",
                      num_workers: int = 0, rank: int | None = None,
                      world_size: int | None = None, seed: int = 0,
                      shuffle_buffer_size: int = 1000):
    """A DataLoader of (tokens [B, N, K] int64, labels [B] int64); same split semantics
    as the image loader (see ``data.loader.make_image_loader``)."""
    dataset = TokenShards(folder, train=train, mode=mode, shuffle=train, rank=rank,
                          world_size=world_size, seed=seed,
                          shuffle_buffer_size=shuffle_buffer_size)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      drop_last=train, multiprocessing_context="fork" if num_workers else None,
                      generator=own_generator(seed))
