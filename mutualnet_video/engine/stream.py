"""The training data as a stream of batches with a checkpointable position.

:class:`BatchStream` yields the training batches epoch after epoch from a given
``(epoch, batch)`` position, so a resumed run continues with the batch the interrupted
one would have seen next; :func:`capture_rng_state` / :func:`restore_rng_state` save the
global RNGs (torch, CUDA, numpy, python) in a ``weights_only``-loadable form.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

__all__ = ["BatchStream", "GeneratorState", "capture_rng_state", "is_map_style", "restore_rng_state", "split_batch",
           "to_device"]


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(video, label)`` from a collated dict (``{"video", "label"}``) or a ``(video, label)`` pair."""
    if isinstance(batch, Mapping):
        if "video" not in batch or "label" not in batch:
            raise KeyError(f"a batch dict needs 'video' and 'label' keys, got {sorted(batch)}")
        return batch["video"], torch.as_tensor(batch["label"])
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise TypeError(f"cannot read (video, label) from a batch of type {type(batch).__name__}")


def to_device(video: Any, device: torch.device) -> Any:
    if isinstance(video, (list, tuple)):
        return [v.to(device, non_blocking=True) for v in video]
    return video.to(device, non_blocking=True)


class GeneratorState:
    """Checkpointable view of a ``torch.Generator`` (for samplers without ``state_dict``)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def is_map_style(dataset: Dataset) -> bool:
    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")


class BatchStream:
    """Batches of the training data, epoch after epoch, from a given (epoch, batch) position.

    Map-style datasets: a seeded permutation per epoch (same on all ranks), sharded
    ``perm[rank::world_size]`` (padded like ``DistributedSampler``), cut into batches; a
    position is reached by skipping indices. Iterable datasets: sharded by the dataset
    itself (rank/world_size given to its builder), ``set_epoch(epoch)`` if it has one; a
    position is reached by replaying batches.

    :meth:`record_indices` (off by default) keeps, per epoch, the indices of the samples in
    the batches this stream yields (see ``RankDump`` in :mod:`~mutualnet_video.engine.hooks`).
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, num_workers: int, drop_last: bool, seed: int,
                 rank: int, world_size: int, pin_memory: bool) -> None:
        self.dataset = dataset
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.pin_memory = pin_memory
        self.map_style = is_map_style(dataset)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_rng: dict | None = None  # global RNG states when this epoch's iterator was made
        self._iter: Iterator | None = None
        self.indices: dict[int, list[int]] | None = None  # record_indices()
        self._epoch_shard: list[int] = []  # map-style: this rank's indices of the epoch being read

    def record_indices(self) -> dict[int, list[int]]:
        """From now on, record the samples of every batch yielded: ``{epoch: [index, ...]}``
        (updated in place and returned). Map-style datasets: the dataset indices; iterable
        ones: the batch's ``video_index`` entries (``mutualnet_video.data.VideoDataset``: one per
        clip/view), nothing for batches without one. Batches dropped by ``drop_last`` and
        samples a DataLoader read ahead are not recorded."""
        if self.indices is None:
            self.indices = {}
        return self.indices

    def _record(self, batch: Any) -> None:
        if self.map_style:
            start = self.batch_in_epoch * self.batch_size
            indices = self._epoch_shard[start : start + self.batch_size]
        elif isinstance(batch, Mapping) and "video_index" in batch:
            indices = torch.as_tensor(batch["video_index"]).flatten().tolist()
        else:
            return
        self.indices.setdefault(self.epoch, []).extend(int(i) for i in indices)

    # -- epoch layout -----------------------------------------------------------------
    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def _shard(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        perm = torch.randperm(n, generator=self._generator(epoch)).tolist()
        per_rank = math.ceil(n / self.world_size)
        perm += perm[: per_rank * self.world_size - n]
        return perm[self.rank :: self.world_size]

    def batches_per_epoch(self) -> int | None:
        if not self.map_style:
            return len(self.dataset) // self.batch_size if hasattr(self.dataset, "__len__") else None
        per_rank = math.ceil(len(self.dataset) / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def _loader(self, epoch: int, skip: int) -> Iterator:
        common = dict(num_workers=self.num_workers, pin_memory=self.pin_memory, generator=self._generator(epoch),
                      collate_fn=getattr(self.dataset, "collate_fn", None))
        if self.map_style:
            shard = self._epoch_shard = self._shard(epoch)
            batches = [shard[i : i + self.batch_size] for i in range(0, len(shard), self.batch_size)]
            if self.drop_last and batches and len(batches[-1]) < self.batch_size:
                batches.pop()
            return iter(DataLoader(self.dataset, batch_sampler=batches[skip:], **common))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        it = iter(DataLoader(self.dataset, batch_size=self.batch_size, drop_last=self.drop_last, **common))
        for _ in range(skip):
            next(it)
        return it

    def seek(self, epoch: int, batch_in_epoch: int, *, epoch_rng: dict | None = None) -> None:
        """Position the stream. Replaying an iterable dataset needs the RNG states the
        epoch started with (``epoch_rng`` from :meth:`state`): they are restored first."""
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        if epoch_rng is not None and batch_in_epoch > 0:
            restore_rng_state(epoch_rng)
        self.epoch_rng = epoch_rng if batch_in_epoch > 0 and epoch_rng is not None else capture_rng_state()
        self._iter = self._loader(epoch, batch_in_epoch)

    def next(self) -> Any:
        if self._iter is None:
            self.seek(self.epoch, self.batch_in_epoch)
        for _ in range(2):
            try:
                batch = next(self._iter)
            except StopIteration:
                if self.batch_in_epoch == 0:
                    break
                self.seek(self.epoch + 1, 0)
                continue
            if self.indices is not None:
                self._record(batch)
            self.batch_in_epoch += 1
            return batch
        raise RuntimeError(
            f"the training dataset yielded no batch in epoch {self.epoch} (batch_size={self.batch_size}, "
            "drop_last): check data.train (paths, decoder) and the dataset size"
        )

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "epoch_rng": self.epoch_rng}


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states, ``weights_only``-safe."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
