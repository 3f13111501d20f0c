"""Multi-view aggregation: mean softmax over clips x crops per video, top-1/top-5."""

from __future__ import annotations

import math

import pytest
import torch

from mutualnet_video.evaluation.multiview import (
    MultiViewAccumulator,
    ViewSpec,
    aggregate_views,
    topk_correct,
    view_indices,
    view_mask,
)


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_view_spec_parse_and_errors():
    assert ViewSpec.parse("10x3") == ViewSpec(10, 3)
    assert ViewSpec.parse(" 1 X 1 ") == ViewSpec(1, 1)
    assert str(ViewSpec(10, 3)) == "10x3" and ViewSpec(10, 3).num_views == 30
    with pytest.raises(ValueError, match="10by3"):
        ViewSpec.parse("10by3")
    with pytest.raises(ValueError, match="temporal"):
        ViewSpec(0, 3)


def test_view_indices():
    assert view_indices(10, 10) == list(range(10))
    assert view_indices(3, 1) == [1]  # centre crop
    assert view_indices(10, 1) == [5]
    assert view_indices(10, 3) == [0, 4, 9]
    assert view_indices(5, 3) == [0, 2, 4]
    with pytest.raises(ValueError, match="4 views out of the 3"):
        view_indices(3, 4)


def test_view_mask_selects_the_subset():
    clip = torch.tensor([0, 0, 0, 1, 1, 1])
    aug = torch.tensor([0, 1, 2, 0, 1, 2])
    mask = view_mask(clip, aug, spec=ViewSpec(1, 1), total=ViewSpec(2, 3))
    assert mask.tolist() == [False, False, False, False, True, False]
    mask = view_mask(clip, aug, spec=ViewSpec(2, 1), total=ViewSpec(2, 3))
    assert mask.tolist() == [False, True, False, False, True, False]
    assert view_mask(clip, aug, spec=ViewSpec(2, 3), total=ViewSpec(2, 3)).all()
    with pytest.raises(ValueError, match="clip_index up to 1"):
        view_mask(clip, aug, spec=ViewSpec(1, 1), total=ViewSpec(1, 3))


def test_aggregate_views_averages_softmax_per_video():
    # video 7: two views; video 3: three views (given out of order)
    rows = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0], [0.0, 3.0, 0.0]]
    videos = [7, 3, 7, 3, 3]
    labels = [0, 1, 0, 1, 1]
    vids, probs, vlabels, counts = aggregate_views(torch.tensor(rows), torch.tensor(videos), torch.tensor(labels))
    assert vids.tolist() == [3, 7] and counts.tolist() == [3, 2] and vlabels.tolist() == [1, 0]
    for i, vid in enumerate((3, 7)):
        own = [_softmax(r) for r, v in zip(rows, videos) if v == vid]
        expected = [sum(p[k] for p in own) / len(own) for k in range(3)]
        torch.testing.assert_close(probs[i], torch.tensor(expected))
    # video 7: view 1 says class 0 (p=.79), view 2 says class 2 (p=.99) -> the average picks class 2
    assert probs[1].argmax().item() == 2
    # probabilities are averaged as given when softmax=False
    _, same, _, _ = aggregate_views(torch.tensor(rows), torch.tensor(videos), torch.tensor(labels), softmax=False)
    torch.testing.assert_close(same[1], torch.tensor([1.0, 0.0, 2.5]))


def test_aggregate_views_errors():
    with pytest.raises(ValueError, match="video_index 4 has views with different labels"):
        aggregate_views(torch.zeros(2, 3), torch.tensor([4, 4]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ"):
        aggregate_views(torch.zeros(2, 3), torch.tensor([4]), torch.tensor([0, 1]))


def test_topk_correct():
    probs = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05, 0.0],
                          [0.3, 0.25, 0.2, 0.15, 0.1, 0.0],
                          [0.3, 0.25, 0.2, 0.15, 0.1, 0.0]])
    labels = torch.tensor([1, 4, 5])
    assert topk_correct(probs, labels, (1, 5)) == {1: 1, 5: 2}
    # fewer classes than k: top-5 over 3 classes always holds the label
    assert topk_correct(torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), (5,)) == {5: 4}


def test_accumulator_over_batches():
    acc = MultiViewAccumulator()
    # video 0 (label 2) and video 1 (label 0), two views each, split across batches
    acc.update(torch.tensor([[0.0, 0.0, 3.0], [4.0, 0.0, 0.0]]), torch.tensor([2, 0]), torch.tensor([0, 1]))
    acc.update(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([2, 0]), torch.tensor([0, 1]))
    result = acc.compute(expected_views=2)
    assert result == {"top1": 100.0, "top5": 100.0, "num_videos": 2, "num_views": 4, "incomplete_videos": 0}
    acc.update(torch.tensor([[0.0, 9.0, 0.0]]), torch.tensor([0]), torch.tensor([2]))  # video 2: one view, wrong
    result = acc.compute(expected_views=2)
    assert result["top1"] == pytest.approx(200 / 3) and result["incomplete_videos"] == 1
    with pytest.raises(ValueError, match="more than the 1 expected"):
        acc.compute(expected_views=1)
    with pytest.raises(ValueError, match="no views"):
        MultiViewAccumulator().compute()
