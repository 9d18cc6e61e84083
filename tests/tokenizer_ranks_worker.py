"""One rank of a 2-rank tokenizer run (started by tests/test_tokenizer_ranks.py through
torchrun): rank 1 alone sees a NaN pixel in its batches number ``BAD`` (1-based), and
every rank writes what it ended with to ``OUT/rank{r}.json``."""

import json
import sys
from pathlib import Path

import torch

from launch.run_config import resolve_tokenizer_config as resolve_config
from launch.train_tokenizer import Trainer

BAD = (2, 3)


def main(shards: str, out: str, steps: int) -> None:
    cfg = resolve_config(None, [f"data.shards={shards}", "data.batch_size=4", "loss.lpips=0",
                                "data.flip=false", f"steps={steps}", "log_every=1",
                                "image_every=1000", f"ckpt_every={steps}", f"out={out}/run",
                                "max_bad_steps=3"], "gaussian-debug")
    trainer = Trainer(cfg, progress=False)
    batches, count = trainer.batches, [0]

    def poisoned():
        for images, labels in batches():
            count[0] += 1
            if trainer.ranks.rank == 1 and count[0] in BAD:
                images = images.clone()
                images[0, 0, 0, 0] = float("nan")
            yield images, labels

    trainer.batches = poisoned
    trainer.run()
    digest = float(sum(p.double().sum() for p in trainer.model.parameters()))
    Path(out, f"rank{trainer.ranks.rank}.json").write_text(json.dumps({
        "step": trainer.step_num, "skipped": trainer.skipped_steps, "batches": count[0],
        "digest": digest, "finite": all(bool(torch.isfinite(p).all())
                                        for p in trainer.model.parameters())}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
