"""Build a tokenizer from its config (the kind -> class table), or load a trained one from
a training checkpoint or exported weights."""

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
from tokenizer.base import Tokenizer
from tokenizer.config import KINDS, TokenizerConfig
from tokenizer.gaussian import GaussianTokenizer
from tokenizer.vq import VQTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {"gaussian": GaussianTokenizer, "vq": VQTokenizer}
assert tuple(TOKENIZERS) == KINDS, "tokenizer.config.KINDS names the classes of this table"


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    if cfg.kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {cfg.kind!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[cfg.kind](cfg)


def upgrade_config(config: dict) -> dict:
    """A tokenizer config as written before the VQ baseline had its own table: top-level
    ``token_grid`` / ``vq_rounds``, with the rounds as wide as the ``gaussian`` table's
    hidden / heads, become ``vq = {grid, rounds, hidden, heads}`` (the same model)."""
    if not isinstance(config, dict) or not ({"token_grid", "vq_rounds"} & set(config)):
        return config
    config = dict(config)
    gaussian = config.get("gaussian") or {}
    vq = {"grid": config.pop("token_grid", 0), "rounds": config.pop("vq_rounds", 0)}
    vq.update({k: gaussian[k] for k in ("hidden", "heads") if k in gaussian})
    config["vq"] = vq
    return config


def load_tokenizer(path, device="cpu"):
    """A trained tokenizer in eval mode, from a training checkpoint (.pt: its EMA weights, or
    its raw weights where it kept no EMA) or
    exported weights (.safetensors with its .json config beside it).

    Returns (model, info) with info = {"path", "sha1", "config"}: the fingerprint
    later stages store to refuse tokens from another tokenizer.
    """
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
        weights = ckpt.get("ema") if isinstance(ckpt, dict) else None
        if weights is None and isinstance(ckpt, dict):
            weights = ckpt.get("model")  # a run trained with ema_decay = 0
        if not (isinstance(weights, dict) and "tokenizer" in (ckpt.get("config") or {})):
            raise WeightsError(f"{path} is not a tokenizer training checkpoint (no 'config' "
                               "with a 'tokenizer' table and 'ema' or 'model' weights)")
        config, state = ckpt["config"]["tokenizer"], weights
    try:
        model = build_tokenizer(configlib.from_dict(TokenizerConfig, upgrade_config(config)))
    except (configlib.ConfigError, TypeError, ValueError) as err:
        raise WeightsError(f"the tokenizer config of {path} is not valid ({err})") from err
    load_state(model, state, path)  # strict: a mismatch is an error, never ignored
    return model.to(device).eval(), {"path": str(path.resolve()), "sha1": tensors_sha1(state),
                                     "config": config}
