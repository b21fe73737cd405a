"""Data sets and loaders over the index CSVs.

Every sample's random augmentation is seeded from (run seed, epoch, position in the epoch), drawn
by the sampler. So the augmented data depend on neither the number of DataLoader workers nor the
number of training processes, and a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import open_image

UNLABELLED = -1


class ImageDataset(Dataset):
    """Images of one index split; items are (tensor, class index or -1).

    With pass_seed, items are (tensor, class index, sample seed) and the transform runs unseeded:
    the random ops then run later, on the batch (training/augment.py).
    """

    def __init__(self, frame: pd.DataFrame, classes: list[str], transform, cache=None, pass_seed=False,
                 square_size: int | None = None):
        self.paths = frame["path"].tolist()
        self.cache = cache  # a cache.CachedImages of the same index rows, or None
        lookup = {name: i for i, name in enumerate(classes)}
        self.targets = [lookup.get(label, UNLABELLED) if label else UNLABELLED for label in frame["label"]]
        self.transform = transform
        self.pass_seed = pass_seed
        # The transform's output size when it only makes uint8 squares (batched augmentation): a
        # cached image already that size is handed over as it is, without a round trip through PIL.
        self.square_size = square_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        # The sampler hands (index, seed) pairs for random transforms; plain ints otherwise.
        index, seed = item if isinstance(item, tuple) else (item, None)
        if self.square_size and self.cache is not None and self.cache.shapes[index] == (self.square_size,) * 2:
            tensor = torch.from_numpy(self.cache.array(index)).permute(2, 0, 1)  # what the transform would make
        else:
            image = self.cache.image(index) if self.cache is not None else open_image(self.paths[index])
            if self.pass_seed or seed is None:
                tensor = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    # The transforms draw from the CPU generator; torch.manual_seed would also seed
                    # every accelerator backend, which costs more than the draw (docs/performance.md).
                    torch.default_generator.manual_seed(seed)
                    tensor = self.transform(image)
        return (tensor, self.targets[index], seed) if self.pass_seed else (tensor, self.targets[index])


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for one (run seed, epoch, purpose) triple, stable across processes."""
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1)


class SeededSampler(Sampler):
    """Shuffled (index, sample seed) pairs per epoch, split across `world_size` ranks.

    Like DistributedSampler, it pads the permutation so each rank gets the same count; call
    set_epoch before each epoch.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, stream=1))
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        total = self.per_rank * self.world_size
        if total > self.size:
            order = torch.cat([order, order[: total - self.size]])
        mine = order[self.rank : total : self.world_size]
        return iter([(int(i), int(seeds[i])) for i in mine])


def limit_worker_threads(_worker_id: int) -> None:
    # Workers that each ask for all cores make the machine thrash (docs/performance.md).
    torch.set_num_threads(1)


def make_loader(dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool = False,
                pin_memory: bool = False, collate_fn=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=limit_worker_threads if num_workers else None,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        # Each new iterator draws a base seed for its workers from this generator. Left to the
        # global one, that draw would come once per epoch without workers but once per run with
        # persistent workers, shifting dropout's random stream: the worker count (and a resume)
        # would change the results. The samples' own seeds come from SeededSampler.
        generator=torch.Generator(),
    )
