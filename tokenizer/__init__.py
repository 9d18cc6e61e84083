"""Stage one: GaussianToken with fully discrete tokens, and a plain VQ baseline.

Both kinds implement one interface (``tokenizer.base.Tokenizer``):
``encode(images [B, 3, S, S] in [-1, 1]) -> tokens [B, N, K]`` (int64),
``decode(tokens) -> images``, ``forward(images) -> (reconstruction, aux)`` for
training, ``vocab_sizes`` (one per tuple component), ``num_tokens``, ``token_layout``
(a ``TokenLayout``, the same keys for every kind) and ``set_collectives``.
``tokenizer.build`` maps a config's kind to its class and loads trained weights;
``tokenizer.registry`` names the sizes; ``tokenizer.evaluate`` is the reconstruction CLI.
Model files (gaussian, vq, quantize, blocks, taming, layout, local_read) import only torch
and kernels/; training lives in ``launch.train_tokenizer``.

May import: kernels, data, eval.
"""
