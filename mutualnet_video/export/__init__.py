"""mutualnet_video.export: one configuration of an adaptive model as a plain static network."""

from .static import bn_fold_pairs, example_inputs, export_onnx, export_subnet, export_torchscript, has_slim_layers

__all__ = ["bn_fold_pairs", "example_inputs", "export_onnx", "export_subnet", "export_torchscript", "has_slim_layers"]
