"""Stage one: GaussianToken with fully discrete tokens, and a plain VQ baseline.

Both tokenizers share one interface (``tokenizer.base.Tokenizer``):
``encode(images [B, 3, S, S] in [-1, 1]) -> tokens [B, N, K]`` (int64),
``decode(tokens) -> images``, ``forward(images) -> (reconstruction, aux)`` for
training, ``vocab_sizes`` (one per tuple component) and ``num_tokens``.
Model files import only torch and kernels/; training and I/O live in
``launch.train_tokenizer``.
"""
