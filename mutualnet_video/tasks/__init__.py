"""The 2D tasks MutualNet transfers to: detection and segmentation heads on slimmable backbones.

Each task is a :class:`~mutualnet_video.engine.task.ClassificationTask` subclass: the
engine's sandwich-rule iteration with the task's losses, distillation and views
(:class:`DetectionTask`, :class:`SegmentationTask`); classification is the engine's own
task. :func:`~mutualnet_video.tasks.projects.run_project` is the 2D projects' driver.
"""

from ..engine.task import ClassificationTask
from .detection import (
    DetectionTask,
    DetectorBackboneView,
    DetectorTrainOutput,
    DetectorTrainView,
    RoiTeacher,
    detection_losses,
    roi_distillation_loss,
)
from .segmentation import SegmentationTask, pixel_losses, segmentation_losses

__all__ = [
    "ClassificationTask",
    "DetectionTask",
    "SegmentationTask",
    "DetectorBackboneView",
    "DetectorTrainOutput",
    "DetectorTrainView",
    "RoiTeacher",
    "detection_losses",
    "roi_distillation_loss",
    "pixel_losses",
    "segmentation_losses",
]
