"""Build a tokenizer from its config (the registry of sizes lives in tokenizer.config)."""

import torch

from tokenizer.config import REGISTRY, TokenizerConfig, registry_config
from tokenizer.gaussian import GaussianTokenizer
from tokenizer.vq import VQTokenizer


def build_tokenizer(cfg: TokenizerConfig):
    return GaussianTokenizer(cfg) if cfg.kind == "gaussian" else VQTokenizer(cfg)


__all__ = ["REGISTRY", "build_tokenizer", "registry_config"]


def load_tokenizer(path, device="cpu"):
    """A trained tokenizer in eval mode, from a training checkpoint (.pt, EMA weights) or
    exported weights (.safetensors with its .json config beside it).

    Returns (model, info) with info = {"path", "sha1", "config"}: the fingerprint
    later stages store to refuse tokens from another tokenizer.
    """
    import json
    from pathlib import Path

    from launch import config as configlib
    from launch.runtime import load_checkpoint
    from tokenizer.config import TokenizerConfig

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = path.with_suffix(".json")
        if not meta.exists():
            raise FileNotFoundError(f"{meta} (the tokenizer config beside {path.name}) is missing")
        config, state = json.loads(meta.read_text()), load_file(str(path))
    else:
        ckpt = load_checkpoint(path)
        config, state = ckpt["config"]["tokenizer"], ckpt["ema"]
    model = build_tokenizer(configlib.from_dict(TokenizerConfig, config))
    model.load_state_dict(state)  # strict: a mismatch is an error, never silently ignored
    return model.to(device).eval(), {"path": str(path.resolve()), "sha1": state_sha1(state),
                                     "config": config}


def state_sha1(state: dict) -> str:
    """The tokenizer fingerprint: sha1 over sorted keys and the tensors' bytes."""
    import hashlib

    h = hashlib.sha1()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
