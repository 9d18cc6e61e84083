"""Stage two: a LlamaGen-style class-conditional GPT over token tuples.

Model code (config, model, sampling filters) imports only torch; ``generator.sample``
(a class grid) and ``generator.sample_fid`` (the 50k .npz, several ranks) are the
sampling commands. Training lives in ``launch.train_gpt``.

May import: kernels, data, eval, tokenizer.
"""
