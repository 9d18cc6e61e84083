"""Entry points, at the top of the layers: the two trainers and their shared skeleton
(``launch.trainer``), the staged pipeline, the demo and its frontier figure, the tokenizer
comparison, the benches that run a trainer, the LlamaGen import and reproduction, set-up
scripts and configs/. Nothing outside launch/ imports it (tests/test_layers.py).

May import: kernels, data, eval, tokenizer, generator.
"""
