"""The training sample stream: a deterministic, resumable, rank-sharded sequence of augmented samples.

Sample p of the run (p = iteration * global_batch + rank * per_rank_batch + j) is image
``perm_e[p mod N]`` of the data set (``perm_e`` a seeded permutation for epoch e = p // N), mixed and augmented
with a generator seeded by (seed, p). So the data a run sees is a pure function of (seed, iteration), whatever
the number of data-loader workers, and a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .anomaly_mix import AnomalyMix
from .augment import AugmentConfig, augment

IGNORE_LABEL = 255


class SemanticDataset(Protocol):
    """A map-style set of (image (H, W, 3) uint8 RGB, label (H, W) uint8 trainIds)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class TrainingSamples(Dataset):
    """Stream position -> (image (3, h, w) uint8, label (h, w) uint8): Anomaly Mix (if any), then augmentation."""

    def __init__(
        self, dataset: SemanticDataset, augment_config: AugmentConfig, anomaly_mix: AnomalyMix | None, seed: int
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("the training data set is empty")
        self.dataset = dataset
        self.augment_config = augment_config
        self.anomaly_mix = anomaly_mix
        self.seed = int(seed)
        self._permutations: dict[int, np.ndarray] = {}  # a few recent epochs

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= 4:
                del self._permutations[min(self._permutations)]
            rng = np.random.default_rng([self.seed, 0x5EED, epoch])
            self._permutations[epoch] = rng.permutation(len(self.dataset))
        return self._permutations[epoch]

    def dataset_index(self, position: int) -> int:
        """Which image of the data set stream position `position` shows."""
        epoch, offset = divmod(position, len(self.dataset))
        return int(self._permutation(epoch)[offset])

    def __len__(self) -> int:  # nominal: the stream is unbounded
        return len(self.dataset)

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor]:
        image, label = self.dataset[self.dataset_index(position)]
        rng = np.random.default_rng([self.seed, position])
        if self.anomaly_mix is not None:
            image, label, _ = self.anomaly_mix(image, label, rng)
        image, label = augment(np.asarray(image), np.asarray(label), rng, self.augment_config)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label)


class StreamBatchSampler(Sampler[list[int]]):
    """Yields, for iterations start..stop-1, this rank's share of the global batch as stream positions."""

    def __init__(self, global_batch: int, *, rank: int, world_size: int, start: int, stop: int) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by the world size {world_size}")
        self.per_rank = global_batch // world_size
        self.global_batch = global_batch
        self.rank = rank
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for iteration in range(self.start, self.stop):
            first = iteration * self.global_batch + self.rank * self.per_rank
            yield list(range(first, first + self.per_rank))


def collate(
    samples: Sequence[tuple[Tensor, Tensor]], pad_value: Sequence[float] = (0.0, 0.0, 0.0)
) -> tuple[Tensor, Tensor]:
    """Stack samples: images (B, 3, H, W) float32 0-255, labels (B, H, W) int64, padded to the largest one.

    Images are padded with `pad_value` (the model's pixel mean: 0 after normalisation, as detectron2 pads),
    labels with 255, bottom/right. Crops of one size (the usual case) are stacked unchanged.
    """
    height = max(int(img.shape[1]) for img, _ in samples)
    width = max(int(img.shape[2]) for img, _ in samples)
    images = torch.empty(len(samples), 3, height, width, dtype=torch.float32)
    images[:] = torch.tensor(pad_value, dtype=torch.float32).view(1, 3, 1, 1)
    labels = torch.full((len(samples), height, width), IGNORE_LABEL, dtype=torch.int64)
    for i, (image, label) in enumerate(samples):
        images[i, :, : image.shape[1], : image.shape[2]] = image.float()
        labels[i, : label.shape[0], : label.shape[1]] = label.long()
    return images, labels


def worker_start_method() -> str:
    """How DataLoader workers start: "forkserver" (or "spawn" where it is missing), never a bare fork.

    A worker forked from a trainer that has already run OpenCV's thread pool (validation, the previous stage's
    resizing) inherits the pool's locks without its threads and deadlocks in `cv2.setNumThreads`; workers
    started fresh cost about a second each, once per stage.
    """
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def worker_init(_: int) -> None:
    """DataLoader worker set-up: one OpenCV thread per worker (the workers are the parallelism)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


__all__ = ["SemanticDataset", "StreamBatchSampler", "TrainingSamples", "collate", "worker_init", "worker_start_method"]
