"""The image loader of the tokenizer trainer (and of evaluation)."""

import torch
from torch.utils.data import DataLoader

from data.build_shards import FORMAT_TAG
from data.images import center_crop_array, decode_image, random_crop_flip
from data.stream import ShardStream


class ImageShards(ShardStream):
    """Image shards -> (image float [3, S, S] in [-1, 1], class id).

    ``train=True``: random ``image_size`` crop and (``flip``) horizontal flip; otherwise
    the centre crop. Turn flips off for data that is not mirror-symmetric (digits).
    Images stored smaller than ``image_size`` are resized up first.
    """

    FORMAT = FORMAT_TAG

    def __init__(self, folder, *, image_size: int, train: bool = True, flip: bool = True,
                 **kwargs):
        super().__init__(folder, **kwargs)
        self.image_size, self.train, self.flip = image_size, train, flip
        self.format = self.manifest["settings"]["format"]

    def decode(self, sample, rng):
        image = decode_image(sample[self.format])
        label = int(sample["cls"])
        if self.train:
            arr = random_crop_flip(image, self.image_size, rng, flip=self.flip)
        else:
            arr = center_crop_array(image, self.image_size)
        tensor = torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return tensor, label


def make_image_loader(folder, *, batch_size: int, image_size: int, train: bool = True,
                      flip: bool = True, mode: str = "epoch", shuffle: bool | None = None,
                      num_workers: int = 0,
                      rank: int | None = None, world_size: int | None = None, seed: int = 0,
                      shuffle_buffer_size: int = 1000, drop_last: bool | None = None):
    """A DataLoader of (images [B, 3, S, S] float in [-1, 1], labels [B] int64).

    mode "epoch": every sample once per epoch over all ranks and workers (call
    ``loader.dataset.set_epoch(e)`` for a new shuffle); "resampled": an endless stream
    of shards drawn with replacement. Rank and world size default to the launcher's
    RANK / WORLD_SIZE. Corrupt samples are skipped and counted in
    ``loader.dataset.skipped``. Defaults follow ``train``: shuffle and drop the last
    partial batch when training, neither for evaluation.
    """
    shuffle = train if shuffle is None else shuffle
    dataset = ImageShards(folder, image_size=image_size, train=train, flip=flip, mode=mode,
                          shuffle=shuffle, rank=rank, world_size=world_size, seed=seed,
                          shuffle_buffer_size=shuffle_buffer_size)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      drop_last=train if drop_last is None else drop_last,
                      persistent_workers=False, multiprocessing_context="fork"
                      if num_workers else None, generator=own_generator(seed))


def own_generator(seed: int) -> torch.Generator:
    """The DataLoader's own RNG: without one, starting an iterator draws from the global
    torch RNG, which would shift dropout masks after an exact resume."""
    return torch.Generator().manual_seed(seed)
