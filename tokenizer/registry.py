"""Build a tokenizer from its config (the registry of sizes lives in tokenizer.config)."""


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
    from pathlib import Path

    from data import config as configlib
    from data.files import (
        WeightsError,
        load_checkpoint,
        load_state,
        load_weights,
        read_json,
        tensors_sha1,
    )
    from tokenizer.config import TokenizerConfig

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer weights {path} do not exist")
    if path.suffix == ".safetensors":
        meta = path.with_suffix(".json")
        if not meta.exists():
            raise FileNotFoundError(f"{meta} (the tokenizer config beside {path.name}) is missing")
        config, state = read_json(meta, "the tokenizer config"), load_weights(path)
    else:
        ckpt = load_checkpoint(path)
        if not (isinstance(ckpt, dict) and isinstance(ckpt.get("ema"), dict)
                and "tokenizer" in (ckpt.get("config") or {})):
            raise WeightsError(f"{path} is not a tokenizer training checkpoint (no 'config' "
                               "with a 'tokenizer' table and 'ema' weights)")
        config, state = ckpt["config"]["tokenizer"], ckpt["ema"]
    try:
        model = build_tokenizer(configlib.from_dict(TokenizerConfig, config))
    except (configlib.ConfigError, TypeError, ValueError) as err:
        raise WeightsError(f"the tokenizer config of {path} is not valid ({err})") from err
    load_state(model, state, path)  # strict: a mismatch is an error, never ignored
    return model.to(device).eval(), {"path": str(path.resolve()), "sha1": tensors_sha1(state),
                                     "config": config}
