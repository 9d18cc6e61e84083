"""Stage two: a LlamaGen-style class-conditional GPT over token tuples.

Model code (config, model, sampling filters) imports only torch; DeepSpeed and I/O
live in ``launch.train_gpt``, ``generator.sample`` and ``generator.sample_fid``.
"""
