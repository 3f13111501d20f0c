"""Slow: the synthetic action classes are learnable from motion and not from one frame."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mutualnet_video.core import ConfigSpace
from mutualnet_video.data import build_loader, kinetics_dataset, make_synthetic_kinetics


def _decode(root: str, split: str, space: ConfigSpace) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = kinetics_dataset(data_path=root, split="val", space=space) if split == "val" else kinetics_dataset(
        data_path=f"{root}/train.csv", split="val", space=space)
    batch = next(iter(build_loader(dataset, batch_size=10_000)))
    return batch["video"], batch["label"]


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(16):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_demo_resnet_learns_synthetic_motion_but_a_single_frame_does_not(tmp_path):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # oversubscribed OpenMP threads are far slower on a shared 2-core box
    try:
        _check_learnability(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_learnability(tmp_path) -> None:
    from pytorchvideo.models.resnet import create_resnet

    # The 8 classes of the README's main command: 6 motions of the blob, 2 of the stripes inside it.
    info = make_synthetic_kinetics(tmp_path / "syn", num_classes=8, train_per_class=48, val_per_class=12)
    space = ConfigSpace(width_range=(1.0, 1.0), frames=(8,), crops=(32,))
    x_train, y_train = _decode(info["root"], "train", space)
    x_val, y_val = _decode(info["root"], "val", space)
    assert x_train.shape == (384, 3, 8, 32, 32) and x_val.shape == (96, 3, 8, 32, 32)

    # The stock network of configs/instant/slow_synthetic.yaml at width 1.
    video_net = create_resnet(model_depth=50, stem_dim_out=8, model_num_class=8, dropout_rate=0.0,
                              stage_conv_a_kernel_size=((3, 1, 1),) * 4, head_pool_kernel_size=(8, 1, 1))
    _fit(video_net, x_train, y_train, epochs=12)
    video_acc = _accuracy(video_net, x_val, y_val)

    # A network on one (middle) frame: the class is not in a single frame. Pairs of classes
    # differ in their blob's size or texture (grow/shrink, stripes), so up to 25% is reachable.
    frame_net = nn.Sequential(
        nn.Conv3d(3, 16, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(16), nn.ReLU(),
        nn.Conv3d(16, 32, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(32), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(32, 8),
    )
    _fit(frame_net, x_train[:, :, 4:5], y_train, epochs=12)
    frame_acc = _accuracy(frame_net, x_val[:, :, 4:5], y_val)
    assert video_acc >= 0.85, (video_acc, frame_acc)
    assert frame_acc <= 0.35, (video_acc, frame_acc)
