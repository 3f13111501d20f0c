"""Detection and segmentation on slimmable 2D backbones: every config, losses, distillation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from mutualnet_video.core import (
    SlimBatchNorm2d,
    SlimConv2d,
    SubnetConfig,
    get_space,
    resize_crop,
    slice_grads,
    use_config,
)
from mutualnet_video.core.heads import IntermediateFeatures
from mutualnet_video.engine import TrainerBase
from mutualnet_video.models._slim2d import RatioSlimConv2d
from mutualnet_video.models.detection import mutual_fasterrcnn_mobilenet_v2_fpn, mutual_fasterrcnn_resnet50_fpn
from mutualnet_video.models.registry import create_model
from mutualnet_video.tasks import (
    DetectionTask,
    DetectorBackboneView,
    SegmentationTask,
    detection_losses,
    segmentation_losses,
)

SMALL_RCNN = dict(
    rpn_batch_size_per_image=32, box_batch_size_per_image=32, rpn_pre_nms_top_n_train=64,
    rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=32, box_detections_per_img=10,
)


def _tiny_detector(builder=mutual_fasterrcnn_mobilenet_v2_fpn, **kw):
    torch.manual_seed(0)
    kw.setdefault("anchor_sizes", (16, 32, 64, 128))
    return builder(num_classes=3, width_range=(0.25, 1.0), widths=(1.0, 0.25), crops=(48, 32), **SMALL_RCNN, **kw)


def _detection_batch():
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 48, 60, generator=gen), torch.rand(3, 54, 42, generator=gen)]
    targets = [
        {"boxes": torch.tensor([[6.0, 6.0, 30.0, 27.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[3.0, 15.0, 22.0, 45.0], [22.0, 8.0, 38.0, 30.0]]), "labels": torch.tensor([2, 1])},
    ]
    return images, targets


class _OneBatch:
    def __init__(self, batch):
        self.batch = batch

    def next(self):
        return self.batch


def _task_step(model, task, batch, configs, optimizer):
    """One iteration of the training loop (TrainerBase.run_step) with ``task`` at ``configs``:
    ``[(cfg, loss terms)]``."""
    space = get_space(model)
    trainer = TrainerBase(model, _OneBatch(batch), optimizer,
                          lambda inputs: [(c, task.inputs(space, inputs, c)) for c in configs], max_iters=1, task=task)
    trainer.run_step()
    return list(zip(configs, trainer.step_terms))


def _assert_trainable_slim_bn(model: nn.Module) -> None:
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert bns and all(isinstance(m, SlimBatchNorm2d) for m in bns)


def test_detector_structure_and_resize_follow_config():
    model = _tiny_detector()
    _assert_trainable_slim_bn(model.backbone)
    inner = [block[0] for block in model.backbone.fpn.inner_blocks]
    assert all(isinstance(c, SlimConv2d) and not c.slim_out for c in inner)
    images, _ = _detection_batch()
    model.eval()
    for cfg in get_space(model).grid():
        with use_config(model, cfg):
            image_list, _ = model.transform(images)
            assert min(image_list.image_sizes[0]) == cfg.crop
            assert max(max(s) for s in image_list.image_sizes) <= model.transform.max_size
    assert model.transform.min_size == (48,)  # back to the full size outside use_config


def test_detection_losses_match_torchvision_forward():
    model = _tiny_detector().train()
    images, targets = _detection_batch()
    torch.manual_seed(3)
    ours, _ = detection_losses(model, images, targets)
    torch.manual_seed(3)
    reference = model(images, targets)
    assert set(ours) == set(reference)
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key])


def test_detection_every_config_forward_backward():
    model = _tiny_detector()
    images, targets = _detection_batch()
    space = get_space(model)
    for cfg in space.grid():
        model.train()
        model.zero_grad()
        with use_config(model, cfg):
            losses, _ = detection_losses(model, images, targets)
            sum(losses.values()).backward()
            model.eval()
            with torch.no_grad():
                detections = model(images)
        assert all(torch.isfinite(v) for v in losses.values()), cfg
        grad = model.backbone.body["0"][0].weight.grad
        active = 8 if cfg.width == 0.25 else 32
        assert grad[:active].abs().sum() > 0 and grad[active:].abs().sum() == 0, cfg
        assert len(detections) == 2 and detections[0]["boxes"].shape[-1] == 4


def test_detection_distillation_is_zero_against_itself_and_step_trains():
    model = _tiny_detector().train()
    images, targets = _detection_batch()
    full = get_space(model).full()
    with use_config(model, full):
        _, teacher = detection_losses(model, images, targets, return_teacher=True)
        losses, _ = detection_losses(model, images, targets, teacher=teacher)
    assert float(losses["loss_distill"].detach()) == pytest.approx(0.0, abs=1e-5)
    before = model.backbone.body["1"].conv[1].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    configs = [full, SubnetConfig(0.25, None, 32)]
    report = _task_step(model, DetectionTask(), (images, targets), configs, optimizer)
    assert [cfg for cfg, _ in report] == configs
    assert "loss_distill" not in report[0][1] and report[1][1]["loss_distill"] > 0
    assert not torch.equal(before, model.backbone.body["1"].conv[1].weight)


def test_detector_backbone_view_for_bn_calibration():
    model = _tiny_detector()
    view = DetectorBackboneView(model).train()
    assert get_space(view) is get_space(model)
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    bn = model.backbone.body["0"][1]
    bn.reset_running_stats()
    bn.momentum = None  # cumulative average, as calibration does
    small = SubnetConfig(0.25, None, 32)
    with torch.no_grad(), use_config(view, small):
        assert model.transform.min_size == (32,)  # switching the view switches the detector
        features = view(images)
    assert min(features["0"].shape[-2:]) == 4  # 32 px at stride 8
    assert int(bn.num_batches_tracked) == 1 and bn.running_mean[:8].abs().sum() > 0
    assert bn.running_mean[8:].abs().sum() == 0  # only the active channels are updated


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="nope"):
        IntermediateFeatures(stages={"a": nn.Identity()}, return_layers={"nope": "0"})
    with pytest.raises(ValueError, match="channel_ratio 3"):
        RatioSlimConv2d(4, 8, 1, channel_ratio=3)
    with pytest.raises(ValueError, match="one size per pyramid level"):
        _tiny_detector(anchor_sizes=(16, 32))


@pytest.mark.slow
def test_resnet50_detector_runs_every_config():
    model = _tiny_detector(mutual_fasterrcnn_resnet50_fpn, anchor_sizes=(16, 32, 64, 128, 256))
    images, targets = _detection_batch()
    for cfg in get_space(model).grid():
        with use_config(model, cfg):
            losses, _ = detection_losses(model.train(), images, targets)
            sum(losses.values()).backward()


# -- segmentation ---------------------------------------------------------------------------
def _tiny_segmenter(name="mutual_deeplabv3_mobilenet_v2"):
    torch.manual_seed(0)
    return create_model(name, num_classes=3, width_range=(0.25, 1.0), widths=(1.0, 0.25), crops=(32, 24))


def _seg_batch():
    gen = torch.Generator().manual_seed(2)
    return torch.rand(2, 3, 32, 32, generator=gen), torch.randint(0, 3, (2, 32, 32), generator=gen)


@pytest.mark.parametrize("name", [
    "mutual_deeplabv3_mobilenet_v2",
    pytest.param("mutual_fcn_resnet50", marks=pytest.mark.slow),
    pytest.param("mutual_deeplabv3_resnet50", marks=pytest.mark.slow),
])
def test_segmentation_every_config_forward_backward(name):
    model = _tiny_segmenter(name)
    _assert_trainable_slim_bn(model)
    images, masks = _seg_batch()
    for cfg in get_space(model).grid():
        model.train()
        with use_config(model, cfg):
            losses, logits = segmentation_losses(model, resize_crop(images, cfg.crop), masks)
            losses["loss_ce"].backward()
            model.eval()
            with torch.no_grad():
                out = model(resize_crop(images, cfg.crop))["out"]
        assert logits.shape == out.shape == (2, 3, cfg.crop, cfg.crop), cfg


def test_segmentation_distillation_and_step():
    model = _tiny_segmenter().eval()  # eval: the ASPP dropout would make two runs differ
    images, masks = _seg_batch()
    full = get_space(model).full()
    with use_config(model, full):
        _, teacher = segmentation_losses(model, images, masks)
        losses, _ = segmentation_losses(model, images, None, teacher_logits=teacher)
    assert float(losses["loss_distill"].detach()) == pytest.approx(0.0, abs=1e-5)
    small = SubnetConfig(0.25, None, 24)
    with use_config(model, small):  # teacher logits at 32 px are resized to the student's 24 px
        losses, logits = segmentation_losses(model, resize_crop(images, 24), None, teacher_logits=teacher)
    assert logits.shape[-1] == 24 and float(losses["loss_distill"].detach()) > 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    report = _task_step(model, SegmentationTask(), (images, masks), [full, small], optimizer)
    assert set(report[0][1]) == {"loss_ce", "total"} and set(report[1][1]) == {"loss_distill", "total"}


def _manual_sandwich(model, configs, optimizer, losses_fn):
    """The sandwich rule written out by hand (the pre-engine implementation): reference.

    Under ``slice_grads``, as ``mutual_step`` runs it, so both run the same kernels (a
    sub-network's conv may run as matrix products there): these tiny models' BatchNorm
    sees 2 values per channel in the last stages, which turns rounding differences into
    percent-level ones. ``slice_grads`` itself is checked against autograd elsewhere.
    """
    optimizer.zero_grad(set_to_none=True)
    teacher = None
    for index, cfg in enumerate(configs):
        with use_config(model, cfg), slice_grads():
            total, teacher_out = losses_fn(model, cfg, teacher)
        if index == 0:
            teacher = teacher_out
        total.backward()
    optimizer.step()


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_task_steps_equal_the_hand_written_sandwich(task):
    """Build two ways: the training loop's step with the task vs the loop written out."""
    if task == "detection":
        make, (images, targets), small = _tiny_detector, _detection_batch(), SubnetConfig(0.25, None, 32)

        def losses_fn(model, cfg, teacher):
            losses, record = detection_losses(model, images, targets, teacher=teacher, return_teacher=True)
            task_loss = sum(v for k, v in losses.items() if k != "loss_distill")
            return (task_loss if teacher is None else task_loss + 0.5 * losses["loss_distill"]), record

        def step(model, configs, opt):
            return _task_step(model, DetectionTask(distill_weight=0.5), (images, targets), configs, opt)
    else:
        make, (images, targets), small = _tiny_segmenter, _seg_batch(), SubnetConfig(0.25, None, 24)

        def losses_fn(model, cfg, teacher):
            losses, logits = segmentation_losses(model, resize_crop(images, cfg.crop), targets, teacher_logits=teacher)
            if teacher is None:
                return losses["loss_ce"], logits.detach()
            return 0.5 * losses["loss_distill"] + 0.3 * losses["loss_ce"], None

        def step(model, configs, opt):
            return _task_step(model, SegmentationTask(task_weight=0.3, distill_weight=0.5), (images, targets), configs,
                              opt)
    ours, reference, initial = make().train(), make().train(), make()
    reference.load_state_dict(ours.state_dict(), strict=True)
    configs = [get_space(ours).full(), small]
    torch.manual_seed(5)
    report = step(ours, configs, torch.optim.SGD(ours.parameters(), lr=0.1))
    torch.manual_seed(5)
    _manual_sandwich(reference, configs, torch.optim.SGD(reference.parameters(), lr=0.1), losses_fn)
    assert [cfg for cfg, _ in report] == configs and "loss_distill" in report[1][1]
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), initial.parameters()))
