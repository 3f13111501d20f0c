"""Multi-view testing: a video's prediction is the average over several views.

A test video is cut into ``temporal`` clips x ``spatial`` crops ("views", e.g. ``10x3``);
the prediction is the mean of the views' softmax probabilities. Views are part of the
budget: FLOPs per video = FLOPs per view x views.

A test loader yields the most views asked for (e.g. ``10x3``); a smaller view spec
(``1x1``, ``3x1``, ...) is evaluated on a subset of those views (:func:`view_mask`), so
one decoding pass serves every view spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ViewSpec", "view_indices", "view_mask", "aggregate_views", "topk_correct", "MultiViewAccumulator"]

_VIEWS = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class ViewSpec:
    """``temporal`` clips x ``spatial`` crops per video; written ``"10x3"``."""

    temporal: int = 1
    spatial: int = 1

    def __post_init__(self) -> None:
        for name in ("temporal", "spatial"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"views: {name} must be a positive int, got {value!r}")

    @classmethod
    def parse(cls, spec: str | ViewSpec) -> ViewSpec:
        """``"10x3"`` -> ``ViewSpec(10, 3)``; a ViewSpec is returned as is."""
        if isinstance(spec, ViewSpec):
            return spec
        match = _VIEWS.match(str(spec))
        if match is None:
            raise ValueError(f"views must look like 'TEMPORALxSPATIAL' (e.g. '10x3'), got {spec!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def num_views(self) -> int:
        return self.temporal * self.spatial

    def __str__(self) -> str:
        return f"{self.temporal}x{self.spatial}"


def view_indices(total: int, count: int) -> list[int]:
    """Which of ``total`` views (clips or crops) a spec with ``count`` of them uses.

    ``count == total``: all; ``count == 1``: the middle one (the centre crop of 3);
    otherwise ``count`` indices spread evenly, first and last included.
    """
    if not 1 <= count <= total:
        raise ValueError(f"cannot pick {count} views out of the {total} the loader provides")
    if count == total:
        return list(range(total))
    if count == 1:
        return [total // 2]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def view_mask(clip_index: torch.Tensor, aug_index: torch.Tensor, *, spec: ViewSpec, total: ViewSpec) -> torch.Tensor:
    """Boolean mask of the samples that belong to view spec ``spec``, out of ``total`` views."""
    temporal = torch.tensor(view_indices(total.temporal, spec.temporal))
    spatial = torch.tensor(view_indices(total.spatial, spec.spatial))
    clip_index, aug_index = torch.as_tensor(clip_index).cpu(), torch.as_tensor(aug_index).cpu()
    if clip_index.numel() and (int(clip_index.max()) >= total.temporal or int(aug_index.max()) >= total.spatial):
        raise ValueError(
            f"the loader yields clip_index up to {int(clip_index.max())} and aug_index up to "
            f"{int(aug_index.max())}, more than the {total} views it was declared to provide"
        )
    return torch.isin(clip_index, temporal) & torch.isin(aug_index, spatial)


def aggregate_views(
    scores: torch.Tensor,
    video_index: torch.Tensor,
    labels: torch.Tensor,
    *,
    softmax: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average the views of each video.

    Args:
        scores: ``(N, K)`` per-view logits (``softmax=True``) or probabilities.
        video_index: ``(N,)`` the video each view belongs to.
        labels: ``(N,)`` the label of each view (must agree within a video).

    Returns:
        ``(videos (V,), probs (V, K), labels (V,), counts (V,))``, videos sorted by index;
        ``probs`` is the mean softmax over each video's views.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, classes), got shape {tuple(scores.shape)}")
    video_index = torch.as_tensor(video_index).reshape(-1).long().cpu()
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    if not scores.shape[0] == video_index.numel() == labels.numel():
        raise ValueError(
            f"{scores.shape[0]} score rows, {video_index.numel()} video indices and {labels.numel()} labels differ"
        )
    probs = F.softmax(scores.float(), dim=1) if softmax else scores.float()
    probs = probs.cpu()
    videos, inverse = torch.unique(video_index, sorted=True, return_inverse=True)
    counts = torch.bincount(inverse, minlength=videos.numel())
    summed = torch.zeros(videos.numel(), probs.shape[1]).index_add_(0, inverse, probs)
    video_labels = torch.full((videos.numel(),), -1, dtype=torch.long).scatter_(0, inverse, labels)
    disagree = video_labels[inverse] != labels
    if bool(disagree.any()):
        bad = int(video_index[disagree][0])
        raise ValueError(f"video_index {bad} has views with different labels")
    return videos, summed / counts.unsqueeze(1), video_labels, counts


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the top-k scores, for each k (k capped at the classes)."""
    result = {}
    for k in ks:
        top = probs.topk(min(k, probs.shape[1]), dim=1).indices
        result[k] = int((top == labels.unsqueeze(1)).any(dim=1).sum())
    return result


class MultiViewAccumulator:
    """Collects per-view scores over batches; :meth:`compute` gives video-level accuracy.

    Scores are kept on the CPU as float32 ``(N, K)``; a test set of 20k videos x 30 views
    x 400 classes is about 1 GB, so pass probabilities of the views only once.
    """

    def __init__(self, *, softmax: bool = True) -> None:
        self.softmax = softmax
        self._scores: list[torch.Tensor] = []
        self._videos: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, scores: torch.Tensor, labels: torch.Tensor, video_index: torch.Tensor) -> None:
        """Add ``(N, K)`` scores of ``N`` views with their labels and video indices."""
        if scores.shape[0] == 0:
            return
        self._scores.append(scores.detach().float().cpu())
        self._labels.append(torch.as_tensor(labels).reshape(-1).long().cpu())
        self._videos.append(torch.as_tensor(video_index).reshape(-1).long().cpu())

    @property
    def num_views(self) -> int:
        return sum(s.shape[0] for s in self._scores)

    def compute(self, *, expected_views: int | None = None) -> dict[str, float | int]:
        """``{"top1", "top5" (percent), "num_videos", "num_views", "incomplete_videos"}``.

        ``incomplete_videos`` counts videos with fewer views than ``expected_views`` (a
        decode failure drops views); more views than expected is an error.
        """
        if not self._scores:
            raise ValueError("no views were added: the loader yielded nothing (check the data path and decoder)")
        videos, probs, labels, counts = aggregate_views(
            torch.cat(self._scores), torch.cat(self._videos), torch.cat(self._labels), softmax=self.softmax
        )
        incomplete = 0
        if expected_views is not None:
            if bool((counts > expected_views).any()):
                bad = int(videos[counts > expected_views][0])
                raise ValueError(
                    f"video_index {bad} has {int(counts.max())} views, more than the {expected_views} expected: "
                    "are video indices unique across the test set?"
                )
            incomplete = int((counts < expected_views).sum())
        correct = topk_correct(probs, labels, (1, 5))
        n = videos.numel()
        return {
            "top1": 100.0 * correct[1] / n,
            "top5": 100.0 * correct[5] / n,
            "num_videos": n,
            "num_views": int(counts.sum()),
            "incomplete_videos": incomplete,
        }
