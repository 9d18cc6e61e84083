"""A tiny synthetic token shard set whose tuples depend on the class (learnable)."""

import io
from pathlib import Path

import numpy as np

from data.files import atomic_write_json
from data.tario import write_tar_atomic
from data.tokens import FORMAT_TAG


def make_token_set(folder: Path, *, n=96, classes=4, num_tokens=6, vocab=(8, 6),
                   views=2, shard_size=32, seed=0, direction=1) -> Path:
    """Tuple i of class c: component k = (c * (k + 1) + direction * i) % V_k, with 10%
    noise (direction -1 reverses what follows what: a GPT learning the one set gets
    worse at the other)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, n, shard_size):
        samples = []
        for j in range(s, min(n, s + shard_size)):
            c = j % classes
            arr = np.zeros((views, num_tokens, len(vocab)), dtype=np.uint16)
            for k, v in enumerate(vocab):
                clean = (c * (k + 1) + direction * np.arange(num_tokens)) % v
                noise = rng.integers(0, v, (views, num_tokens))
                arr[..., k] = np.where(rng.random((views, num_tokens)) < 0.1, noise, clean)
            buf = io.BytesIO()
            np.save(buf, arr)
            samples.append({"__key__": f"{j:08d}", "tokens.npy": buf.getvalue(),
                            "cls": str(c).encode()})
        name = f"shard-{s // shard_size:06d}.tar"
        shards.append({"name": name, "count": write_tar_atomic(folder / name, samples)})
    atomic_write_json(folder / "manifest.json", {
        "format": FORMAT_TAG, "vocab_sizes": list(vocab), "num_tokens": num_tokens,
        "tuple_size": len(vocab), "num_views": views, "num_classes": classes, "total": n,
        "tokenizer": {"name": "synthetic"}, "image_dir": None, "shards": shards})
    return folder
