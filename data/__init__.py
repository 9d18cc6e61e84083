"""Sharded datasets: webdataset-compatible tar shards of images and of token tuples.

A shard is a plain tar whose members are ``<key>.<ext>``; members sharing a key form
one sample (webdataset's convention, so ``webdataset.WebDataset`` reads our shards).
Image shards hold ``.png`` or ``.jpg``, ``.cls`` (class id as text) and ``.json``
(source and original size); token shards hold ``.tokens.npy`` (``[A, N, K]`` integer
array, one row per stored augmentation) and ``.cls``. Every shard directory has a
``manifest.json`` (sample count per shard, skipped inputs with reasons, settings)
and image shard directories a ``classes.json`` (class names in id order).

Modules: ``tario`` (deterministic atomic tar I/O), ``images`` (crops and codecs),
``builtin`` (offline datasets), ``build_shards`` (CLI), ``split`` (rank/worker
assignment), ``loader`` (image loader), ``tokens`` (token shard writer and loader),
``bench`` (throughput). At the bottom of the layers, data/ also holds what every stage
shares: ``config`` (the one config mechanism: dataclasses <-> TOML), ``files`` (atomic
writes, checkpoints without pickled code, safetensors, SHA-1), ``cli`` (one-line usage
errors, argparse types) and ``ranks`` (rank and world size from the launcher).

May import: nothing of the project.
"""
