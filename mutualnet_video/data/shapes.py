"""Toy 2D data for the projects' instant runs: coloured shapes on noise.

One shape renderer serves the three tasks: a square (kind 0), a disk (1) or a bar (2),
drawn in a random colour over dim uniform noise. Deterministic for a given ``seed``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["ShapesDataset", "collate_lists", "shape_mask", "shapes_classification", "shapes_detection",
           "shapes_segmentation"]


def shape_mask(kind: int, *, cy: int, cx: int, r: int, grid: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Boolean ``(H, W)`` mask of shape ``kind`` (0 square, 1 disk, 2 bar) of radius ``r`` at ``(cy, cx)``.

    ``grid``: ``torch.meshgrid(arange(H), arange(W), indexing="ij")``.
    """
    yy, xx = grid
    if kind == 0:
        return (yy - cy).abs().le(r) & (xx - cx).abs().le(r)
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:
        return (yy - cy).abs().le(max(1, r // 3)) & (xx - cx).abs().le(r)
    raise ValueError(f"shape kind must be 0, 1 or 2, got {kind}")


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")


def _colour(gen: torch.Generator) -> torch.Tensor:
    return 0.4 + 0.6 * torch.rand(3, 1, generator=gen)


def shapes_classification(*, num_images: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, size, size)`` images in [0, 1] with one shape each, and labels 0 square, 1 disk, 2 bar."""
    gen = torch.Generator().manual_seed(seed)
    grid = _grid(size, size)
    images = 0.3 * torch.rand(num_images, 3, size, size, generator=gen)
    labels = torch.randint(0, 3, (num_images,), generator=gen)
    for i in range(num_images):
        r = int(torch.randint(size // 6, size // 3, (), generator=gen))
        cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=gen))
        images[i][:, shape_mask(int(labels[i]), cy=cy, cx=cx, r=r, grid=grid)] = _colour(gen)
    return images, labels


def shapes_detection(
    *, num_images: int, height: int, width: int, max_objects: int, seed: int
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Images ``(3, H, W)`` in [0, 1] with 1..max_objects shapes, and torchvision detection
    targets ``{"boxes": (K, 4) xyxy, "labels": (K,)}`` (label = kind + 1; 0 is background)."""
    gen = torch.Generator().manual_seed(seed)
    grid = _grid(height, width)
    images, targets = [], []
    for _ in range(num_images):
        image = 0.3 * torch.rand(3, height, width, generator=gen)
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, max_objects + 1, (), generator=gen))):
            kind = int(torch.randint(0, 3, (), generator=gen))
            r = int(torch.randint(min(height, width) // 8, min(height, width) // 4, (), generator=gen))
            cy = int(torch.randint(r, height - r, (), generator=gen))
            cx = int(torch.randint(r, width - r, (), generator=gen))
            mask = shape_mask(kind, cy=cy, cx=cx, r=r, grid=grid)
            image[:, mask] = _colour(gen)
            ys, xs = mask.nonzero(as_tuple=True)
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
            labels.append(kind + 1)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)})
    return images, targets


def shapes_segmentation(*, num_images: int, size: int, max_objects: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, S, S)`` images in [0, 1] and ``(N, S, S)`` int64 masks (0 background, kind + 1)."""
    gen = torch.Generator().manual_seed(seed)
    grid = _grid(size, size)
    images = 0.3 * torch.rand(num_images, 3, size, size, generator=gen)
    masks = torch.zeros(num_images, size, size, dtype=torch.long)
    for i in range(num_images):
        for _ in range(int(torch.randint(1, max_objects + 1, (), generator=gen))):
            kind = int(torch.randint(0, 3, (), generator=gen))
            r = int(torch.randint(size // 8, size // 4, (), generator=gen))
            cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=gen))
            shape = shape_mask(kind, cy=cy, cx=cx, r=r, grid=grid)
            images[i][:, shape] = _colour(gen)
            masks[i][shape] = kind + 1
    return images, masks


def collate_lists(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """``[(image, target), ...] -> ([images], [targets])``: detection batches (images of any
    size, one target dict each)."""
    return [item[0] for item in batch], [item[1] for item in batch]


class ShapesDataset(Dataset):
    """The toy shapes of one task as a map-style dataset of ``(image, target)`` pairs.

    ``task``: ``classification`` (label 0 square, 1 disk, 2 bar), ``segmentation`` (an
    ``(S, S)`` int64 mask) or ``detection`` (``{"boxes", "labels"}``; batches are collated as
    lists, :func:`collate_lists`). Images are ``size x size`` (default: the space's full
    crop; ``height x width`` for detection), drawn once from ``seed``.
    """

    TASKS = ("classification", "segmentation", "detection")

    def __init__(self, task: str, *, num_images: int, space: Any = None, size: int | None = None, height: int = 64,
                 width: int = 80, max_objects: int = 2, seed: int = 0) -> None:
        if task not in self.TASKS:
            raise ValueError(f"task must be one of {', '.join(self.TASKS)}, got {task!r}")
        if num_images < 1:
            raise ValueError(f"num_images must be positive, got {num_images}")
        if size is None and task != "detection":
            if space is None:
                raise ValueError(f"{task}: give size or a space (its full crop is the image size)")
            size = space.full().crop
        self.task = task
        if task == "classification":
            images, targets = shapes_classification(num_images=num_images, size=size, seed=seed)
        elif task == "segmentation":
            images, targets = shapes_segmentation(num_images=num_images, size=size, max_objects=max_objects, seed=seed)
        else:
            images, targets = shapes_detection(num_images=num_images, height=height, width=width,
                                               max_objects=max_objects, seed=seed)
            self.collate_fn = collate_lists
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.images[index], self.targets[index]
